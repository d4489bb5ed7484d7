"""OpenLineage on the real stack: the archiver and the snapshotter name Debezium's own
datasets (`kafka://<bootstrap>` topics, `postgres://host:port` tables) with the offsets read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc.connector import ConnectorSpec, apply
from snapshotter.archive import Archive
from snapshotter.archiving import archive_topics
from snapshotter.snapshots import create_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name, wait_for_events
from tests.unit.test_openlineage import Receiver
from tidelog.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture()
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    got = Receiver()
    monkeypatch.delenv("OPENLINEAGE_DISABLED", raising=False)
    monkeypatch.setenv("OPENLINEAGE_URL", got.url)
    yield got
    got.close()


def test_archive_and_snapshot_events_use_debeziums_namespaces(
        settings: Settings, tmp_path: Path, receiver: Receiver) -> None:
    name = unique_name("ol")
    local = private_settings(settings, tmp_path, name)
    execute(settings, "drop table if exists ol_items",
            "create table ol_items (id int primary key, label text)",
            "insert into ol_items select g, 'l' || g from generate_series(1, 30) g")
    apply(local, ConnectorSpec(name, ("public.ol_items",), name), timeout=180)
    topic = f"{name}.public.ol_items"
    wait_for_events(local, topic, lambda events: len(events) >= 30)

    marks = archive_topics(local, [topic])
    (archived,) = [e for e in receiver.of("archive") if e["eventType"] == "COMPLETE"]
    bootstrap = local.bootstrap_servers.split(",")[0]
    (source,) = archived["inputs"]
    assert (source["namespace"], source["name"]) == (f"kafka://{bootstrap}", topic)
    (part,) = source["inputFacets"]["tidelog_offsets"]["partitions"]
    assert (part["start"], part["end"]) == (0, marks[(topic, 0)])
    assert part["clusterId"] == Archive(local.archive_root).status()[0]["cluster_id"]
    (target,) = archived["outputs"]
    assert target["name"] == str(Path(local.archive_root) / topic)

    archive_topics(local, [topic])  # nothing new: no event
    assert len(receiver.of("archive")) == 2

    manifest = create_snapshot(local, ["public.ol_items"], "latest")
    (snapped,) = [e for e in receiver.of("snapshot") if e["eventType"] == "COMPLETE"]
    pg = conninfo_to_dict(local.postgres_dsn)
    names = {(d["namespace"], d["name"]) for d in snapped["inputs"]}
    assert (f"kafka://{bootstrap}", topic) in names
    assert (f"postgres://{pg['host']}:{pg['port']}", f"{pg['dbname']}.public.ol_items") in names
    (table,) = snapped["outputs"]
    assert table["facets"]["version"]["datasetVersion"] == manifest.id
    assert table["facets"]["tidelog_digest"]["rows"] == 30
