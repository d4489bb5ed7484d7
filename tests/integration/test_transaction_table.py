"""A source table named `transaction` is archived and snapshotted like any other table:
only the connector's own `<prefix>.transaction` topic holds transaction metadata."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cdc.connector import ConnectorSpec, apply
from snapshotter.archive import TRANSACTION_SCHEMA, Archive
from snapshotter.snapshots import create_snapshot, open_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name
from tidelog.demo.capture import wait_for_capture
from tidelog.settings import Settings
from tidelog.topics import table_topic, transaction_topic

pytestmark = pytest.mark.integration


def test_a_table_named_transaction_is_archived_and_snapshotted(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    name = unique_name("txtable")
    local = private_settings(settings, tmp_path_factory.mktemp("txtable"), name)
    table = f"{name}.transaction"
    quoted = f'"{name}"."transaction"'
    execute(settings, f'create schema "{name}"',
            f"create table {quoted} (id int primary key, amount int)",
            f"insert into {quoted} select g, g * 10 from generate_series(1, 3) g")
    apply(local, ConnectorSpec(name, (table,), name), timeout=180)
    execute(settings, f"insert into {quoted} values (4, 40), (5, 50)",
            f"update {quoted} set amount = -1 where id = 3",
            f"delete from {quoted} where id = 5")
    # 3 snapshot reads, 2 inserts, an update, a delete (and its tombstone)
    wait_for_capture(local, {table: 7}, timeout=120)

    manifest = create_snapshot(local, [table], "latest")
    rows = open_snapshot(local, manifest.id).table(table).sort("id").to_dicts()
    assert rows == [{"id": 1, "amount": 10}, {"id": 2, "amount": 20},
                    {"id": 3, "amount": -1}, {"id": 4, "amount": 40}]
    archive = Archive(local.archive_root)
    assert table_topic(name, table) in archive.topics()
    assert transaction_topic(name) in archive.topics()  # the metadata, archived apart
    [part] = [r for r in archive.status() if r["topic"] == transaction_topic(name)]
    [segment, *_] = archive.segments(transaction_topic(name), 0, int(str(part["generation"])))
    assert pq.read_schema(segment.path).names == TRANSACTION_SCHEMA.names
