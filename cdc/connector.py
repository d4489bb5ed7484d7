"""Drive the Debezium Postgres connector through the Kafka Connect REST API.

`apply` checks the source first (logical replication enabled, tables exist and have a
primary key, slot not held by someone else), validates the rendered config with Connect,
creates or updates the connector, and waits until its task is streaming from the slot
with the new configuration.

The Postgres side (checks, publication, signalling, replica identity) is in
`cdc.source_setup`; what names a connector is `cdc.spec.ConnectorSpec`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlparse

from cdc.source_setup import (
    ensure_publication,
    install_ddl_refresh,
    preflight,
    set_replica_identity_full,
    signal_snapshot,
    slot_is_streaming,
    slot_pid,
)
from cdc.source_types import check_source_types
from cdc.spec import SIGNAL_SCHEMA, ConnectorSpec
from tidelog.adapters import postgres
from tidelog.adapters.connect import KafkaConnect
from tidelog.errors import (
    ConnectorError,
    ConnectorFailed,
    ConnectorNotFound,
    TidelogError,
)
from tidelog.retry import poll
from tidelog.settings import Settings
from tidelog.sql import qualified
from tidelog.stack.connectors import forget_connector, remember_connector

__all__ = [
    "ConnectorSpec",
    "TEMPLATE",
    "render_config",
    "preflight",
    "apply",
    "connector_status",
    "delete",
    "restart",
    "wait_streaming",
    "ensure_publication",
    "signal_snapshot",
    "source_offset",
    "current_excluded_columns",
    "snapshot_in_progress",
    "wait_snapshot_done",
    "install_ddl_refresh",
    "current_tables",
    "first_cause",
]


def _template_path() -> Path:
    """The connector template: package data beside this module in an installed wheel
    (pyproject's force-include), the repository's `connectors/` in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "connectors" / "postgres.json"
    return packaged if packaged.is_file() else here.parent / "connectors" / "postgres.json"


TEMPLATE = _template_path()


def render_config(settings: Settings, spec: ConnectorSpec, template: Path = TEMPLATE
                  ) -> dict[str, Any]:
    dsn = urlparse(settings.require("postgres_dsn"))
    values = {
        "name": spec.name,
        "pg_host": dsn.hostname or "127.0.0.1",
        "pg_port": str(dsn.port or 5432),
        "pg_user": dsn.username or "postgres",
        "pg_password": dsn.password or "",
        "pg_dbname": (dsn.path or "/postgres").lstrip("/"),
        "topic_prefix": spec.topic_prefix,
        # table.include.list is a list of regular expressions: escape the dot.
        "tables": ",".join(re.escape(t) for t in spec.tables),
        "slot_name": spec.slot_name,
        "publication_name": spec.publication_name,
        "signal_table": spec.signal_table,
        "replication_factor": "1",
    }
    text = Template(template.read_text()).substitute(
        {k: json.dumps(v)[1:-1] for k, v in values.items()}
    )
    rendered: dict[str, Any] = json.loads(text)
    if spec.exclude_columns:
        rendered["config"]["column.exclude.list"] = exclude_list(spec.exclude_columns)
    return rendered


def exclude_list(columns: tuple[str, ...]) -> str:
    """Debezium's column.exclude.list: regular expressions on schema.table.column."""
    bad = [c for c in columns if c.count(".") != 2]
    if bad:
        raise ConnectorError(f"--exclude-columns takes schema.table.column names, got {bad}")
    return ",".join(re.escape(c) for c in columns)


def current_tables(connect: KafkaConnect, name: str) -> tuple[str, ...] | None:
    """The tables the connector captures now, or None when it does not exist."""
    config = connect.config(name)
    if config is None:
        return None
    listed = str(config.get("table.include.list", ""))
    return tuple(t.replace("\\", "") for t in listed.split(",") if t)


def current_excluded_columns(connect: KafkaConnect, name: str) -> tuple[str, ...]:
    """The `schema.table.column` names the running connector leaves out (none if absent)."""
    config = connect.config(name) or {}
    listed = str(config.get("column.exclude.list", ""))
    return tuple(c.replace("\\", "") for c in listed.split(",") if c)


def apply(settings: Settings, spec: ConnectorSpec, timeout: float = 120,
          replica_identity_full: bool = False, *, connect: KafkaConnect | None = None
          ) -> dict[str, Any]:
    """Create or update the connector; return once it streams with this configuration.

    Tables new to a running connector get an incremental snapshot, so their existing rows
    arrive as reads (`op=r`) like an initial snapshot's.
    """
    dsn = settings.require("postgres_dsn")
    preflight(dsn, spec)
    check_source_types(dsn, spec.tables, spec.exclude_columns)
    if replica_identity_full:
        set_replica_identity_full(dsn, spec.tables)
    config = {**render_config(settings, spec)["config"], "name": spec.name}
    connect = connect or KafkaConnect.for_settings(settings)
    connect.validate(config)
    before = current_tables(connect, spec.name)
    old_pid = slot_pid(dsn, spec.slot_name) if before is not None else None
    ensure_publication(dsn, spec)
    install_ddl_refresh(dsn, spec)
    connect.put_config(spec.name, config)
    remember_connector(Path(settings.home), config)  # `stack up` re-submits it if lost
    changed = before is not None and set(before) != set(spec.tables)
    status = wait_streaming(settings, spec, timeout, connect=connect,
                            config=config if before is not None else None,
                            replaced_pid=old_pid if changed else None)
    added = tuple(t for t in spec.tables if before is not None and t not in before)
    if added:
        signal_snapshot(dsn, spec, added)
        wait_snapshot_done(settings, spec, deadline=time.monotonic() + timeout,
                           connect=connect)
    return status


def source_offset(settings: Settings, name: str, *, connect: KafkaConnect | None = None
                  ) -> dict[str, Any]:
    """The connector's committed source offset (Debezium's position, snapshot state)."""
    offsets = (connect or KafkaConnect.for_settings(settings)).offsets(name)
    return dict(offsets[0].get("offset") or {}) if offsets else {}


def snapshot_in_progress(offset: dict[str, Any]) -> str | None:
    """What the connector is still snapshotting, from its source offset, or None."""
    completed = offset.get("snapshot_completed")
    if completed is False or (completed is None
                              and offset.get("snapshot") in ("INITIAL", "true", True)):
        return "the initial snapshot"
    collections = offset.get("incremental_snapshot_collections")
    if collections:
        try:
            names = [c["incremental_snapshot_collections_id"] for c in json.loads(collections)]
        except (ValueError, KeyError, TypeError):
            names = [str(collections)]
        return f"an incremental snapshot of {', '.join(names)}"
    return None


def wait_snapshot_done(settings: Settings, spec: ConnectorSpec, deadline: float, *,
                       connect: KafkaConnect | None = None) -> None:
    """Wait until the connector's offset shows it has passed `now` with no snapshot open.

    The offset is committed about once a second (offset.flush.interval.ms), and moves
    past the signal once Debezium has read it; a snapshot still open at the deadline is
    reported by `snapshot create --at latest`, which refuses until it is done.
    """
    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("read the WAL position", dsn):
        # the insert position, past every commit so far even with synchronous_commit=off
        row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    start = int(row[0]) if row else 0
    connect = connect or KafkaConnect.for_settings(settings)
    while time.monotonic() < deadline:
        offset = source_offset(settings, spec.name, connect=connect)
        if int(offset.get("lsn") or 0) >= start and snapshot_in_progress(offset) is None:
            return
        time.sleep(0.5)


def connector_status(settings: Settings, name: str, *, connect: KafkaConnect | None = None
                     ) -> dict[str, Any]:
    return (connect or KafkaConnect.for_settings(settings)).status(name)


def _tasks_have(connect: KafkaConnect, name: str, config: dict[str, Any]) -> bool:
    """Every task was generated from `config` (Connect has regenerated them)."""
    tasks = connect.tasks(name)
    keys = ("table.include.list", "publication.name", "slot.name")
    return bool(tasks) and all(
        all(t.get("config", {}).get(k) == config.get(k) for k in keys) for t in tasks)


def wait_streaming(settings: Settings, spec: ConnectorSpec, timeout: float = 120, *,
                   connect: KafkaConnect | None = None,
                   slot_streaming: Callable[[str, str], bool] | None = None,
                   config: dict[str, Any] | None = None, replaced_pid: int | None = None
                   ) -> dict[str, Any]:
    """The connector's status once its tasks run and Postgres shows the slot streaming;
    ConnectorFailed as soon as Connect reports it failed, or after `timeout`.

    With `config`, the tasks must also have been regenerated from it; with
    `replaced_pid`, the slot must be held by a new replication connection (the old task,
    still streaming the old table list, must have let go).
    """
    connect = connect or KafkaConnect.for_settings(settings)
    streaming = slot_streaming or slot_is_streaming
    dsn = settings.require("postgres_dsn")
    last: dict[str, Any] = {}

    def attempt() -> dict[str, Any] | None:
        try:
            status = connect.status(spec.name)
        except (ConnectorNotFound, ConnectorFailed):
            # A worker may answer 404 until the new connector is assigned, and 5xx
            # while it rebalances.
            return None
        last.clear()
        last.update(status)
        tasks = status.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if status.get("connector", {}).get("state") == "FAILED" or failed:
            trace = (failed[0] if failed else status["connector"]).get("trace", "")
            raise ConnectorFailed(
                f"connector {spec.name} failed: {first_cause(trace)}; "
                f"fix the cause, then `tidelog connector restart --name {spec.name}`",
                trace=trace,
            )
        if tasks and all(t.get("state") == "RUNNING" for t in tasks) and streaming(
            dsn, spec.slot_name
        ) and (config is None or _tasks_have(connect, spec.name, config)) and (
            replaced_pid is None or slot_pid(dsn, spec.slot_name) not in (None, replaced_pid)
        ):
            return status
        return None

    def timed_out(error: TidelogError | None) -> TidelogError:
        why = f"last error: {error.message}" if error else f"last status: {json.dumps(last)}"
        return ConnectorFailed(
            f"connector {spec.name} was not streaming after {timeout:.0f}s ({why}); see "
            "the Connect worker's log")

    return poll(attempt, timeout=timeout, interval=0.3, timed_out=timed_out)


def first_cause(trace: str) -> str:
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    return (causes[-1] if causes else (lines[0] if lines else "unknown error"))[:500]


def delete(settings: Settings, spec: ConnectorSpec, drop_slot: bool = False, *,
           connect: KafkaConnect | None = None) -> None:
    """Remove the connector; with drop_slot also its slot and publication (frees WAL)."""
    (connect or KafkaConnect.for_settings(settings)).delete(spec.name)
    forget_connector(Path(settings.home), spec.name)
    if not drop_slot:
        return
    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"drop replication slot {spec.slot_name}", dsn):

        def dropped() -> bool | None:
            row = conn.execute("select active from pg_replication_slots where slot_name = %s",
                               (spec.slot_name,)).fetchone()
            if row is not None and row[0]:
                return None  # Debezium lets go of the slot shortly after the delete
            if row is not None:
                conn.execute("select pg_drop_replication_slot(%s)", (spec.slot_name,))
            return True

        poll(dropped, timeout=30, interval=0.2, timed_out=lambda _: ConnectorFailed(
            f"slot {spec.slot_name} stayed active 30s after connector {spec.name} was "
            "deleted; stop the client holding it, then delete again with --drop-slot"))
        conn.execute(f'drop publication if exists "{spec.publication_name}"')
        conn.execute(f'drop event trigger if exists "tidelog_refresh_{spec.slot_name}"')
        conn.execute(f'drop function if exists "{SIGNAL_SCHEMA}"."refresh_{spec.slot_name}"()')
        conn.execute(f"drop table if exists {qualified(spec.signal_table)}")


def restart(settings: Settings, spec: ConnectorSpec, timeout: float = 120, *,
            connect: KafkaConnect | None = None) -> dict[str, Any]:
    connect = connect or KafkaConnect.for_settings(settings)
    connect.restart(spec.name)
    return wait_streaming(settings, spec, timeout, connect=connect)
