"""Values whose shape or type changes after `connector apply`, on the real stack.

Arrays: Debezium renumbers arrays that do not start at 1 and flattens multi-dimensional
ones without a sign in the change event, so `connector apply` refuses an array column
unless the source keeps such values out (a CHECK constraint it finds by probing); a 2-D
text array that still arrives (the constraint dropped later) stops its partition loudly.
ALTER TYPE: Postgres rewrites the rows (rounding half away from zero, reinterpreting a
timestamp in the session's TimeZone) without change events; the DDL refresh re-reads the
table, and the snapshot equals what Postgres holds after the change.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply, connector_status, delete
from cdc.source_types import array_guard
from snapshotter.archive import Archive
from snapshotter.archiving import run_archiver
from snapshotter.snapshots import Snapshot, create_snapshot, open_snapshot, rebuild_snapshot
from tests.integration import type_coverage as tc
from tests.integration.cdc_helpers import (
    execute,
    private_settings,
    unique_name,
    wait_for_messages,
)
from tidelog.errors import CaptureStale, ConnectorError, PoisonEventError, SourceError
from tidelog.settings import Settings

pytestmark = pytest.mark.integration


def _latest_after_refresh(env: Settings, tables: list[str], timeout: float = 180) -> Snapshot:
    """`--at latest` once the DDL refresh (an incremental snapshot) is done; refused before."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return create_snapshot(env, tables, "latest")
        except CaptureStale:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_array_columns_need_a_constraint_and_a_2d_text_array_stops_loudly(
        settings: Settings, tmp_path: Path) -> None:
    table = "public.arr_shapes"
    execute(settings, *tc.SETUP, f"drop table if exists {table}",
            f"create table {table} (id int primary key, ia int[], ta text[], "
            "ok int[] check (array_ndims(ok) = 1 and array_lower(ok, 1) = 1), "
            "na numeric[], ea tl_mood[], da date[])",
            f"insert into {table} (id, ia, ta, ok) values (1, '{{1,2}}', '{{a,b}}', '{{3}}')")
    name = unique_name("arrshape")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    with pytest.raises(SourceError) as refused:
        apply(env, spec, timeout=60)
    assert set(refused.value.details["columns"]) == {  # type: ignore[arg-type]
        f"{table}.{c}" for c in ("ia", "ta", "na", "ea", "da")}  # `ok` has its constraint
    message = refused.value.message
    assert "'[0:1]={1,2}' arrives as {1,2}" in message
    assert "NaN or ±Infinity (the whole array arrives as NULL)" in message
    assert "a NULL element (the whole array arrives as NULL)" in message
    assert "a BC date (it arrives as an AD date)" in message
    assert (f"ALTER TABLE {table} ADD CONSTRAINT arr_shapes_ia_carried CHECK "
            "(array_ndims(ia) = 1 and array_lower(ia, 1) = 1)") in message
    with pytest.raises(ConnectorError, match="no connector named"):
        connector_status(env, name)  # nothing was created

    # The constraints the message asks for: the source now refuses what Debezium would change.
    execute(settings, f"alter table {table} add constraint ia_ok check "
            f"({array_guard('ia', 'int4', 'b')})",
            f"alter table {table} add constraint ta_ok check "
            f"({array_guard('ta', 'text', 'b')})",
            f"alter table {table} add check ({array_guard('na', 'numeric', 'b')})",
            f"alter table {table} add check ({array_guard('ea', 'tl_mood', 'e')})",
            f"alter table {table} add check ({array_guard('da', 'date', 'b')})")
    apply(env, spec, timeout=180)
    for column, value in (("ia", "'[0:2]={7,8,9}'"), ("ia", "'{{1,2},{3,4}}'"),
                          ("ta", "'[2:2]={x}'"), ("na", "'{1.5,NaN}'"),
                          ("na", "'{-Infinity}'"), ("ea", "'{sad,NULL}'"),
                          ("da", "'{2020-01-01,4713-01-01 BC}'")):
        with pytest.raises(psycopg.errors.CheckViolation):
            execute(settings, f"insert into {table} (id, {column}) values (9, {value})")
    # what the constraints let in is what Debezium carries exactly
    execute(settings, f"insert into {table} (id, na, ea, da) values "
            "(8, '{1.5,NULL}', '{happy}', '{-infinity,2020-01-01,NULL}')")

    # A constraint dropped after `apply` lets a 2-D text array through: Debezium sends its
    # inner arrays as JVM object names, and the archiver stops there, never storing them.
    execute(settings, f"alter table {table} drop constraint ta_ok")
    # `--at latest` refuses from now on, naming the lost constraint; once the refresh this
    # ALTER TABLE triggers is done, that is the only reason left.
    deadline = time.monotonic() + 180
    while True:
        with pytest.raises(CaptureStale) as stale:
            create_snapshot(env, [table], "latest")
        problems = [str(p) for p in stale.value.details["problems"]]  # type: ignore[union-attr]
        if problems[0].startswith(f"{table}.ta: text[]") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(problems) == 1 and problems[0].startswith(f"{table}.ta: text[]")
    assert "ADD CONSTRAINT arr_shapes_ta_carried" in stale.value.message
    snap = create_snapshot(env, [table], "latest", allow_stale=True)
    con = open_snapshot(env, snap.id).duckdb()
    assert con.execute(f"select na::varchar, ea::varchar, da::varchar from {table} "
                       "where id = 8").fetchone() == (
        "[1.5, NULL]", "[happy]", "[-infinity, 2020-01-01, NULL]")
    execute(settings, f"insert into {table} values (2, '{{4}}', '{{{{x,y}},{{z,w}}}}', '{{5}}')",
            f"insert into {table} values (3, '{{6}}', '{{c}}', '{{7}}')")
    # rows 1 and 8 read by the refresh the DROP CONSTRAINT triggers, two inserts after it
    wait_for_messages(env, spec.topic(table), 6, timeout=120)
    archive = Archive(env.archive_root)
    deadline = time.monotonic() + 120
    while not archive.failures() and time.monotonic() < deadline:
        try:
            run_archiver(env, [spec.topic(table)], follow=False)
        except PoisonEventError as exc:
            assert "column 'ta'" in exc.message and "more than one dimension" in exc.message
        time.sleep(1)
    [failure] = archive.failures()
    assert failure.column == "ta" and failure.value is not None
    assert "[Ljava.lang.String;@" in failure.value
    assert "array_ndims(ta) = 1" in failure.error
    with pytest.raises(CaptureStale, match=r"archiving stopped at .*column 'ta'"):
        create_snapshot(env, [table], "latest")
    delete(env, spec, drop_slot=True)


