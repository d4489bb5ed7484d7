"""The process's in-memory DuckDB (snapshotter/engine.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

from snapshotter import engine


def test_connections_are_separate_and_pinned_to_utc() -> None:
    first, second = engine.connection(), engine.connection()
    try:
        first.execute("SET TimeZone = 'America/New_York'")
        assert second.execute("select current_setting('TimeZone')").fetchone() == ("UTC",)
        assert engine.connection().execute(
            "select current_setting('TimeZone')").fetchone() == ("UTC",)
        first.execute("create temp table mine as select 1 as x")
        names = {r[0] for r in second.execute("select table_name from duckdb_tables()")
                 .fetchall()}
        assert "mine" not in names
    finally:
        first.close()
        second.close()


def test_connections_from_threads_at_once() -> None:
    results: list[int] = []

    def query(n: int) -> None:
        con = engine.connection()
        try:
            row = con.execute(f"select sum(range) from range({n})").fetchone()
            assert row is not None
            results.append(int(row[0]))
        finally:
            con.close()
    threads = [threading.Thread(target=query, args=(10_000 + n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == sorted(sum(range(10_000 + n)) for n in range(8))


def test_a_forked_child_gets_a_database_of_its_own() -> None:
    """Destroying the database inherited through fork() hung or aborted the child
    (found in review); it is kept, unused, and the child opens its own."""
    con = engine.connection()
    assert con.execute("select 1").fetchone() == (1,)
    con.close()
    pid = os.fork()
    if pid == 0:  # the child
        code = 2
        try:
            child = engine.connection()
            code = 0 if child.execute("select 42").fetchone() == (42,) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    parent = engine.connection()
    assert parent.execute("select 7").fetchone() == (7,)  # the parent's is untouched
    parent.close()
