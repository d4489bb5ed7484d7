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

Codecs are cached per schema (by its JSON text, and by identity for dicts passed to
`row_codec`): treat schema dicts as immutable once used.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tidelog.errors import DecodeError

__all__ = [
    "PG_TYPE_KEY",
    "ColumnType",
    "RowCodec",
    "column_type",
    "arrow_field",
    "python_converter",
    "row_codec",
    "rows_to_arrow",
    "codec_for_schema_text",
    "canonical_json",
    "key_normaliser",
    "TS_INFINITY",
    "DATE_INFINITY",
]

PG_TYPE_KEY = "tidelog.pg_type"

_SRC_TYPE = "__debezium.source.column.type"
_SRC_LENGTH = "__debezium.source.column.length"
_SRC_SCALE = "__debezium.source.column.scale"

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_UTC = datetime.max.replace(tzinfo=UTC)
_MIN_UTC = datetime.min.replace(tzinfo=UTC)

# DuckDB's (and so the archive's) representation of ±infinity.
TS_INFINITY = 2**63 - 1
DATE_INFINITY = 2**31 - 1
# What Debezium 3.6.3 sends for PostgreSQL ±infinity (PGStatement.DATE_*_INFINITY as µs;
# LocalDate -5877611-06-21 for +infinity, a known Debezium bug, -5877611-06-22 for -infinity;
# +5877611-06-21 once the bug is fixed).
_DBZ_TS_POS_US = 9223372036825200000
_DBZ_TS_NEG_US = -9223372036832400000
# Dates: streaming (pgoutput text) and initial snapshot (JDBC) send different day counts;
# 2146033979 (+5877611-06-21) is what a fixed Debezium would send; -2147472693 was seen
# in older recordings (tests/fixtures/envelopes).
_DBZ_DATE_POS = frozenset((-2147472692, -2147472693, -622191234, 2146033979))
_DBZ_DATE_NEG = frozenset((-2147472691, -625821272))
# Postgres's own ranges: date 4714-11-24 BC .. 5874897-12-31, timestamp from 4714-11-24 BC.
_PG_MIN_DAYS = -2440588
_PG_MAX_DAYS = 2145042905
_PG_MIN_US = _PG_MIN_DAYS * 86_400_000_000
_US_PER_DAY = 86_400_000_000
_BIG_SCALE = 1000  # Postgres scales lie in -1000..1000; larger ones are 2048 + a negative one

_DECIMAL_SPECIALS = {
    "NAN": Decimal("NaN"),
    "POSITIVE_INFINITY": Decimal("Infinity"),
    "NEGATIVE_INFINITY": Decimal("-Infinity"),
}
# Debezium's spelling -> Postgres's text output.
_PG_SPECIAL_TEXT = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}
_SPECIAL_SPELLINGS = frozenset((*_PG_SPECIAL_TEXT, *_PG_SPECIAL_TEXT.values()))


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no spaces: one text per logical value, for keys and digests."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# --------------------------------------------------------------------------- scalar parsing


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Proleptic Gregorian days since 1970-01-01 for any year (Python's date stops at 9999).
    y -= m <= 2
    era = y // 400  # floor division already rounds down for negative years
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


_ISO_TS = re.compile(
    r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d\d(?::?\d\d(?::?\d\d)?)?)"
)


def _zoned_to_us(text: str) -> int:
    """Epoch µs of an ISO-8601 timestamp with offset, any year Postgres and DuckDB share."""
    if text == "infinity":
        return TS_INFINITY
    if text == "-infinity":
        return -TS_INFINITY
    m = _ISO_TS.fullmatch(text)
    if m is None:
        raise ValueError(f"not an ISO-8601 timestamp with offset: {text!r}")
    year, mon, day, hh, mi, ss, frac, off = m.groups()
    days = _days_from_civil(int(year), int(mon), int(day))
    secs = days * 86400 + int(hh) * 3600 + int(mi) * 60 + int(ss or 0)
    if off != "Z":
        digits = off[1:].replace(":", "")
        shift = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60 + int(digits[4:6] or 0)
        secs -= shift if off[0] == "+" else -shift
    micros = secs * 1_000_000 + int(((frac or "") + "000000")[:6])
    if not -TS_INFINITY < micros < TS_INFINITY:
        raise ValueError(f"{text} is beyond DuckDB's timestamp range (294247-01-10); "
                         "Postgres allows up to 294276-12-31")
    return micros


