"""Names of the Kafka topics Debezium writes, built in this one place.

A table `schema.table` is captured on `<prefix>.<schema>.<table>`; transaction metadata
goes to `<prefix>.transaction`. A table may itself be named `transaction`
(`<prefix>.public.transaction`), so the transaction topic is recognised by its exact
name, never by its suffix.

A served model has three topics of its own (docs/serving.md):
`<prefix>.serving.<model>.requests`, `.results` and `.labels`.
"""

from __future__ import annotations

__all__ = ["table_topic", "transaction_topic", "is_transaction_topic", "in_prefix",
           "serving_requests_topic", "serving_results_topic", "serving_labels_topic",
           "is_serving_topic"]

_SERVING_KINDS = ("requests", "results", "labels")


def table_topic(prefix: str, table: str) -> str:
    return f"{prefix}.{table}"


def transaction_topic(prefix: str) -> str:
    return f"{prefix}.transaction"


def is_transaction_topic(prefix: str, topic: str) -> bool:
    return topic == transaction_topic(prefix)


def in_prefix(prefix: str, topic: str) -> bool:
    """Whether `topic` is one of the connector's topics (tables or transactions)."""
    return topic.startswith(f"{prefix}.")


def _serving(prefix: str, model: str, kind: str) -> str:
    return f"{prefix}.serving.{model}.{kind}"


def serving_requests_topic(prefix: str, model: str) -> str:
    """Where callers put instances for `tidelog serve --model MODEL`."""
    return _serving(prefix, model, "requests")


def serving_results_topic(prefix: str, model: str) -> str:
    """Where the worker puts one result per request, keyed by request id."""
    return _serving(prefix, model, "results")


def serving_labels_topic(prefix: str, model: str) -> str:
    """Where callers put the true label of a request, when they learn it (monitoring)."""
    return _serving(prefix, model, "labels")


def is_serving_topic(prefix: str, topic: str) -> bool:
    """Whether `topic` is a serving topic: inside the prefix, yet never a CDC topic (a
    captured table's topic has exactly one dot after the prefix, these have two or more)."""
    head = f"{prefix}.serving."
    if not topic.startswith(head):
        return False
    model, dot, kind = topic.removeprefix(head).rpartition(".")
    return bool(dot and model and kind in _SERVING_KINDS)
