"""Debezium's scalar encodings to exact Python values: one function per encoding.

`cdc.types` picks, per column, which of these converts a value (`ColumnType.to_python`)
and how a whole column becomes Arrow; the rules and their reasons are in its docstring
and in docs/types.md. Every function here either returns the exact value Postgres held or
raises (ValueError, DecodeError); none clamps, rounds or guesses.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

__all__ = [
    "canonical_json",
    "TS_INFINITY",
    "DATE_INFINITY",
    "BIG_SCALE",
    "DBZ_TS_POS_US",
    "PG_MAX_DAYS",
    "PG_MIN_DAYS",
    "PG_MIN_US",
    "PG_SPECIAL_TEXT",
    "SPECIAL_SPELLINGS",
    "TIME_US_PER_UNIT",
    "clamp_days",
    "clamp_ts_us",
    "pg_interval_text",
    "pg_numeric_text",
    "py_base64",
    "py_bit_text",
    "py_bounded_decimal",
    "py_bpchar",
    "py_connect_decimal",
    "py_date",
    "py_decimal",
    "py_float",
    "py_integral_decimal",
    "py_json",
    "py_time_ms",
    "py_time_ns",
    "py_time_us",
    "py_timestamp_ms",
    "py_timestamp_ns",
    "py_timestamp_us",
    "py_timestamptz",
    "py_timetz",
    "py_variable_decimal",
    "time_text",
    "zoned_to_us",
]


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no spaces: one text per logical value, for keys and digests."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

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
DBZ_TS_POS_US = 9223372036825200000


_DBZ_TS_NEG_US = -9223372036832400000


# Dates: streaming (pgoutput text) and initial snapshot (JDBC) send different day counts;
# 2146033979 (+5877611-06-21) is what a fixed Debezium would send; -2147472693 was seen
# in older recordings (tests/fixtures/envelopes).
_DBZ_DATE_POS = frozenset((-2147472692, -2147472693, -622191234, 2146033979))


_DBZ_DATE_NEG = frozenset((-2147472691, -625821272))


# Postgres's own ranges: date 4714-11-24 BC .. 5874897-12-31, timestamp from 4714-11-24 BC.
PG_MIN_DAYS = -2440588


PG_MAX_DAYS = 2145042905


PG_MIN_US = PG_MIN_DAYS * 86_400_000_000


_US_PER_DAY = 86_400_000_000


BIG_SCALE = 1000  # Postgres scales lie in -1000..1000; larger ones are 2048 + a negative one


_DECIMAL_SPECIALS = {
    "NAN": Decimal("NaN"),
    "POSITIVE_INFINITY": Decimal("Infinity"),
    "NEGATIVE_INFINITY": Decimal("-Infinity"),
}


# Debezium's spelling -> Postgres's text output.
PG_SPECIAL_TEXT = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}


SPECIAL_SPELLINGS = frozenset((*PG_SPECIAL_TEXT, *PG_SPECIAL_TEXT.values()))


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


def zoned_to_us(text: str) -> int:
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


def clamp_ts_us(v: int) -> int:
    """DuckDB's µs for Debezium's: sentinels become ±infinity; overflow is an error."""
    if v == DBZ_TS_POS_US:
        return TS_INFINITY
    if v == _DBZ_TS_NEG_US:
        return -TS_INFINITY
    if v < PG_MIN_US or v >= TS_INFINITY:
        # Debezium computes epoch µs in a wrapping int64: Postgres's last 30 years
        # (after DuckDB's 294247-01-10) come out as huge negative numbers.
        raise ValueError(f"timestamp {v} µs is not a Postgres timestamp DuckDB can hold; "
                         "Postgres timestamps after 294247-01-10 are beyond DuckDB's range")
    return v


def clamp_days(v: int) -> int:
    if v in _DBZ_DATE_POS:
        return DATE_INFINITY
    if v in _DBZ_DATE_NEG:
        return -DATE_INFINITY
    if not PG_MIN_DAYS <= v <= PG_MAX_DAYS:
        raise ValueError(f"date {v} days from 1970 is neither a Postgres date nor one of "
                         "Debezium's infinity values (is the Connect worker's JVM in UTC?)")
    return v


def py_timestamptz(v: str) -> datetime:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        micros = zoned_to_us(v)
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


def py_timestamp_us(v: int) -> datetime:
    v = clamp_ts_us(v)
    if v == TS_INFINITY:
        return datetime.max
    if v == -TS_INFINITY:
        return datetime.min
    secs, us = divmod(v, 1_000_000)
    return _EPOCH + timedelta(0, secs, us)  # ~35% faster than timedelta(microseconds=v)


def py_timestamp_ms(v: int) -> datetime:
    return py_timestamp_us(v * 1000)


def py_timestamp_ns(v: int) -> datetime:
    if v >= TS_INFINITY:
        return datetime.max
    if v <= -TS_INFINITY:
        return datetime.min
    return py_timestamp_us(v // 1000)


def py_date(v: int) -> date:
    v = clamp_days(v)
    if v == DATE_INFINITY:
        return date.max
    if v == -DATE_INFINITY:
        return date.min
    return date.fromordinal(_EPOCH_ORDINAL + v)


def time_text(v: int) -> str:
    """Postgres's text for a time of day: HH:MM:SS, then the fraction without trailing 0s."""
    if not 0 <= v <= _US_PER_DAY:
        raise ValueError(f"time of day {v} µs is outside 00:00:00..24:00:00")
    secs, us = divmod(v, 1_000_000)
    mins, s = divmod(secs, 60)
    h, mi = divmod(mins, 60)
    text = f"{h:02d}:{mi:02d}:{s:02d}"
    return f"{text}.{us:06d}".rstrip("0") if us else text