def _clamp_ts_us(v: int) -> int:
    """DuckDB's µs for Debezium's: sentinels become ±infinity; overflow is an error."""
    if v == _DBZ_TS_POS_US:
        return TS_INFINITY
    if v == _DBZ_TS_NEG_US:
        return -TS_INFINITY
    if v < _PG_MIN_US or v >= TS_INFINITY:
        # Debezium computes epoch µs in a wrapping int64: Postgres's last 30 years
        # (after DuckDB's 294247-01-10) come out as huge negative numbers.
        raise ValueError(f"timestamp {v} µs is not a Postgres timestamp DuckDB can hold; "
                         "Postgres timestamps after 294247-01-10 are beyond DuckDB's range")
    return v


def _clamp_days(v: int) -> int:
    if v in _DBZ_DATE_POS:
        return DATE_INFINITY
    if v in _DBZ_DATE_NEG:
        return -DATE_INFINITY
    if not _PG_MIN_DAYS <= v <= _PG_MAX_DAYS:
        raise ValueError(f"date {v} days from 1970 is neither a Postgres date nor one of "
                         "Debezium's infinity values (is the Connect worker's JVM in UTC?)")
    return v


def _py_timestamptz(v: str) -> datetime:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        micros = _zoned_to_us(v)
        if micros == TS_INFINITY:
            return _MAX_UTC
        if micros == -TS_INFINITY:
            return _MIN_UTC
        return _EPOCH_UTC + timedelta(microseconds=micros)
    if dt.tzinfo is UTC:
        return dt
    if dt.tzinfo is None:
        raise ValueError(f"timestamptz without offset: {v!r}")
    return dt.astimezone(UTC)


def _py_timestamp_us(v: int) -> datetime:
    v = _clamp_ts_us(v)
    if v == TS_INFINITY:
        return datetime.max
    if v == -TS_INFINITY:
        return datetime.min
    secs, us = divmod(v, 1_000_000)
    return _EPOCH + timedelta(0, secs, us)  # ~35% faster than timedelta(microseconds=v)


def _py_timestamp_ms(v: int) -> datetime:
    return _py_timestamp_us(v * 1000)


