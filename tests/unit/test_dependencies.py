"""The environment pyproject.toml pins works the way tidelog and its docs use it
(docs/dependencies.md): the `duckdb` command beside the Python, of the same version, and
DuckDB values that need an optional Python module."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import duckdb


def test_duckdb_cli_in_the_venv_is_the_library_version(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "duckdb"
    assert cli.exists(), "duckdb-cli is not installed; run `make venv`"
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(f"v{duckdb.__version__} "), out.stdout
    assert version("duckdb-cli") == duckdb.__version__

    # a catalog written by the library opens read-only in the CLI, as the README shows
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema snap_x; create view snap_x.t as select 42 as answer")
    con.close()
    out = subprocess.run([str(cli), "-readonly", str(path), "-csv", "-c",
                          "select answer from snap_x.t"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["answer", "42"], out


def test_duckdb_hands_timestamptz_values_to_python() -> None:
    # DuckDB needs pytz for this; pandas 3 no longer brings it, so it is pinned directly.
    row = duckdb.sql("select TIMESTAMPTZ '2024-05-06 07:08:09.5+00' as t").fetchone()
    assert row is not None
    assert row[0] == dt.datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=dt.UTC)
