"""The process's in-memory DuckDB database, for builds and row hashes.

Opening an in-memory database takes about 12 ms; a connection on an open one (`cursor`)
about 0.3 ms, and an incremental snapshot of 8 TPC-H tables takes some 200 ms in all.
Each caller gets a connection of its own, which it closes: connections share nothing a
build relies on (registered frames and temporary objects are per connection), and they
may run at once from several threads.
"""

from __future__ import annotations

import os
import threading

import duckdb

__all__ = ["connection"]

_LOCK = threading.Lock()
_DATABASE: tuple[int, duckdb.DuckDBPyConnection] | None = None
# A database inherited through fork() is never closed in the child: destroying it there
# (whose threads did not survive the fork) hangs or aborts the child (found in review).
_INHERITED: list[duckdb.DuckDBPyConnection] = []


def connection() -> duckdb.DuckDBPyConnection:
    """A new connection on the process's in-memory database, `TimeZone` set to UTC (what
    every digest renders timestamps in)."""
    global _DATABASE
    with _LOCK:
        if _DATABASE is not None and _DATABASE[0] != os.getpid():
            _INHERITED.append(_DATABASE[1])  # opened before a fork: not the child's to use
            _DATABASE = None
        if _DATABASE is None:
            _DATABASE = (os.getpid(), duckdb.connect())
        cursor = _DATABASE[1].cursor()
    cursor.execute("SET TimeZone = 'UTC'")
    return cursor
