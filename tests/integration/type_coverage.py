"""The type-coverage table of tests/integration/test_types.py: columns, edge values, and
how a snapshot value is rendered as Postgres's own text for comparison.

Every value is compared with what Postgres itself prints for it (`col::text` with
`TimeZone=UTC`, `IntervalStyle=iso_8601`), except where docs/types.md documents a
conversion; then `Column.pg_text` is the SQL that gives the documented form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import numpy
import psycopg

from cdc.source_types import array_guard

__all__ = ["Column", "COLUMNS", "SETUP", "STREAM_ONLY", "rows_sql", "create_sql", "pg_rows",
           "snapshot_rows", "differences", "pg_array_text", "pg_temporal"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    values: tuple[str | None, ...]  # SQL literals, one per row (None: NULL)
    pg_text: str = "{c}::text"  # SQL for the expected text; {c} is the column


SETUP = (
    "drop type if exists tl_mood cascade",
    "create type tl_mood as enum ('sad', 'ok', 'happy')",
    "drop domain if exists tl_posint cascade",
    "create domain tl_posint as int check (value > 0)",
)

COLUMNS: tuple[Column, ...] = (
    Column("i2", "smallint", ("-32768", "32767", "0")),
    Column("i8", "bigint", ("-9223372036854775808", "9223372036854775807", "0")),
    Column("f4", "real", ("'NaN'", "'-Infinity'", "'3.4028235e38'", "'-0'", "'1.4e-45'")),
    Column("f8", "double precision",
           ("'NaN'", "'Infinity'", "'5e-324'", "'1.7976931348623157e308'", "'0.1'", "'-0'")),
    Column("bo", "boolean", ("true", "false")),
    Column("n", "numeric", ("'NaN'", "'Infinity'", "'-Infinity'",
                            "'123456789012345678901234567890.123456789'", "'-0.000'",
                            "'1e-20'", "'1.50'")),
    Column("n102", "numeric(10,2)", ("99999999.99", "-0.01", "0", "1.5")),
    Column("nneg", "numeric(3,-2)", ("12300", "-99900", "0", "50")),
    Column("nwide", "numeric(50,10)",
           ("'1234567890123456789012345678901234567890.1234567890'", "0")),
    Column("nsmall", "numeric(3,5)", ("0.00123", "-0.00999")),
    Column("t", "text", ("''", "'a''b \"c\" \\ d'", "'NULL'", "'日本語 👩\u200d🔬 e\u0301'",
                         "repeat('x', 3000)")),
    Column("vc", "varchar(5)", ("'abcde'", "''")),
    Column("ch", "char(10)", ("'BUILDING'", "''", "' lead'", "'a  b'")),
    Column("d", "date", ("'infinity'", "'-infinity'", "'2000-02-29'", "'5874897-12-31'",
                         "'0001-01-01'", "'1969-12-31'")),
    Column("ts", "timestamp", ("'infinity'", "'-infinity'", "'294247-01-01 00:00:00'",
                               "'4713-11-24 00:00:00 BC'", "'2024-02-29 12:34:56.789012'",
                               "'1969-12-31 23:59:59.999999'", "'0001-01-01 00:00:00 BC'")),
    Column("tstz", "timestamptz", ("'-infinity'", "'infinity'", "'4713-01-01 00:00:00+00 BC'",
                                   "'2024-01-01 12:00:00+05:30'", "'9999-12-31 23:59:59.5+00'",
                                   "'10000-01-01 00:00:00+00'", "'1901-12-13 20:45:52.000001+00'")),
    Column("tm", "time", ("'24:00:00'", "'00:00:00'", "'23:59:59.999999'", "'12:00:00.5'")),
    Column("iv", "interval", ("'P1Y2M3DT4H5M6.5S'", "'0'", "'-1 day'",
                              "'2147483647 days 2147483647:00:54.775807'")),
    Column("js", "jsonb", ("'{\"b\": [1, 2.50, null], \"a\": \"x\"}'", "'\"str\"'", "'null'",
                           "'12345678901234567890123'")),
    Column("jn", "json", ("'{\"b\":1,  \"a\":2}'", "'[]'")),
    Column("u", "uuid", ("'0a11e885-573b-4e0b-9ec5-ca99b491bc74'",)),
    Column("by", "bytea", ("'\\x00ff'", "''", "'\\x5f5f'")),
    Column("b4", "bit(4)", ("B'0001'", "B'1000'", "B'0000'")),
    Column("b12", "bit(12)", ("B'000000000001'", "B'100000000000'", "B'101010101010'")),
    # money's text depends on lc_monetary; documented rule: its numeric value
    Column("mny", "money", ("'12.34'", "'-92233720368547758.08'"), "{c}::numeric::text"),
    # inet's output function, not its ::text cast, which always adds the mask
    Column("ine", "inet", ("'10.0.0.1/8'", "'::1'"), "nullif(format('%s', {c}), '')"),
    Column("cid", "cidr", ("'10.0.0.0/8'",)),
    Column("mac", "macaddr", ("'08:00:2b:01:02:03'",)),
    Column("en", "tl_mood", ("'sad'", "'happy'")),
    Column("dom", "tl_posint", ("1", "2147483647")),
    Column("xm", "xml", ("'<a>1</a>'",)),
    Column("pt", "point", ("'(1.5,-2)'", "'(1e+300,0.1)'")),
    Column("r4", "int4range", ("'[1,5)'", "'empty'", "'(,3]'")),
    Column("ia", "int[]", ("'{1,NULL,3}'", "'{}'")),
    Column("ta", "text[]", ("'{\"a b\",\"\",NULL,\"NULL\",\"q\\\"x\"}'", "'{plain}'")),
    Column("na", "numeric(8,3)[]", ("'{1.500,-2.000}'",)),
    Column("ea", "tl_mood[]", ("'{sad,ok}'",)),
    Column("da", "date[]", ("'{2020-01-01,infinity,-infinity}'",)),
    Column("tsa", "timestamptz[]", ("'{\"2024-01-01 00:00:00+00\",infinity}'",)),
    # documented rule: char(n) elements lose their trailing blanks, as in char(n) columns
    Column("cha", "char(3)[]", ("'{\"a\",\"ab \"}'",), "{c}::text[]::text"),
)

# Values Postgres holds that only the streaming path carries exactly (the initial
# snapshot sends BC dates as AD dates, so `connector apply` refuses tables holding them).
STREAM_ONLY: dict[str, tuple[str, ...]] = {
    "d": ("'4713-01-01 BC'", "'0001-12-31 BC'", "'4714-11-24 BC'"),
}


def rows_sql(table: str, first_id: int, stream: bool) -> list[str]:
    """Insert statements: row k holds every column's k-th value (NULL when it has none)."""
    width = max(len(c.values) for c in COLUMNS)
    statements = []
    for k in range(width):
        names = ["id"] + [c.name for c in COLUMNS if k < len(c.values)]
        values = [str(first_id + k)] + [str(c.values[k]) for c in COLUMNS if k < len(c.values)]
        statements.append(f"insert into {table} ({', '.join(names)}) values "
                          f"({', '.join(values)})")
    if stream:
        extra = [(name, value) for name, values in STREAM_ONLY.items() for value in values]
        for j, (name, value) in enumerate(extra):
            statements.append(f"insert into {table} (id, {name}) values "
                              f"({first_id + width + j}, {value})")
    statements.append(f"insert into {table} (id) values ({first_id + 99})")  # all NULL
    return statements


