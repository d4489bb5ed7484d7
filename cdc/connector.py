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
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg

from tidelog.errors import ConnectorError, SourceError
from tidelog.settings import Settings

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
    "snapshot_in_progress",
    "wait_snapshot_done",
    "install_ddl_refresh",
    "Connect",
    "current_tables",
    "first_cause",
    "quoted",
]

TEMPLATE = Path(__file__).resolve().parent.parent / "connectors" / "postgres.json"
SIGNAL_SCHEMA = "tidelog"
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class ConnectorSpec:
    name: str
    tables: tuple[str, ...]
    topic_prefix: str

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
        return f"{self.topic_prefix}.{table}"

    @property
    def transaction_topic(self) -> str:
        return f"{self.topic_prefix}.transaction"


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
    return json.loads(text)  # type: ignore[no-any-return]


def preflight(dsn: str, spec: ConnectorSpec) -> None:
    """Fail early, naming the setting to change, when Postgres cannot feed the connector."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to Postgres at {_redact(dsn)}: {exc}") from exc
    with conn:
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
                raise SourceError(f"table {table} does not exist in {_redact(dsn)}")
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


def _redact(dsn: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)


class Connect:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectorError(
                f"Kafka Connect at {self.url} is unreachable ({exc}); is it running? "
                "(`tidelog stack status`, or check TIDELOG_CONNECT_URL)"
            ) from exc


def _validate(connect: Connect, config: dict[str, Any]) -> None:
    cls = config["connector.class"].rsplit(".", 1)[-1]
    resp = connect.request("PUT", f"/connector-plugins/{cls}/config/validate", json=config)
    if resp.status_code != 200:
        raise ConnectorError(f"Kafka Connect rejected the config: {resp.text}")
    body = resp.json()
    if body.get("error_count", 0):
        errors = [
            f"{c['value']['name']}: {'; '.join(c['value']['errors'])}"
            for c in body.get("configs", []) if c["value"].get("errors")
        ]
        raise ConnectorError("Kafka Connect rejected the config: " + " | ".join(errors))


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
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
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


def set_replica_identity_full(dsn: str, tables: tuple[str, ...]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            schema, name = table.split(".", 1)
            try:
                conn.execute(f'alter table "{schema}"."{name}" replica identity full')
            except psycopg.Error as exc:
                raise SourceError(
                    f"cannot set REPLICA IDENTITY FULL on {table}: {exc}; run it as the "
                    "table owner, or apply without --replica-identity-full") from exc


def quoted(table: str) -> str:
    schema, name = table.split(".", 1)
    return f'"{schema}"."{name}"'


def ensure_publication(dsn: str, spec: ConnectorSpec) -> None:
    """The signalling table, and the publication of exactly the connector's tables.

    `publish_via_partition_root`: changes to a partition are published as changes of the
    partitioned table it belongs to (the table the connector captures); without it they
    carry the partition's name and no table filter matches them.
    """
    tables = ", ".join(quoted(t) for t in (*spec.tables, spec.signal_table))
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'create schema if not exists "{SIGNAL_SCHEMA}"')
            conn.execute(f"create table if not exists {quoted(spec.signal_table)} "
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
            f"{spec.signal_table} in {_redact(dsn)}: {exc}; the connector's user needs "
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
    tables = "array[" + ", ".join(_sql_text(t) for t in spec.tables) + "]::text[]"
    body = f"""
        create or replace function {function}() returns event_trigger
        language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
        declare target text;
        begin
          for target in select distinct object_identity from pg_event_trigger_ddl_commands()
                        where object_type = 'table' and object_identity = any({tables}) loop
            insert into {quoted(spec.signal_table)} (id, type, data) values (
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
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
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
                          f"in {_redact(dsn)}: {exc}") from exc
    return True


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def signal_snapshot(dsn: str, spec: ConnectorSpec, tables: tuple[str, ...]) -> str:
    """Ask the running connector to re-read `tables` by an incremental snapshot.

    Debezium reads every row in key-ordered chunks between watermarks and merges them
    with the stream, so writes during the snapshot are neither lost nor reordered.
    """
    signal_id = uuid.uuid4().hex
    data = json.dumps({"data-collections": list(tables), "type": "incremental"})
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f"insert into {quoted(spec.signal_table)} (id, type, data) "
                         "values (%s, 'execute-snapshot', %s)", (signal_id, data))
    except psycopg.Error as exc:
        raise SourceError(f"cannot signal connector {spec.name} through "
                          f"{spec.signal_table}: {exc}") from exc
    return signal_id


