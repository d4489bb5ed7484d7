"""Each demo run's fresh names, and the clean-up of earlier runs' connectors, slots and
source schemas (their archives, snapshots and MLflow runs stay)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tidelog.settings import Settings

__all__ = ["DemoNames", "next_names", "stop_previous_runs", "drop_previous_runs"]

CONNECTOR_RE = re.compile(r"^tidelog-demo-(\d+)$")
SCHEMA_RE = re.compile(r"^shop_(\d+)$")
SLOT_RE = re.compile(r"^tidelog_demo_(\d+)$")
TOPIC_RE = re.compile(r"^demo(\d+)\.")


@dataclass(frozen=True)
class DemoNames:
    number: int

    @property
    def schema(self) -> str:
        return f"shop_{self.number}"

    @property
    def topic_prefix(self) -> str:
        return f"demo{self.number}"

    @property
    def connector(self) -> str:
        return f"tidelog-demo-{self.number}"


def _connectors(settings: Settings) -> list[str]:
    from tidelog.adapters.connect import KafkaConnect

    with KafkaConnect.for_settings(settings) as connect:
        return connect.connectors()


def _schemas(settings: Settings) -> list[str]:
    from tidelog.adapters import postgres

    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("list schemas", dsn):
        return [r[0] for r in conn.execute("select nspname from pg_namespace")]


def next_names(settings: Settings) -> DemoNames:
    """One more than any demo run the stack, the database or the archive remembers."""
    from snapshotter.archive import Archive

    seen = [0]
    for name in _connectors(settings):
        if m := CONNECTOR_RE.match(name):
            seen.append(int(m[1]))
    for name in _schemas(settings):
        if m := SCHEMA_RE.match(name):
            seen.append(int(m[1]))
    if Path(settings.archive_root).exists() or "://" in settings.archive_root:
        for topic in Archive(settings.archive_root).topics():
            if m := TOPIC_RE.match(topic):
                seen.append(int(m[1]))
    return DemoNames(max(seen) + 1)


def stop_previous_runs(settings: Settings) -> list[str]:
    """Delete earlier demo connectors; their slots are dropped at the end of the run
    (`drop_previous_runs`), once Debezium has let go of them."""
    from cdc.connector import ConnectorSpec, delete

    stopped = []
    for name in _connectors(settings):
        if m := CONNECTOR_RE.match(name):
            delete(settings, ConnectorSpec(name, (), DemoNames(int(m[1])).topic_prefix))
            stopped.append(name)
    return stopped


def drop_previous_runs(settings: Settings, current: DemoNames) -> list[str]:
    """Drop the replication slots, publications and source schemas of earlier runs.

    Their archives, snapshots and MLflow runs stay: their models remain rebuildable."""
    from cdc.connector import ConnectorSpec, delete
    from examples.shop import Shop
    from tidelog.adapters import postgres

    dropped = []
    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("list slots", dsn):
        slots = [r[0] for r in conn.execute("select slot_name from pg_replication_slots")]
    for slot in slots:
        number = int(slot.rsplit("_", 1)[1]) if SLOT_RE.match(slot) else None
        if number is not None and number != current.number:
            names = DemoNames(number)
            delete(settings, ConnectorSpec(names.connector, (), names.topic_prefix),
                   drop_slot=True)
            dropped.append(f"slot {slot}")
    for schema in _schemas(settings):
        if SCHEMA_RE.match(schema) and schema != current.schema:
            Shop(settings.require("postgres_dsn"), schema).drop()
            dropped.append(f"schema {schema}")
    return dropped
