"""cdc.types, cdc.values, cdc.rows: Connect field schema -> Arrow type + exact Python value,
both paths agreeing."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import hypothesis.strategies as st
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hsettings

from cdc.events import events_to_arrow
from cdc.rows import codec_for_schema_text, key_normaliser, row_codec, rows_to_arrow
from cdc.types import PG_TYPE_KEY, arrow_field, column_type, python_converter
from cdc.values import _days_from_civil, zoned_to_us
from tidelog.errors import DecodeError

ENVELOPES = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes"


def lst(t: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", t))  # Parquet's child name, so round trips are exact


def field(name: str, ctype: str, pg: str | None = None, length: int | None = None,
          scale: int | None = None, semantic: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Connect field schema shaped like Debezium's (column.propagate.source.type=.*)."""
    schema: dict[str, Any] = {"type": ctype, "optional": True, **extra}
    if semantic:
        schema.update(name=semantic, version=1)
    if pg is not None:
        params = {"__debezium.source.column.type": pg}
        if length is not None:
            params["__debezium.source.column.length"] = str(length)
        if scale is not None:
            params["__debezium.source.column.scale"] = str(scale)
        params["__debezium.source.column.name"] = name
        schema["parameters"] = params
    schema["field"] = name
    return schema


def fixture_value(name: str) -> dict[str, Any]:
    return json.loads((ENVELOPES / name).read_text())["value"]


ORDERS_SNAPSHOT = fixture_value("orders_000_r_snapshot.json")
ORDERS_EDGES = fixture_value("orders_002_c_edge_values.json")
ORDERS_UPDATE = fixture_value("orders_003_u_with_before.json")

MAPPINGS = [
    (field("a", "int16", "INT2", 5, 0), pa.int16(), "int2"),
    (field("a", "int32", "INT4", 10, 0), pa.int32(), "int4"),
    (field("a", "int64", "INT8", 19, 0), pa.int64(), "int8"),
    (field("a", "float", "FLOAT4", 8, 8), pa.float32(), "float4"),
    (field("a", "double", "FLOAT8", 17, 17), pa.float64(), "float8"),
    (field("a", "boolean", "BOOL", 1, 0), pa.bool_(), "bool"),
    (field("a", "string", "NUMERIC", 10, 2), pa.decimal128(10, 2), "numeric"),
    (field("a", "string", "NUMERIC", 38, 0), pa.decimal128(38, 0), "numeric"),
    # unconstrained numeric: snapshot sends length 0 and no scale, streaming 131089/0
    (field("a", "string", "NUMERIC", 0), pa.string(), "numeric"),
    (field("a", "string", "NUMERIC", 131089, 0), pa.string(), "numeric"),
    (field("a", "string", "NUMERIC", 50, 2), pa.string(), "numeric"),  # DuckDB stops at 38
    # PG15 negative scale: Debezium sends 2048 + s; numeric(5,-2) holds 7-digit integers
    (field("a", "string", "NUMERIC", 5, 2046), pa.decimal128(7, 0), "numeric"),
    (field("a", "string", "TEXT", 2147483647, 0), pa.string(), "text"),
    (field("a", "string", "VARCHAR", 8, 0), pa.string(), "varchar"),
    (field("a", "string", "BPCHAR", 3, 0), pa.string(), "bpchar"),
    (field("a", "string", "TIMESTAMPTZ", 35, 6, "io.debezium.time.ZonedTimestamp"),
     pa.timestamp("us", tz="UTC"), "timestamptz"),
    (field("a", "int64", "TIMESTAMP", 29, 6, "io.debezium.time.MicroTimestamp"),
     pa.timestamp("us"), "timestamp"),
    (field("a", "int64", "TIMESTAMP", 26, 3, "io.debezium.time.Timestamp"),
     pa.timestamp("us"), "timestamp"),
    (field("a", "int32", "DATE", 13, 0, "io.debezium.time.Date"), pa.date32(), "date"),
    (field("a", "int64", "TIME", 15, 6, "io.debezium.time.MicroTime"), pa.string(), "time"),
    (field("a", "string", "TIMETZ", 21, 6, "io.debezium.time.ZonedTime"), pa.string(), "timetz"),
    (field("a", "string", "JSONB", 2147483647, 0, "io.debezium.data.Json"), pa.string(), "jsonb"),
    (field("a", "string", "JSON", 2147483647, 0, "io.debezium.data.Json"), pa.string(), "json"),
    (field("a", "string", "UUID", 2147483647, 0, "io.debezium.data.Uuid"), pa.string(), "uuid"),
    (field("a", "string", "BYTEA", 2147483647, 0), pa.binary(), "bytea"),
    (field("a", "array", "_INT4", 10, 0, items={"type": "int32", "optional": True}),
     lst(pa.int32()), "_int4"),
    (field("a", "array", "_TEXT", 2147483647, 0, items={"type": "string", "optional": True}),
     lst(pa.string()), "_text"),
    (field("a", "array", "_NUMERIC", 8, 3, items={"type": "string", "optional": True}),
     lst(pa.decimal128(8, 3)), "_numeric"),
    (field("a", "array", "_DATE", 13, 0,
           items={"type": "int32", "optional": True, "name": "io.debezium.time.Date"}),
     lst(pa.date32()), "_date"),
    (field("a", "string", "INTERVAL", 49, 6, "io.debezium.time.Interval"), pa.string(), "interval"),
    (field("a", "string", "MOOD", 2147483647, 0, "io.debezium.data.Enum"), pa.string(), "mood"),
    (field("a", "bytes", "BIT", 3, 0, "io.debezium.data.Bits"), pa.string(), "bit"),
    (field("a", "string", "MONEY", 2147483647, 2), pa.string(), "money"),
    (field("a", "string", "INET", 2147483647, 0), pa.string(), "inet"),
]


