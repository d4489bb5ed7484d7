"""What names one Debezium connector: its tables, topic prefix and the Postgres objects
derived from its name (slot, publication, signalling table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tidelog.errors import (
    ConnectorError,
)
from tidelog.topics import table_topic, transaction_topic

__all__ = [
    "SIGNAL_SCHEMA",
    "ConnectorSpec",
    "parse_tables",
]


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
