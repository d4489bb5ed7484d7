"""Map Debezium's Kafka Connect field schemas to Arrow types and exact Python values.

The archive stores after-images as typed columns decided once, from the Connect schema
(docs/archive.md), so that snapshots never re-parse JSON. Two paths share one type
decision per column: `ColumnType.to_python` (one value, exact Python object) and
`ColumnType.to_arrow` (a whole column, vectorised in Arrow where possible).

Decisions that are not obvious from docs/archive.md:

Every rule here is listed per Postgres type in docs/types.md; the ones that need a why:

- numeric(p, s) becomes decimal128(p, s) only when 1 <= p <= 38 and 0 <= s <= p.
  Unconstrained numeric arrives with length 0 (snapshot) or 131089 (streaming), and
  DuckDB has no decimal wider than 38 digits, so everything else stays the exact string.
  A negative scale arrives as 2048 + s (Postgres keeps it in 11 bits) with a value padded
  to that many fraction digits: numeric(p, -k) is an integer, decimal128(p + k, 0).
- Debezium 3.6.3 sends numeric NaN/±Infinity as "NAN", "POSITIVE_INFINITY",
  "NEGATIVE_INFINITY". Text columns store Postgres's own spelling ("NaN", "Infinity",
  "-Infinity"); a decimal128 column cannot hold them, which is a DecodeError that says so.
- PostgreSQL ±infinity timestamps/dates are stored as DuckDB's infinities (±INT64_MAX µs,
  ±INT32_MAX days) and become datetime.max/min, date.max/min in Python. Debezium's
  sentinels for them differ between the initial snapshot and streaming (measured with the
  Connect worker's JVM in UTC); anything else outside Postgres's range (a wrapped int64
  for timestamps past DuckDB's year 294247) is a DecodeError, never a clamp.
- time is Postgres's own text in Arrow ('HH:MM:SS[.ffffff]', sortable as text):
  '24:00:00' is a valid Postgres time that polars, which builds snapshots, cannot hold.
  `to_python` gives a `datetime.time` and raises DecodeError for '24:00:00'.
- char(n) (bpchar) loses its trailing blanks, as Postgres's text cast and its bpchar
  comparison do; bit(n) becomes its '0'/'1' text using the declared length.
- jsonb/json stay text in Arrow (exactly as PostgreSQL rendered them); `to_python`
  parses them (ints of any size exact, other numbers as float; JSON `null` becomes None,
  like SQL NULL, so use the raw text where that difference matters).
- Arrow keeps uuid, timetz, varbit (base64) and structs (canonical JSON) as text;
  list children are named "element", as Parquet names them, so segments round-trip.

Scalar conversions are in `cdc.values`; whole rows and row keys in `cdc.rows`.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc

from cdc.values import (
    BIG_SCALE,
    DBZ_TS_POS_US,
    PG_MAX_DAYS,
    PG_MIN_DAYS,
    PG_MIN_US,
    PG_SPECIAL_TEXT,
    SPECIAL_SPELLINGS,
    TIME_US_PER_UNIT,
    TS_INFINITY,
    canonical_json,
    clamp_days,
    clamp_ts_us,
    pg_interval_text,
    pg_numeric_text,
    py_base64,
    py_bit_text,
    py_bounded_decimal,
    py_bpchar,
    py_connect_decimal,
    py_date,
    py_decimal,
    py_float,
    py_integral_decimal,
    py_json,
    py_time_ms,
    py_time_ns,
    py_time_us,
    py_timestamp_ms,
    py_timestamp_ns,
    py_timestamp_us,
    py_timestamptz,
    py_timetz,
    py_variable_decimal,
    time_text,
    zoned_to_us,
)
from tidelog.errors import DecodeError

__all__ = [
    "PG_TYPE_KEY",
    "ColumnType",
    "column_type",
    "arrow_field",
    "python_converter",
]

PG_TYPE_KEY = "tidelog.pg_type"


_SRC_TYPE = "__debezium.source.column.type"


_SRC_LENGTH = "__debezium.source.column.length"


_SRC_SCALE = "__debezium.source.column.scale"


# Connect primitive type -> (kind, arrow type, fallback pg type name)
_PRIMITIVES: dict[str, tuple[str, pa.DataType, str]] = {
    "int8": ("int", pa.int8(), "int2"),
    "int16": ("int", pa.int16(), "int2"),
    "int32": ("int", pa.int32(), "int4"),
    "int64": ("int", pa.int64(), "int8"),
    "float": ("float", pa.float32(), "float4"),
    "float32": ("float", pa.float32(), "float4"),
    "double": ("float", pa.float64(), "float8"),
    "float64": ("float", pa.float64(), "float8"),
    "boolean": ("bool", pa.bool_(), "bool"),
    "string": ("text", pa.string(), "text"),
    "bytes": ("bytea", pa.binary(), "bytea"),
}


# Debezium semantic type name -> (kind, arrow type, fallback pg type name)
_SEMANTIC: dict[str, tuple[str, pa.DataType, str]] = {
    "io.debezium.time.ZonedTimestamp": ("timestamptz", pa.timestamp("us", tz="UTC"), "timestamptz"),
    "io.debezium.time.MicroTimestamp": ("timestamp_us", pa.timestamp("us"), "timestamp"),
    "io.debezium.time.Timestamp": ("timestamp_ms", pa.timestamp("us"), "timestamp"),
    "io.debezium.time.NanoTimestamp": ("timestamp_ns", pa.timestamp("us"), "timestamp"),
    "org.apache.kafka.connect.data.Timestamp": ("timestamp_ms", pa.timestamp("us"), "timestamp"),
    "io.debezium.time.Date": ("date", pa.date32(), "date"),
    "org.apache.kafka.connect.data.Date": ("date", pa.date32(), "date"),
    "io.debezium.time.MicroTime": ("time_us", pa.string(), "time"),
    "io.debezium.time.Time": ("time_ms", pa.string(), "time"),
    "io.debezium.time.NanoTime": ("time_ns", pa.string(), "time"),
    "org.apache.kafka.connect.data.Time": ("time_ms", pa.string(), "time"),
    "io.debezium.time.ZonedTime": ("timetz", pa.string(), "timetz"),
    "io.debezium.data.Json": ("json", pa.string(), "json"),
    "io.debezium.data.Uuid": ("uuid", pa.string(), "uuid"),
    "io.debezium.data.Bits": ("bits", pa.string(), "varbit"),
    "io.debezium.time.MicroDuration": ("int", pa.int64(), "interval"),
    "io.debezium.data.VariableScaleDecimal": ("variable_decimal", pa.string(), "numeric"),
    "org.apache.kafka.connect.data.Decimal": ("connect_decimal", pa.string(), "numeric"),
}


_PY: dict[str, Callable[[Any], Any] | None] = {
    "int": None,
    "bool": None,
    "text": None,
    "struct": None,
    "float": py_float,
    "decimal": py_decimal,
    "numeric_text": py_decimal,
    "integral_decimal": py_integral_decimal,
    "bpchar": py_bpchar,
    "interval_text": pg_interval_text,
    "bit_text": None,  # set per column: needs the declared length
    "timestamptz": py_timestamptz,
    "timestamp_us": py_timestamp_us,
    "timestamp_ms": py_timestamp_ms,
    "timestamp_ns": py_timestamp_ns,
    "date": py_date,
    "time_us": py_time_us,
    "time_ms": py_time_ms,
    "time_ns": py_time_ns,
    "timetz": py_timetz,
    "json": py_json,
    "uuid": UUID,
    "bytea": py_base64,
    "bits": py_base64,
    "variable_decimal": py_variable_decimal,
}


def _int_param(params: Mapping[str, Any], key: str) -> int | None:
    raw = params.get(key)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ColumnType:
    """The archive's decision for one source column: Arrow type, pg type, converters."""

    name: str
    pg_type: str
    arrow_type: pa.DataType
    kind: str
    element: ColumnType | None = None
    py: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    raw_type: pa.DataType | None = field(default=None, compare=False, repr=False)

    def field(self) -> pa.Field:
        # Data columns are null for deletes, truncates and tombstones, so always nullable.
        return pa.field(self.name, self.arrow_type, True, {PG_TYPE_KEY: self.pg_type})

    def to_python(self, value: Any) -> Any:
        """The exact Python value for one JSON payload value (None stays None)."""
        if value is None or self.py is None:
            return value
        try:
            return self.py(value)
        except (ValueError, TypeError, OverflowError, KeyError, binascii.Error) as exc:
            raise _value_error(self, value, exc) from exc

    def to_arrow(self, values: Sequence[Any]) -> pa.Array:
        """One Arrow array for a column of JSON payload values (None is null)."""
        try:
            return _to_arrow(self, values)
        except DecodeError:
            raise
        except (pa.ArrowException, ValueError, TypeError, OverflowError, KeyError,
                binascii.Error) as exc:
            bad = _first_bad_value(self, values)
            raise _value_error(self, bad, exc) from exc

    def from_raw(self, raw: pa.Array) -> pa.Array:
        """Final-typed array from an array of the JSON values as sent (`raw_type`)."""
        try:
            return _from_raw(self, raw)
        except DecodeError:
            raise
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            bad = _first_bad_value(self, raw.to_pylist())
            raise _value_error(self, bad, exc) from exc


