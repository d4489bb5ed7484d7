"""One table topic's change events as the column lists of the archive layout
(docs/archive.md), filled from decoded events or straight from message bytes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from cdc.columns import METADATA_COLUMNS, RESERVED_NAMES
from cdc.messages import envelope_parts, key_payload, located, split_value, table_from_topic
from cdc.rows import RowCodec
from cdc.values import canonical_json
from tidelog.errors import DecodeError

if TYPE_CHECKING:
    from cdc.events import ChangeEvent

__all__ = ["ArchiveColumns", "same_columns", "gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    # Bulk decoding allocates millions of acyclic dicts and lists; the cyclic collector
    # would rescan them over and over (measured: ~2x slower batches). Refcounting frees them.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def same_columns(a: RowCodec, b: RowCodec) -> bool:
    return a is b or a.arrow_schema.equals(b.arrow_schema, check_metadata=True)


class ArchiveColumns:
    """Column lists of the archive layout for one topic and one set of table columns."""

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
            raise located(DecodeError(f"batch mixes topics {self.topic!r} and {topic!r}"),
                          topic, partition, offset)
        if codec is not None:
            if self.codec is None:
                self.codec = codec
            elif not same_columns(self.codec, codec):
                raise located(DecodeError("the table's columns change here; split the batch "
                                          "with split_by_schema()"), topic, partition, offset)
            elif self.expected is None:
                self.codec = codec  # keeps the `is` fast path in same_columns hot

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
                value: bytes) -> None:
        """The archive's hot path: bytes to column lists, no per-event objects. Tombstones
        (a null value) go through `add_event`."""
        try:
            shape, payload = split_value(topic, value)
            if shape.kind != "envelope":
                if shape.kind in ("heartbeat", "transaction"):
                    return
                raise DecodeError(f"value schema {shape.name!r} is not a change event envelope")
            op, source, after = envelope_parts(payload)
            tx = payload.get("transaction")
            self._check(topic, partition, offset, shape.codec)
            if self.table is None:
                self.table = f"{source['schema']}.{source['table']}"
            self._append(partition, offset, op, key_payload(topic, key), source.get("lsn"),
                         source.get("txId"), tx.get("id") if tx else None, source.get("ts_ms"),
                         payload.get("before"), after)
        except DecodeError as exc:
            if "offset" in exc.details:
                raise
            raise located(exc, topic, partition, offset) from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise located(exc, topic, partition, offset) from exc

    def to_table(self) -> pa.Table:
        columns = list(zip(*self.meta, strict=True)) or [()] * len(METADATA_COLUMNS)
        arrays = [pa.array(values, t)
                  for values, (_, t) in zip(columns, METADATA_COLUMNS, strict=True)]
        fields = [pa.field(name, t) for name, t in METADATA_COLUMNS]
        codec = self.codec
        if codec is not None:
            clash = RESERVED_NAMES.intersection(codec.arrow_schema.names)
            if clash:
                raise DecodeError(f"source columns {sorted(clash)} of {self.topic} collide "
                                  "with the archive's metadata columns")
            arrays.extend(self._data_arrays(codec))
            fields.extend(codec.arrow_schema)
        topic = self.topic or ""
        metadata = {"tidelog.topic": topic,
                    "tidelog.table": self.table or (table_from_topic(topic) if topic else "")}
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
                    raise located(one, topic, partition, offset) from exc
            raise
