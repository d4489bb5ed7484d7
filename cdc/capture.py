"""Is capture current? The connector's state, its open snapshots and its slot.

`capture_problems` is what `snapshot create --at latest` asks before cutting
(snapshotter/freshness.py adds the archive's own state); docs/archive.md, "When capture
stops", explains each check.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from cdc.connector import (
    ConnectorSpec,
    connector_status,
    current_tables,
    first_cause,
    snapshot_in_progress,
    source_offset,
)
from tidelog.adapters import postgres
from tidelog.adapters.connect import KafkaConnect
from tidelog.errors import ConnectorError
from tidelog.settings import Settings
from tidelog.sql import qualified

__all__ = ["capture_problems", "OFFSET_FLUSH_SECONDS"]

# A little over the Connect worker's offset.flush.interval.ms (tidelog/stack/connect.py):
# how often the committed offset is polled while it catches up with the slot.
OFFSET_FLUSH_SECONDS = 1.2


def _lsn_now(conn: psycopg.Connection[Any]) -> int:
    # The insert position, past every committed transaction's commit record; the write
    # position (pg_current_wal_lsn) can lag it under synchronous_commit=off.
    row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def _confirmed(conn: psycopg.Connection[Any], slot: str) -> int | None:
    row = conn.execute("select confirmed_flush_lsn - '0/0'::pg_lsn from pg_replication_slots "
                       "where slot_name = %s", (slot,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _slot_behind(settings: Settings, spec: ConnectorSpec, wait: float) -> str | None:
    """Why the slot has not confirmed the WAL written before this call, or None.

    pg_current_wal_lsn() keeps moving (checkpoints, other databases, other tables), and
    Debezium confirms only what it processes, so equality is never the test. The test: a
    'log' signal written now to the connector's own signalling table (a probe) is
    confirmed within `wait` seconds. Debezium processes the WAL in order, so it confirms
    the probe only after every change committed before it.

    The slot's position alone is not enough: Debezium confirms a transaction's commit LSN
    when it reads the transaction's BEGIN, before converting its rows. A row it then
    cannot convert (an interval beyond its parser) leaves the slot confirmed past that
    row while the row never reaches Kafka; only the probe, which comes after it, stays
    unconfirmed. Without a signalling table (an older connector) the check falls back to
    the WAL position at the start and the heartbeat.
    """
    dsn = settings.require("postgres_dsn")
    deadline = time.monotonic() + wait
    with postgres.connect(dsn) as conn:
        confirmed = _confirmed(conn, spec.slot_name)
        if confirmed is None:
            return (f"replication slot {spec.slot_name} does not exist: the connector is not "
                    "capturing; `tidelog connector apply` it again")
        target = _write_probe(conn, spec)
        what = "the capture probe written when the check began"
        if target is None:
            target = _lsn_now(conn)
            what = "the WAL position when the check began"
        while True:
            confirmed = _confirmed(conn, spec.slot_name) or 0
            if confirmed >= target:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    return (f"replication slot {spec.slot_name} confirmed LSN {_lsn_text(confirmed)}, still "
            f"behind {_lsn_text(target)} ({what}) after {wait:.0f}s: Debezium is stuck or "
            "lagging; see the Connect worker's log")


def _write_probe(conn: psycopg.Connection[Any], spec: ConnectorSpec) -> int | None:
    """Write a 'log' signal; the WAL position just past its row (before its commit).

    None when the connector has no signalling table. Any LSN the slot confirms at or past
    the returned position covers the probe's commit, so everything committed before it.
    """
    try:
        with conn.transaction():
            conn.execute(f"delete from {qualified(spec.signal_table)} where id like 'probe-%%'")
            conn.execute(f"insert into {qualified(spec.signal_table)} (id, type, data) values "
                         "(%s, 'log', %s)", (f"probe-{uuid.uuid4().hex}",
                                             '{"message": "tidelog capture probe"}'))
            row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def capture_problems(settings: Settings, spec: ConnectorSpec, wait: float = 15.0
                     ) -> list[str]:
    """Why capture of `spec.tables` may be behind the source right now (empty: current).

    Checks, in order: the connector and each task RUNNING; every table in the running
    configuration; the slot confirming the WAL written before the check, and the
    connector's committed offset reaching it (bounded waits); no initial or incremental
    snapshot open in that offset.
    """
    try:
        status = connector_status(settings, spec.name)
    except ConnectorError as exc:
        return [exc.message]
    problems = []
    state = status.get("connector", {}).get("state")
    if state != "RUNNING":
        problems.append(f"connector {spec.name} is {state}: "
                        f"{first_cause(status.get('connector', {}).get('trace', ''))}")
    tasks = status.get("tasks", [])
    if not tasks:
        problems.append(f"connector {spec.name} has no task running")
    for task in tasks:
        if task.get("state") != "RUNNING":
            problems.append(f"task {task.get('id')} of connector {spec.name} is "
                            f"{task.get('state')}: {first_cause(task.get('trace', ''))}; fix "
                            f"the cause, then `tidelog connector restart --name {spec.name}`")
    captured = current_tables(KafkaConnect.for_settings(settings), spec.name) or ()
    missing = [t for t in spec.tables if t not in captured]
    if missing:
        problems.append(f"connector {spec.name} does not capture {', '.join(missing)}; add "
                        "them with `tidelog connector apply`")
    if problems:
        return problems
    # Where the source is now: every change (and every refresh signal a DDL wrote in its
    # own transaction) committed before this call lies below it.
    target = _wal_position(settings)
    # The slot first: a signal written before the check (a table added, a DDL refresh)
    # shows in the offset only once Debezium has processed it, which the slot confirms.
    behind = _slot_behind(settings, spec, wait)
    if behind:
        return [behind]
    offset = _offset_past(settings, spec, target, wait)
    if offset is None:
        return [f"connector {spec.name} has not committed an offset at or past "
                f"{_lsn_text(target)} (the WAL position when the check began) within "
                f"{wait:.0f}s, although its slot confirmed it: Kafka Connect is slow to "
                "flush offsets; retry, or see the Connect worker's log"]
    snapshotting = snapshot_in_progress(offset)
    if snapshotting:
        return [f"connector {spec.name} is still running {snapshotting}; tables are "
                "incomplete until it ends"]
    return []


def _wal_position(settings: Settings) -> int:
    """The WAL insert position: past the commit record of every transaction committed
    before this call. Not pg_current_wal_lsn(), the *write* position, which with
    `synchronous_commit=off` can still be before a committed transaction's commit record
    (tidelog's own test stack runs so), so a check against it could pass before that
    transaction is captured."""
    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("read the WAL position", dsn):
        row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        return int(row[0]) if row else 0


def _offset_past(settings: Settings, spec: ConnectorSpec, target: int, wait: float
                 ) -> dict[str, Any] | None:
    """The connector's committed offset once it is at or past `target`, else None.

    Debezium confirms the slot from the offsets it has handed to Connect, which writes
    them to its offsets topic only in its next flush, later under load. Only an offset
    past `target` proves that a refresh signal committed before `target` was processed:
    its incremental snapshot is then in that offset until the snapshot ends, and Connect
    commits an offset only after every record before it is in Kafka. So a 'latest' cut
    taken right after a DDL refresh either holds the refreshed rows or is refused.
    """
    start = time.monotonic()
    deadline = start + wait
    probed = False
    while True:
        offset = source_offset(settings, spec.name)
        if int(offset.get("lsn") or 0) >= target:
            return offset
        now = time.monotonic()
        if now >= deadline:
            return None
        if not probed and now - start > 2 * OFFSET_FLUSH_SECONDS:
            # Only WAL Debezium has no event for lies before `target` (another database,
            # a checkpoint): give it a transaction past `target` to process and commit.
            probed = True
            _probe(settings, spec)
        time.sleep(OFFSET_FLUSH_SECONDS / 4)


def _probe(settings: Settings, spec: ConnectorSpec) -> None:
    """A 'log' signal in the connector's signalling table: a transaction for it to see."""
    try:
        with postgres.connect(settings.require("postgres_dsn")) as conn:
            conn.execute(f"insert into {qualified(spec.signal_table)} (id, type, data) values "
                         "(%s, 'log', %s)", (f"probe-{uuid.uuid4().hex}",
                                             '{"message": "tidelog capture probe"}'))
    except psycopg.Error:
        pass  # no signalling table (an older connector): its heartbeat moves the offset
