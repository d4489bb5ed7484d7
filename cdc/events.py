"""Debezium messages decoded into change events, transaction records and heartbeats, and a
table topic's events in the archive layout.

Three kinds of message reach tidelog: change events on `<prefix>.<schema>.<table>`,
transaction metadata on `<prefix>.transaction`, and heartbeats on
`__debezium-heartbeat.<prefix>`. A tombstone is a change event's key with a null value.
The bytes are split and parsed in cdc/messages.py; the archive's column lists are
cdc/archive_columns.py.

Debezium 3.6.3 quirk (seen in recorded messages): a transaction's END carries the same
txid as its BEGIN but a different LSN part in `id` ("751:26506640" then "751:26507176");
match BEGIN/END on `TransactionEvent.txid`, and data events on their `transaction.id`,
which equals the BEGIN id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from cdc.archive_columns import ArchiveColumns, gc_paused, same_columns
from cdc.messages import (
    HEARTBEAT_TOPIC_PREFIX,
    Shape,
    envelope_parts,
    key_payload,
    located,
    split_value,
    table_from_topic,
)
from cdc.rows import RowCodec, row_codec
from cdc.values import canonical_json
from tidelog.errors import DecodeError

__all__ = [
    "ChangeEvent",
    "TransactionEvent",
    "Heartbeat",
    "HEARTBEAT_TOPIC_PREFIX",
    "decode_message",
    "decode_transaction",
    "decode_any",
    "events_to_arrow",
    "split_by_schema",
]

_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_DECODE_ERRORS = (DecodeError, KeyError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change (or tombstone) of one source table, at one Kafka position.

    `before`/`after` hold exact Python values (Decimal, datetime, UUID, ...) unless decoded
    with `typed=False`; `raw_before`/`raw_after` always hold the payload as Debezium sent
    it, which is what the archive stores. `key` is the Kafka key's payload as sent (None
    for truncates and tables without a primary key). `commit_time`/`ts_ms` come from
    `source.ts_us`/`source.ts_ms`: the commit time when streaming, the read time for
    snapshot (`r`) events. Tombstones (`op="x"`) carry only the key and position.
    """

    op: str
    key: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    topic: str
    partition: int
    offset: int
    lsn: int | None
    txid: int | None
    transaction_id: str | None
    commit_time: datetime | None
    tombstone: bool
    table: str
    ts_ms: int | None = None
    raw_before: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    raw_after: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    row_codec: RowCodec | None = field(default=None, repr=False, compare=False)

    @property
    def key_json(self) -> str | None:
        """Canonical JSON of the key payload: the identity used to replay per key."""
        return None if self.key is None else canonical_json(self.key)


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    """A BEGIN or END record from the transaction metadata topic."""

    topic: str
    partition: int
    offset: int
    status: str
    id: str
    event_count: int | None
    data_collections: tuple[tuple[str, int], ...]
    ts_ms: int | None
    commit_time: datetime | None

    @property
    def txid(self) -> int | None:
        """Postgres txid: the stable part of `id` (the LSN part differs BEGIN vs END)."""
        head = self.id.split(":", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def lsn(self) -> int | None:
        parts = self.id.split(":", 1)
        return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None

    @property
    def counts(self) -> dict[str, int]:
        """Events per table ("schema.table") in this transaction; empty for BEGIN."""
        return dict(self.data_collections)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A connector heartbeat: proof of liveness, carries no row."""

    topic: str
    partition: int
    offset: int
    server_name: str | None
    ts_ms: int | None

    @property
    def time(self) -> datetime | None:
        return None if self.ts_ms is None else _EPOCH_UTC + timedelta(milliseconds=self.ts_ms)


# --------------------------------------------------------------------------- decoding


def decode_message(topic: str, partition: int, offset: int, key_bytes: bytes | None,
                   value_bytes: bytes | None, *, typed: bool = True) -> ChangeEvent | Heartbeat:
    """Decode a change event or tombstone (a heartbeat is returned as `Heartbeat`).

    `typed=False` skips the Python value conversion: `before`/`after` are then the raw
    payload images, which is all the archive needs. Malformed input raises DecodeError
    naming `topic[partition]@offset` (also in its `details`).
    """
    try:
        result = _decode(topic, partition, offset, key_bytes, value_bytes, typed)
    except _DECODE_ERRORS as exc:
        raise located(exc, topic, partition, offset) from exc
    if isinstance(result, TransactionEvent):
        raise located(DecodeError("a transaction metadata message: use decode_transaction()"),
                      topic, partition, offset)
    return result


def decode_transaction(topic: str, partition: int, offset: int, key_bytes: bytes | None,
                       value_bytes: bytes | None) -> TransactionEvent:
    """Decode a BEGIN/END message of the transaction metadata topic."""
    try:
        result = _decode(topic, partition, offset, key_bytes, value_bytes, False)
        if not isinstance(result, TransactionEvent):
            raise DecodeError("not a transaction metadata message")
    except _DECODE_ERRORS as exc:
        raise located(exc, topic, partition, offset) from exc
    return result


def decode_any(topic: str, partition: int, offset: int, key_bytes: bytes | None,
               value_bytes: bytes | None, *,
               typed: bool = True) -> ChangeEvent | TransactionEvent | Heartbeat:
    """Decode whatever Debezium message this is, for consumers of several topics."""
    try:
        return _decode(topic, partition, offset, key_bytes, value_bytes, typed)
    except _DECODE_ERRORS as exc:
        raise located(exc, topic, partition, offset) from exc


def _decode(topic: str, partition: int, offset: int, key_bytes: bytes | None,
            value_bytes: bytes | None, typed: bool) -> ChangeEvent | TransactionEvent | Heartbeat:
    if value_bytes is None:
        if topic.startswith(HEARTBEAT_TOPIC_PREFIX):
            raise DecodeError("heartbeat message without a value")
        key = key_payload(topic, key_bytes)
        if key is None:
            raise DecodeError("tombstone (null value) without a key")
        return ChangeEvent("x", key, None, None, topic, partition, offset, None, None, None,
                           None, True, table_from_topic(topic))

    shape, payload = split_value(topic, value_bytes)
    if not isinstance(payload, dict):
        raise DecodeError(f"payload is {type(payload).__name__}, expected an object")
    kind = shape.kind
    if kind == "envelope":
        return _change_event(shape, payload, topic, partition, offset, key_bytes, typed)
    if kind == "heartbeat" or topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        key = key_payload(topic, key_bytes)
        server = key.get("serverName") if key else None
        return Heartbeat(topic, partition, offset, server, payload.get("ts_ms"))
    if kind == "transaction":
        return _transaction_event(payload, topic, partition, offset)
    raise DecodeError(f"value schema {shape.name!r} is not a Debezium change event envelope")


def _commit_time(source: Mapping[str, Any]) -> datetime | None:
    ts_us = source.get("ts_us")
    if ts_us is not None:
        return _EPOCH_UTC + timedelta(microseconds=ts_us)
    ts_ms = source.get("ts_ms")
    return None if ts_ms is None else _EPOCH_UTC + timedelta(milliseconds=ts_ms)


def _change_event(shape: Shape, payload: dict[str, Any], topic: str, partition: int,
                  offset: int, key_bytes: bytes | None, typed: bool) -> ChangeEvent:
    op, source, raw_after = envelope_parts(payload)
    raw_before = payload.get("before")
    tx = payload.get("transaction")
    commit = _commit_time(source)
    codec = shape.codec
    if typed and codec is not None:
        before = codec.to_python(raw_before)
        after = codec.to_python(raw_after)
    else:
        before, after = raw_before, raw_after
    return ChangeEvent(
        op,
        key_payload(topic, key_bytes),
        before,
        after,
        topic,
        partition,
        offset,
        source.get("lsn"),
        source.get("txId"),
        tx.get("id") if tx else None,
        commit,
        False,
        f"{source['schema']}.{source['table']}",
        source.get("ts_ms"),
        raw_before,
        raw_after,
        codec,
    )


def _transaction_event(payload: dict[str, Any], topic: str, partition: int,
                       offset: int) -> TransactionEvent:
    status = payload["status"]
    if status not in ("BEGIN", "END"):
        raise DecodeError(f"transaction status {status!r} is neither BEGIN nor END")
    collections = tuple((str(c["data_collection"]), int(c["event_count"]))
                        for c in payload.get("data_collections") or ())
    ts_ms = payload.get("ts_ms")
    commit = None if ts_ms is None else _EPOCH_UTC + timedelta(milliseconds=ts_ms)
    return TransactionEvent(topic, partition, offset, status, str(payload["id"]),
                            payload.get("event_count"), collections, ts_ms, commit)


# --------------------------------------------------------------------------- archive layout


def split_by_schema(events: Iterable[ChangeEvent]) -> list[list[ChangeEvent]]:
    """Consecutive runs of events whose after images share one Arrow schema.

    A table's schema changes (ALTER TABLE) mid-batch; each run becomes its own segment.
    Tombstones carry no schema and stay in the run they fall in.
    """
    runs: list[list[ChangeEvent]] = []
    current: RowCodec | None = None
    for ev in events:
        codec = ev.row_codec
        if not runs or (codec is not None and current is not None
                        and not same_columns(current, codec)):
            runs.append([])
        if codec is not None:
            current = codec
        runs[-1].append(ev)
    return runs


def _add_message(columns: ArchiveColumns, topic: str, partition: int, offset: int,
                 key: bytes | None, value: bytes | None) -> None:
    if value is not None:
        columns.add_raw(topic, partition, offset, key, value)
        return
    tombstone = decode_message(topic, partition, offset, key, None, typed=False)
    assert isinstance(tombstone, ChangeEvent)  # a null value is never a heartbeat
    columns.add_event(tombstone)


def events_to_arrow(items: Iterable[Any], *,
                    value_schema: Mapping[str, Any] | None = None) -> pa.Table:
    """One table topic's events in the archive layout of docs/archive.md.

    `items` are ChangeEvents or raw messages (objects with topic, partition, offset, key,
    value, like `cdc.reader.RawMessage`, or 5-tuples in that order); heartbeats and
    transaction messages produce no rows. Column types come from the events' value
    schema, or `value_schema` (envelope or row schema) when given, e.g. for a batch of
    only tombstones. Raises DecodeError if the batch mixes topics or schemas.
    """
    columns = ArchiveColumns(row_codec(value_schema) if value_schema is not None else None)
    with gc_paused():
        for item in items:
            if isinstance(item, ChangeEvent):
                columns.add_event(item)
            elif isinstance(item, Heartbeat | TransactionEvent):
                continue
            elif isinstance(item, tuple):
                _add_message(columns, *item)
            else:
                _add_message(columns, item.topic, item.partition, item.offset, item.key,
                             item.value)
        return columns.to_table()
