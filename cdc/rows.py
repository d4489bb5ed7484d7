"""Whole rows: Debezium after-images to Arrow record batches and exact Python dicts,
and the canonical text of a row key (`__key`).

A `RowCodec` is built once per Connect schema (`cdc.types.column_type` per field) and
cached by the schema's JSON text, and by identity for dicts passed to `row_codec`: treat
schema dicts as immutable once used.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from cdc.types import ColumnType, column_type
from cdc.values import clamp_days
from tidelog.errors import DecodeError

__all__ = [
    "RowCodec",
    "row_codec",
    "rows_to_arrow",
    "codec_for_schema_text",
    "key_normaliser",
]



# Only dates: timestamp sentinels are the same in both paths, so their keys already agree
# (and keep the spelling older archives hold).
_KEY_CLAMPS: dict[str, Callable[[int], int]] = {
    "io.debezium.time.Date": clamp_days,
    "org.apache.kafka.connect.data.Date": clamp_days,
}


def key_normaliser(schema: Mapping[str, Any] | None
                   ) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """What makes one key value one `__key` text, or None when the payload already is.

    Debezium sends ±infinity dates with different day counts in the initial snapshot and
    while streaming, so a key of `'infinity'` read by the snapshot would never match its
    later delete. Mapped to DuckDB's infinities, every key value has one spelling;
    ordinary values are left exactly as sent, so existing `__key`s do not change.
    """
    if not isinstance(schema, Mapping):
        return None
    fields = schema.get("fields")
    if not isinstance(fields, list):
        return None
    clamps = tuple((f["field"], _KEY_CLAMPS[f["name"]]) for f in fields
                   if isinstance(f, Mapping) and f.get("name") in _KEY_CLAMPS)
    if not clamps:
        return None

    def normalise(payload: dict[str, Any]) -> dict[str, Any]:
        out = payload
        for name, clamp in clamps:
            v = payload.get(name)
            if isinstance(v, int):
                try:
                    fixed = clamp(v)
                except ValueError as exc:
                    raise DecodeError(f"key column {name!r}: {exc}", column=name) from exc
                if fixed != v:
                    out = {**out, name: fixed}
        return out

    return normalise


@dataclass(frozen=True, slots=True)
class RowCodec:
    """Converters for one row struct schema (a table's `before`/`after` image)."""

    columns: tuple[ColumnType, ...]
    arrow_schema: pa.Schema
    _convert: tuple[tuple[str, Callable[[Any], Any]], ...] = field(repr=False, compare=False)
    _raw_struct: pa.StructType | None = field(repr=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def to_python(self, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A new dict with exact Python values; columns needing no conversion are copied."""
        if row is None:
            return None
        out = dict(row)
        try:
            for name, convert in self._convert:
                v = out.get(name)
                if v is not None:
                    out[name] = convert(v)
        except (ValueError, TypeError, OverflowError, KeyError, binascii.Error):
            for col in self.columns:  # slow path, only to name the culprit
                col.to_python(row.get(col.name))
            raise
        return out

    def arrays(self, rows: Sequence[Mapping[str, Any] | None]) -> list[pa.Array]:
        """One typed array per column; a None row (or a missing column) reads as null.

        Arrow's C++ converter turns the row dicts into a struct of raw JSON types in one
        pass; each column is then cast in Arrow. Only columns that need Python per value
        (bytea, structs, ...) are pulled out of the dicts in Python.
        """
        raw: Iterator[pa.Array] | None = None
        if self._raw_struct is not None:
            try:
                raw = iter(pa.array(rows, self._raw_struct).flatten())
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                raw = None  # e.g. a float column holding "NaN": convert column by column
        out = []
        for col in self.columns:
            if raw is not None and col.raw_type is not None:
                out.append(col.from_raw(next(raw)))
            else:
                name = col.name
                out.append(col.to_arrow([None if r is None else r.get(name) for r in rows]))
        return out

    def to_arrow(self, rows: Sequence[Mapping[str, Any] | None]) -> pa.Table:
        """A table of typed columns, one row per image (None = all-null row)."""
        return pa.Table.from_arrays(self.arrays(rows), schema=self.arrow_schema)


def _row_struct(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    # Accept an envelope (value) schema, whose `after`/`before` field holds the row struct.
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise DecodeError(f"schema {schema.get('name')!r} is not a struct with fields")
    by_name = {f.get("field"): f for f in fields if isinstance(f, Mapping)}
    if "op" in by_name and ("after" in by_name or "before" in by_name):
        inner = by_name.get("after") or by_name["before"]
        return inner
    return schema


def _build_codec(schema: Mapping[str, Any]) -> RowCodec:
    struct = _row_struct(schema)
    fields = struct.get("fields")
    if not isinstance(fields, list):
        raise DecodeError(f"row schema {struct.get('name')!r} has no fields")
    columns = tuple(column_type(f) for f in fields)
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise DecodeError(f"row schema {struct.get('name')!r} repeats a column name")
    arrow_schema = pa.schema([c.field() for c in columns])
    convert = tuple((c.name, c.py) for c in columns if c.py is not None)
    raw = [pa.field(c.name, c.raw_type) for c in columns if c.raw_type is not None]
    return RowCodec(columns, arrow_schema, convert, pa.struct(raw) if raw else None)


_CACHE_LIMIT = 512


_BY_TEXT: dict[bytes, RowCodec] = {}


_BY_ID: dict[int, tuple[Mapping[str, Any], RowCodec]] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()  # schemas change rarely; a full cache means churn, not a working set
    cache[key] = value


def codec_for_schema_text(text: bytes, schema: Mapping[str, Any] | None = None) -> RowCodec:
    """Codec keyed by the schema's exact JSON bytes, as found in the message (no re-dump)."""
    codec = _BY_TEXT.get(text)
    if codec is None:
        codec = _build_codec(schema if schema is not None else orjson.loads(text))
        _remember(_BY_TEXT, text, codec)
    return codec


def row_codec(schema: Mapping[str, Any]) -> RowCodec:
    """The cached codec for a row struct schema or a whole envelope value schema."""
    hit = _BY_ID.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    codec = codec_for_schema_text(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), schema)
    # Holding the schema keeps its id from being reused while the entry lives.
    _remember(_BY_ID, id(schema), (schema, codec))
    return codec


def rows_to_arrow(rows: Sequence[Mapping[str, Any] | None], schema: Mapping[str, Any]) -> pa.Table:
    """Typed Arrow table for a table's after images, given its row or envelope schema."""
    return row_codec(schema).to_arrow(rows)
