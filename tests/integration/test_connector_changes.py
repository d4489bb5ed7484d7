"""Connector changes on the real stack: a partitioned table streams through its parent; a
table added to a running connector arrives whole, and so do writes made right after
`apply` returns; `snapshot create --full` of an existing id really rebuilds it."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply, delete
from snapshotter.snapshots import create_snapshot, open_snapshot
from snapshotter.verify import verify_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name
from tidelog.errors import CaptureStale
from tidelog.settings import Settings

pytestmark = pytest.mark.integration


def _postgres(settings: Settings, table: str, columns: str) -> set[tuple[object, ...]]:
    with psycopg.connect(settings.postgres_dsn) as conn:
        return set(conn.execute(f"select {columns} from {table}").fetchall())


def _snapshot(settings: Settings, sid: str, table: str, columns: list[str]
              ) -> set[tuple[object, ...]]:
    return set(open_snapshot(settings, sid).table(table).select(columns).iter_rows())


def test_partitioned_table_streams_changes_of_every_partition(settings: Settings,
                                                               tmp_path: Path) -> None:
    table = "public.chg_part"
    execute(settings, f"drop table if exists {table} cascade",
            f"create table {table} (id int, region text, v text, primary key (id, region)) "
            "partition by list (region)",
            f"create table chg_part_eu partition of {table} for values in ('eu')",
            f"create table chg_part_us partition of {table} for values in ('us')",
            f"insert into {table} values (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'eu', 'c')")
    name = unique_name("part")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    apply(env, spec, timeout=180)
    execute(settings, f"insert into {table} values (4, 'us', 'd'), (5, 'eu', 'e')",
            f"update {table} set v = 'z' where id = 1",
            f"delete from {table} where id = 2",
            f"update {table} set region = 'us' where id = 3")  # moves between partitions
    snap = create_snapshot(env, [table], "latest")
    assert _snapshot(env, snap.id, table, ["id", "region", "v"]) == \
        _postgres(settings, table, "id, region, v")
    assert snap.tables[table].rows == 4
    delete(env, spec, drop_slot=True)


def test_added_table_gets_its_rows_and_writes_right_after_apply(settings: Settings,
                                                                 tmp_path: Path) -> None:
    first, added = "public.chg_first", "public.chg_added"
    execute(settings, f"drop table if exists {first}, {added}",
            f"create table {first} (id int primary key, v text)",
            f"create table {added} (id int primary key, v text)",
            f"insert into {first} values (1, 'a')",
            f"insert into {added} select g, 'old' from generate_series(1, 2500) g")
    name = unique_name("grow")
    env = private_settings(settings, tmp_path, name)
    apply(env, ConnectorSpec(name, (first,), name), timeout=180)
    execute(settings, f"insert into {added} values (2501, 'before apply')")
    spec = ConnectorSpec(name, (first, added), name)
    apply(env, spec, timeout=180)
    # Right after apply returns: must be captured by the new configuration.
    execute(settings, f"insert into {added} values (2502, 'after apply')",
            f"update {added} set v = 'changed' where id = 7",
            f"insert into {first} values (2, 'b')")
    snap = create_snapshot(env, [first, added], "latest")
    assert _snapshot(env, snap.id, added, ["id", "v"]) == _postgres(settings, added, "id, v")
    assert snap.tables[added].rows == 2502
    assert _snapshot(env, snap.id, first, ["id", "v"]) == _postgres(settings, first, "id, v")
    delete(env, spec, drop_slot=True)


def test_full_rebuild_of_an_existing_snapshot_replaces_it(settings: Settings,
                                                          tmp_path: Path) -> None:
    table = "public.chg_full"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, v text)",
            f"insert into {table} select g, 'v' || g from generate_series(1, 100) g")
    name = unique_name("full")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    apply(env, spec, timeout=180)
    snap = create_snapshot(env, [table], "latest")
    # Damage a data file: only a real rebuild from the archive can repair it.
    directory = Path(env.snapshot_root) / snap.id
    data = directory / snap.tables[table].files[0]
    data.write_bytes(data.read_bytes()[:-100])
    assert not verify_snapshot(env, snap.id).ok
    same = create_snapshot(env, [table], snap.cut)  # incremental: the existing one
    assert same.created_at == snap.created_at and not verify_snapshot(env, snap.id).ok
    rebuilt = create_snapshot(env, [table], snap.cut, incremental=False)
    assert rebuilt.id == snap.id and rebuilt.built_from == "full"
    assert verify_snapshot(env, snap.id).ok
    assert rebuilt.digest == snap.digest  # the same logical content, rebuilt
    assert not list(Path(env.snapshot_root).glob(f".old-{snap.id}"))
    delete(env, spec, drop_slot=True)


def test_ddl_that_rewrites_rows_is_followed_by_a_refresh(settings: Settings,
                                                         tmp_path: Path) -> None:
    table = "public.chg_ddl"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, v text)",
            f"insert into {table} select g, 'v' || g from generate_series(1, 300) g")
    name = unique_name("ddl")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    apply(env, spec, timeout=180)
    first = create_snapshot(env, [table], "latest")
    assert first.tables[table].rows == 300
    # No row is written after these: only a re-read of the table can show their effect.
    execute(settings, f"alter table {table} add column flag int not null default 7",
            f"alter table {table} rename column v to label")
    refusals = []
    deadline = time.monotonic() + 180
    while True:  # refused while the refresh (an incremental snapshot) is open
        try:
            snap = create_snapshot(env, [table], "latest")
            break
        except CaptureStale as exc:
            refusals.append(exc.message)
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    frame = open_snapshot(env, snap.id).table(table)
    assert frame.columns == ["id", "label", "flag"]
    assert set(frame.select("id", "label", "flag").iter_rows()) == \
        _postgres(settings, table, "id, label, flag")
    delete(env, spec, drop_slot=True)
