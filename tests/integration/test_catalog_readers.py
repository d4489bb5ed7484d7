"""The DuckDB catalog held open by other processes, and crashes around registration.

DuckDB allows one read-write process or many read-only ones on a file, never both; people
open `catalog.duckdb` with the DuckDB CLI while tidelog keeps creating snapshots.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from cdc.connector import ConnectorSpec, apply
from snapshotter.catalog import catalog_path, run_sql
from snapshotter.snapshots import list_snapshots
from tests.integration.cdc_helpers import (
    cli_env,
    execute,
    private_settings,
    unique_name,
    wait_for_events,
)
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLE = "public.catalog_readers"


def _environ(env: Settings, **extra: str) -> dict[str, str]:
    return cli_env(env, **extra)


def _cli(env: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args],
                          env=_environ(env, **extra), capture_output=True, text=True,
                          timeout=300)


def _change(env: Settings, marker: str) -> None:
    """One more row in Postgres, waited for on the topic, so the next cut is new."""
    execute(env, f"insert into {TABLE} (v) values (%s)", params=(marker,))
    wait_for_events(env, f"{env.topic_prefix}.{TABLE}", lambda ev: any(
        e.after and e.after.get("v") == marker for e in ev), timeout=120)


def _create(env: Settings, **extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(env, "snapshot", "create", "--tables", TABLE, "--json", **extra)


HOLDER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    def ids():
        return sorted(r[0] for r in con.execute("select id from tidelog.snapshots").fetchall())
    print(" ".join(ids()), flush=True)
    if sys.argv[2] == "rw":  # what a person might do in a read-write session
        con.execute("create table mine as select 42 as x")
        print("wrote", flush=True)
    sys.stdin.readline()
    print(" ".join(ids()), flush=True)
""")


@contextmanager
def _holder(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding the catalog open, as a DuckDB CLI session would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"holder failed to open the catalog: {proc.stderr.read()}")  # type: ignore[union-attr]
    return line.strip()


def _fresh_reader(path: Path) -> dict[str, object]:
    """What a new process sees in the catalog: ids, `latest`, and each snapshot's rows."""
    code = textwrap.dedent("""
        import json, sys, duckdb
        con = duckdb.connect(sys.argv[1], read_only=True)
        ids = sorted(r[0] for r in con.execute("select id from tidelog.snapshots").fetchall())
        schemas = sorted(r[0] for r in con.execute(
            "select schema_name from information_schema.schemata "
            "where schema_name like 'snap_%' or schema_name = 'latest'").fetchall())
        rows = {i: con.execute(f"select count(*) from snap_{i}.catalog_readers").fetchone()[0]
                for i in ids}
        latest = con.execute("select count(*) from latest.catalog_readers").fetchone()[0] \\
            if "latest" in schemas else None
        print(json.dumps({"ids": ids, "schemas": schemas, "rows": rows, "latest": latest}))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_agrees(env: Settings) -> dict[str, object]:
    """The catalog holds exactly the snapshots that have a manifest, each queryable."""
    manifests = list_snapshots(env)
    seen = _fresh_reader(catalog_path(env))
    assert seen["ids"] == sorted(m.id for m in manifests)
    assert seen["schemas"] == sorted([f"snap_{m.id}" for m in manifests]
                                     + (["latest"] if manifests else []))
    for m in manifests:
        assert seen["rows"][m.id] == m.tables[TABLE].rows  # type: ignore[index]
    if manifests:
        assert seen["latest"] == manifests[-1].tables[TABLE].rows
    return seen


@pytest.fixture(scope="module")
def env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = unique_name("catrd")
    local = private_settings(settings, tmp_path_factory.mktemp("catalogreaders"), name)
    execute(settings, f"drop table if exists {TABLE}",
            f"create table {TABLE} (id serial primary key, v text)",
            f"insert into {TABLE} (v) select md5(g::text) from generate_series(1, 100) g")
    apply(local, ConnectorSpec(name, (TABLE,), name), timeout=180)
    _change(local, "ready")
    return local


def test_readers_holding_the_catalog_never_break_snapshot_create(env: Settings) -> None:
    first = _create(env)
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]
    path = catalog_path(env)

    with _holder(path, "ro") as reader:
        assert _first_line(reader) == first_id
        _change(env, "while-read-only")
        second = _create(env)
        assert second.returncode == 0, second.stderr
        second_id = json.loads(second.stdout)["id"]
        seen = _assert_agrees(env)
        assert second_id in seen["ids"]  # type: ignore[operator]

        # A read-write session (a DuckDB CLI without -readonly), beside the reader.
        with _holder(path, "rw") as writer:
            assert _first_line(writer) == " ".join(sorted([first_id, second_id]))
            assert _first_line(writer) == "wrote"
            _change(env, "while-read-write")
            third = _create(env)
            assert third.returncode == 0, third.stderr
            third_id = json.loads(third.stdout)["id"]
            seen = _assert_agrees(env)
            assert third_id in seen["ids"]  # type: ignore[operator]
            # tidelog's own query path is not blocked by the read-write session either
            _, rows = run_sql(env, "select count(*) from tidelog.snapshots")
            assert rows == [(3,)]
            listed = _cli(env, "sql", "select id from latest.catalog_readers limit 0")
            assert listed.returncode == 0, listed.stderr
            writer.communicate("\n", timeout=30)
        # The reader keeps the view it opened, undisturbed by the changes.
        out, err = reader.communicate("\n", timeout=30)
        assert reader.returncode == 0, err
        assert out.strip() == first_id
    assert not Path(f"{path}.wal").exists(), "a stray WAL would be replayed into the catalog"
    assert _assert_agrees(env)["ids"] == sorted([first_id, second_id, third_id])


def test_crash_between_publish_and_register_is_repaired(env: Settings) -> None:
    assert _create(env).returncode == 0  # a catalog to start from
    _change(env, "before-crash")
    crashed = _create(env, TIDELOG_CRASH_AT="snapshot.after_publish")
    assert crashed.returncode == 137, crashed.stderr
    orphan = list_snapshots(env)[-1]
    assert orphan.id not in _fresh_reader(catalog_path(env))["ids"], \
        "the crash point did not fire before registration"
    listed = _cli(env, "snapshot", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orphan.id in _assert_agrees(env)["ids"]  # type: ignore[operator]

    # Killed while publishing the catalog itself, at either step: old state or new.
    for point in ("catalog.before_publish", "catalog.after_public"):
        _change(env, f"crash-{point}")
        crashed = _create(env, TIDELOG_CRASH_AT=point)
        assert crashed.returncode == 137, crashed.stderr
        again = _create(env)
        assert again.returncode == 0, again.stderr
        _assert_agrees(env)

    # A snapshot directory removed by hand leaves no view behind after the next create.
    gone = list_snapshots(env)[0]
    shutil.rmtree(Path(env.snapshot_root) / gone.id)
    _change(env, "after-removal")
    after = _create(env)
    assert after.returncode == 0, after.stderr
    seen = _assert_agrees(env)
    assert gone.id not in seen["ids"]  # type: ignore[operator]
    con = duckdb.connect(str(catalog_path(env)), read_only=True)
    try:
        leftovers = con.execute("select count(*) from information_schema.schemata "
                                "where schema_name = ?", [f"snap_{gone.id}"]).fetchone()
    finally:
        con.close()
    assert leftovers == (0,)