# Array columns carry the constraint `connector apply` asks for (docs/types.md, "Arrays"):
# (pg element type name, pg_type.typtype) per array column.
_ARRAY_ELEMENTS = {"ia": ("int4", "b"), "ta": ("text", "b"), "na": ("numeric", "b"),
                   "ea": ("tl_mood", "e"), "da": ("date", "b"), "tsa": ("timestamptz", "b"),
                   "cha": ("bpchar", "b")}


def create_sql(table: str) -> str:
    cols = ", ".join(
        f"{c.name} {c.type}" + (f" check ({array_guard(c.name, *_ARRAY_ELEMENTS[c.name])})"
                                if c.type.endswith("[]") else "")
        for c in COLUMNS)
    return f"create table {table} (id int primary key, {cols})"


def pg_rows(conn: psycopg.Connection[Any], table: str,
            columns: Sequence[Column] = COLUMNS) -> dict[int, dict[str, str | None]]:
    conn.execute("set timezone = 'UTC'")
    conn.execute("set intervalstyle = 'iso_8601'")
    exprs = ", ".join(c.pg_text.format(c=c.name) for c in columns)
    out = {}
    for row in conn.execute(f"select id, {exprs} from {table}"):
        out[int(row[0])] = dict(zip((c.name for c in columns), row[1:], strict=True))
    return out


