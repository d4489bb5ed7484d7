"""`connector apply` refuses clearly: no logical WAL, no primary key, a busy slot, bad config."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest

from cdc import connector
from cdc.connector import ConnectorSpec
from cdc.spec import parse_tables
from tests.conftest import stack_dir
from tests.integration.cdc_helpers import execute, unique_name
from tidelog.errors import ConnectorError, ConnectorRejected, SourceError
from tidelog.settings import Settings
from tidelog.stack.postgres import pg_bin, postgres_dsn, start_postgres
from tidelog.stack.process import free_port, stop

pytestmark = pytest.mark.integration


def test_wal_level_not_logical_names_the_setting(settings: Settings) -> None:
    with stack_dir() as root:
        port = free_port()
        record = start_postgres(root / "pg", port)
        try:
            dsn = postgres_dsn(port)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("alter system set wal_level = replica")
            stop(record, group=False)
            record = start_postgres(root / "pg", port)
            execute(dataclasses.replace(settings, postgres_dsn=dsn),
                    "create table t (id int primary key)")
            local = dataclasses.replace(settings, postgres_dsn=dsn)
            with pytest.raises(SourceError, match="wal_level=logical"):
                connector.apply(local, ConnectorSpec("walcheck", ("public.t",), "walcheck"))
        finally:
            stop(record, group=False)


def test_table_without_primary_key_and_unknown_table(settings: Settings) -> None:
    execute(settings, "drop table if exists nokey", "create table nokey (a int, b text)")
    with pytest.raises(SourceError, match="no primary key"):
        connector.apply(settings, ConnectorSpec("nokey", ("public.nokey",), "nokey"))
    with pytest.raises(SourceError, match="does not exist"):
        connector.apply(settings, ConnectorSpec("nothere", ("public.nothere",), "nothere"))
    with pytest.raises(ConnectorError, match="schema-qualified"):
        parse_tables("orders")


def test_slot_in_use_by_another_client(settings: Settings) -> None:
    name = unique_name("busy")
    spec = ConnectorSpec(name, ("public.busy",), name)
    execute(settings, "drop table if exists busy", "create table busy (id int primary key)",
            f"create publication {spec.publication_name} for table busy")
    execute(settings, f"select pg_create_logical_replication_slot('{spec.slot_name}', "
                      "'pgoutput')")
    url = urlparse(settings.postgres_dsn)
    holder = subprocess.Popen(
        [pg_bin("pg_recvlogical"), "-h", url.hostname or "", "-p", str(url.port), "-U",
         "postgres", "-d", url.path.lstrip("/"), "--slot", spec.slot_name, "--start",
         "-o", "proto_version=1", "-o", f"publication_names={spec.publication_name}",
         "-f", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with psycopg.connect(settings.postgres_dsn) as conn:
                row = conn.execute("select active from pg_replication_slots where "
                                   "slot_name = %s", (spec.slot_name,)).fetchone()
            if row and row[0]:
                break
            time.sleep(0.2)
        with pytest.raises(SourceError, match="in use by another client"):
            connector.apply(settings, spec)
    finally:
        holder.terminate()
        holder.wait(10)
        time.sleep(0.5)
        execute(settings, f"select pg_drop_replication_slot('{spec.slot_name}')")


def test_rejected_config_reports_connects_message(settings: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    execute(settings, "drop table if exists badcfg", "create table badcfg (id int primary key)")
    template = tmp_path / "postgres.json"
    text = connector.TEMPLATE.read_text().replace('"snapshot.mode": "initial"',
                                                  '"snapshot.mode": "sometimes"')
    template.write_text(text)
    monkeypatch.setattr(connector, "TEMPLATE", template)
    original = connector.render_config
    monkeypatch.setattr(connector, "render_config",
                        lambda s, spec, template=template: original(s, spec, template))
    with pytest.raises(ConnectorRejected, match="rejected the config: snapshot.mode") as caught:
        connector.apply(settings, ConnectorSpec("badcfg", ("public.badcfg",), "badcfg"))
    # Connect answered "no": a client error, not an unavailable service.
    assert caught.value.status == 400 and not caught.value.transient
