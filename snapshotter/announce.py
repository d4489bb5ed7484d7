"""The event the snapshotter publishes: dataset.ready, once a snapshot's manifest exists."""

from __future__ import annotations

from snapshotter.manifest import Manifest
from tidelog.events import CloudEvent, new_event
from tidelog.settings import Settings

__all__ = ["dataset_ready"]


def dataset_ready(settings: Settings, manifest: Manifest) -> CloudEvent:
    cut = manifest.cut
    data = {
        "snapshot_id": manifest.id,
        "cut": cut.to_json(),
        "cut_fingerprint": cut.fingerprint(),
        "digest": manifest.digest,
        "tables": {name: {"rows": t.rows, "digest": t.digest}
                   for name, t in sorted(manifest.tables.items())},
        "rows": sum(t.rows for t in manifest.tables.values()),
        "created_at": manifest.created_at,
    }
    # Same cut and content, same event: a snapshot requested twice announces itself once.
    return new_event(settings, "dataset.ready", manifest.id, data,
                     (manifest.id, cut.fingerprint(), manifest.digest), "snapshotter")
