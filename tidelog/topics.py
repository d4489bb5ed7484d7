"""Names of the Kafka topics Debezium writes, built in this one place.

A table `schema.table` is captured on `<prefix>.<schema>.<table>`; transaction metadata
goes to `<prefix>.transaction`. A table may itself be named `transaction`
(`<prefix>.public.transaction`), so the transaction topic is recognised by its exact
name, never by its suffix.
"""

from __future__ import annotations

__all__ = ["table_topic", "transaction_topic", "is_transaction_topic", "in_prefix"]


def table_topic(prefix: str, table: str) -> str:
    return f"{prefix}.{table}"


def transaction_topic(prefix: str) -> str:
    return f"{prefix}.transaction"


def is_transaction_topic(prefix: str, topic: str) -> bool:
    return topic == transaction_topic(prefix)


def in_prefix(prefix: str, topic: str) -> bool:
    """Whether `topic` is one of the connector's topics (tables or transactions)."""
    return topic.startswith(f"{prefix}.")