def _pg_text(settings: Settings, table: str) -> set[tuple[str | None, ...]]:
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.execute("set timezone = 'UTC'")
        return {tuple(r) for r in conn.execute(
            f"select id::text, n::text, n5::text, ts::text, v::text from {table}")}


def _snapshot_text(env: Settings, snap: Snapshot, table: str) -> set[tuple[str | None, ...]]:
    con = open_snapshot(env, snap.id).duckdb()
    con.execute("set TimeZone = 'UTC'")
    rows = con.execute(f"select id::varchar, n::varchar, n5::varchar, ts::varchar, "
                       f"v::varchar from {table}").fetchall()
    return {tuple(None if c is None else tc.pg_temporal(c) for c in r) for r in rows}


def _types(env: Settings, snap: Snapshot, table: str) -> dict[str, str]:
    con = open_snapshot(env, snap.id).duckdb()
    return {r[0]: r[1] for r in con.execute(f"describe {table}").fetchall()}


def test_alter_type_rewrites_are_refreshed_exactly(settings: Settings, tmp_path: Path) -> None:
    table = "public.alter_types"
    # Half-way values: Postgres rounds them away from zero (0.25 -> 0.3, -0.25 -> -0.3),
    # never to even. Timestamps are reinterpreted in the ALTER's session TimeZone.
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, n numeric(10,2), n5 numeric(10,2), "
            "ts timestamp, v text)",
            f"insert into {table} values "
            "(1, 0.05, 0.25, '2024-01-01 12:00:00', 'abc'), "
            "(2, 0.15, -0.25, '1999-12-31 23:30:00.5', ''), "
            "(3, -0.05, 1234.45, 'infinity', 'x'), "
            "(4, 12345678.95, 9999.94, '-infinity', null), "
            "(5, 2.5, 0.35, '4713-01-01 00:00:00 BC', 'hello world'), "
            "(6, null, null, null, 'a')")
    name = unique_name("altertype")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    apply(env, spec, timeout=180)
    first = create_snapshot(env, [table], "latest")
    assert _snapshot_text(env, first, table) == _pg_text(settings, table)

    # No row is written after these: only the refresh can show their effect.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("set timezone = 'Asia/Kolkata'")  # +05:30: old rows move by it
        conn.execute(f"alter table {table} alter column n type numeric(10,1)")
        conn.execute(f"alter table {table} alter column n5 type numeric(5,1)")
        conn.execute(f"alter table {table} alter column ts type timestamptz")
        conn.execute(f"alter table {table} alter column v type int using length(v)")
    want = _pg_text(settings, table)
    assert ("1", "0.1", "0.3", "2024-01-01 06:30:00+00", "3") in want  # what Postgres did
    assert ("2", "0.2", "-0.3", "1999-12-31 18:00:00.5+00", "0") in want
    second = _latest_after_refresh(env, [table])
    assert _types(env, second, table) == {"id": "INTEGER", "n": "DECIMAL(10,1)",
                                          "n5": "DECIMAL(5,1)",
                                          "ts": "TIMESTAMP WITH TIME ZONE", "v": "INTEGER"}
    assert _snapshot_text(env, second, table) == want

    # A later write, an incremental build on top, and a full rebuild of the same cut.
    execute(settings, f"update {table} set n = 7.25 where id = 6",
            f"insert into {table} values (7, 0.45, 0.45, '2000-01-01 00:00:00+00', 2)")
    third = _latest_after_refresh(env, [table])
    assert third.built_from == second.id
    assert _snapshot_text(env, third, table) == _pg_text(settings, table)
    rebuilt = rebuild_snapshot(env, third.cut, [table], tmp_path / "rebuilt")
    assert rebuilt.digest == third.digest
    delete(env, spec, drop_slot=True)


