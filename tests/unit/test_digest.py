"""The digest ignores layout and order, sees every change, and matches docs/digest.md."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings

from snapshotter.digest import TableDigest, overall_digest, render_expr, table_digest

DOC = Path(__file__).resolve().parents[2] / "docs" / "digest.md"
UTC = dt.UTC

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("amount", pa.decimal128(12, 2)),
        ("ratio", pa.float64()),
        ("small", pa.float32()),
        ("active", pa.bool_()),
        ("placed_at", pa.timestamp("us", tz="UTC")),
        ("local_at", pa.timestamp("us")),
        ("day", pa.date32()),
        ("tags", pa.list_(pa.string())),
        ("payload", pa.binary()),
        ("doc", pa.string()),
    ]
)


def rows() -> list[dict[str, Any]]:
    base = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    out = []
    for i in range(40):
        out.append(
            {
                "id": i,
                "name": ["", "NULL", None, "a,b", "é😀", 'q"\\'][i % 6] if i < 12 else f"n{i}",
                "amount": Decimal(i) / 4,
                "ratio": [0.1 + 0.2, -0.0, 0.0, 1e300, float("inf"), None][i % 6],
                "small": i / 3,
                "active": [True, False, None][i % 3],
                "placed_at": base + dt.timedelta(seconds=i, microseconds=i),
                "local_at": dt.datetime(1999, 12, 31, 23, 59, 59) + dt.timedelta(minutes=i),
                "day": dt.date(2020, 2, 29) + dt.timedelta(days=i),
                "tags": [["a, b"], ["a", "b"], [], None, [None, "NULL"]][i % 5],
                "payload": [b"\\x41", b"A", b"", None][i % 4],
                "doc": '{"k": [1, 2]}' if i % 2 else None,
            }
        )
    return out


def table(data: list[dict[str, Any]] | None = None, schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows() if data is None else data, schema=schema)


def digest_of(tbl: pa.Table) -> TableDigest:
    con = duckdb.connect()
    con.register("t", tbl)
    return table_digest(con, "t")


# --- invariance -----------------------------------------------------------------------


def test_row_order_does_not_matter() -> None:
    tbl = table()
    assert digest_of(tbl) == digest_of(tbl.take(list(reversed(range(tbl.num_rows)))))


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "none"])
@pytest.mark.parametrize("row_group_size", [1, 7, 1000])
def test_files_row_groups_and_compression_do_not_matter(
    tmp_path: Path, compression: str, row_group_size: int
) -> None:
    tbl = table()
    expected = digest_of(tbl)
    shuffled = tbl.take([(i * 17) % tbl.num_rows for i in range(tbl.num_rows)])
    for n, start in enumerate(range(0, tbl.num_rows, 13)):
        pq.write_table(
            shuffled.slice(start, 13),
            tmp_path / f"part-{n}.parquet",
            compression=compression,
            row_group_size=row_group_size,
        )
    con = duckdb.connect()
    got = table_digest(con, f"SELECT * FROM read_parquet('{tmp_path}/*.parquet')")
    assert got == expected
    assert table_digest(con, f"read_parquet('{tmp_path}/*.parquet')") == expected


def test_relation_forms_and_timezone_setting() -> None:
    con = duckdb.connect()
    con.register("t", table())
    con.execute("SET TimeZone = 'Asia/Kolkata'")
    expected = table_digest(con, "t")
    assert table_digest(con, "FROM t") == expected
    assert table_digest(con, "SELECT * FROM t ORDER BY random();") == expected
    assert table_digest(con, "(SELECT * FROM t)") == expected
    assert con.execute("SELECT current_setting('TimeZone')").fetchone() == ("Asia/Kolkata",)
    assert digest_of(table()) == expected


# --- sensitivity ----------------------------------------------------------------------


def changed(**cells: Any) -> pa.Table:
    data = rows()
    data[4].update(cells)
    return table(data)


@pytest.mark.parametrize(
    "cells",
    [
        {"id": 99},
        {"name": "NULL!"},
        {"amount": Decimal("0.76")},
        {"ratio": 0.30000000000000003},
        {"small": 1.0000001},
        {"active": True},
        {"placed_at": dt.datetime(2024, 1, 2, 3, 4, 8, 123460, tzinfo=UTC)},
        {"local_at": dt.datetime(1999, 12, 31, 23, 59, 59, 1)},
        {"day": dt.date(2021, 3, 4)},
        {"tags": ["a, b", None]},
        {"payload": b"B"},
        {"doc": '{"k":[1,2]}'},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_value_change_is_seen(cells: dict[str, Any]) -> None:
    assert digest_of(changed(**cells)).content_digest != digest_of(table()).content_digest


@pytest.mark.parametrize("column", [f.name for f in SCHEMA if f.name != "id"])
def test_null_is_seen(column: str) -> None:
    data = rows()
    target = next(r for r in data if r[column] is not None)
    target[column] = None
    assert digest_of(table(data)) != digest_of(table())


def test_null_empty_and_null_string_differ() -> None:
    one = pa.schema([("s", pa.string()), ("t", pa.string())])
    variants: list[list[dict[str, Any]]] = [
        [{"s": None, "t": "x"}],
        [{"s": "", "t": "x"}],
        [{"s": "NULL", "t": "x"}],
        [{"s": "-", "t": "x"}],
        [{"s": "x", "t": None}],  # moving text between columns is seen too
        [{"s": "1:x", "t": ""}],
        [{"s": "", "t": "1:x"}],
    ]
    digests = {digest_of(table(v, one)).digest for v in variants}
    assert len(digests) == len(variants)


def test_float_zero_signs_and_decimal_scale_differ() -> None:
    f = pa.schema([("v", pa.float64())])
    assert digest_of(table([{"v": 0.0}], f)) != digest_of(table([{"v": -0.0}], f))
    d2 = pa.schema([("v", pa.decimal128(10, 2))])
    d3 = pa.schema([("v", pa.decimal128(10, 3))])
    a = digest_of(table([{"v": Decimal("1.50")}], d2))
    b = digest_of(table([{"v": Decimal("1.5")}], d3))
    assert a.content_digest != b.content_digest and a.schema_digest != b.schema_digest


def test_column_name_and_type_changes_are_seen() -> None:
    tbl = table()
    base = digest_of(tbl)
    renamed = digest_of(tbl.rename_columns(["ident", *tbl.column_names[1:]]))
    assert renamed.schema_digest != base.schema_digest and renamed.digest != base.digest
    retyped = digest_of(tbl.set_column(0, "id", tbl.column("id").cast(pa.int32())))
    assert retyped.schema_digest != base.schema_digest and retyped.digest != base.digest
    assert retyped.content_digest == base.content_digest  # same values, other type


def test_duplicated_removed_and_swapped_rows_are_seen() -> None:
    tbl = table()
    base = digest_of(tbl)
    assert digest_of(pa.concat_tables([tbl, tbl.slice(5, 1)])) != base
    assert digest_of(tbl.slice(1)) != base
    # swapping one column between two rows keeps every column's multiset of values
    names = tbl.column("name").to_pylist()
    names[12], names[13] = names[13], names[12]
    assert digest_of(tbl.set_column(1, "name", pa.array(names))) != base


def test_rows_and_digest_shape() -> None:
    got = digest_of(table())
    assert got.rows == 40
    assert re.fullmatch(r"[0-9a-f]{64}", got.digest)
    assert re.fullmatch(r"[0-9a-f]{64}", got.schema_digest)
    assert re.fullmatch(r"[0-9a-f]{32}", got.content_digest)
    empty = digest_of(table([]))
    assert empty.rows == 0 and empty.content_digest == "0" * 32


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.none() | st.integers(-5, 5), st.none() | st.text(max_size=4)),
        min_size=1,
        max_size=20,
    ),
    st.randoms(use_true_random=False),
)
def test_random_tables_shuffle_invariant_and_change_sensitive(
    data: list[tuple[int | None, str | None]], rnd: Any
) -> None:
    schema = pa.schema([("i", pa.int64()), ("s", pa.string())])
    as_rows: list[dict[str, Any]] = [{"i": i, "s": s} for i, s in data]
    shuffled = as_rows[:]
    rnd.shuffle(shuffled)
    base = digest_of(table(as_rows, schema))
    assert digest_of(table(shuffled, schema)) == base
    mutated = [dict(r) for r in as_rows]
    mutated[0]["s"] = (mutated[0]["s"] or "") + "!"
    assert digest_of(table(mutated, schema)) != base


# --- the SQL in docs/digest.md gives the same values ----------------------------------


def doc_sql(marker: str) -> str:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(f"-- tidelog-digest-v1: {marker}")]
    assert len(found) == 1, f"docs/digest.md must hold exactly one block for {marker!r}"
    return found[0]


def run_doc_table_sql(con: duckdb.DuckDBPyConnection) -> TableDigest:
    result = con.execute(doc_sql("table digest")).fetchone()
    assert result is not None
    return TableDigest(int(result[0]), result[1], result[2], result[3])


@pytest.mark.parametrize(
    "relation",
    [
        "SELECT * FROM t",
        "SELECT id, name AS \"we\"\"ird: name\", placed_at AS \"Zé\" FROM t",
        "SELECT [placed_at] AS nested, {'a': payload} AS s, amount::DOUBLE AS x FROM t",
        "SELECT * FROM t WHERE false",
    ],
)
def test_doc_sql_equals_python(relation: str) -> None:
    con = duckdb.connect()
    con.register("t", table())
    con.execute(f"CREATE VIEW digest_input AS {relation}")
    expected = table_digest(con, relation)
    con.execute("SET TimeZone = 'America/Denver'")  # the doc SQL must pin it itself
    assert run_doc_table_sql(con) == expected


def test_doc_sql_on_parquet_snapshot_with_hidden_key(tmp_path: Path) -> None:
    tbl = table()
    with_key = tbl.append_column("__key", pa.array([f'{{"id":{i}}}' for i in range(40)]))
    pq.write_table(with_key, tmp_path / "part-0.parquet", row_group_size=9)
    con = duckdb.connect()
    con.execute(
        "CREATE VIEW digest_input AS SELECT * EXCLUDE (__key) "
        f"FROM read_parquet('{tmp_path}/*.parquet')"
    )
    assert run_doc_table_sql(con) == digest_of(tbl)


def test_doc_overall_sql_equals_python() -> None:
    digests = {"public.orders": "ab" * 32, "public.customers": "cd" * 32, "x:y": "0" * 64}
    con = duckdb.connect()
    con.execute("CREATE TABLE table_digests (name VARCHAR, digest VARCHAR)")
    con.executemany("INSERT INTO table_digests VALUES (?, ?)", list(digests.items()))
    got = con.execute(doc_sql("overall digest")).fetchone()
    assert got == (overall_digest(digests),)
    assert overall_digest(digests) != overall_digest({**digests, "x:y": "1" * 64})
    assert overall_digest(dict(reversed(digests.items()))) == overall_digest(digests)


@pytest.mark.parametrize(
    ("sql_value", "type_name", "text"),
    [
        ("TIMESTAMPTZ '2024-01-02 03:04:05.123456+02'", "TIMESTAMP WITH TIME ZONE",
         "2024-01-02T01:04:05.123456Z"),
        ("TIMESTAMP '2024-01-02 01:04:05'", "TIMESTAMP", "2024-01-02T01:04:05.000000"),
        ("'\\x5Cx41'::BLOB", "BLOB", "5C783431"),  # the four bytes \x41
        ("'A'::BLOB", "BLOB", "41"),
        ("1.50::DECIMAL(10,2)", "DECIMAL(10,2)", "1.50"),
        ("(-0.5)::DECIMAL(10,3)", "DECIMAL(10,3)", "-0.500"),
        ("0.1::DOUBLE + 0.2::DOUBLE", "DOUBLE", "0.30000000000000004"),
        ("'-0.0'::DOUBLE", "DOUBLE", "-0.0"),
        ("100::DOUBLE", "DOUBLE", "100.0"),
        ("'1e300'::DOUBLE", "DOUBLE", "1e+300"),
        ("'nan'::DOUBLE", "DOUBLE", "nan"),
        ("0.1::FLOAT", "FLOAT", "0.1"),
        ("true", "BOOLEAN", "true"),
        ("DATE '2024-01-02'", "DATE", "2024-01-02"),
        ("['a, b']", "VARCHAR[]", "['a, b']"),
        ("['a', 'b']", "VARCHAR[]", "[a, b]"),
        ("[1, NULL]", "INTEGER[]", "[1, NULL]"),
    ],
)
def test_render_rules_are_pinned(sql_value: str, type_name: str, text: str) -> None:
    """The renderings docs/digest.md promises; a DuckDB upgrade that changes one fails."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE v AS SELECT {sql_value} AS x")
    assert con.execute("SELECT column_type FROM (DESCRIBE v)").fetchone() == (type_name,)
    assert con.execute(f"SELECT {render_expr('x', type_name)} FROM v").fetchone() == (text,)