def _value_error(col: ColumnType, value: Any, exc: BaseException) -> DecodeError:
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return DecodeError(
        f"column {col.name!r} ({col.pg_type} -> {col.arrow_type}): cannot convert {shown}: {exc}",
        column=col.name,
        pg_type=col.pg_type,
    )


def _first_bad_value(col: ColumnType, values: Sequence[Any]) -> Any:
    for v in values:
        try:
            _to_arrow(col, [v])
        except Exception:  # only looking for the culprit, to name it
            return v
    return "<batch>"


def _col(name: str, pg: str, arrow_type: pa.DataType, kind: str, element: ColumnType | None,
         py: Callable[[Any], Any] | None) -> ColumnType:
    return ColumnType(name, pg, arrow_type, kind, element, py, _raw_type(kind, arrow_type, element))


def column_type(schema: Mapping[str, Any], name: str | None = None) -> ColumnType:
    """Decide the archive type of one Connect field schema (see docs/archive.md)."""
    col_name = name if name is not None else str(schema.get("field", ""))
    ctype = schema.get("type")
    sname = schema.get("name")
    params = schema.get("parameters") or {}
    src = params.get(_SRC_TYPE)
    pg = src.lower() if isinstance(src, str) and src else None

    if ctype == "array":
        items = schema.get("items")
        if not isinstance(items, Mapping):
            raise DecodeError(f"array column {col_name!r} has no items schema", column=col_name)
        if pg and pg.startswith("_") and not items.get("parameters"):
            # Debezium builds element schemas from the array column's own length/scale.
            items = {**items, "parameters": {**params, _SRC_TYPE: pg[1:]}}
        elem = column_type(items, col_name)
        # Parquet calls the child "element"; using it here makes the round trip exact.
        arrow_type = pa.list_(pa.field("element", elem.arrow_type))
        pg_array = pg or "_" + elem.pg_type
        convert = None if elem.py is None else _list_converter(elem.py)
        if pa.types.is_string(elem.arrow_type):
            convert = _text_list_checker(col_name, pg_array, elem.py)
        return _col(col_name, pg_array, arrow_type, "array", elem, convert)

    if isinstance(sname, str) and sname in _SEMANTIC:
        kind, arrow_type, fallback = _SEMANTIC[sname]
        py: Callable[[Any], Any] | None = _PY.get(kind)
        if kind == "bits":
            bit_length = _int_param(params, "length")
            if pg == "bit" and bit_length is not None and 0 <= bit_length < 2**31 - 1:
                return _col(col_name, pg, pa.string(), "bit_text", None,
                            py_bit_text(bit_length))
        if kind == "connect_decimal":  # decimal.handling.mode=precise: base64 unscaled bytes
            dscale = _int_param(params, "scale") or 0
            dprecision = _int_param(params, "connect.decimal.precision")
            py = py_connect_decimal(dscale)
            if dprecision is not None and 1 <= dprecision <= 38 and 0 <= dscale <= dprecision:
                arrow_type = pa.decimal128(dprecision, dscale)
        return _col(col_name, pg or fallback, arrow_type, kind, None, py)

    if ctype in ("struct", "map"):
        return _col(col_name, pg or ctype, pa.string(), "struct", None, None)

    if not isinstance(ctype, str) or ctype not in _PRIMITIVES:
        raise DecodeError(f"column {col_name!r} has unknown Connect type {ctype!r}",
                          column=col_name)
    kind, arrow_type, fallback = _PRIMITIVES[ctype]
    if kind == "text" and pg in ("numeric", "decimal"):
        precision = _int_param(params, _SRC_LENGTH)
        scale = _int_param(params, _SRC_SCALE)
        if scale is not None and scale > BIG_SCALE:
            scale -= 2048
        if (precision is not None and scale is not None
                and 1 <= precision <= 38 and 0 <= scale <= precision):
            return _col(col_name, pg, pa.decimal128(precision, scale), "decimal", None,
                        py_bounded_decimal)
        if (precision is not None and scale is not None and scale < 0
                and 1 <= precision - scale <= 38 and precision < 131072):
            return _col(col_name, pg, pa.decimal128(precision - scale, 0), "integral_decimal",
                        None, py_integral_decimal)
        return _col(col_name, pg, pa.string(), "numeric_text", None, py_decimal)
    if kind == "text" and pg == "interval":
        return _col(col_name, pg, pa.string(), "interval_text", None, pg_interval_text)
    if kind == "text" and pg == "bpchar":
        return _col(col_name, pg, pa.string(), "bpchar", None, py_bpchar)
    if kind == "text" and pg == "money":
        return _col(col_name, pg, pa.string(), "numeric_text", None, py_decimal)
    if kind == "text" and pg == "bytea":
        # binary.handling.mode=base64 (older templates) sends bytea as text; the template now
        # uses bytes (same JSON, and an unchanged TOASTed value comes as the placeholder).
        return _col(col_name, pg, pa.binary(), "bytea", None, py_base64)
    return _col(col_name, pg or fallback, arrow_type, kind, None, _PY[kind])