def current_tables(connect: Connect, name: str) -> tuple[str, ...] | None:
    """The tables the connector captures now, or None when it does not exist."""
    resp = connect.request("GET", f"/connectors/{name}/config")
    if resp.status_code != 200:
        return None
    listed = resp.json().get("table.include.list", "")
    return tuple(t.replace("\\", "") for t in listed.split(",") if t)


def _slot_pid(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("select active_pid from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def apply(settings: Settings, spec: ConnectorSpec, timeout: float = 120,
          replica_identity_full: bool = False) -> dict[str, Any]:
    """Create or update the connector; return once it streams with this configuration.

    Tables new to a running connector get an incremental snapshot, so their existing rows
    arrive as reads (`op=r`) like an initial snapshot's.
    """
    dsn = settings.require("postgres_dsn")
    preflight(dsn, spec)
    if replica_identity_full:
        set_replica_identity_full(dsn, spec.tables)
    config = {**render_config(settings, spec)["config"], "name": spec.name}
    connect = Connect(settings.require("connect_url"))
    _validate(connect, config)
    before = current_tables(connect, spec.name)
    old_pid = _slot_pid(dsn, spec.slot_name) if before is not None else None
    ensure_publication(dsn, spec)
    install_ddl_refresh(dsn, spec)
    resp = connect.request("PUT", f"/connectors/{spec.name}/config", json=config)
    if resp.status_code not in (200, 201):
        raise ConnectorError(
            f"Kafka Connect refused connector {spec.name}: HTTP {resp.status_code} {resp.text}"
        )
    changed = before is not None and set(before) != set(spec.tables)
    status = wait_streaming(settings, spec, timeout,
                            config=config if before is not None else None,
                            replaced_pid=old_pid if changed else None)
    added = tuple(t for t in spec.tables if before is not None and t not in before)
    if added:
        signal_snapshot(dsn, spec, added)
        wait_snapshot_done(settings, spec, deadline=time.monotonic() + timeout)
    return status


def source_offset(settings: Settings, name: str) -> dict[str, Any]:
    """The connector's committed source offset (Debezium's position, snapshot state)."""
    connect = Connect(settings.require("connect_url"))
    resp = connect.request("GET", f"/connectors/{name}/offsets")
    if resp.status_code != 200:
        raise ConnectorError(f"reading the offsets of connector {name} failed: "
                             f"HTTP {resp.status_code} {resp.text}")
    offsets = resp.json().get("offsets") or []
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


def wait_snapshot_done(settings: Settings, spec: ConnectorSpec, deadline: float) -> None:
    """Wait until the connector's offset shows it has passed `now` with no snapshot open.

    The offset is committed about once a second (offset.flush.interval.ms), and moves
    past the signal once Debezium has read it; a snapshot still open at the deadline is
    reported by `snapshot create --at latest`, which refuses until it is done.
    """
    dsn = settings.require("postgres_dsn")
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    start = int(row[0]) if row else 0
    while time.monotonic() < deadline:
        offset = source_offset(settings, spec.name)
        if int(offset.get("lsn") or 0) >= start and snapshot_in_progress(offset) is None:
            return
        time.sleep(0.5)


def connector_status(settings: Settings, name: str) -> dict[str, Any]:
    connect = Connect(settings.require("connect_url"))
    resp = connect.request("GET", f"/connectors/{name}/status")
    if resp.status_code == 404:
        raise ConnectorError(f"no connector named {name}; create it with `tidelog connector apply`")
    if resp.status_code != 200:
        raise ConnectorError(f"Kafka Connect status of {name} failed: {resp.text}")
    return resp.json()  # type: ignore[no-any-return]


def _slot_streaming(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(
            "select r.state from pg_replication_slots s join pg_stat_replication r on "
            "r.pid = s.active_pid where s.slot_name = %s", (slot,)).fetchone()
    # "catchup": the sender is streaming but still behind the WAL end; both are live.
    return bool(row and row[0] in ("streaming", "catchup"))


def _tasks_have(connect: Connect, name: str, config: dict[str, Any]) -> bool:
    """Every task was generated from `config` (Connect has regenerated them)."""
    resp = connect.request("GET", f"/connectors/{name}/tasks")
    if resp.status_code != 200:
        return False
    tasks = resp.json()
    keys = ("table.include.list", "publication.name", "slot.name")
    return bool(tasks) and all(
        all(t.get("config", {}).get(k) == config.get(k) for k in keys) for t in tasks)


def wait_streaming(settings: Settings, spec: ConnectorSpec, timeout: float = 120, *,
                   config: dict[str, Any] | None = None, replaced_pid: int | None = None
                   ) -> dict[str, Any]:
    """Wait until every task runs and the slot streams.

    With `config`, the tasks must also have been regenerated from it; with
    `replaced_pid`, the slot must be held by a new replication connection (the old task,
    still streaming the old table list, must have let go).
    """
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    connect = Connect(settings.require("connect_url"))
    dsn = settings.require("postgres_dsn")
    while time.monotonic() < deadline:
        try:
            status = connector_status(settings, spec.name)
        except ConnectorError:
            time.sleep(0.3)
            continue
        tasks = status.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if status.get("connector", {}).get("state") == "FAILED" or failed:
            trace = (failed[0] if failed else status["connector"]).get("trace", "")
            raise ConnectorError(
                f"connector {spec.name} failed: {first_cause(trace)}; "
                f"fix the cause, then `tidelog connector restart --name {spec.name}`",
                trace=trace,
            )
        if tasks and all(t.get("state") == "RUNNING" for t in tasks) and _slot_streaming(
            dsn, spec.slot_name
        ) and (config is None or _tasks_have(connect, spec.name, config)) and (
            replaced_pid is None or _slot_pid(dsn, spec.slot_name) not in (None, replaced_pid)
        ):
            return status
        time.sleep(0.3)
    raise ConnectorError(
        f"connector {spec.name} was not streaming after {timeout:.0f}s (last status: "
        f"{json.dumps(status)}); see the Connect worker's log"
    )


def first_cause(trace: str) -> str:
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    return (causes[-1] if causes else (lines[0] if lines else "unknown error"))[:500]


def delete(settings: Settings, spec: ConnectorSpec, drop_slot: bool = False) -> None:
    """Remove the connector; with drop_slot also its slot and publication (frees WAL)."""
    connect = Connect(settings.require("connect_url"))
    resp = connect.request("DELETE", f"/connectors/{spec.name}")
    if resp.status_code not in (204, 404):
        raise ConnectorError(f"deleting connector {spec.name} failed: {resp.text}")
    if not drop_slot:
        return
    dsn = settings.require("postgres_dsn")
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("select active from pg_replication_slots where slot_name = %s",
                               (spec.slot_name,)).fetchone()
            if row is None:
                break
            if not row[0]:
                conn.execute("select pg_drop_replication_slot(%s)", (spec.slot_name,))
                break
            time.sleep(0.2)
        else:
            raise ConnectorError(f"slot {spec.slot_name} stayed active after the delete")
        conn.execute(f'drop publication if exists "{spec.publication_name}"')
        conn.execute(f'drop event trigger if exists "tidelog_refresh_{spec.slot_name}"')
        conn.execute(f'drop function if exists "{SIGNAL_SCHEMA}"."refresh_{spec.slot_name}"()')
        conn.execute(f"drop table if exists {quoted(spec.signal_table)}")


def restart(settings: Settings, spec: ConnectorSpec, timeout: float = 120) -> dict[str, Any]:
    connect = Connect(settings.require("connect_url"))
    resp = connect.request("POST", f"/connectors/{spec.name}/restart",
                           params={"includeTasks": "true"})
    if resp.status_code not in (200, 202, 204):
        raise ConnectorError(f"restarting connector {spec.name} failed: {resp.text}")
    return wait_streaming(settings, spec, timeout)

