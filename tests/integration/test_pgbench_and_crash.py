"""pgbench load captured and replayed; a SIGKILLed Connect worker loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest

from cdc.connector import ConnectorSpec, wait_streaming
from cdc.events import ChangeEvent
from tests.integration.cdc_helpers import (
    connect_tables,
    execute,
    read_events,
    source_rows,
    wait_for_events,
)
from tidelog import stack
from tidelog.settings import Settings
from tidelog.stack.postgres import pg_bin

pytestmark = pytest.mark.integration

KEYED_TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]

CUSTOM_SCRIPT = """\
\\set aid random(1, 100000 * :scale)
\\set aid2 random(1, 100000 * :scale)
\\set newaid random(300000001, 900000000)
BEGIN;
DELETE FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (:newaid, 1, 7, 'new')
  ON CONFLICT DO NOTHING;
UPDATE pgbench_accounts SET aid = aid + 200000000 WHERE aid = :aid2;
END;
"""


def replay(events: list[ChangeEvent]) -> dict[str, dict[object, dict[str, object]]]:
    """The trivial last-write-wins replay, per table and key in offset order."""
    state: dict[str, dict[object, dict[str, object]]] = {}
    for e in sorted(events, key=lambda e: (e.topic, e.partition, e.offset)):
        table = state.setdefault(e.table, {})
        if e.op == "t":
            table.clear()
            continue
        assert e.key is not None
        key = tuple(sorted(e.key.items()))
        if e.op in ("r", "c", "u"):
            table[key] = dict(e.after or {})
        else:
            table.pop(key, None)
    return state


def _pgbench(settings: Settings, *args: str) -> None:
    dsn = urlparse(settings.postgres_dsn)
    cmd = [pg_bin("pgbench"), "-h", dsn.hostname or "", "-p", str(dsn.port), "-U", "postgres",
           *args, dsn.path.lstrip("/")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def test_pgbench_replay_equals_postgres(settings: Settings, tmp_path: Path) -> None:
    _pgbench(settings, "-i", "-s", "1", "-q")
    spec = connect_tables(settings, KEYED_TABLES, "bench")
    script = tmp_path / "changes.sql"
    script.write_text(CUSTOM_SCRIPT)
    _pgbench(settings, "-c", "2", "-t", "400", "-b", "tpcb-like@3", "-f", f"{script}@1")
    # A marker row written last: once its event is read, everything before it is too.
    execute(settings, "update pgbench_branches set filler = 'marker' where bid = 1")

    def done(events: list[ChangeEvent]) -> bool:
        return any(e.after and (e.after.get("filler") or "").startswith("marker") for e in events)

    events: list[ChangeEvent] = []
    wait_for_events(settings, spec.topic("public.pgbench_branches"), done, timeout=120)
    for table in KEYED_TABLES:
        events.extend(read_events(settings, spec.topic(table)))
    state = replay(events)
    assert any(e.op == "d" for e in events) and any(e.op == "u" for e in events)
    with psycopg.connect(settings.postgres_dsn) as conn:
        for table in KEYED_TABLES:
            rows = source_rows(conn, table)
            key_col = next(iter(rows[0]))
            expected = {((key_col, r[key_col]),): r for r in rows}
            got = state[table]
            assert len(got) == len(expected), table
            diffs = [k for k in expected if got.get(k) != expected[k]]
            assert not diffs, f"{table}: {len(diffs)} rows differ, e.g. {diffs[:3]}"


def test_sigkill_connect_mid_load_loses_nothing(settings: Settings, stack_home: Path) -> None:
    table = "public.crash_load"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, v text)")
    spec = connect_tables(settings, [table], "crash")
    total, per_tx = 30_000, 100

    def load() -> None:
        # Paced over ~15 s so that the kill lands mid-load even on a slow machine.
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            for start in range(0, total, per_tx):
                with conn.transaction():
                    conn.execute(
                        f"insert into {table} select g, 'row ' || g "
                        "from generate_series(%s::int, %s::int) g", (start, start + per_tx - 1))
                time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        # Kill a few seconds into a ~15 s load: Postgres is committing and Debezium is
        # reading and producing at that moment, whatever the machine's speed.
        time.sleep(3)
        assert loader.is_alive(), "the load finished before the kill; nothing was tested"
        connect = stack.status(stack_home).components["connect"]
        os.kill(int(connect["pid"]), signal.SIGKILL)  # type: ignore[arg-type]
        time.sleep(1)
        restarted = stack.up(stack_home)
        assert restarted.components["connect"]["pid"] != connect["pid"]
        wait_streaming(settings, ConnectorSpec(spec.name, spec.tables, spec.topic_prefix), 180)
    finally:
        loader.join()
    events = wait_for_events(
        settings, spec.topic(table),
        lambda ev: len({e.key["id"] for e in ev if e.key}) >= total, timeout=180)
    ids = [e.key["id"] for e in events if e.op in ("c", "r") and e.key]
    assert set(ids) == set(range(total)), "a change was lost"
    duplicates = len(ids) - len(set(ids))
    # at-least-once delivery: duplicates are allowed at this layer, and must be exact copies
    by_id: dict[int, list[ChangeEvent]] = {}
    for e in events:
        if e.key:
            by_id.setdefault(e.key["id"], []).append(e)
    for copies in by_id.values():
        assert all(c.after == copies[0].after and c.lsn == copies[0].lsn for c in copies)
    print(f"\nSIGKILL of Connect mid-load: {total} rows, {len(ids)} events, "
          f"{duplicates} duplicates")
