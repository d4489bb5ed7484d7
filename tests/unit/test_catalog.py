"""The DuckDB catalog on a real archive directory: held open by other processes, synced
from the manifests after a crash or a removed snapshot. The real-stack version is
tests/integration/test_catalog_readers.py."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from snapshotter.catalog import CatalogFiles, ensure_catalog, run_sql, sync_catalog
from snapshotter.snapshots import create_snapshot, list_snapshots
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.settings import Settings

TABLE = "public.items"


def _fresh(path: Path) -> tuple[list[str], list[str], int | None]:
    """(registered ids, snap_/latest schemas, rows of latest) as a new process sees them."""
    code = textwrap.dedent("""
        import json, sys, duckdb
        con = duckdb.connect(sys.argv[1], read_only=True)
        ids = sorted(r[0] for r in con.execute("select id from tidelog.snapshots").fetchall())
        schemas = sorted(r[0] for r in con.execute(
            "select schema_name from information_schema.schemata where "
            "schema_name like 'snap_%' or schema_name = 'latest'").fetchall())
        latest = (con.execute("select count(*) from latest.items").fetchone()[0]
                  if "latest" in schemas else None)
        print(json.dumps([ids, schemas, latest]))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    ids, schemas, latest = json.loads(done.stdout)
    return ids, schemas, latest


def _agrees(settings: Settings) -> None:
    manifests = list_snapshots(settings)
    ids, schemas, latest = _fresh(CatalogFiles(settings.home).published)
    assert ids == sorted(m.id for m in manifests)
    assert schemas == sorted([f"snap_{m.id}" for m in manifests] + ["latest"] * bool(manifests))
    assert latest == (manifests[-1].tables[TABLE].rows if manifests else None)


def _snapshot(settings: Settings, history: History, key: int) -> str:
    history.event("c", key, v=float(key), name=f"n{key}")
    return create_snapshot(settings, [TABLE], history.cut(), catch_up=False).id


