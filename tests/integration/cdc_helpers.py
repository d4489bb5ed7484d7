"""Helpers for the CDC integration tests: connectors with unique names, event reads."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from cdc.connector import ConnectorSpec, apply
from cdc.events import ChangeEvent, decode_message
from cdc.reader import list_partitions, read_range
from tidelog.settings import Settings

_counter = itertools.count()


def unique_name(stem: str) -> str:
    return f"{stem}{os.getpid() % 1000}x{next(_counter)}"


def private_settings(settings: Settings, root: Path, name: str) -> Settings:
    """The shared stack, with a test's own topic prefix, connector, archive, snapshots and
    home under `root`, so tests never see each other's data."""
    return dataclasses.replace(settings, topic_prefix=name, connector_name=name, home=root,
                               archive_root=str(root / "archive"),
                               snapshot_root=str(root / "snapshots"))


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `tidelog` child process that loads exactly `settings`: the
    test process's own TIDELOG_ variables are dropped, `extra` (e.g. TIDELOG_CRASH_AT)
    added last."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    return {**base, **settings.to_environ(), **extra}


def connect_tables(settings: Settings, tables: list[str], stem: str) -> ConnectorSpec:
    name = unique_name(stem)
    spec = ConnectorSpec(name=name, tables=tuple(tables), topic_prefix=name)
    apply(settings, spec, timeout=180)
    return spec


def execute(settings: Settings, *statements: str, params: Any = None) -> None:
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)


def read_events(settings: Settings, topic: str) -> list[ChangeEvent]:
    start = {tp: 0 for tp in list_partitions(settings, [topic])}
    events = []
    for batch in read_range(settings, start):
        for m in batch:
            event = decode_message(m.topic, m.partition, m.offset, m.key, m.value)
            if isinstance(event, ChangeEvent):
                events.append(event)
    return events


def wait_for_events(settings: Settings, topic: str, predicate: Any, timeout: float = 60
                    ) -> list[ChangeEvent]:
    """Read the topic until `predicate(events)` holds; the connector is asynchronous."""
    deadline = time.monotonic() + timeout
    events: list[ChangeEvent] = []
    while time.monotonic() < deadline:
        try:
            events = read_events(settings, topic)
        except Exception:  # noqa: BLE001 - topic may not exist yet
            events = []
        if predicate(events):
            return events
        time.sleep(0.5)
    raise AssertionError(f"condition not met on {topic} after {timeout}s; {len(events)} events")


def wait_for_messages(settings: Settings, topic: str, count: int, timeout: float = 120
                      ) -> int:
    """Wait until `topic` holds `count` raw messages, decodable or not (a poison event
    cannot be decoded, which is the point of the tests that wait for one)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            start = {tp: 0 for tp in list_partitions(settings, [topic])}
            seen = sum(len(batch) for batch in read_range(settings, start))
        except Exception:  # noqa: BLE001 - topic may not exist yet
            seen = 0
        if seen >= count:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{topic} has {seen} messages after {timeout}s, not {count}")


BPCHAR_OID = 1042


def source_rows(conn: Any, table: str, order_by_first: bool = False) -> list[dict[str, Any]]:
    """Every row of `table` as Postgres compares it: char(n) values without their blank
    padding, which Postgres ignores in comparisons and tidelog drops (docs/types.md)."""
    cur = conn.execute(f"select * from {table}" + (" order by 1" if order_by_first else ""))
    columns = [(d.name, d.type_code == BPCHAR_OID) for d in cur.description or []]
    return [{name: (value.rstrip(" ") if padded and isinstance(value, str) else value)
             for (name, padded), value in zip(columns, row, strict=True)}
            for row in cur.fetchall()]
