"""The Postgres side of a connector: checks before it is applied (logical replication,
tables, keys, the slot), the publication tidelog owns, the signalling table and the DDL
refresh trigger, replica identity and the TOAST warning.

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
import uuid
from typing import Any

import psycopg

from cdc.spec import SIGNAL_SCHEMA, ConnectorSpec
from tidelog.adapters import postgres
from tidelog.adapters.postgres import redact_dsn
from tidelog.errors import (
    SourceError,
)
from tidelog.sql import literal, qualified

__all__ = [
    "preflight",
    "UNMERGED_TOASTABLE",
    "toast_risks",
    "toast_warnings",
    "set_replica_identity_full",
    "ensure_publication",
    "install_ddl_refresh",
    "signal_snapshot",
    "slot_pid",
    "slot_is_streaming",
]


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


def slot_pid(dsn: str, slot: str) -> int | None:
    with postgres.connect(dsn) as conn:
        row = conn.execute("select active_pid from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def slot_is_streaming(dsn: str, slot: str) -> bool:
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"read the state of replication slot {slot}", dsn):
        row = conn.execute(
            "select r.state from pg_replication_slots s join pg_stat_replication r on "
            "r.pid = s.active_pid where s.slot_name = %s", (slot,)).fetchone()
    # "catchup": the sender is streaming but still behind the WAL end; both are live.
    return bool(row and row[0] in ("streaming", "catchup"))