def test_read_write_and_read_only_holders_block_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(50)
    _snapshot(settings, history, 1000)
    published = CatalogFiles(settings.home).published
    holder = textwrap.dedent("""
        import sys, duckdb
        con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
        con.execute("select count(*) from latest.items").fetchall()
        if sys.argv[2] == "rw":
            con.execute("create table mine as select 1 as x")  # leaves a WAL
        print("holding", flush=True)
        sys.stdin.readline()
        print(con.execute("select count(*) from latest.items").fetchone()[0], flush=True)
    """)
    procs = []
    try:
        for mode in ("ro", "rw"):
            proc = subprocess.Popen([sys.executable, "-c", holder, str(published), mode],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline() == "holding\n", \
                proc.stderr.read() if proc.stderr else ""
            started = time.monotonic()
            _snapshot(settings, history, 1001 + len(procs))
            assert time.monotonic() - started < 30
            _agrees(settings)
            assert run_sql(settings, "select count(*) from latest.items")[1] == [
                (list_snapshots(settings)[-1].tables[TABLE].rows,)]
        # each holder still reads the catalog it opened: 51 and 52 rows
        outs = [p.communicate("\n", timeout=30)[0].strip() for p in procs]
        assert outs == ["51", "52"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    _snapshot(settings, history, 1010)  # publishing removes the read-write session's WAL
    assert not Path(f"{published}.wal").exists()
    _agrees(settings)
    assert not list((CatalogFiles(settings.home).directory).glob(".tmp-*"))


def test_catalog_follows_the_manifests(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(20)
    ids = [_snapshot(settings, history, 100 + i) for i in range(3)]
    _agrees(settings)
    assert ensure_catalog(settings) is False  # agreeing: nothing to do

    # A snapshot directory removed by hand: its views go at the next sync.
    shutil.rmtree(Path(settings.snapshot_root) / ids[0])
    assert ensure_catalog(settings) is True
    _agrees(settings)

    # A snapshot with a data file missing is left out, loudly, and retried each time.
    table = list_snapshots(settings)[0].tables[TABLE]
    (Path(settings.snapshot_root) / ids[1] / table.all_files[0]).unlink()
    with caplog.at_level(logging.WARNING, logger="snapshotter.catalog"):
        ids.append(_snapshot(settings, history, 200))  # the next create still registers
        assert f"snapshot {ids[1]} is left out" in caplog.text
        caplog.clear()
        ensure_catalog(settings)  # the listing disagrees with the manifests: tried again
        assert f"snapshot {ids[1]} is left out" in caplog.text
    registered, _, _ = _fresh(CatalogFiles(settings.home).published)
    assert registered == sorted([ids[2], ids[3]])

    # Both catalog files lost: rebuilt from the manifests.
    files = CatalogFiles(settings.home)
    files.published.unlink()
    files.own.unlink()
    sync_catalog(settings)
    assert _fresh(files.published)[0] == sorted([ids[2], ids[3]])


def test_a_corrupt_own_copy_is_rebuilt_from_the_manifests(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(5)
    sid = _snapshot(settings, history, 7)
    files = CatalogFiles(settings.home)
    files.own.write_bytes(b"not a duckdb file")
    files.listing.unlink()
    assert ensure_catalog(settings) is True
    con = duckdb.connect(str(files.own), read_only=True)
    try:
        assert con.execute("select id from tidelog.snapshots").fetchall() == [(sid,)]
    finally:
        con.close()


@pytest.mark.parametrize("damage", ["garbage", "foreign"])
def test_a_damaged_or_foreign_own_copy_is_rebuilt_from_the_manifests(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(5)
    _snapshot(settings, history, 100)
    files = CatalogFiles(settings.home)
    files.own.unlink()
    files.listing.unlink()  # else the listing agrees and nothing is synced
    if damage == "garbage":
        files.own.write_bytes(b"not a duckdb file" * 500)
    else:
        with duckdb.connect(str(files.own)) as con:
            con.execute("create table someone_elses as select 1 as x")
    with caplog.at_level(logging.WARNING, logger="snapshotter.catalog"):
        assert sync_catalog(settings)
    assert ("is unreadable" in caplog.text) is (damage == "garbage")
    _agrees(settings)
    assert not list(files.directory.glob(".tmp-*"))


def test_a_failed_catalog_change_leaves_the_previous_catalog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import snapshotter.catalog as catalog

    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(5)
    _snapshot(settings, history, 100)
    before = CatalogFiles(settings.home).published.read_bytes()
    history.event("c", 101, v=1.0, name="n101")
    cut = history.cut()

    def broken(con: duckdb.DuckDBPyConnection, *args: object) -> None:
        con.execute("insert into tidelog.snapshots (id) values ('half-written')")
        raise duckdb.InvalidInputException("view creation failed")
    monkeypatch.setattr(catalog, "_insert", broken)
    with pytest.raises(Exception, match="the previous catalog is unchanged"):
        create_snapshot(settings, [TABLE], cut, catch_up=False)
    files = CatalogFiles(settings.home)
    assert files.published.read_bytes() == before
    assert not list(files.directory.glob(".tmp-*"))
    monkeypatch.undo()
    assert sync_catalog(settings)  # the next sync registers the published snapshot
    _agrees(settings)


def test_change_views_are_made_once_per_generation_and_see_later_segments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a `changes.*` view binds it, reading every segment's footer; DuckDB binds
    it again at each query, so a view is only made again when its statement changes."""
    import snapshotter.catalog as catalog

    made: list[str] = []
    real = catalog.engine.connection

    class Recording:
        def __init__(self) -> None:
            self.con = real()

        def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
            if sql.startswith("create or replace view changes."):
                made.append(sql)
            return self.con.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.con, name)
    monkeypatch.setattr(catalog.engine, "connection", Recording)
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(5)
    _snapshot(settings, history, 100)
    assert len(made) == 1
    history.event("c", 101, v=1.0, name="n101", colour="red")  # a column added later
    _snapshot(settings, history, 102)
    assert len(made) == 1  # the same generation: the same view
    columns, rows = run_sql(settings, "select __key, colour from changes.items "
                                      "where colour is not null")
    assert rows == [('{"id":101}', "red")]
    _, rows = run_sql(settings, "select count(*) from changes.items")
    assert rows == [(history.offset,)]
    sync_catalog(settings, rebuild=True)  # a catalog made anew makes its views anew
    assert len(made) == 2


def test_a_catalog_change_failing_on_a_full_disk_does_not_break_later_ones(
        tmp_path: Path) -> None:
    """A checkpoint that fails invalidates the attached copy in DuckDB; left attached,
    it failed every later catalog change of the process (found in review). Run in a
    child: the file size limit (RLIMIT_FSIZE) stands for a full disk."""
    code = textwrap.dedent("""
        import json, os, resource, signal, sys
        from pathlib import Path
        import snapshotter.catalog as catalog
        from snapshotter import engine
        from snapshotter.snapshots import create_snapshot
        from tests.unit.test_snapshot_layout import History, _settings

        settings = _settings(Path(sys.argv[1]))
        history = History(settings, "public.items").seed(5)
        create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit: EFBIG
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        real = catalog._apply

        def full_disk(con, *args):
            changed = real(con, *args)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
            con.execute("create table tidelog.filler as select range from range(2000000)")
            return changed
        catalog._apply = full_disk
        history.event("c", 200, v=1.0, name="y")
        try:
            create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
            failed = ""
        except Exception as exc:
            failed = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        catalog._apply = real
        con = engine.connection()
        attached = [r[0] for r in con.execute("select database_name from duckdb_databases()")
                    .fetchall() if r[0].startswith("catalog_")]
        history.event("c", 201, v=1.0, name="z")
        later = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
        print(json.dumps([failed, attached, later.id]))
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    import json

    failed, attached, later = json.loads(done.stdout.strip().splitlines()[-1])
    assert "the previous catalog is unchanged" in failed and "File too large" in failed
    assert attached == []
    settings = _settings(tmp_path)
    assert later in {m.id for m in list_snapshots(settings)}
    _agrees(settings)
    assert not list(CatalogFiles(settings.home).directory.glob(".tmp-*"))
