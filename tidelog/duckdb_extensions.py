"""DuckDB extensions loaded from their PyPI packages, never downloaded.

`INSTALL x` / `LOAD x` fetch from extensions.duckdb.org into ~/.duckdb, which these
machines (and many production hosts) cannot reach. The `duckdb-extension-<name>` packages,
pinned to the same DuckDB version in pyproject.toml, ship the binary inside the package at
`duckdb_extension_<name>/extensions/v<duckdb version>/<name>.duckdb_extension`; DuckDB loads
it by path. See docs/dependencies.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb

from tidelog.errors import ConfigError
from tidelog.sql import literal

__all__ = ["EXTENSIONS", "extension_path", "load_extension"]

# extension name -> (package, file stem). The Postgres scanner's binary is
# `postgres_scanner`: the `duckdb-extension-postgres` package ships the same bytes under
# the name `postgres`, which DuckDB 1.5 refuses (it looks for `postgres_duckdb_cpp_init`).
EXTENSIONS: dict[str, tuple[str, str]] = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    "postgres_scanner": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    "tpch": ("duckdb_extension_tpch", "tpch"),
}


def extension_path(name: str) -> Path:
    """The `.duckdb_extension` file of `name` for the running DuckDB version."""
    if name not in EXTENSIONS:
        raise ConfigError(f"DuckDB extension {name!r} is not one tidelog installs; known: "
                          f"{', '.join(sorted(EXTENSIONS))}", extension=name)
    package, stem = EXTENSIONS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"DuckDB extension {name!r} is not installed: the package "
                          f"{package.replace('_', '-')} is missing; run `make venv`",
                          extension=name, package=package)
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base / "extensions" / f"v{duckdb.__version__}" / f"{stem}.duckdb_extension"
    if not path.is_file():
        raise ConfigError(f"DuckDB extension {name!r} has no build for DuckDB "
                          f"{duckdb.__version__} in {base}; the extension package and duckdb "
                          f"must be the same version (pyproject.toml pins both)",
                          extension=name, path=str(path))
    return path


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load `name` into `con` from its installed package (idempotent)."""
    path = extension_path(name)
    try:
        con.execute(f"LOAD {literal(str(path))}")
    except duckdb.Error as exc:
        raise ConfigError(f"DuckDB could not load extension {name!r} from {path}: {exc}; "
                          f"reinstall with `make venv`", extension=name) from exc
