"""Decode Debezium messages (JsonConverter, schemas enabled) into change events.

Three kinds of message reach tidelog: change events on `<prefix>.<schema>.<table>`,
transaction metadata on `<prefix>.transaction`, and heartbeats on
`__debezium-heartbeat.<prefix>`. A change event's value is
`{"schema": <Envelope>, "payload": {"before", "after", "source", "transaction", "op", ...}}`;
a tombstone is the same key with a null value.

Speed: with schemas on, the schema is ~5/6 of every message and is identical from one
message to the next. JsonConverter writes `{"schema":<S>,"payload":<P>}` without spaces, and
`,"payload":` cannot occur inside a JSON string (the quote would be escaped), so we split
the bytes there, look the schema up by its exact bytes, and parse only the payload. Anything
that does not fit that shape falls back to a full parse, which also produces the errors.

Debezium 3.6.3 quirk (seen in recorded messages): a transaction's END carries the same
txid as its BEGIN but a different LSN part in `id` ("751:26506640" then "751:26507176");
match BEGIN/END on `TransactionEvent.txid`, and data events on their `transaction.id`,
which equals the BEGIN id.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from cdc.columns import (
    METADATA_COLUMNS,
    METADATA_NAMES,
    SALT,
    TRUNCATE_OP,
    UPSERT_OPS,
)
from cdc.rows import RowCodec, codec_for_schema_text, key_normaliser, row_codec
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

HEARTBEAT_TOPIC_PREFIX = "__debezium-heartbeat"

_OPS = frozenset((*UPSERT_OPS, "d", TRUNCATE_OP))  # what Debezium itself sends
_NEEDS_AFTER = frozenset(UPSERT_OPS)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)

_HEARTBEAT_SCHEMA = "io.debezium.connector.common.Heartbeat"
_TRANSACTION_SCHEMA = "io.debezium.connector.common.TransactionMetadataValue"


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


# --------------------------------------------------------------------------- value shapes


@dataclass(frozen=True, slots=True)
class _Shape:
    kind: str  # "envelope" | "heartbeat" | "transaction" | "other"
    name: str | None
    codec: RowCodec | None


_PREFIX = b'{"schema":'
_SEP = b',"payload":'
_CLOSE = 0x7D  # "}"
_CACHE_LIMIT = 1024
_SHAPES: dict[bytes, _Shape] = {}
_LAST: dict[str, tuple[bytes, _Shape]] = {}
_KeyNormaliser = Callable[[dict[str, Any]], dict[str, Any]] | None
_KEY_LAST: dict[str, tuple[bytes, _KeyNormaliser]] = {}


def _shape_of(text: bytes, schema: Any) -> _Shape:
    shape = _SHAPES.get(text)
    if shape is not None:
        return shape
    if not isinstance(schema, Mapping):
        raise DecodeError("value has no Connect schema: enable value.converter.schemas.enable")
    name = schema.get("name")
    fields = {f.get("field") for f in schema.get("fields") or () if isinstance(f, Mapping)}
    if name == _HEARTBEAT_SCHEMA:
        shape = _Shape("heartbeat", name, None)
    elif name == _TRANSACTION_SCHEMA or {"status", "id", "data_collections"} <= fields:
        shape = _Shape("transaction", name, None)
    elif "op" in fields and ("after" in fields or "before" in fields):
        shape = _Shape("envelope", name, codec_for_schema_text(text, schema))
    else:
        shape = _Shape("other", name, None)
    if len(_SHAPES) >= _CACHE_LIMIT:
        _SHAPES.clear()
    _SHAPES[text] = shape
    return shape


def _split_value(topic: str, value: bytes) -> tuple[_Shape, Any]:
    last = _LAST.get(topic)
    if last is not None and value.startswith(last[0]) and value[-1] == _CLOSE:
        try:
            return last[1], orjson.loads(memoryview(value)[len(last[0]):-1])
        except orjson.JSONDecodeError:
            pass  # the full parse below reports it
    if value.startswith(_PREFIX) and value[-1:] == b"}":
        idx = value.find(_SEP, len(_PREFIX))
        if idx > 0:
            text = value[len(_PREFIX):idx]
            shape = _SHAPES.get(text)
            try:
                if shape is None:
                    shape = _shape_of(text, orjson.loads(text))
                payload = orjson.loads(memoryview(value)[idx + len(_SEP):-1])
            except orjson.JSONDecodeError:
                pass
            else:
                if len(_LAST) >= _CACHE_LIMIT:
                    _LAST.clear()
                _LAST[topic] = (value[:idx + len(_SEP)], shape)
                return shape, payload
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"value is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "schema" not in doc or "payload" not in doc:
        raise DecodeError("value is not {\"schema\", \"payload\"}: enable "
                          "value.converter.schemas.enable on the connector")
    schema = doc["schema"]
    text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    return _shape_of(text, schema), doc["payload"]


def _key_payload(topic: str, key: bytes | None) -> dict[str, Any] | None:
    if key is None:
        return None
    last = _KEY_LAST.get(topic)
    if last is not None and key.startswith(last[0]) and key[-1] == _CLOSE:
        try:
            payload = orjson.loads(memoryview(key)[len(last[0]):-1])
        except orjson.JSONDecodeError:
            pass
        else:
            if payload is None:
                return None
            if isinstance(payload, dict):
                return payload if last[1] is None else last[1](payload)
    try:
        doc = orjson.loads(key)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"key is not valid JSON: {exc}") from exc
    if doc is None:
        return None
    if not isinstance(doc, dict) or "payload" not in doc:
        raise DecodeError("key is not {\"schema\", \"payload\"}: enable "
                          "key.converter.schemas.enable on the connector")
    payload = doc["payload"]
    if payload is not None and not isinstance(payload, dict):
        raise DecodeError(f"key payload is a {type(payload).__name__}, expected an object")
    normalise = key_normaliser(doc.get("schema"))
    idx = key.find(_SEP, len(_PREFIX))
    if key.startswith(_PREFIX) and idx > 0 and key[-1] == _CLOSE:
        # Same split as for values; verified here by the full parse of this key.
        try:
            schema_ok = orjson.loads(key[len(_PREFIX):idx]) == doc["schema"]
        except orjson.JSONDecodeError:
            schema_ok = False
        if schema_ok:
            if len(_KEY_LAST) >= _CACHE_LIMIT:
                _KEY_LAST.clear()
            _KEY_LAST[topic] = (key[:idx + len(_SEP)], normalise)
    if payload is not None and normalise is not None:
        payload = normalise(payload)
    return payload


def _table_from_topic(topic: str) -> str:
    parts = topic.rsplit(".", 2)
    return ".".join(parts[-2:]) if len(parts) >= 3 else topic


def _located(exc: BaseException, topic: str, partition: int, offset: int) -> DecodeError:
    message = exc.message if isinstance(exc, DecodeError) else f"malformed message: {exc!r}"
    details = dict(exc.details) if isinstance(exc, DecodeError) else {}
    details.update(topic=topic, partition=partition, offset=offset)
    return DecodeError(f"cannot decode {topic}[{partition}]@{offset}: {message}", **details)


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
    except (DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _located(exc, topic, partition, offset) from exc
    if isinstance(result, TransactionEvent):
        raise _located(DecodeError("a transaction metadata message: use decode_transaction()"),
                       topic, partition, offset)
    return result


def decode_transaction(topic: str, partition: int, offset: int, key_bytes: bytes | None,
                       value_bytes: bytes | None) -> TransactionEvent:
    """Decode a BEGIN/END message of the transaction metadata topic."""
    try:
        result = _decode(topic, partition, offset, key_bytes, value_bytes, False)
        if not isinstance(result, TransactionEvent):
            raise DecodeError("not a transaction metadata message")
    except (DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _located(exc, topic, partition, offset) from exc
    return result


def decode_any(topic: str, partition: int, offset: int, key_bytes: bytes | None,
               value_bytes: bytes | None, *,
               typed: bool = True) -> ChangeEvent | TransactionEvent | Heartbeat:
    """Decode whatever Debezium message this is, for consumers of several topics."""
    try:
        return _decode(topic, partition, offset, key_bytes, value_bytes, typed)
    except (DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _located(exc, topic, partition, offset) from exc


def _decode(topic: str, partition: int, offset: int, key_bytes: bytes | None,
            value_bytes: bytes | None, typed: bool) -> ChangeEvent | TransactionEvent | Heartbeat:
    if value_bytes is None:
        if topic.startswith(HEARTBEAT_TOPIC_PREFIX):
            raise DecodeError("heartbeat message without a value")
        key = _key_payload(topic, key_bytes)
        if key is None:
            raise DecodeError("tombstone (null value) without a key")
        return ChangeEvent("x", key, None, None, topic, partition, offset, None, None, None,
                           None, True, _table_from_topic(topic))

    shape, payload = _split_value(topic, value_bytes)
    if not isinstance(payload, dict):
        raise DecodeError(f"payload is {type(payload).__name__}, expected an object")
    kind = shape.kind
    if kind == "envelope":
        return _change_event(shape, payload, topic, partition, offset, key_bytes, typed)
    if kind == "heartbeat" or topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        key = _key_payload(topic, key_bytes)
        server = key.get("serverName") if key else None
        return Heartbeat(topic, partition, offset, server, payload.get("ts_ms"))
    if kind == "transaction":
        return _transaction_event(payload, topic, partition, offset)
    raise DecodeError(f"value schema {shape.name!r} is not a Debezium change event envelope")


def _change_event(shape: _Shape, payload: dict[str, Any], topic: str, partition: int,
                  offset: int, key_bytes: bytes | None, typed: bool) -> ChangeEvent:
    op = payload["op"]
    if op not in _OPS:
        raise DecodeError(f"unsupported op {op!r} (tidelog reads r, c, u, d, t)")
    source = payload["source"]
    raw_before = payload.get("before")
    raw_after = payload.get("after")
    if op in _NEEDS_AFTER and raw_after is None:
        raise DecodeError(f"op {op!r} without an after image")
    tx = payload.get("transaction")
    ts_ms = source.get("ts_ms")
    ts_us = source.get("ts_us")
    if ts_us is not None:
        commit: datetime | None = _EPOCH_UTC + timedelta(microseconds=ts_us)
    elif ts_ms is not None:
        commit = _EPOCH_UTC + timedelta(milliseconds=ts_ms)
    else:
        commit = None
    codec = shape.codec
    if typed and codec is not None:
        before = codec.to_python(raw_before)
        after = codec.to_python(raw_after)
    else:
        before, after = raw_before, raw_after
    return ChangeEvent(
        op,
        _key_payload(topic, key_bytes),
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
        ts_ms,
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


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Bulk decoding allocates millions of acyclic dicts and lists; the cyclic collector
    # would rescan them over and over (measured: ~2x slower batches). Refcounting frees them.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _same_columns(a: RowCodec, b: RowCodec) -> bool:
    return a is b or a.arrow_schema.equals(b.arrow_schema, check_metadata=True)


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
                        and not _same_columns(current, codec)):
            runs.append([])
        if codec is not None:
            current = codec
        runs[-1].append(ev)
    return runs


class _Batch:
    """Column lists of the archive layout, filled from events or straight from bytes."""

    def __init__(self, expected: RowCodec | None) -> None:
        self.expected = expected
        self.codec = expected
        self.topic: str | None = None
        self.table: str | None = None
        # One tuple per event in METADATA_COLUMNS order: cheaper than nine appends.
        self.meta: list[tuple[Any, ...]] = []
        self.rows: list[dict[str, Any] | None] = []

    def _check(self, topic: str, partition: int, offset: int, codec: RowCodec | None) -> None:
        if self.topic is None:
            self.topic = topic
        elif topic != self.topic:
            raise _located(DecodeError(f"batch mixes topics {self.topic!r} and {topic!r}"),
                           topic, partition, offset)
        if codec is not None:
            if self.codec is None:
                self.codec = codec
            elif not _same_columns(self.codec, codec):
                raise _located(DecodeError("the table's columns change here; split the batch "
                                           "with split_by_schema()"), topic, partition, offset)
            elif self.expected is None:
                self.codec = codec  # keeps the `is` fast path in _same_columns hot

    def _append(self, partition: int, offset: int, op: str, key: dict[str, Any] | None,
                lsn: int | None, txid: int | None, tx: str | None, ts_ms: int | None,
                before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        self.meta.append((partition, offset, op,
                          None if key is None else canonical_json(key),
                          lsn, txid, tx, ts_ms,
                          None if before is None else canonical_json(before)))
        self.rows.append(after)

    def add_event(self, ev: ChangeEvent) -> None:
        self._check(ev.topic, ev.partition, ev.offset, ev.row_codec)
        if self.table is None and not ev.tombstone:
            self.table = ev.table
        self._append(ev.partition, ev.offset, ev.op, ev.key, ev.lsn, ev.txid,
                     ev.transaction_id, ev.ts_ms, ev.raw_before, ev.raw_after)

    def add_raw(self, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None) -> None:
        """The archive's hot path: bytes to column lists, no per-event objects."""
        try:
            if value is None:
                tombstone = _decode(topic, partition, offset, key, value, False)
                assert isinstance(tombstone, ChangeEvent)
                self.add_event(tombstone)
                return
            shape, payload = _split_value(topic, value)
            if shape.kind != "envelope":
                if shape.kind in ("heartbeat", "transaction"):
                    return
                raise DecodeError(f"value schema {shape.name!r} is not a change event envelope")
            op = payload["op"]
            if op not in _OPS:
                raise DecodeError(f"unsupported op {op!r} (tidelog reads r, c, u, d, t)")
            source = payload["source"]
            after = payload.get("after")
            if op in _NEEDS_AFTER and after is None:
                raise DecodeError(f"op {op!r} without an after image")
            tx = payload.get("transaction")
            self._check(topic, partition, offset, shape.codec)
            if self.table is None:
                self.table = f"{source['schema']}.{source['table']}"
            self._append(partition, offset, op, _key_payload(topic, key), source.get("lsn"),
                         source.get("txId"), tx.get("id") if tx else None, source.get("ts_ms"),
                         payload.get("before"), after)
        except DecodeError as exc:
            if "offset" in exc.details:
                raise
            raise _located(exc, topic, partition, offset) from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _located(exc, topic, partition, offset) from exc

    def to_table(self) -> pa.Table:
        columns = list(zip(*self.meta, strict=True)) or [()] * len(METADATA_COLUMNS)
        arrays = [pa.array(values, t)
                  for values, (_, t) in zip(columns, METADATA_COLUMNS, strict=True)]
        fields = [pa.field(name, t) for name, t in METADATA_COLUMNS]
        codec = self.codec
        if codec is not None:
            clash = (METADATA_NAMES | {SALT}).intersection(codec.arrow_schema.names)
            if clash:
                raise DecodeError(f"source columns {sorted(clash)} of {self.topic} collide "
                                  "with the archive's metadata columns")
            arrays.extend(self._data_arrays(codec))
            fields.extend(codec.arrow_schema)
        topic = self.topic or ""
        metadata = {"tidelog.topic": topic,
                    "tidelog.table": self.table or (_table_from_topic(topic) if topic else "")}
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))

    def _data_arrays(self, codec: RowCodec) -> list[pa.Array]:
        try:
            return codec.arrays(self.rows)
        except DecodeError as exc:
            topic = self.topic or ""
            for meta, row in zip(self.meta, self.rows, strict=True):
                partition, offset = meta[0], meta[1]
                try:
                    codec.arrays([row])
                except DecodeError as one:
                    raise _located(one, topic, partition, offset) from exc
            raise


def events_to_arrow(items: Iterable[Any], *,
                    value_schema: Mapping[str, Any] | None = None) -> pa.Table:
    """One table topic's events in the archive layout of docs/archive.md.

    `items` are ChangeEvents or raw messages (objects with topic, partition, offset, key,
    value, like `cdc.reader.RawMessage`, or 5-tuples in that order); heartbeats and
    transaction messages produce no rows. Column types come from the events' value
    schema, or `value_schema` (envelope or row schema) when given, e.g. for a batch of
    only tombstones. Raises DecodeError if the batch mixes topics or schemas.
    """
    batch = _Batch(row_codec(value_schema) if value_schema is not None else None)
    with _gc_paused():
        for item in items:
            if isinstance(item, ChangeEvent):
                batch.add_event(item)
            elif isinstance(item, Heartbeat | TransactionEvent):
                continue
            elif isinstance(item, tuple):
                batch.add_raw(*item)
            else:
                batch.add_raw(item.topic, item.partition, item.offset, item.key, item.value)
        return batch.to_table()
