"""Poison events: a change event the archiver cannot decode, and how it is reported.

The archive stops the event's partition at its offset (snapshotter/archive.py); this
module finds the event in a failed batch, describes it (topic, partition, offset, column,
pg type, the value as sent) and builds the error `archive run` stops with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from cdc.reader import RawMessage
from tidelog.errors import DecodeError, PoisonEventError

__all__ = ["PartitionFailure", "Decoder", "DECODE_FAILURES", "split_at_poison",
           "failure_of", "poison_error"]

Decoder = Callable[[Sequence[RawMessage]], list[tuple[pa.Table, int, int]]]


@dataclass(frozen=True)
class PartitionFailure:
    """Why a partition's archiving stopped: the first event at `offset` failed to decode."""

    topic: str
    partition: int
    generation: int
    offset: int
    error: str
    column: str | None = None
    pg_type: str | None = None
    value: str | None = None  # the value as sent (JSON text), shortened
    first_seen: str = ""
    last_seen: str = ""
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition,
                "generation": self.generation, "offset": self.offset, "column": self.column,
                "pg_type": self.pg_type, "value": self.value, "error": self.error,
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "attempts": self.attempts}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionFailure:
        return cls(topic=str(data["topic"]), partition=int(data["partition"]),
                   generation=int(data["generation"]), offset=int(data["offset"]),
                   error=str(data["error"]), column=data.get("column"),
                   pg_type=data.get("pg_type"), value=data.get("value"),
                   first_seen=str(data.get("first_seen", "")),
                   last_seen=str(data.get("last_seen", "")),
                   attempts=int(data.get("attempts", 1)))

    def describe(self) -> str:
        where = f"{self.topic}[{self.partition}] offset {self.offset}"
        column = f", column {self.column!r}" if self.column else ""
        pg_type = f" ({self.pg_type})" if self.pg_type else ""
        value = f", value {self.value}" if self.value is not None else ""
        return f"{where}{column}{pg_type}{value}: {self.error}"


# What a decoder raises for an event it cannot carry: tidelog's own error, or a
# conversion error escaping from Arrow or the standard library.
DECODE_FAILURES = (DecodeError, pa.ArrowException, ValueError, TypeError, KeyError,
                   OverflowError)


def split_at_poison(decoder: Decoder, messages: Sequence[RawMessage], exc: Exception
                     ) -> tuple[list[tuple[pa.Table, int, int]], RawMessage, Exception]:
    """(decoded runs before the first undecodable message, that message, its error)."""
    while True:
        index = _poison_index(decoder, messages, exc)
        head = messages[:index]
        try:
            return (decoder(head) if head else []), messages[index], exc
        except DECODE_FAILURES as again:  # the located offset was not the first bad one
            messages, exc = head, again


def _poison_index(decoder: Decoder, messages: Sequence[RawMessage], exc: Exception) -> int:
    offset = exc.details.get("offset") if isinstance(exc, DecodeError) else None
    for i, m in enumerate(messages):
        if m.offset == offset:
            return i
    for i, m in enumerate(messages):  # not located: decode one at a time to find it
        try:
            decoder([m])
        except DECODE_FAILURES:
            return i
    return 0  # only the combination fails: stop at the batch's first event


def failure_of(message: RawMessage, generation: int, exc: Exception) -> PartitionFailure:
    details = exc.details if isinstance(exc, DecodeError) else {}
    column = details.get("column")
    error = exc.message if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
    return PartitionFailure(
        topic=message.topic, partition=message.partition, generation=generation,
        offset=message.offset, error=error[:1000],
        column=str(column) if column is not None else None,
        pg_type=str(details["pg_type"]) if details.get("pg_type") else None,
        value=_sent_value(message.value, str(column)) if column is not None else None)


def _sent_value(value: bytes | None, column: str) -> str | None:
    """The column's value in the event's after (else before) image, as JSON text."""
    try:
        payload = orjson.loads(value or b"null")["payload"]
        for image in ("after", "before"):
            row = payload.get(image) or {}
            if column in row:
                text = orjson.dumps(row[column]).decode()
                return text if len(text) <= 200 else text[:197] + "..."
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return None


def poison_error(failures: Sequence[PartitionFailure]) -> PoisonEventError:
    """The loud stop for partitions held at an undecodable event."""
    listed = "; ".join(f.describe() for f in failures)
    return PoisonEventError(
        f"archiving is stopped for {len(failures)} partition(s) at an event tidelog cannot "
        f"decode: {listed}. Every other partition was archived. Nothing after the event is "
        "archived until it decodes: upgrade tidelog if this type is fixed there, or report "
        "the value; fixing the row in Postgres does not remove the event from the log",
        failures=[f.to_json() for f in failures])
