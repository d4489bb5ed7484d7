"""Drive the Debezium Postgres connector through the Kafka Connect REST API.

`apply` checks the source first (logical replication enabled, tables exist and have a
primary key, slot not held by someone else), validates the rendered config with Connect,
creates or updates the connector, and waits until its task is streaming from the slot
with the new configuration.

tidelog owns the publication (Debezium's `publication.autocreate.mode=disabled`): it is
created `WITH (publish_via_partition_root = true)`, so a change to any partition of a
declaratively partitioned table arrives on the parent's topic. Each connector also gets
a Debezium signalling table, `tidelog.signal_<slot>`: a table added to a running
connector is re-read through it by an incremental snapshot (`execute-snapshot`), since
the initial snapshot ran before the table was part of the connector.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlparse

import psycopg

from cdc.source_types import check_source_types
from tidelog.adapters import postgres
from tidelog.adapters.connect import KafkaConnect
from tidelog.adapters.postgres import redact_dsn
from tidelog.errors import (
    ConnectorError,
    ConnectorFailed,
    ConnectorNotFound,
    SourceError,
    TidelogError,
)
from tidelog.retry import poll
from tidelog.settings import Settings
from tidelog.sql import literal, qualified
from tidelog.stack.connectors import forget_connector, remember_connector
from tidelog.topics import table_topic, transaction_topic

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
SIGNAL_SCHEMA = "tidelog"
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class ConnectorSpec:
    name: str
    tables: tuple[str, ...]
    topic_prefix: str
    # "schema.table.column" names left out of capture (Debezium's column.exclude.list)
    exclude_columns: tuple[str, ...] = ()

    @property
    def slot_name(self) -> str:
        return re.sub(r"[^a-z0-9_]", "_", self.name.lower())

    @property
    def publication_name(self) -> str:
        return f"{self.slot_name}_pub"

    @property
    def signal_table(self) -> str:
        """Debezium's signalling table for this connector (schema.table)."""
        return f"{SIGNAL_SCHEMA}.signal_{self.slot_name}"

    def topic(self, table: str) -> str:
        return table_topic(self.topic_prefix, table)

    @property
    def transaction_topic(self) -> str:
        return transaction_topic(self.topic_prefix)


def parse_tables(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    tables = tuple(t.strip() for t in items if t.strip())
    if not tables:
        raise ConnectorError("no tables given: pass --tables schema.table[,schema.table...]")
    bad = [t for t in tables if not TABLE_RE.match(t)]
    if bad:
        raise ConnectorError(
            f"table names must be schema-qualified identifiers like public.orders, got {bad}"
        )
    return tables


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


def preflight(dsn: str, spec: ConnectorSpec) -> None:
    """Fail early, naming the setting to change, when Postgres cannot feed the connector."""
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"check the source of connector {spec.name}", dsn):
        _preflight(conn, dsn, spec)


def _preflight(conn: psycopg.Connection[Any], dsn: str, spec: ConnectorSpec) -> None:
    settings = dict(conn.execute(
        "select name, setting from pg_settings where name in "
        "('wal_level', 'max_replication_slots', 'max_wal_senders')"
    ).fetchall())
    if settings.get("wal_level") != "logical":
        raise SourceError(
            f"Postgres has wal_level={settings.get('wal_level')}; logical decoding needs "
            "wal_level=logical: set it in postgresql.conf (ALTER SYSTEM SET wal_level = "
            "logical) and restart the server"
        )
    for name in ("max_replication_slots", "max_wal_senders"):
        if int(settings.get(name, "0")) < 1:
            raise SourceError(f"Postgres has {name}=0; set it to at least 4 and restart")
    for table in spec.tables:
        schema, name = table.split(".", 1)
        row = conn.execute(
            "select c.oid, (select count(*) from pg_index i where i.indrelid = c.oid "
            "and i.indisprimary) from pg_class c join pg_namespace n on n.oid = "
            "c.relnamespace where n.nspname = %s and c.relname = %s and c.relkind in "
            "('r', 'p')", (schema, name)).fetchone()
        if row is None:
            raise SourceError(f"table {table} does not exist in {redact_dsn(dsn)}")
        if row[1] == 0:
            raise SourceError(
                f"table {table} has no primary key: tidelog materialises tables by key; "
                f"add one (ALTER TABLE {table} ADD PRIMARY KEY (...)) or leave it out"
            )
    slot = conn.execute(
        "select active, plugin, database from pg_replication_slots where slot_name = %s",
        (spec.slot_name,)).fetchone()
    if slot is not None:
        active, plugin, database = slot
        if plugin != "pgoutput":
            raise SourceError(
                f"replication slot {spec.slot_name} exists with plugin {plugin}; drop it "
                f"(select pg_drop_replication_slot('{spec.slot_name}')) or use --name"
            )
        if active and not _slot_held_by_us(conn, spec):
            raise SourceError(
                f"replication slot {spec.slot_name} is in use by another client; stop "
                "that client, or choose another connector name with --name"
            )