@pytest.mark.parametrize(("schema", "arrow_type", "pg_type"), MAPPINGS,
                         ids=[f"{m[2]}-{m[1]}" for m in MAPPINGS])
def test_archive_type_table(schema: dict[str, Any], arrow_type: pa.DataType,
                            pg_type: str) -> None:
    f = arrow_field(schema)
    assert f.type == arrow_type
    assert f.nullable  # data columns are null for d, t and tombstones
    assert f.metadata == {PG_TYPE_KEY.encode(): pg_type.encode()}


def test_without_source_type_parameters_falls_back_to_connect_types() -> None:
    assert column_type({"type": "int32", "field": "id"}).pg_type == "int4"
    ts = column_type({"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "t"})
    assert (ts.arrow_type, ts.pg_type) == (pa.timestamp("us"), "timestamp")
    arr = column_type({"type": "array", "items": {"type": "string"}, "field": "x"})
    assert (arr.arrow_type, arr.pg_type) == (lst(pa.string()), "_text")


def test_struct_columns_are_canonical_json_text() -> None:
    point = next(f for f in ORDERS_SNAPSHOT["schema"]["fields"][1]["fields"] if f["field"] == "pt")
    col = column_type(point)
    assert (col.arrow_type, col.pg_type) == (pa.string(), "point")
    arr = col.to_arrow([{"y": -2.0, "x": 1.5, "wkb": "AQ==", "srid": None}, None])
    assert arr.to_pylist() == ['{"srid":null,"wkb":"AQ==","x":1.5,"y":-2.0}', None]


def test_unknown_connect_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unknown Connect type"):
        column_type({"type": "frobnicated", "field": "x"})


# --------------------------------------------------------------------------- Python values

NUMERIC = field("price", "string", "NUMERIC", 12, 2)
FREE_NUMERIC = field("amount", "string", "NUMERIC", 131089, 0)


@pytest.mark.parametrize("text", ["12.30", "-0.01", "0.00", "99999999.99", "-9999999999.90",
                                  "123456789012345678901234567890.1230000", "1000"])
def test_numeric_keeps_the_scale_it_was_sent_with(text: str) -> None:
    value = python_converter(FREE_NUMERIC)(text)
    assert isinstance(value, Decimal)
    assert str(value) == text  # same digits, same scale: "12.30" is not "12.3"


@pytest.mark.parametrize(("text", "expected"), [("NAN", "NaN"), ("POSITIVE_INFINITY", "Infinity"),
                                                ("NEGATIVE_INFINITY", "-Infinity"),
                                                ("NaN", "NaN"), ("-Infinity", "-Infinity")])
def test_numeric_special_values(text: str, expected: str) -> None:
    assert str(python_converter(FREE_NUMERIC)(text)) == expected


def test_bad_numeric_names_the_column() -> None:
    with pytest.raises(DecodeError, match="'price'.*'12,30'") as err:
        column_type(NUMERIC).to_python("12,30")
    assert err.value.details["column"] == "price"


TSTZ = field("created", "string", "TIMESTAMPTZ", 35, 6, "io.debezium.time.ZonedTimestamp")
TS = field("local_ts", "int64", "TIMESTAMP", 29, 6, "io.debezium.time.MicroTimestamp")
TS_MS = field("ms_ts", "int64", "TIMESTAMP", 26, 3, "io.debezium.time.Timestamp")
DATE = field("day", "int32", "DATE", 13, 0, "io.debezium.time.Date")
TIME = field("at", "int64", "TIME", 15, 6, "io.debezium.time.MicroTime")
TIMETZ = field("at_tz", "string", "TIMETZ", 21, 6, "io.debezium.time.ZonedTime")


@pytest.mark.parametrize(("text", "expected"), [
    ("1960-01-01T10:00:00.123456Z", datetime(1960, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ("1901-12-13T20:45:52.000001Z", datetime(1901, 12, 13, 20, 45, 52, 1, tzinfo=UTC)),
    ("1969-12-31T23:59:59.999999Z", datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2024-03-01T00:00:00Z", datetime(2024, 3, 1, tzinfo=UTC)),
    ("2024-03-01T00:00:00.5Z", datetime(2024, 3, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ("2024-03-01T05:30:00+05:30", datetime(2024, 3, 1, tzinfo=UTC)),
    ("infinity", datetime.max.replace(tzinfo=UTC)),
    ("-infinity", datetime.min.replace(tzinfo=UTC)),
])
def test_timestamptz_is_aware_utc(text: str, expected: datetime) -> None:
    value = python_converter(TSTZ)(text)
    assert value == expected
    assert value.tzinfo is UTC


def test_timestamptz_beyond_python_range_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="created"):
        python_converter(TSTZ)("+10000-01-01T00:00:00Z")


@pytest.mark.parametrize(("schema", "raw", "expected"), [
    (TS, 1577836800500000, datetime(2020, 1, 1, 0, 0, 0, 500000)),
    (TS, -2208988800000000, datetime(1900, 1, 1)),
    (TS, -1, datetime(1969, 12, 31, 23, 59, 59, 999999)),
    (TS, 9223372036825200000, datetime.max),  # Debezium's +infinity
    (TS, -9223372036832400000, datetime.min),
    (TS_MS, -1, datetime(1969, 12, 31, 23, 59, 59, 999000)),
    (TS_MS, 1709296496789, datetime(2024, 3, 1, 12, 34, 56, 789000)),
    (DATE, 0, date(1970, 1, 1)),
    (DATE, -25509, date(1900, 2, 28)),
    (DATE, 19783, date(2024, 3, 1)),
    (DATE, -2147472692, date.max),  # Debezium 3.6.3 streaming +infinity (-5877611-06-22)
    (DATE, -2147472691, date.min),
    (DATE, -622191234, date.max),  # ... and in the initial snapshot
    (DATE, -625821272, date.min),
    (TIME, 0, time(0)),
    (TIME, 86399999999, time(23, 59, 59, 999999)),
    (TIME, 45296789012, time(12, 34, 56, 789012)),
    (TIMETZ, "23:59:59.999999Z", time(23, 59, 59, 999999, tzinfo=UTC)),
])
def test_temporal_values(schema: dict[str, Any], raw: Any, expected: Any) -> None:
    value = python_converter(schema)(raw)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, datetime) and schema is not TSTZ:
        assert value.tzinfo is None


def test_time_2400_has_no_python_value() -> None:
    # the archive keeps it as text (test_time_is_postgres_text_including_2400)
    with pytest.raises(DecodeError, match="24:00:00"):
        python_converter(TIME)(86_400_000_000)


JSONB = field("doc", "string", "JSONB", 2147483647, 0, "io.debezium.data.Json")
UUID_F = field("uid", "string", "UUID", 2147483647, 0, "io.debezium.data.Uuid")
BYTEA = field("blob", "string", "BYTEA", 2147483647, 0)
TEXT = field("name", "string", "TEXT", 2147483647, 0)


def test_json_is_parsed_with_big_integers_exact() -> None:
    convert = python_converter(JSONB)
    assert convert('{"a": [1, 2], "b": null}') == {"a": [1, 2], "b": None}
    assert convert('{"big": 123456789012345678901234567890}') == {
        "big": 123456789012345678901234567890}
    assert convert('"just a string"') == "just a string"


def test_uuid_bytea_and_text() -> None:
    assert python_converter(UUID_F)("0a11e885-573b-4e0b-9ec5-ca99b491bc74") == UUID(
        "0a11e885-573b-4e0b-9ec5-ca99b491bc74")
    assert python_converter(BYTEA)("AP8=") == b"\x00\xff"
    assert python_converter(BYTEA)("") == b""
    with pytest.raises(DecodeError, match="blob"):
        python_converter(BYTEA)("not base64!")
    text = "👩\u200d🔬 e\u0301 日本語 עברית"
    assert python_converter(TEXT)(text) == text
    assert len(python_converter(TEXT)("e\u0301")) == 2  # no normalisation


@pytest.mark.parametrize("schema", [m[0] for m in MAPPINGS] + [TSTZ, TS, DATE, TIME, JSONB])
def test_null_is_none_for_every_type(schema: dict[str, Any]) -> None:
    assert python_converter(schema)(None) is None


def test_arrays_convert_each_element() -> None:
    ints = field("a", "array", "_INT4", 10, 0, items={"type": "int32", "optional": True})
    nums = field("a", "array", "_NUMERIC", 8, 3, items={"type": "string", "optional": True})
    stamps = field("a", "array", "_TIMESTAMPTZ", 35, 6,
                   items={"type": "string", "optional": True,
                          "name": "io.debezium.time.ZonedTimestamp"})
    assert python_converter(ints)([1, None, 3]) == [1, None, 3]
    assert [str(v) for v in python_converter(nums)(["1.500", "-2.000"])] == ["1.500", "-2.000"]
    assert python_converter(stamps)(["1969-12-31T23:59:59Z", None]) == [
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), None]


def test_float_specials_sent_as_strings() -> None:
    convert = python_converter(field("a", "double", "FLOAT8", 17, 17))
    assert convert(1.5e300) == 1.5e300
    assert convert("-Infinity") == float("-inf")
    assert convert("NaN") != convert("NaN")


# --------------------------------------------------------------------------- vectorised path


def _rows(*values: dict[str, Any]) -> list[dict[str, Any] | None]:
    return [v["payload"]["after"] for v in values] + [None]


ROWS = _rows(ORDERS_SNAPSHOT, ORDERS_EDGES, ORDERS_UPDATE)


# Arrow keeps these as the JSON text Debezium sent; Python parses them.
TEXT_AS_SENT = {"doc", "meta", "amount", "cash", "at_timetz"}
# Arrow holds Postgres's text of these; Python a datetime.time.
TIME_AS_TEXT = {"at_time"}
# ±infinity has no pyarrow -> Python value; checked through DuckDB below. `pt` has its own test.
NOT_HERE = {"created", "local_ts", "day", "stamps", "pt"}


def test_arrow_columns_agree_with_python_values() -> None:
    schema = ORDERS_SNAPSHOT["schema"]
    codec = row_codec(schema)
    table = rows_to_arrow(ROWS, schema)
    assert table.schema == codec.arrow_schema
    assert table.num_rows == len(ROWS)
    for col in codec.columns:
        if col.name in NOT_HERE:
            continue
        for row, got in zip(ROWS, table.column(col.name).to_pylist(), strict=True):
            raw = None if row is None else row[col.name]
            if col.name in TEXT_AS_SENT:
                assert got == raw, col.name
                continue
            if col.name in TIME_AS_TEXT:
                expected_time = col.to_python(raw)
                assert got == (None if expected_time is None
                               else expected_time.isoformat().rstrip("0").rstrip(".")
                               if expected_time.microsecond else expected_time.isoformat()), \
                    col.name
                continue
            expected = col.to_python(raw)
            if isinstance(expected, UUID):
                expected = str(expected)
            if isinstance(expected, float) and expected != expected:
                assert got != got, col.name
            else:
                assert got == expected, col.name


def test_arrow_decimals_keep_scale_and_infinities_read_as_duckdb_infinity() -> None:
    table = rows_to_arrow(ROWS, ORDERS_SNAPSHOT["schema"])
    assert [str(v) if v is not None else None for v in table.column("price").to_pylist()] == [
        "19.90", "-9999999999.90", "0.00", None]
    assert table.column("amount").to_pylist()[1] == "123456789012345678901234567890.1230000"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("t", table)
    rows = con.execute("select created::varchar, local_ts::varchar, day::varchar, "
                       "stamps[1]::varchar, stamps[2]::varchar, at_time::varchar "
                       "from t").fetchall()
    assert rows[0] == ("2024-03-01 12:34:56.789012+00", "2024-03-01 12:34:56.789012",
                       "2024-03-01", "2024-03-01 00:00:00+00", None, "12:34:56.789012")
    assert rows[1] == ("1901-12-13 20:45:52.000001+00", "1900-01-01 00:00:00", "1900-02-28",
                       "1969-12-31 23:59:59.999999+00", None, "00:00:00")
    assert rows[2] == ("infinity", "infinity", "infinity", "infinity", "-infinity",
                       "23:59:59.999999")
    assert rows[3] == (None,) * 6


def test_values_arrow_cannot_hold_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"'price'.*'NAN'"):
        rows_to_arrow([{"price": "1.00"}, {"price": "NAN"}], {"fields": [NUMERIC]})
    with pytest.raises(DecodeError, match=r"'price'.*'1234567890123.00'"):
        rows_to_arrow([{"price": "1234567890123.00"}], {"fields": [NUMERIC]})
    with pytest.raises(DecodeError, match=r"'price'.*'1.005'"):
        rows_to_arrow([{"price": "1.005"}], {"fields": [NUMERIC]})


def test_float_strings_take_the_column_by_column_path() -> None:
    schema = {"fields": [field("f", "double", "FLOAT8", 17, 17), TEXT]}
    table = rows_to_arrow([{"f": 1.0, "name": "a"}, {"f": "Infinity", "name": None}, None], schema)
    assert table.column("f").to_pylist() == [1.0, float("inf"), None]
    assert table.column("name").to_pylist() == ["a", None, None]


def test_arrays_with_converted_elements() -> None:
    schema = {"fields": [
        field("days", "array", "_DATE", 13, 0,
              items={"type": "int32", "optional": True, "name": "io.debezium.time.Date"}),
        field("blobs", "array", "_BYTEA", 2147483647, 0,
              items={"type": "string", "optional": True}),
        field("nums", "array", "_NUMERIC", 8, 3, items={"type": "string", "optional": True}),
    ]}
    rows: list[dict[str, Any] | None] = [
            {"days": [0, None, -1], "blobs": ["AP8=", None], "nums": ["1.500"]},
            {"days": None, "blobs": [], "nums": [None]}, None]
    table = rows_to_arrow(rows, schema)
    assert table.column("days").to_pylist() == [
        [date(1970, 1, 1), None, date(1969, 12, 31)], None, None]
    assert table.column("blobs").to_pylist() == [[b"\x00\xff", None], [], None]
    assert table.column("nums").to_pylist() == [[Decimal("1.500")], [None], None]


def test_empty_batch_has_the_schema() -> None:
    table = rows_to_arrow([], ORDERS_SNAPSHOT["schema"])
    assert table.num_rows == 0
    assert table.schema == row_codec(ORDERS_SNAPSHOT["schema"]).arrow_schema


def test_parquet_round_trip_keeps_types_and_pg_type_metadata(tmp_path: Path) -> None:
    table = rows_to_arrow(ROWS, ORDERS_SNAPSHOT["schema"])
    pq.write_table(table, tmp_path / "rows.parquet")
    back = pq.read_table(tmp_path / "rows.parquet")
    assert back.schema.equals(table.schema, check_metadata=True)
    for name in table.column_names:
        a, b = table.column(name), back.column(name)
        if pa.types.is_floating(a.type):  # NaN != NaN: compare the text forms
            a, b = a.cast(pa.string()), b.cast(pa.string())
        assert a.equals(b), name


# --------------------------------------------------------------------------- caching


def test_codecs_are_cached_by_schema_text_and_identity() -> None:
    schema = ORDERS_SNAPSHOT["schema"]
    first = row_codec(schema)
    assert row_codec(schema) is first
    assert row_codec(copy.deepcopy(schema)) is first
    text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    assert codec_for_schema_text(text) is first


def test_snapshot_and_streaming_schemas_give_the_same_columns() -> None:
    # Debezium describes unconstrained numeric differently in snapshot and streaming.
    snapshot = row_codec(ORDERS_SNAPSHOT["schema"])
    streaming = row_codec(ORDERS_EDGES["schema"])
    assert snapshot is not streaming
    assert snapshot.arrow_schema.equals(streaming.arrow_schema, check_metadata=True)


# --------------------------------------------------------------------------- exact edge values
# Each conversion of docs/types.md, read back through DuckDB as the catalog does.




def _duck_text(table: pa.Table, column: str) -> list[str | None]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("t", table)
    return [r[0] for r in con.execute(f'select "{column}"::varchar from t').fetchall()]


def _one(schema: dict[str, Any], values: list[Any]) -> list[str | None]:
    return _duck_text(rows_to_arrow([{schema["field"]: v} for v in values],
                                    {"fields": [schema]}), schema["field"])


def test_unconstrained_numeric_specials_are_postgres_text() -> None:
    got = _one(FREE_NUMERIC, ["NAN", "POSITIVE_INFINITY", "NEGATIVE_INFINITY", "1.50", None])
    assert got == ["NaN", "Infinity", "-Infinity", "1.50", None]
    arr = field("a", "array", "_NUMERIC", 0, None, items={"type": "string", "optional": True})
    assert rows_to_arrow([{"a": ["1", "NAN", None]}], {"fields": [arr]}).column("a") \
        .to_pylist() == [["1", "NaN", None]]


@pytest.mark.parametrize("special", ["NAN", "POSITIVE_INFINITY", "NEGATIVE_INFINITY"])
def test_numeric_specials_in_a_decimal_column_are_refused_with_guidance(special: str) -> None:
    with pytest.raises(DecodeError, match=r"'price'.*cannot be held by a DECIMAL.*CHECK"):
        rows_to_arrow([{"price": "1.00"}, {"price": special}], {"fields": [NUMERIC]})
    with pytest.raises(DecodeError, match="DECIMAL"):
        column_type(NUMERIC).to_python(special)


NEG_SCALE = field("hundreds", "string", "NUMERIC", 3, 2046)  # numeric(3,-2), as Debezium sends


def test_negative_scale_numeric_is_an_exact_integer() -> None:
    padded = "12300." + "0" * 2046
    table = rows_to_arrow([{"hundreds": padded}, {"hundreds": "-99900." + "0" * 2046},
                           {"hundreds": "0"}, {"hundreds": None}], {"fields": [NEG_SCALE]})
    assert table.schema.field("hundreds").type == pa.decimal128(5, 0)
    assert _duck_text(table, "hundreds") == ["12300", "-99900", "0", None]
    assert str(column_type(NEG_SCALE).to_python(padded)) == "12300"
    with pytest.raises(DecodeError, match="not an integer"):
        column_type(NEG_SCALE).to_python("12300.5")


@pytest.mark.parametrize(("days", "text"), [
    (-622191234, "infinity"), (-625821272, "-infinity"),      # initial snapshot
    (-2147472692, "infinity"), (-2147472691, "-infinity"),    # streaming
    (-2440550, "4713-01-01 (BC)"), (-719528, "0001-01-01 (BC)"), (-2440588, "4714-11-24 (BC)"),
    (2145042905, "5874897-12-31"), (11016, "2000-02-29"),
])
def test_dates_infinity_and_bc(days: int, text: str) -> None:
    assert _one(DATE, [days]) == [text]
    arr = field("a", "array", "_DATE", 13, 0,
                items={"type": "int32", "optional": True, "name": "io.debezium.time.Date"})
    inner = f"'{text}'" if " " in text else text  # DuckDB quotes list items with spaces
    assert _duck_text(rows_to_arrow([{"a": [days]}], {"fields": [arr]}), "a") == [f"[{inner}]"]


@pytest.mark.parametrize("days", [-2440589, 2145042906, -2147483648])
def test_dates_outside_postgres_range_are_decode_errors(days: int) -> None:
    with pytest.raises(DecodeError, match="neither a Postgres date"):
        rows_to_arrow([{"day": days}], {"fields": [DATE]})


def test_timestamps_infinity_bc_and_overflow() -> None:
    got = _one(TS, [9223372036825200000, -9223372036832400000, -210863520000000000,
                    -210866803200000000, 9223371244800000000])
    assert got == ["infinity", "-infinity", "4713-01-01 (BC) 00:00:00",
                   "4714-11-24 (BC) 00:00:00", "294247-01-01 00:00:00"]
    # 294276-12-31 23:59:59.999999: Debezium's int64 wraps
    with pytest.raises(DecodeError, match="beyond DuckDB's range"):
        rows_to_arrow([{"local_ts": -9223372036853775810}], {"fields": [TS]})


def test_timestamptz_bc_and_beyond_duckdb() -> None:
    got = _one(TSTZ, ["-4712-01-01T00:00:00.000000Z", "0000-12-31T23:59:59Z", "infinity",
                      "-infinity", "+10000-01-01T00:00:00Z", "2024-01-01T12:00:00+05:30"])
    assert got == ["4713-01-01 (BC) 00:00:00+00", "0001-12-31 (BC) 23:59:59+00", "infinity",
                   "-infinity", "10000-01-01 00:00:00+00", "2024-01-01 06:30:00+00"]
    with pytest.raises(DecodeError, match="beyond DuckDB's timestamp range"):
        rows_to_arrow([{"created": "+294276-12-31T23:59:59.999999Z"}], {"fields": [TSTZ]})


def test_time_is_postgres_text_including_2400() -> None:
    table = rows_to_arrow([{"at": v} for v in (86_400_000_000, 0, 45_296_500_000, None)],
                          {"fields": [TIME]})
    assert table.column("at").to_pylist() == ["24:00:00", "00:00:00", "12:34:56.5", None]
    con = duckdb.connect()
    con.register("t", table)
    # DuckDB's TIME takes the text back, 24:00:00 included
    assert con.execute('select max("at"::time)::varchar from t').fetchone() == ("24:00:00",)


def _bits(length: int) -> dict[str, Any]:
    schema = field("b", "bytes", "BIT", length, 0, "io.debezium.data.Bits")
    schema["parameters"]["length"] = str(length)
    return schema


@pytest.mark.parametrize(("length", "sent", "text"), [
    (4, "AQ==", "0001"), (4, "CA==", "1000"), (4, "", "0000"), (1, "AQ==", "1"),
    (12, "AQ==", "000000000001"), (12, "AAg=", "100000000000"),
])
def test_bit_n_keeps_its_declared_length(length: int, sent: str, text: str) -> None:
    schema = _bits(length)
    assert rows_to_arrow([{"b": sent}], {"fields": [schema]}).column("b").to_pylist() == [text]
    assert column_type(schema).to_python(sent) == text


@hsettings(deadline=None)
@given(st.text(alphabet="01", min_size=1, max_size=80))
def test_bit_text_round_trips_any_bit_string(bits: str) -> None:
    # what Debezium sends: java.util.BitSet.toByteArray() of the bit string's value
    value = int(bits, 2)
    sent = binascii_b64(value.to_bytes((value.bit_length() + 7) // 8, "little"))
    assert column_type(_bits(len(bits))).to_python(sent) == bits


def binascii_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_char_n_loses_trailing_blanks_like_postgres_text() -> None:
    bpchar = field("ch", "string", "BPCHAR", 10, 0)
    table = rows_to_arrow([{"ch": "BUILDING  "}, {"ch": "          "}, {"ch": " a b  "},
                           {"ch": None}], {"fields": [bpchar]})
    assert table.column("ch").to_pylist() == ["BUILDING", "", " a b", None]
    assert column_type(bpchar).to_python("BUILDING  ") == "BUILDING"


@pytest.mark.parametrize(("sent", "text"), [
    ("P0Y0M0DT0H0M0S", "PT0S"), ("P0Y0M-1DT0H0M0S", "P-1D"),
    ("P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
    ("P0Y0M2147483647DT2147483647H0M54.775807S", "P2147483647DT2147483647H54.775807S"),
    ("P0Y0M0DT0H0M-0.500000S", "PT-0.5S"), ("P-1Y-2M0DT0H0M0S", "P-1Y-2M"),
    ("P0Y0M0DT0H30M0S", "PT30M"),
    # recorded: '83333 years 3 mons -6015 days 1.642794 seconds' (seconds as a double)
    ("P83333Y3M-6015DT0H0M1.642793999S", "P83333Y3M-6015DT1.642794S"),
    ("P0Y0M0DT0H0M-1.642793999S", "PT-1.642794S"), ("P0Y0M0DT0H0M0.000000999S", "PT0.000001S"),
    ("P0Y0M0DT0H0M0.0000004S", "PT0S"),
])
def test_interval_is_postgres_iso_8601_text(sent: str, text: str) -> None:
    interval = field("iv", "string", "INTERVAL", 49, 6)
    assert rows_to_arrow([{"iv": sent}], {"fields": [interval]}).column("iv").to_pylist() == [text]


# Hypothesis: values drawn per type, compared with an independent reference.

@hsettings(deadline=None)
@given(st.dates())
def test_days_from_civil_matches_python_dates(day: date) -> None:
    expected = day.toordinal() - date(1970, 1, 1).toordinal()
    assert _days_from_civil(day.year, day.month, day.day) == expected


@hsettings(max_examples=50, deadline=None)
@given(st.integers(-4713, 0), st.integers(1, 12), st.integers(1, 28))
def test_days_from_civil_matches_duckdb_for_bc_years(year: int, month: int, day: int) -> None:
    bc = f"{1 - year:04d}-{month:02d}-{day:02d} (BC)"
    expected = duckdb.execute(f"select '{bc}'::date - '1970-01-01'::date").fetchone()[0]  # type: ignore[index]
    assert _days_from_civil(year, month, day) == expected


@hsettings(deadline=None)
@given(st.datetimes(timezones=st.sampled_from([UTC])), st.integers(-15 * 60, 15 * 60))
def test_zoned_timestamps_match_python(moment: datetime, offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    local = moment.astimezone(zone) if 1 < moment.year < 9999 else moment
    text = local.isoformat().replace("+00:00", "Z")
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert zoned_to_us(text) == expected
    assert _one(TSTZ, [text]) == _one(TSTZ, [moment.isoformat()])


@hsettings(deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_unconstrained_numeric_text_is_kept_exactly(value: Decimal) -> None:
    text = format(value, "f")
    assert _one(FREE_NUMERIC, [text]) == [text]
    assert column_type(FREE_NUMERIC).to_python(text) == value


@hsettings(deadline=None)
@given(st.decimals(min_value=-9999999999, max_value=9999999999, places=2,
                   allow_nan=False, allow_infinity=False))
def test_decimal_column_text_matches_postgres_form(value: Decimal) -> None:
    text = format(value.quantize(Decimal("0.01")), "f")
    assert _one(NUMERIC, [text]) == [text]


@hsettings(deadline=None)
@given(st.text())
def test_text_is_kept_exactly(value: str) -> None:
    table = rows_to_arrow([{"name": value}], {"fields": [TEXT]})
    assert table.column("name").to_pylist() == [value]


@hsettings(deadline=None)
@given(st.integers(0, 86_400_000_000))
def test_time_text_reads_back_in_duckdb_as_the_same_time(micros: int) -> None:
    text = rows_to_arrow([{"at": micros}], {"fields": [TIME]}).column("at").to_pylist()[0]
    back = duckdb.execute("select epoch_us(?::time)", [text]).fetchone()[0]  # type: ignore[index]
    assert back == micros


def test_date_key_infinity_has_one_spelling_across_snapshot_and_streaming() -> None:
    key_schema = {"type": "struct", "name": "k.Key", "optional": False, "fields": [
        {"type": "int32", "optional": False, "name": "io.debezium.time.Date", "version": 1,
         "field": "d"}]}
    normalise = key_normaliser(key_schema)
    assert normalise is not None
    assert normalise({"d": -622191234}) == normalise({"d": -2147472692}) == {"d": 2**31 - 1}
    assert normalise({"d": 19000}) == {"d": 19000}  # ordinary keys stay exactly as sent
    assert key_normaliser({"type": "struct", "fields": [{"type": "int32", "field": "id"}]}) is None


def test_archived_date_keys_match_between_snapshot_read_and_streaming_delete() -> None:
    key_schema = {"type": "struct", "name": "k.Key", "optional": False, "fields": [
        {"type": "int32", "optional": False, "name": "io.debezium.time.Date", "version": 1,
         "field": "d"}]}
    value_schema = {"type": "struct", "name": "k.Envelope", "fields": [
        {"type": "struct", "optional": True, "field": "before", "fields": [DATE]},
        {"type": "struct", "optional": True, "field": "after", "fields": [DATE]},
        {"type": "struct", "optional": False, "field": "source", "fields": []},
        {"type": "string", "optional": False, "field": "op"}]}

    def message(offset: int, op: str, days: int) -> tuple[str, int, int, bytes, bytes]:
        key = orjson.dumps({"schema": key_schema, "payload": {"d": days}})
        after = None if op == "d" else {"day": days}
        value = orjson.dumps({"schema": value_schema, "payload": {
            "before": None, "after": after, "op": op,
            "source": {"schema": "public", "table": "k", "lsn": offset, "txId": 1}}})
        return ("p.public.k", 0, offset, key, value)

    table = events_to_arrow([message(0, "r", -622191234), message(1, "d", -2147472692)])
    assert table.column("__key").to_pylist() == ['{"d":2147483647}'] * 2


# Recorded from Debezium 3.6.3 streaming `insert ... values (2, '{{x,y},{z,w}}', ...)`:
# each inner array of a 2-D text[] / enum[] arrives as the JVM's name for a String[].
_TEXT_ARRAY = {"type": "array", "items": {"type": "string", "optional": True},
               "optional": True, "field": "ta",
               "parameters": {"__debezium.source.column.type": "_TEXT",
                              "__debezium.source.column.length": "2147483647",
                              "__debezium.source.column.scale": "0"}}
_ENUM_ARRAY = {"type": "array", "field": "ea", "optional": True,
               "items": {"type": "string", "optional": False, "name": "io.debezium.data.Enum",
                         "version": 1, "parameters": {"allowed": "a,b"}},
               "parameters": {"__debezium.source.column.type": "_AP_MOOD",
                              "__debezium.source.column.length": "2147483647",
                              "__debezium.source.column.scale": "0"}}
_ROW = {"type": "struct", "name": "t.Value", "optional": True,
        "fields": [{"type": "int32", "optional": False, "field": "id"}, _TEXT_ARRAY,
                   _ENUM_ARRAY]}


def test_a_multi_dimensional_text_array_is_a_decode_error_not_data() -> None:
    mangled = {"id": 2, "ta": ["[Ljava.lang.String;@79f87a07", "[Ljava.lang.String;@4185a5db"],
               "ea": ["a"]}
    ok = {"id": 1, "ta": ["x", None, "[L", "[Ljava.lang.String;", "a;@1"], "ea": ["a", "b"]}
    assert rows_to_arrow([ok], _ROW).to_pylist() == [ok]
    for rows in ([ok, mangled], [mangled]):
        with pytest.raises(DecodeError, match=r"more than one dimension.*array_ndims\(ta\)"
                           ) as info:
            rows_to_arrow(rows, _ROW)
        assert info.value.details["column"] == "ta"
    enum_2d = {"id": 3, "ta": None, "ea": ["[Ljava.lang.String;@480f14f6"]}
    with pytest.raises(DecodeError, match="'ea'"):
        rows_to_arrow([enum_2d], _ROW)
    codec = row_codec(_ROW)
    assert codec.to_python(ok) == ok
    with pytest.raises(DecodeError, match="more than one dimension"):
        codec.to_python(mangled)