def test_timestamps_past_duckdbs_range_are_refused_then_stop_loudly(
        settings: Settings, tmp_path: Path) -> None:
    """Postgres's last 30 years of timestamps (after DuckDB's 294247-01-10) wrap in
    Debezium's int64: refused at apply if present, a DecodeError if written later."""
    table = "public.ts_far"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, ts timestamp, tz timestamptz)",
            f"insert into {table} values (1, '294276-12-31 23:59:59.999999', null), "
            "(2, null, '294276-12-31 23:59:59.999999+00')")
    name = unique_name("tsfar")
    env = private_settings(settings, tmp_path, name)
    spec = ConnectorSpec(name, (table,), name)
    with pytest.raises(SourceError, match="after 294247-01-10") as refused:
        apply(env, spec, timeout=60)
    assert set(refused.value.details["columns"]) == {  # type: ignore[arg-type]
        f"{table}.ts", f"{table}.tz"}
    execute(settings, f"update {table} set ts = '294247-01-09 23:59:59.999999' where id = 1",
            f"update {table} set tz = 'infinity' where id = 2")
    apply(env, spec, timeout=180)
    execute(settings, f"insert into {table} values (3, '294276-12-31 23:59:59.999999', null)",
            f"insert into {table} values (4, '2024-01-01', '2024-01-01 00:00:00+00')")
    wait_for_messages(env, spec.topic(table), 4, timeout=120)
    archive = Archive(env.archive_root)
    with pytest.raises(PoisonEventError, match=r"offset 2, column 'ts'"):
        run_archiver(env, [spec.topic(table)], follow=False)
    [failure] = archive.failures()
    assert (failure.offset, failure.column) == (2, "ts")
    assert "beyond DuckDB's range" in failure.error  # never a clamp or a wrapped date
    with pytest.raises(CaptureStale, match=r"archiving stopped at .*column 'ts'"):
        create_snapshot(env, [table], "latest")
    allowed = create_snapshot(env, [table], "latest", allow_stale=True)
    con = open_snapshot(env, allowed.id).duckdb()
    con.execute("set TimeZone = 'UTC'")
    assert sorted(con.execute(f"select id, ts::varchar, tz::varchar from {table}").fetchall()
                  ) == [(1, "294247-01-09 23:59:59.999999", None), (2, None, "infinity")]
    delete(env, spec, drop_slot=True)