def _slot_held_by_us(conn: psycopg.Connection[Any], spec: ConnectorSpec) -> bool:
    # Debezium names its replication connection after the connector's slot/app name.
    row = conn.execute(
        "select a.application_name from pg_replication_slots s join pg_stat_activity a "
        "on a.pid = s.active_pid where s.slot_name = %s", (spec.slot_name,)).fetchone()
    return bool(row and "Debezium" in (row[0] or ""))


# Placeholders in these types are merged with the previous value by the snapshotter
# (text-like values and bytea); arrays and large numerics are not.
UNMERGED_TOASTABLE = ("numeric",)


def toast_risks(dsn: str, spec: ConnectorSpec) -> list[str]:
    """Tables with large columns whose unavailable-value placeholder tidelog cannot merge.

    Without REPLICA IDENTITY FULL, an update that leaves a TOASTed value unchanged does
    not carry it. Text, JSON, XML and bytea placeholders are replaced by the key's previous
    value when snapshots are built; arrays and numerics are not.
    """
    risky = []
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"describe the columns of {', '.join(spec.tables)}", dsn):
        for table in spec.tables:
            schema, name = table.split(".", 1)
            row = conn.execute(
                "select c.relreplident, count(a.attname) filter (where t.typname = any(%s) "
                "or t.typcategory = 'A') from pg_class c join pg_namespace n on "
                "n.oid = c.relnamespace join pg_attribute a on a.attrelid = c.oid and "
                "a.attnum > 0 and not a.attisdropped join pg_type t on t.oid = a.atttypid "
                "where n.nspname = %s and c.relname = %s group by c.relreplident",
                (list(UNMERGED_TOASTABLE), schema, name)).fetchone()
            if row and row[0] != "f" and row[1]:
                risky.append(table)
    return risky


def toast_warnings(dsn: str, spec: ConnectorSpec) -> list[str]:
    """What `connector apply` warns about (CLI and API alike): one line per `toast_risks`."""
    return [f"{table} has array or numeric columns and no REPLICA IDENTITY FULL; an update "
            "that leaves such a large value unchanged does not carry it, and tidelog can "
            "only fill in text, JSON and bytea values. Apply again with replica identity "
            "full (`--replica-identity-full`, or `\"replica_identity_full\": true` over "
            "the API)" for table in toast_risks(dsn, spec)]


def set_replica_identity_full(dsn: str, tables: tuple[str, ...]) -> None:
    with postgres.connect(dsn) as conn:
        for table in tables:
            schema, name = table.split(".", 1)
            try:
                conn.execute(f'alter table "{schema}"."{name}" replica identity full')
            except psycopg.Error as exc:
                raise SourceError(
                    f"cannot set REPLICA IDENTITY FULL on {table}: {exc}; run it as the "
                    "table owner, or apply without --replica-identity-full") from exc


def ensure_publication(dsn: str, spec: ConnectorSpec) -> None:
    """The signalling table, and the publication of exactly the connector's tables.

    `publish_via_partition_root`: changes to a partition are published as changes of the
    partitioned table it belongs to (the table the connector captures); without it they
    carry the partition's name and no table filter matches them.
    """
    tables = ", ".join(qualified(t) for t in (*spec.tables, spec.signal_table))
    try:
        with postgres.connect(dsn) as conn:
            conn.execute(f'create schema if not exists "{SIGNAL_SCHEMA}"')
            conn.execute(f"create table if not exists {qualified(spec.signal_table)} "
                         "(id varchar(64) primary key, type varchar(32) not null, "
                         "data varchar(2048))")
            exists = conn.execute("select 1 from pg_publication where pubname = %s",
                                  (spec.publication_name,)).fetchone()
            if exists is None:
                conn.execute(f'create publication "{spec.publication_name}" for table '
                             f"{tables} with (publish_via_partition_root = true)")
            else:
                conn.execute(f'alter publication "{spec.publication_name}" set table {tables}')
                conn.execute(f'alter publication "{spec.publication_name}" '
                             "set (publish_via_partition_root = true)")
    except psycopg.Error as exc:
        raise SourceError(
            f"cannot set up publication {spec.publication_name} or signalling table "
            f"{spec.signal_table} in {redact_dsn(dsn)}: {exc}; the connector's user needs "
            "CREATE on the database and ownership of the captured tables") from exc


