"""Unchanged TOAST values on the real stack: without REPLICA IDENTITY FULL, Debezium sends
a placeholder for a large value that an update left alone; the snapshot must still hold
the real value, equal to Postgres, both in full and incremental builds."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from cdc.connector import ConnectorSpec, apply
from snapshotter.materialise import UNAVAILABLE
from snapshotter.snapshots import create_snapshot, open_snapshot, rebuild_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name, wait_for_events
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLE = "public.toast_docs"


def _postgres(settings: Settings) -> dict[int, dict[str, object]]:
    with psycopg.connect(settings.postgres_dsn, row_factory=dict_row) as conn:
        return {r["id"]: r for r in conn.execute(f"select * from {TABLE} order by id")}


def _snapshot(settings: Settings, sid: str) -> dict[int, dict[str, object]]:
    return {r["id"]: r for r in open_snapshot(settings, sid).table(TABLE).to_dicts()}


def test_unchanged_toast_values_come_from_earlier_events(settings: Settings,
                                                         tmp_path_factory: pytest.TempPathFactory
                                                         ) -> None:
    name = unique_name("toast")
    root = tmp_path_factory.mktemp("toastdata")
    env = private_settings(settings, root, name)
    # `storage external`: stored out of line, uncompressed, so a 20 kB value is TOASTed
    execute(settings, f"drop table if exists {TABLE}",
            f"create table {TABLE} (id int primary key, body text, n int)",
            f"alter table {TABLE} alter column body set storage external",
            f"insert into {TABLE} select g, repeat(md5(g::text), 700), 0 "
            "from generate_series(1, 20) g")
    apply(env, ConnectorSpec(name, (TABLE,), name), timeout=180)
    topic = f"{name}.{TABLE}"
    execute(settings, f"update {TABLE} set n = 1 where id <= 5")  # body left unchanged
    events = wait_for_events(env, topic, lambda ev: sum(e.op == "u" for e in ev) >= 5,
                             timeout=120)
    updates = [e for e in events if e.op == "u"]
    assert any(e.after and e.after.get("body") == UNAVAILABLE for e in updates), \
        "Debezium sent the value; the placeholder case was not exercised"
    first = create_snapshot(env, [TABLE], "latest")
    assert _snapshot(env, first.id) == _postgres(settings)

    # The value of id 6 is now only in the first snapshot (the base), not in new events.
    execute(settings, f"update {TABLE} set n = 2 where id in (1, 6)")
    wait_for_events(env, topic, lambda ev: sum(e.op == "u" for e in ev) >= 7, timeout=120)
    second = create_snapshot(env, [TABLE], "latest")
    assert second.built_from == first.id
    assert _snapshot(env, second.id) == _postgres(settings)
    rebuilt = rebuild_snapshot(env, second.cut, [TABLE], root / "rebuilt")
    assert rebuilt.digest == second.digest


def test_unchanged_toast_bytea_and_placeholder_text_as_data(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    name = unique_name("toastb")
    root = tmp_path_factory.mktemp("toastbytes")
    env = private_settings(settings, root, name)
    table = "public.toast_bytes"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, blob bytea, note text, n int)",
            f"alter table {table} alter column blob set storage external",
            f"insert into {table} select g, decode(repeat(md5(g::text), 700), 'hex'), "
            "'n' || g, 0 from generate_series(1, 5) g")
    apply(env, ConnectorSpec(name, (table,), name), timeout=180)
    topic = f"{name}.{table}"
    execute(settings, f"update {table} set n = 1 where id <= 3",  # blob left unchanged
            # the placeholder's text as real data, in an insert of a key with a past
            f"delete from {table} where id = 5",
            f"insert into {table} values (5, null, '{UNAVAILABLE}', 0)",
            f"update {table} set blob = null where id = 4")  # a real NULL stays NULL
    events = wait_for_events(env, topic, lambda ev: sum(e.op == "u" for e in ev) >= 4,
                             timeout=120)
    assert any(e.op == "u" and e.after and e.after.get("blob") == UNAVAILABLE.encode()
               for e in events), "Debezium sent the value; the placeholder case was not exercised"

    def rows(sid: str) -> dict[int, dict[str, object]]:
        return {r["id"]: r for r in open_snapshot(env, sid).table(table).to_dicts()}

    with psycopg.connect(settings.postgres_dsn, row_factory=dict_row) as conn:
        source = {r["id"]: {**r, "blob": None if r["blob"] is None else bytes(r["blob"])}
                  for r in conn.execute(f"select * from {table}")}
    first = create_snapshot(env, [table], "latest")
    assert rows(first.id) == source
    assert rows(first.id)[5]["note"] == UNAVAILABLE
    rebuilt = rebuild_snapshot(env, first.cut, [table], root / "rebuilt")
    assert rebuilt.digest == first.digest


def test_apply_warns_of_unmergeable_toast_columns_until_replica_identity_full(
        settings: Settings) -> None:
    """The warning `connector apply` prints (CLI) and returns (API job result), read from
    the real catalog: array and numeric columns without REPLICA IDENTITY FULL."""
    from cdc.source_setup import set_replica_identity_full, toast_warnings

    execute(settings, "drop table if exists public.toast_wide, public.toast_plain",
            "create table public.toast_wide (id int primary key, amounts numeric[], n numeric)",
            "create table public.toast_plain (id int primary key, body text)")
    spec = ConnectorSpec("toast-check", ("public.toast_plain", "public.toast_wide"), "tc")
    [warning] = toast_warnings(settings.postgres_dsn, spec)
    assert warning.startswith("public.toast_wide has array or numeric columns")
    assert "replica_identity_full" in warning and "--replica-identity-full" in warning
    set_replica_identity_full(settings.postgres_dsn, ("public.toast_wide",))
    assert toast_warnings(settings.postgres_dsn, spec) == []
