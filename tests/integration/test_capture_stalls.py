"""Inputs that stop capture stop it loudly, on the real stack: an event the archiver cannot
decode holds only its own partition and is reported; a value Debezium cannot parse fails
the task; a row over 1 MB travels whole; and `--at latest` refuses while capture is
behind, naming the reason, unless a stale cut is explicitly allowed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply, connector_status, delete
from snapshotter.archive import Archive
from snapshotter.archiving import archive_topics, run_archiver
from snapshotter.snapshots import create_snapshot, open_snapshot
from tests.integration.cdc_helpers import (
    execute,
    private_settings,
    unique_name,
    wait_for_events,
    wait_for_messages,
)
from tidelog.errors import CaptureStale, PoisonEventError
from tidelog.settings import Settings

pytestmark = pytest.mark.integration


def _connect(settings: Settings, root: Path, stem: str, tables: tuple[str, ...]
             ) -> tuple[Settings, ConnectorSpec]:
    name = unique_name(stem)
    env = private_settings(settings, root, name)
    spec = ConnectorSpec(name, tables, name)
    apply(env, spec, timeout=180)
    return env, spec


def _rows(settings: Settings, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(settings.postgres_dsn) as conn:
        return list(conn.execute(query).fetchall())


def test_undecodable_value_stops_only_its_partition_and_latest_refuses(
        settings: Settings, tmp_path: Path) -> None:
    ok, nan = "public.stall_ok", "public.stall_nan"
    execute(settings, f"drop table if exists {ok}, {nan}",
            f"create table {ok} (id int primary key, v text)",
            f"create table {nan} (id int primary key, n numeric(10, 2))",
            f"insert into {ok} values (1, 'a')", f"insert into {nan} values (1, 1.50)")
    env, spec = _connect(settings, tmp_path, "nan", (ok, nan))
    execute(settings, f"insert into {nan} values (2, 'NaN')", f"insert into {nan} values (3, 2)",
            f"insert into {ok} select g, 'b' from generate_series(2, 50) g")
    wait_for_events(env, spec.topic(ok), lambda ev: len(ev) >= 50, timeout=120)
    wait_for_messages(env, spec.topic(nan), 3, timeout=120)
    archive = Archive(env.archive_root)
    topics = [spec.topic(ok), spec.topic(nan)]
    try:
        run_archiver(env, topics, follow=False)
    except PoisonEventError as exc:
        assert f"{spec.topic(nan)}[0] offset 1, column 'n'" in exc.message
    failures = archive.failures()
    marks = {(r["topic"], r["partition"]): r["high_water_mark"] for r in archive.status()}
    assert marks[(spec.topic(ok), 0)] == 50  # the healthy topic archived everything
    if not failures:
        # tidelog decodes NaN exactly (cdc/types.py): then the row must be exact, not skipped
        snap = create_snapshot(env, [nan], "latest")
        values = open_snapshot(env, snap.id).table(nan).sort("id")["n"].to_list()
        assert len(values) == 3 and str(values[1]).lower() == "nan"
        return
    [failure] = failures
    assert (failure.topic, failure.partition, failure.offset) == (spec.topic(nan), 0, 1)
    assert failure.column == "n" and failure.value is not None and "NAN" in failure.value.upper()
    assert marks[(spec.topic(nan), 0)] == 1  # the row before it, nothing after it
    status = {r["topic"]: r for r in archive.status()}
    assert status[spec.topic(nan)]["failure"]["offset"] == 1  # type: ignore[index]

    # Fixing the row in Postgres does not remove the event from the log: still stopped.
    execute(settings, f"update {nan} set n = 0 where id = 2")
    wait_for_messages(env, spec.topic(nan), 4, timeout=120)
    archive_topics(env, topics, archive=archive)
    assert archive.failures()[0].offset == 1 and archive.failures()[0].attempts >= 2

    with pytest.raises(CaptureStale, match=r"archiving stopped at .*offset 1, column 'n'"):
        create_snapshot(env, [nan], "latest")
    # A table whose partitions are healthy is not held back by another table's poison.
    healthy = create_snapshot(env, [ok], "latest")
    assert healthy.tables[ok].rows == 50 and healthy.cut.stale_allowed == ()
    allowed = create_snapshot(env, [nan], "latest", allow_stale=True)
    assert any("archiving stopped" in r for r in allowed.cut.stale_allowed)
    assert allowed.tables[nan].rows == 1
    manifest = open_snapshot(env, allowed.id).manifest.to_json()
    assert manifest["cut"]["stale_allowed"] == list(allowed.cut.stale_allowed)
    delete(env, spec, drop_slot=True)


EDGE_INTERVALS = {
    1: ("178000000 years", "P178000000Y0M0DT0H0M0S"),
    2: ("-178000000 years", "P-178000000Y0M0DT0H0M0S"),
    3: ("1 mon -1 day", "P0Y1M-1DT0H0M0S"),
    4: ("2147483647 days", "P0Y0M2147483647DT0H0M0S"),
    5: ("-0.000001 seconds", "P0Y0M0DT0H0M-0.000001S"),
    6: ("2147483647 hours 59 minutes 59.999999 seconds", "P0Y0M0DT2147483647H59M59.999999S"),
}


def test_interval_edges_exact_and_an_unparseable_interval_fails_loudly(
        settings: Settings, tmp_path: Path) -> None:
    table = "public.stall_ivl"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, v interval)")
    for key, (text, _iso) in EDGE_INTERVALS.items():
        execute(settings, f"insert into {table} values (%s, %s::interval)", params=(key, text))
    env, spec = _connect(settings, tmp_path, "ivl", (table,))
    # Streamed as well as snapshotted: the same edges, keys + 100.
    for key, (text, _iso) in EDGE_INTERVALS.items():
        execute(settings, f"insert into {table} values (%s, %s::interval)",
                params=(key + 100, text))
    wait_for_events(env, spec.topic(table), lambda ev: len(ev) >= 12, timeout=120)
    snap = create_snapshot(env, [table], "latest")
    got = dict(open_snapshot(env, snap.id).table(table).select("id", "v").iter_rows())
    # Carried exactly, as Postgres's own iso_8601 text of each value (docs/types.md).
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("set intervalstyle = iso_8601")
        expected = dict(conn.execute(f"select id, v::text from {table}").fetchall())
    assert len(expected) == 2 * len(EDGE_INTERVALS) and got == expected

    # Hours beyond 2^31-1: the JDBC driver Debezium parses with throws NumberFormatException.
    execute(settings, f"insert into {table} values (999, "
                      "'2147483647 days 2562047788:00:54.775807')")
    with pytest.raises(CaptureStale, match=rf"{spec.slot_name}|FAILED"):
        create_snapshot(env, [table], "latest")
    # Finite retries (errors.max.retries): the task FAILs instead of retrying forever.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        tasks = connector_status(env, spec.name)["tasks"]
        if tasks and tasks[0]["state"] == "FAILED":
            break
        time.sleep(2)
    assert tasks[0]["state"] == "FAILED" and "NumberFormatException" in tasks[0]["trace"]
    with pytest.raises(CaptureStale, match=r"task 0 of connector .* is FAILED"):
        create_snapshot(env, [table], "latest")
    stale = create_snapshot(env, [table], "latest", allow_stale=True)
    assert any("FAILED" in r for r in stale.cut.stale_allowed)
    delete(env, spec, drop_slot=True)


def test_rows_over_one_megabyte_travel_whole(settings: Settings, tmp_path: Path) -> None:
    table = "public.stall_big"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, body text)",
            # md5 text barely compresses: the record really is this large on the wire
            f"insert into {table} select 1, string_agg(md5(g::text), '') "
            "from generate_series(1, 40000) g")  # 1.28 MB
    env, spec = _connect(settings, tmp_path, "big", (table,))
    execute(settings, f"insert into {table} select 2, string_agg(md5(g::text), '') "
                      "from generate_series(1, 160000) g",  # 5.12 MB
            f"insert into {table} values (3, 'small')")
    wait_for_events(env, spec.topic(table), lambda ev: len(ev) >= 3, timeout=180)
    snap = create_snapshot(env, [table], "latest")
    got = {r["id"]: hashlib.md5(r["body"].encode()).hexdigest()
           for r in open_snapshot(env, snap.id).table(table).to_dicts()}
    want = dict(_rows(settings, f"select id, md5(body) from {table}"))
    assert got == want
    lengths = dict(_rows(settings, f"select id, length(body) from {table}"))
    assert lengths[1] == 1_280_000 and lengths[2] == 5_120_000
    assert connector_status(env, spec.name)["tasks"][0]["state"] == "RUNNING"
    delete(env, spec, drop_slot=True)