_LOG = logging.getLogger("tidelog.connector")


def install_ddl_refresh(dsn: str, spec: ConnectorSpec) -> bool:
    """An event trigger that re-reads a captured table after every ALTER TABLE of it.

    DDL that rewrites rows without change events (ADD COLUMN ... DEFAULT, whose value for
    existing rows lives in pg_attribute.attmissingval; RENAME COLUMN; ALTER TYPE ... USING)
    leaves the captured state wrong until each row changes. The trigger writes an
    `execute-snapshot` signal in the DDL's own transaction, so Debezium re-reads the
    table right after the DDL, and `--at latest` refuses until that snapshot is done.
    The function is SECURITY DEFINER (a table owner without rights on the signalling
    table can still alter the table) and only warns if the signal cannot be written.
    Event triggers need a superuser: without one, return False (and log why).
    """
    function = f'"{SIGNAL_SCHEMA}"."refresh_{spec.slot_name}"'
    trigger = f"tidelog_refresh_{spec.slot_name}"
    tables = "array[" + ", ".join(literal(t) for t in spec.tables) + "]::text[]"
    body = f"""
        create or replace function {function}() returns event_trigger
        language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
        declare target text;
        begin
          for target in select distinct object_identity from pg_event_trigger_ddl_commands()
                        where object_type = 'table' and object_identity = any({tables}) loop
            insert into {qualified(spec.signal_table)} (id, type, data) values (
              'ddl-' || md5(target || clock_timestamp()::text || random()::text),
              'execute-snapshot',
              json_build_object('data-collections', json_build_array(target),
                                'type', 'incremental')::text);
          end loop;
        exception when others then
          -- never fail the user's DDL; `--at latest` cannot see this refresh is missing
          raise warning 'tidelog: could not signal a re-read of % after DDL: %',
            target, sqlerrm;
        end $fn$"""
    try:
        with postgres.connect(dsn) as conn:
            with conn.transaction():
                conn.execute(body)
                conn.execute(f'drop event trigger if exists "{trigger}"')
                conn.execute(f'create event trigger "{trigger}" on ddl_command_end '
                             f"when tag in ('ALTER TABLE') execute function {function}()")
    except psycopg.errors.InsufficientPrivilege as exc:
        _LOG.warning("no DDL refresh trigger for connector %s (%s): after DDL that "
                     "rewrites rows, re-read the table with an execute-snapshot signal",
                     spec.name, exc)
        return False
    except psycopg.Error as exc:
        raise SourceError(f"cannot install the DDL refresh trigger of connector {spec.name} "
                          f"in {redact_dsn(dsn)}: {exc}") from exc
    return True


def signal_snapshot(dsn: str, spec: ConnectorSpec, tables: tuple[str, ...]) -> str:
    """Ask the running connector to re-read `tables` by an incremental snapshot.

    Debezium reads every row in key-ordered chunks between watermarks and merges them
    with the stream, so writes during the snapshot are neither lost nor reordered.
    """
    signal_id = uuid.uuid4().hex
    data = json.dumps({"data-collections": list(tables), "type": "incremental"})
    try:
        with postgres.connect(dsn) as conn:
            conn.execute(f"insert into {qualified(spec.signal_table)} (id, type, data) "
                         "values (%s, 'execute-snapshot', %s)", (signal_id, data))
    except psycopg.Error as exc:
        raise SourceError(f"cannot signal connector {spec.name} through "
                          f"{spec.signal_table}: {exc}") from exc
    return signal_id


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


def _slot_pid(dsn: str, slot: str) -> int | None:
    with postgres.connect(dsn) as conn:
        row = conn.execute("select active_pid from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


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
    old_pid = _slot_pid(dsn, spec.slot_name) if before is not None else None
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


def _slot_streaming(dsn: str, slot: str) -> bool:
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"read the state of replication slot {slot}", dsn):
        row = conn.execute(
            "select r.state from pg_replication_slots s join pg_stat_replication r on "
            "r.pid = s.active_pid where s.slot_name = %s", (slot,)).fetchone()
    # "catchup": the sender is streaming but still behind the WAL end; both are live.
    return bool(row and row[0] in ("streaming", "catchup"))


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
    streaming = slot_streaming or _slot_streaming
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
            replaced_pid is None or _slot_pid(dsn, spec.slot_name) not in (None, replaced_pid)
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