def _py_timestamp_ns(v: int) -> datetime:
    if v >= TS_INFINITY:
        return datetime.max
    if v <= -TS_INFINITY:
        return datetime.min
    return _py_timestamp_us(v // 1000)


def _py_date(v: int) -> date:
    v = _clamp_days(v)
    if v == DATE_INFINITY:
        return date.max
    if v == -DATE_INFINITY:
        return date.min
    return date.fromordinal(_EPOCH_ORDINAL + v)


def _time_text(v: int) -> str:
    """Postgres's text for a time of day: HH:MM:SS, then the fraction without trailing 0s."""
    if not 0 <= v <= _US_PER_DAY:
        raise ValueError(f"time of day {v} µs is outside 00:00:00..24:00:00")
    secs, us = divmod(v, 1_000_000)
    mins, s = divmod(secs, 60)
    h, mi = divmod(mins, 60)
    text = f"{h:02d}:{mi:02d}:{s:02d}"
    return f"{text}.{us:06d}".rstrip("0") if us else text


_TIME_US_PER_UNIT = {"time_us": (1, 1), "time_ms": (1000, 1), "time_ns": (1, 1000)}


def _py_time_us(v: int) -> time:
    if not 0 <= v < _US_PER_DAY:
        raise ValueError(f"time of day {v} µs has no Python time (PostgreSQL allows 24:00:00; "
                         "the archive keeps it as the text '24:00:00')")
    secs, us = divmod(v, 1_000_000)
    mins, s = divmod(secs, 60)
    h, mi = divmod(mins, 60)
    return time(h, mi, s, us)


def _py_time_ms(v: int) -> time:
    return _py_time_us(v * 1000)


def _py_time_ns(v: int) -> time:
    return _py_time_us(v // 1000)


def _py_timetz(v: str) -> time:
    t = time.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError(f"timetz without offset: {v!r}")
    return t


def _py_decimal(v: str) -> Decimal:
    try:
        return Decimal(v)
    except InvalidOperation:
        special = _DECIMAL_SPECIALS.get(v)
        if special is None:
            raise ValueError(f"not a decimal: {v!r}") from None
        return special


def _py_bounded_decimal(v: str) -> Decimal:
    """A numeric(p, s) value: DuckDB's DECIMAL has no NaN or infinity."""
    if v in _SPECIAL_SPELLINGS:
        raise ValueError(
            f"numeric {_PG_SPECIAL_TEXT.get(v, v)} cannot be held by a DECIMAL(p,s) column; "
            "keep such values out of the column (CHECK (col <> 'NaN' and col <> 'Infinity' "
            "and col <> '-Infinity')) or make it unconstrained numeric, which tidelog keeps "
            "as exact text")
    try:
        return Decimal(v)
    except InvalidOperation:
        raise ValueError(f"not a decimal: {v!r}") from None


def _py_integral_decimal(v: str) -> Decimal:
    """numeric(p, -k): Debezium pads the integer with 2048 - k zero fraction digits."""
    d = _py_bounded_decimal(v)
    whole = d.to_integral_value()
    if whole != d:
        raise ValueError(f"{v!r} is not an integer, but numeric with a negative scale holds "
                         "only integers")
    return Decimal(int(whole))


def _pg_numeric_text(v: str) -> str:
    return _PG_SPECIAL_TEXT.get(v, v)


_DBZ_INTERVAL = re.compile(r"P(-?\d+)Y(-?\d+)M(-?\d+)DT(-?\d+)H(-?\d+)M(-?\d+(?:\.\d+)?)S")


def _pg_interval_text(v: str) -> str:
    """Debezium's 'P0Y0M-1DT0H0M0S' (interval.handling.mode=string) as Postgres prints
    the same interval with IntervalStyle=iso_8601: zero fields left out, 'PT0S' for zero."""
    m = _DBZ_INTERVAL.fullmatch(v)
    if m is None:
        return v  # already another spelling: keep exactly what was sent
    y, mo, d, h, mi = (int(g) for g in m.groups()[:5])
    secs = m.group(6)
    if "." in secs:
        # The JDBC driver keeps seconds as a double and Debezium prints nine digits of it,
        # truncated ('1.642794' arrives as '1.642793999'); Postgres holds microseconds,
        # so the nearest microsecond is the value (the error is below 1e-8 s).
        secs = format(Decimal(secs).quantize(Decimal("0.000001")), "f")
        secs = secs.rstrip("0").rstrip(".")
    if secs in ("0", "-0"):
        secs = ""
    date_part = "".join(f"{n}{u}" for n, u in ((y, "Y"), (mo, "M"), (d, "D")) if n)
    time_part = "".join(f"{n}{u}" for n, u in ((h, "H"), (mi, "M")) if n)
    if secs:
        time_part += secs + "S"
    if not date_part and not time_part:
        return "PT0S"
    return "P" + date_part + ("T" + time_part if time_part else "")


def _py_bpchar(v: str) -> str:
    # Postgres ignores trailing blanks of char(n) in comparisons and drops them in ::text.
    return v.rstrip(" ")


def _py_bit_text(length: int) -> Callable[[str], str]:
    def convert(v: str) -> str:
        # Debezium sends java.util.BitSet.toByteArray(): little-endian, trailing zero
        # bytes dropped; the declared length restores the leading zero bits.
        bits = int.from_bytes(binascii.a2b_base64(v, strict_mode=True), "little")
        if bits.bit_length() > length:
            raise ValueError(f"{bits.bit_length()} bits do not fit bit({length})")
        return format(bits, f"0{length}b") if length else ""

    return convert


def _py_float(v: Any) -> float:
    # Jackson writes NaN/Infinity as the strings "NaN", "Infinity", "-Infinity".
    return v if v.__class__ is float else float(v)


_BIG_INT = re.compile(r"\d{19}")


def _py_json(v: str) -> Any:
    # orjson turns integers beyond 64 bits into floats; jsonb numbers are arbitrary precision.
    if _BIG_INT.search(v):
        return json.loads(v)
    return orjson.loads(v)


def _py_base64(v: str) -> bytes:
    return binascii.a2b_base64(v, strict_mode=True)


def _py_connect_decimal(scale: int) -> Callable[[str], Decimal]:
    def convert(v: str) -> Decimal:
        unscaled = int.from_bytes(binascii.a2b_base64(v), "big", signed=True)
        return Decimal(f"{unscaled}E-{scale}")

    return convert


def _py_variable_decimal(v: Mapping[str, Any]) -> Decimal:
    unscaled = int.from_bytes(binascii.a2b_base64(v["value"]), "big", signed=True)
    return Decimal(f"{unscaled}E{-int(v['scale'])}")


# --------------------------------------------------------------------------- column types

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
    "float": _py_float,
    "decimal": _py_decimal,
    "numeric_text": _py_decimal,
    "integral_decimal": _py_integral_decimal,
    "bpchar": _py_bpchar,
    "interval_text": _pg_interval_text,
    "bit_text": None,  # set per column: needs the declared length
    "timestamptz": _py_timestamptz,
    "timestamp_us": _py_timestamp_us,
    "timestamp_ms": _py_timestamp_ms,
    "timestamp_ns": _py_timestamp_ns,
    "date": _py_date,
    "time_us": _py_time_us,
    "time_ms": _py_time_ms,
    "time_ns": _py_time_ns,
    "timetz": _py_timetz,
    "json": _py_json,
    "uuid": UUID,
    "bytea": _py_base64,
    "bits": _py_base64,
    "variable_decimal": _py_variable_decimal,
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
                            _py_bit_text(bit_length))
        if kind == "connect_decimal":  # decimal.handling.mode=precise: base64 unscaled bytes
            dscale = _int_param(params, "scale") or 0
            dprecision = _int_param(params, "connect.decimal.precision")
            py = _py_connect_decimal(dscale)
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
        if scale is not None and scale > _BIG_SCALE:
            scale -= 2048
        if (precision is not None and scale is not None
                and 1 <= precision <= 38 and 0 <= scale <= precision):
            return _col(col_name, pg, pa.decimal128(precision, scale), "decimal", None,
                        _py_bounded_decimal)
        if (precision is not None and scale is not None and scale < 0
                and 1 <= precision - scale <= 38 and precision < 131072):
            return _col(col_name, pg, pa.decimal128(precision - scale, 0), "integral_decimal",
                        None, _py_integral_decimal)
        return _col(col_name, pg, pa.string(), "numeric_text", None, _py_decimal)
    if kind == "text" and pg == "interval":
        return _col(col_name, pg, pa.string(), "interval_text", None, _pg_interval_text)
    if kind == "text" and pg == "bpchar":
        return _col(col_name, pg, pa.string(), "bpchar", None, _py_bpchar)
    if kind == "text" and pg == "money":
        return _col(col_name, pg, pa.string(), "numeric_text", None, _py_decimal)
    if kind == "text" and pg == "bytea":
        # binary.handling.mode=base64 (older templates) sends bytea as text; the template now
        # uses bytes (same JSON, and an unchanged TOASTed value comes as the placeholder).
        return _col(col_name, pg, pa.binary(), "bytea", None, _py_base64)
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


# --------------------------------------------------------------------------- vectorised path

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
        if pc.any(pc.is_in(arr, pa.array(sorted(_SPECIAL_SPELLINGS)))).as_py():
            for v in arr.to_pylist():
                if v is not None:
                    _py_bounded_decimal(v)  # raises, naming the value
        return arr.cast(t)
    if kind == "numeric_text":
        if pc.any(pc.is_in(arr, pa.array(sorted(_PG_SPECIAL_TEXT)))).as_py():
            return pa.array([None if v is None else _pg_numeric_text(v)
                             for v in arr.to_pylist()], t)
        return arr
    if kind == "bpchar":
        return pc.utf8_rtrim(arr, characters=" ")
    if kind == "timestamptz":
        try:
            return arr.cast(t)
        except pa.ArrowInvalid:  # ±infinity or years beyond 9999: parse those in Python
            micros = [None if v is None else _zoned_to_us(v) for v in arr.to_pylist()]
            return pa.array(micros, pa.int64()).cast(t)
    if kind in ("timestamp_us", "timestamp_ms"):
        if kind == "timestamp_ms":
            arr = pc.multiply_checked(arr, 1000)
        return _remap(arr, _PG_MIN_US, _DBZ_TS_POS_US, _clamp_ts_us).cast(t)
    if kind == "date":
        return _remap(arr, _PG_MIN_DAYS, _PG_MAX_DAYS, _clamp_days).cast(t)
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
        return pa.array([None if v is None else _py_float(v) for v in values], t)
    if kind == "timestamp_ns":
        return pa.array([None if v is None else _ns_to_us(v) for v in values], pa.int64()).cast(t)
    if kind == "bytea":
        return pa.array([None if v is None else _py_base64(v) for v in values], t)
    if kind in _TIME_US_PER_UNIT:
        mul, div = _TIME_US_PER_UNIT[kind]
        return pa.array([None if v is None else _time_text(v * mul // div) for v in values], t)
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


# --------------------------------------------------------------------------- keys

# Only dates: timestamp sentinels are the same in both paths, so their keys already agree
# (and keep the spelling older archives hold).
_KEY_CLAMPS: dict[str, Callable[[int], int]] = {
    "io.debezium.time.Date": _clamp_days,
    "org.apache.kafka.connect.data.Date": _clamp_days,
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


# --------------------------------------------------------------------------- rows


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
