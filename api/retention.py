"""Which snapshots may be deleted: pins, and registered models that were trained on them.

A snapshot is kept while it is pinned, or while a registered MLflow model version's run
(found by its `tidelog.snapshot_id` tag) used it: deleting it then would not lose the
data (`tidelog rebuild` re-materialises from the archive) but would break the quick
path from a served model to its training set.

Deleting follows the snapshotter's own rules: under the snapshot's build lock, the
directory is renamed to a hidden name first (a reader sees the whole snapshot or none),
then the DuckDB catalog forgets it, then the files go.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from api.store import Database, now
from tidelog.errors import SnapshotError, SnapshotInUse, SnapshotPinned
from tidelog.settings import Settings

__all__ = ["Pins", "registered_versions_using", "delete_snapshot_files", "delete_unless_kept",
           "refuse_if_pinned"]

_LOG = logging.getLogger("tidelog.api")


class Pins:
    """Pins in the API's database. A pin is taken under the snapshot's shared lock and a
    delete (or gc) checks pins under its exclusive lock (`SnapshotStore`), so across
    processes (the API, `tidelog snapshot pin|delete`, `tidelog gc`) a pin either lands
    before the check, which then refuses, or waits and finds no snapshot."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Held while a delete decides, so a pin cannot slip in between check and delete.
        self.lock = threading.RLock()

    def pin(self, snapshot_id: str, by: str, reason: str = "", *,
            exists: Callable[[str], object] | None = None,
            guard: Callable[[str], AbstractContextManager[object]] | None = None
            ) -> dict[str, Any]:
        """Pin `snapshot_id`. `exists` (raising SnapshotNotFound) is checked again under
        `guard(snapshot_id)` (the store's shared lock), so a delete in another process
        has either finished or not begun."""
        if exists is not None:
            exists(snapshot_id)
        with (guard(snapshot_id) if guard is not None else nullcontext()), self.lock, \
                self.db.write() as conn:
            if exists is not None:
                exists(snapshot_id)
            conn.execute("insert into pins (snapshot_id, pinned_by, pinned_at, reason) "
                         "values (?, ?, ?, ?) on conflict (snapshot_id) do nothing",
                         (snapshot_id, by, now(), reason))
        found = self.get(snapshot_id)
        assert found is not None
        return found

    def unpin(self, snapshot_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("delete from pins where snapshot_id = ?", (snapshot_id,))

    def get(self, snapshot_id: str) -> dict[str, Any] | None:
        row = self.db.one("select * from pins where snapshot_id = ?", (snapshot_id,))
        return None if row is None else {"pinned_by": row["pinned_by"],
                                         "pinned_at": row["pinned_at"],
                                         "reason": row["reason"]}

    def all(self) -> dict[str, dict[str, Any]]:
        return {r["snapshot_id"]: {"pinned_by": r["pinned_by"], "pinned_at": r["pinned_at"],
                                   "reason": r["reason"]}
                for r in self.db.query("select * from pins")}


def delete_unless_kept(core: Any, pins: Pins, snapshot_id: str) -> None:
    """Delete the snapshot, or refuse (SnapshotPinned / SnapshotInUse, 409) naming the pin
    or the model versions keeping it. The API and `tidelog snapshot delete` both call this.

    The pin is checked again under the snapshot's exclusive lock, just before its
    directory is moved aside (`Pins`), so a pin taken meanwhile by another process
    either refuses the delete or waits and then finds no snapshot."""
    core.manifest(snapshot_id)  # SnapshotNotFound for an unknown id
    refuse_if_pinned(pins, snapshot_id)
    users = core.models_using(snapshot_id)
    if users:
        names = ", ".join(f"{u['name']}/{u['version']}" for u in users[:10])
        raise SnapshotInUse(f"snapshot {snapshot_id} trained registered model version(s) "
                            f"{names}; delete those model versions in MLflow first",
                            snapshot_id=snapshot_id, model_versions=users)
    with pins.lock:
        core.delete_snapshot(snapshot_id, check=lambda: refuse_if_pinned(pins, snapshot_id))


def refuse_if_pinned(pins: Pins, snapshot_id: str) -> None:
    """SnapshotPinned if `snapshot_id` is pinned now (read from the database)."""
    pin = pins.get(snapshot_id)
    if pin is not None:
        raise SnapshotPinned(f"snapshot {snapshot_id} is pinned by {pin['pinned_by']} "
                             f"({pin['reason'] or 'no reason given'}); unpin it first",
                             snapshot_id=snapshot_id, pin=pin)


def registered_versions_using(settings: Settings, snapshot_id: str) -> list[dict[str, str]]:
    """Registered model versions whose run trained on `snapshot_id` (any experiment)."""
    from trainer.tags import SNAPSHOT_ID
    from trainer.tracking import connect

    tracking = connect(settings)
    found = []
    for run in tracking.runs_with_tag(SNAPSHOT_ID, snapshot_id):
        run_id = run.info.run_id
        for version in tracking.model_versions(f"run_id = '{run_id}'"):
            found.append({"name": str(version.name), "version": str(version.version),
                          "run_id": run_id})
    return found


def delete_snapshot_files(settings: Settings, snapshot_id: str,
                          check: Callable[[], object] | None = None) -> None:
    from snapshotter.mirror import sync_or_raise
    from snapshotter.store import SnapshotStore

    trash = SnapshotStore.of(settings).set_aside(snapshot_id, check)
    _forget_in_catalog(settings, snapshot_id)
    shutil.rmtree(trash, ignore_errors=True)
    sync_or_raise(settings, f"snapshot {snapshot_id} is deleted here")


def _forget_in_catalog(settings: Settings, snapshot_id: str) -> None:
    from snapshotter.catalog import catalog_path, sync_catalog

    if not catalog_path(settings).exists():
        return
    try:
        sync_catalog(settings)  # drops the snapshot's schema, moves `latest` off it
    except SnapshotError as exc:
        # The files are gone either way; the next `snapshot create` or `list` repairs it.
        _LOG.warning("catalog update after deleting snapshot %s failed: %s", snapshot_id, exc)