TIME_US_PER_UNIT = {"time_us": (1, 1), "time_ms": (1000, 1), "time_ns": (1, 1000)}


def py_time_us(v: int) -> time:
    if not 0 <= v < _US_PER_DAY:
        raise ValueError(f"time of day {v} µs has no Python time (PostgreSQL allows 24:00:00; "
                         "the archive keeps it as the text '24:00:00')")
    secs, us = divmod(v, 1_000_000)
    mins, s = divmod(secs, 60)
    h, mi = divmod(mins, 60)
    return time(h, mi, s, us)


def py_time_ms(v: int) -> time:
    return py_time_us(v * 1000)


def py_time_ns(v: int) -> time:
    return py_time_us(v // 1000)


def py_timetz(v: str) -> time:
    t = time.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError(f"timetz without offset: {v!r}")
    return t


def py_decimal(v: str) -> Decimal:
    try:
        return Decimal(v)
    except InvalidOperation:
        special = _DECIMAL_SPECIALS.get(v)
        if special is None:
            raise ValueError(f"not a decimal: {v!r}") from None
        return special


def py_bounded_decimal(v: str) -> Decimal:
    """A numeric(p, s) value: DuckDB's DECIMAL has no NaN or infinity."""
    if v in SPECIAL_SPELLINGS:
        raise ValueError(
            f"numeric {PG_SPECIAL_TEXT.get(v, v)} cannot be held by a DECIMAL(p,s) column; "
            "keep such values out of the column (CHECK (col <> 'NaN' and col <> 'Infinity' "
            "and col <> '-Infinity')) or make it unconstrained numeric, which tidelog keeps "
            "as exact text")
    try:
        return Decimal(v)
    except InvalidOperation:
        raise ValueError(f"not a decimal: {v!r}") from None


def py_integral_decimal(v: str) -> Decimal:
    """numeric(p, -k): Debezium pads the integer with 2048 - k zero fraction digits."""
    d = py_bounded_decimal(v)
    whole = d.to_integral_value()
    if whole != d:
        raise ValueError(f"{v!r} is not an integer, but numeric with a negative scale holds "
                         "only integers")
    return Decimal(int(whole))


def pg_numeric_text(v: str) -> str:
    return PG_SPECIAL_TEXT.get(v, v)


_DBZ_INTERVAL = re.compile(r"P(-?\d+)Y(-?\d+)M(-?\d+)DT(-?\d+)H(-?\d+)M(-?\d+(?:\.\d+)?)S")


def pg_interval_text(v: str) -> str:
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


def py_bpchar(v: str) -> str:
    # Postgres ignores trailing blanks of char(n) in comparisons and drops them in ::text.
    return v.rstrip(" ")


def py_bit_text(length: int) -> Callable[[str], str]:
    def convert(v: str) -> str:
        # Debezium sends java.util.BitSet.toByteArray(): little-endian, trailing zero
        # bytes dropped; the declared length restores the leading zero bits.
        bits = int.from_bytes(binascii.a2b_base64(v, strict_mode=True), "little")
        if bits.bit_length() > length:
            raise ValueError(f"{bits.bit_length()} bits do not fit bit({length})")
        return format(bits, f"0{length}b") if length else ""

    return convert


def py_float(v: Any) -> float:
    # Jackson writes NaN/Infinity as the strings "NaN", "Infinity", "-Infinity".
    return v if v.__class__ is float else float(v)


_BIG_INT = re.compile(r"\d{19}")


def py_json(v: str) -> Any:
    # orjson turns integers beyond 64 bits into floats; jsonb numbers are arbitrary precision.
    if _BIG_INT.search(v):
        return json.loads(v)
    return orjson.loads(v)


def py_base64(v: str) -> bytes:
    return binascii.a2b_base64(v, strict_mode=True)


def py_connect_decimal(scale: int) -> Callable[[str], Decimal]:
    def convert(v: str) -> Decimal:
        unscaled = int.from_bytes(binascii.a2b_base64(v), "big", signed=True)
        return Decimal(f"{unscaled}E-{scale}")

    return convert


def py_variable_decimal(v: Mapping[str, Any]) -> Decimal:
    unscaled = int.from_bytes(binascii.a2b_base64(v["value"]), "big", signed=True)
    return Decimal(f"{unscaled}E{-int(v['scale'])}")