# --------------------------------------------------------------------------- DuckDB -> PG text


def _pg_float(v: float, single: bool = False) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    # Postgres prints the shortest digits that read back as the same float4/float8 (as
    # Python's repr does), in exponent form when the exponent is below -4 or at least 6
    # (float4) / 15 (float8), with at least two exponent digits: 1e+15, 1.5e-07.
    sign, digits, exponent = Decimal(str(numpy.float32(v)) if single else repr(v)
                                     ).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    power = exponent + len(text) - 1
    minus = "-" if sign else ""
    if power < -4 or power >= (6 if single else 15):
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    return minus + format(Decimal(f"{text}E{exponent}"), "f")


def pg_temporal(text: str) -> str:
    # DuckDB: '4713-01-01 (BC) 00:00:00+00'; Postgres: '4713-01-01 00:00:00+00 BC'
    if " (BC)" in text:
        return text.replace(" (BC)", "") + " BC"
    return text


def _array_element(v: str) -> str:
    # array_out quotes empty elements, NULL, and any holding a delimiter, brace, quote,
    # backslash or one of its white-space characters (space, \t, \n, \r, \v, \f)
    if v == "" or v.upper() == "NULL" or any(ch in v for ch in ' \t\n\r\v\f,{}"\\'):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


def pg_array_text(values: Sequence[str | None]) -> str:
    return "{" + ",".join("NULL" if v is None else _array_element(v) for v in values) + "}"


def _select(name: str, duck_type: str) -> str:
    q = '"' + name + '"'
    if duck_type.endswith("[]"):
        return f"list_transform({q}, x -> x::varchar)"
    if duck_type in ("FLOAT", "DOUBLE", "BOOLEAN"):
        return q
    if duck_type == "BLOB":
        return f"lower(hex({q}))"
    return f"{q}::varchar"


def _cell(value: Any, duck_type: str, pg_type: str) -> str | None:
    if value is None:
        return None
    if duck_type.endswith("[]"):
        inner = duck_type[:-2]
        return pg_array_text([None if v is None else _cell(v, inner, pg_type[:-2])
                              for v in value])
    if duck_type == "BOOLEAN":
        return "true" if value else "false"
    if duck_type in ("FLOAT", "DOUBLE"):
        return _pg_float(float(value), single=duck_type == "FLOAT")
    if duck_type == "BLOB":
        return "\\x" + value
    if duck_type.startswith(("DATE", "TIMESTAMP")):
        return pg_temporal(value)
    if pg_type == "point":  # documented rule: canonical JSON of Debezium's struct
        point = json.loads(value)
        return f"({_pg_float(point['x'])},{_pg_float(point['y'])})"
    return str(value)


def snapshot_rows(con: duckdb.DuckDBPyConnection, relation: str,
                  columns: Sequence[Column] = COLUMNS) -> dict[int, dict[str, str | None]]:
    """The snapshot's rows with each value rendered as Postgres would print it."""
    con.execute("set TimeZone = 'UTC'")
    types = {r[0]: r[1] for r in con.execute(f"describe {relation}").fetchall()}
    names = [c.name for c in columns if c.name in types]
    by_type = {c.name: c.type for c in columns}
    exprs = ", ".join(_select(n, types[n]) for n in names)
    out: dict[int, dict[str, str | None]] = {}
    for row in con.execute(f"select id, {exprs} from {relation}").fetchall():
        out[int(row[0])] = {n: _cell(v, types[n], by_type[n])
                            for n, v in zip(names, row[1:], strict=True)}
    return out


def differences(expected: dict[int, dict[str, str | None]],
                got: dict[int, dict[str, str | None]]) -> list[str]:
    """Every (row, column) whose snapshot text differs from Postgres's, readable."""
    out = []
    for key in sorted(set(expected) | set(got)):
        if key not in got:
            out.append(f"row {key} missing from the snapshot")
            continue
        if key not in expected:
            out.append(f"row {key} is in the snapshot but not in Postgres")
            continue
        for name, want in expected[key].items():
            have = got[key].get(name, "<column missing>")
            if have != want:
                out.append(f"row {key} {name}: postgres {want!r:.80} snapshot {have!r:.80}")
    return out