def _list_converter(elem: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    def convert(values: list[Any]) -> list[Any]:
        return [None if v is None else elem(v) for v in values]

    return convert


# Debezium 3.6.3 sends each inner array of a multi-dimensional text-like array (text[],
# varchar[], enum[], ...) as the JVM's name for it: '{{a,b},{c,d}}' arrives as
# ['[Ljava.lang.String;@79f87a07', '[Ljava.lang.String;@4185a5db'].
_JVM_ARRAY_NAME = r"^\[L[A-Za-z0-9_.$]+;@[0-9a-f]{1,8}$"


_JVM_ARRAY_NAME_RE = re.compile(_JVM_ARRAY_NAME)


def _multi_dimensional(col: ColumnType, sent: str) -> DecodeError:
    return DecodeError(
        f"column {col.name!r} ({col.pg_type}): Debezium sent {sent!r} for an array element, "
        "its name for an inner array: the source value has more than one dimension, which "
        "Debezium cannot carry. Keep the column to one-dimensional arrays starting at 1 "
        f"(CHECK (array_ndims({col.name}) = 1 and array_lower({col.name}, 1) = 1)), then "
        "re-create the connector, or leave the column out (`connector apply "
        "--exclude-columns`)", column=col.name, pg_type=col.pg_type)


def _check_text_elements(col: ColumnType, values: pa.Array) -> None:
    """Raise for an element that is Debezium's name for an inner array, not data."""
    if not pa.types.is_string(values.type) or len(values) == values.null_count:
        return
    hits = pc.match_substring_regex(values, _JVM_ARRAY_NAME)
    if pc.any(hits).as_py():
        raise _multi_dimensional(col, str(values.filter(hits)[0].as_py()))


def _text_list_checker(col_name: str, pg: str, elem: Callable[[Any], Any] | None
                       ) -> Callable[[list[Any]], list[Any]]:
    def check(values: list[Any]) -> list[Any]:
        for v in values:
            if isinstance(v, str) and _JVM_ARRAY_NAME_RE.match(v):
                raise _multi_dimensional(ColumnType(col_name, pg, pa.string(), "text"), v)
        return values if elem is None else [None if v is None else elem(v) for v in values]

    return check


def arrow_field(schema: Mapping[str, Any]) -> pa.Field:
    """The archive's Arrow field (with `tidelog.pg_type` metadata) for one Connect field."""
    return column_type(schema).field()


def python_converter(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A converter from one JSON payload value to its exact Python value."""
    return column_type(schema).to_python


# Kinds whose JSON value converts straight to the final Arrow type.
_RAW_IS_FINAL = frozenset(("int", "bool", "text", "json", "uuid", "timetz", "bits", "float"))


def _raw_type(kind: str, arrow_type: pa.DataType,
              element: ColumnType | None) -> pa.DataType | None:
    """Arrow type of the JSON value as sent, or None when Python must convert each value."""
    if kind in _RAW_IS_FINAL:
        return arrow_type
    if kind in ("decimal", "timestamptz", "numeric_text", "bpchar"):
        return pa.string()
    if kind in ("timestamp_us", "timestamp_ms"):
        return pa.int64()
    if kind == "date":
        return pa.int32()
    if kind == "array" and element is not None and element.raw_type is not None:
        return pa.list_(element.raw_type)
    return None


def _remap(arr: pa.Array, low: int, high: int, clamp: Callable[[int], int]) -> pa.Array:
    # Values in [low, high] are ordinary. Sentinels are rare: check min/max in Arrow, pay
    # for a Python pass only when one is present.
    if len(arr) == arr.null_count:
        return arr
    mm = pc.min_max(arr)
    if mm["min"].as_py() >= low and mm["max"].as_py() < high:
        return arr
    return pa.array([None if v is None else clamp(v) for v in arr.to_pylist()], arr.type)


def _ns_to_us(v: int) -> int:
    if v >= TS_INFINITY:
        return TS_INFINITY
    if v <= -TS_INFINITY:
        return -TS_INFINITY
    return v // 1000


def _from_raw(col: ColumnType, arr: pa.Array) -> pa.Array:
    kind = col.kind
    t = col.arrow_type
    if kind in _RAW_IS_FINAL:
        return arr
    if kind == "decimal":
        if pc.any(pc.is_in(arr, pa.array(sorted(SPECIAL_SPELLINGS)))).as_py():
            for v in arr.to_pylist():
                if v is not None:
                    py_bounded_decimal(v)  # raises, naming the value
        return arr.cast(t)
    if kind == "numeric_text":
        if pc.any(pc.is_in(arr, pa.array(sorted(PG_SPECIAL_TEXT)))).as_py():
            return pa.array([None if v is None else pg_numeric_text(v)
                             for v in arr.to_pylist()], t)
        return arr
    if kind == "bpchar":
        return pc.utf8_rtrim(arr, characters=" ")
    if kind == "timestamptz":
        try:
            return arr.cast(t)
        except pa.ArrowInvalid:  # ±infinity or years beyond 9999: parse those in Python
            micros = [None if v is None else zoned_to_us(v) for v in arr.to_pylist()]
            return pa.array(micros, pa.int64()).cast(t)
    if kind in ("timestamp_us", "timestamp_ms"):
        if kind == "timestamp_ms":
            arr = pc.multiply_checked(arr, 1000)
        return _remap(arr, PG_MIN_US, DBZ_TS_POS_US, clamp_ts_us).cast(t)
    if kind == "date":
        return _remap(arr, PG_MIN_DAYS, PG_MAX_DAYS, clamp_days).cast(t)
    if kind == "array" and col.element is not None:
        values = _from_raw(col.element, arr.values)
        _check_text_elements(col, values)
        mask = arr.is_null() if arr.null_count else None
        return pa.ListArray.from_arrays(arr.offsets, values, type=t, mask=mask)
    raise DecodeError(f"column {col.name!r}: no vectorised conversion for kind {kind!r}")


def _to_arrow(col: ColumnType, values: Sequence[Any]) -> pa.Array:
    raw = col.raw_type
    if raw is not None:
        try:
            arr = pa.array(values, raw)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Jackson writes float NaN/±Infinity as strings; everything else is an error.
            if col.kind not in ("float", "array"):
                raise
        else:
            return _from_raw(col, arr)
    return _py_to_arrow(col, values)


def _py_to_arrow(col: ColumnType, values: Sequence[Any]) -> pa.Array:
    kind = col.kind
    t = col.arrow_type
    if kind == "float":
        return pa.array([None if v is None else py_float(v) for v in values], t)
    if kind == "timestamp_ns":
        return pa.array([None if v is None else _ns_to_us(v) for v in values], pa.int64()).cast(t)
    if kind == "bytea":
        return pa.array([None if v is None else py_base64(v) for v in values], t)
    if kind in TIME_US_PER_UNIT:
        mul, div = TIME_US_PER_UNIT[kind]
        return pa.array([None if v is None else time_text(v * mul // div) for v in values], t)
    if kind in ("bit_text", "integral_decimal", "interval_text"):
        return pa.array([None if v is None else col.to_python(v) for v in values], t)
    if kind in ("connect_decimal", "variable_decimal"):
        converted = [None if v is None else col.to_python(v) for v in values]
        if pa.types.is_decimal(t):
            return pa.array(converted, t)
        return pa.array([None if v is None else str(v) for v in converted], t)
    if kind == "struct":
        return pa.array([None if v is None else canonical_json(v) for v in values], t)
    if kind == "array" and col.element is not None:
        # Flatten, convert the elements as one column, rebuild the lists.
        offsets = [0]
        mask = []
        flat: list[Any] = []
        for v in values:
            mask.append(v is None)
            if v is not None:
                flat.extend(v)
            offsets.append(len(flat))
        inner = col.element.to_arrow(flat)
        _check_text_elements(col, inner)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner, type=t,
                                        mask=pa.array(mask, pa.bool_()))
    raise DecodeError(f"column {col.name!r}: no Arrow conversion for kind {kind!r}")
