"""The DuckDB extensions pinned in pyproject.toml load offline from their packages and
work: TPC-H data generation, a DuckLake catalog, the Postgres scanner and httpfs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tidelog.duckdb_extensions import EXTENSIONS, extension_path, load_extension
from tidelog.errors import ConfigError


def _loaded(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("select extension_name from duckdb_extensions() where loaded").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_every_extension_has_a_build_for_the_pinned_duckdb(name: str) -> None:
    path = extension_path(name)
    assert path.is_file() and f"v{duckdb.__version__}" in path.parts


def test_tpch_generates_data_offline() -> None:
    con = duckdb.connect()
    load_extension(con, "tpch")
    con.execute("call dbgen(sf=0.01)")
    assert con.execute("select count(*) from region").fetchone() == (5,)
    assert con.execute("select count(*) from nation").fetchone() == (25,)
    assert "tpch" in _loaded(con)


def test_ducklake_catalog_round_trip(tmp_path: Path) -> None:
    con = duckdb.connect()
    load_extension(con, "ducklake")
    con.execute(f"attach 'ducklake:{tmp_path / 'meta.ducklake'}' as lake "
                f"(data_path '{tmp_path / 'data'}')")
    con.execute("create table lake.t as select range as id from range(1000)")
    assert con.execute("select sum(id) from lake.t").fetchone() == (499500,)
    assert list((tmp_path / "data").rglob("*.parquet"))  # small inserts stay inlined


def test_postgres_scanner_and_httpfs_load() -> None:
    con = duckdb.connect()
    load_extension(con, "postgres")
    load_extension(con, "httpfs")
    load_extension(con, "httpfs")  # idempotent
    assert {"postgres_scanner", "httpfs"} <= _loaded(con)
    functions = {r[0] for r in con.execute("select function_name from duckdb_functions()")
                 .fetchall()}
    assert "postgres_query" in functions


def test_unknown_extension_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: ducklake, httpfs"):
        extension_path("spatial")
