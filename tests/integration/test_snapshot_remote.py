"""Snapshots on S3 (moto's server), read by a separate DuckDB CLI process through httpfs
with nothing but the printed SQL, the endpoint and credentials from its environment."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from snapshotter.digest import ContentSum, digest_sql
from snapshotter.mirror import sync
from snapshotter.remote import publish_snapshot, snapshot_sql
from snapshotter.snapshots import create_snapshot, open_snapshot
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.duckdb_extensions import extension_path
from tidelog.stack.process import free_port

TABLE = "public.items"
KEY_ID, SECRET = "tidelog-reader", "Reader-s3cret-47"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    try:
        s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               region="us-east-1", allow_bucket_creation=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_dir("tidelog-snapshots")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _duckdb_cli(sql: str, query: str, expect: int = 1) -> list[str]:
    """Run the DuckDB CLI in its own process: only httpfs loaded, the key in its env."""
    cli = Path(sys.executable).parent / "duckdb"
    script = (f"LOAD '{extension_path('httpfs')}';\nSET TimeZone = 'UTC';\n{sql}\n"
              f".output stdout\n.mode csv\n.headers off\n{query};\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    done = subprocess.run([str(cli), "-batch"], input=script, capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    # CREATE SECRET prints a result box first; the query's CSV rows come last
    return done.stdout.strip().splitlines()[-expect:]


def test_layered_snapshot_on_s3_is_read_by_another_duckdb(tmp_path: Path,
                                                          s3_endpoint: str) -> None:
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(300)
    base = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    rng = random.Random(11)
    for key in rng.sample(range(300), 6):
        history.event("u", key, v=-2.5, name=f"changed-{key}")
    history.event("d", 5)
    history.event("c", 1000, v=1.5, name="new")
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.built_from == base.id and layered.tables[TABLE].delete_files

    root = (f"s3://tidelog-snapshots/team?endpoint_override={s3_endpoint}&scheme=http"
            "&region=us-east-1")
    done = publish_snapshot(settings, layered.id, root)
    assert done.uploaded == (base.id, layered.id)
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
    table = layered.tables[TABLE]
    # the layered snapshot holds only its deletes and delta; the data file is the base's
    assert s3.get_file_info(f"tidelog-snapshots/team/{layered.id}/{table.files[0]}").type \
        == pafs.FileType.NotFound
    assert s3.get_file_info(f"tidelog-snapshots/team/{base.id}/{table.files[0]}").type \
        == pafs.FileType.File

    sql = snapshot_sql(settings, layered.id, root)
    assert SECRET not in sql and KEY_ID not in sql
    assert f"s3://tidelog-snapshots/team/{base.id}/{table.files[0]}" in sql
    assert "deletes.parquet" in sql
    # exactly the snapshot's content: its digest, computed by the other process
    view = f'"snap_{layered.id}".items'
    assert table.salted  # the archiver salted every event; the views hide the salts
    [got] = _duckdb_cli(snapshot_sql(settings, layered.id, root, with_salt=True),
                        digest_sql(view, table.columns, salted=True))
    assert ContentSum(*map(int, got.split(","))).hex == table.content_digest
    assert int(got.split(",")[0]) == table.rows == 300  # 300 seeded - 1 deleted + 1 new
    ids = _duckdb_cli(sql, f"select id from {view} where name like 'changed-%' order by id",
                      expect=6)
    want = open_snapshot(settings, layered.id).duckdb().execute(
        "select id from public.items where name like 'changed-%' order by id").fetchall()
    assert ids == [str(i) for (i,) in want] and len(want) == 6
    # the base, at the same root, reads its own files
    base_table = base.tables[TABLE]
    [got_base] = _duckdb_cli(snapshot_sql(settings, base.id, root, with_salt=True),
                             digest_sql(f'"snap_{base.id}".items', base_table.columns,
                                        salted=True))
    assert ContentSum(*map(int, got_base.split(","))).hex == base_table.content_digest


def test_an_s3_snapshot_root_is_kept_in_line_and_read_by_another_duckdb(
        tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`TIDELOG_SNAPSHOT_ROOT=s3://…`: each snapshot is there when `create` returns, a
    layered one reading its base's files; deleting the base leaves the layered snapshot
    whole there, with its own copies."""
    from api.retention import delete_snapshot_files
    from tests.unit.test_snapshot_layout import PREFIX
    from tidelog.settings import load_settings

    root = (f"s3://tidelog-snapshots/shared?endpoint_override={s3_endpoint}&scheme=http"
            "&region=us-east-1")
    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT", root)
    monkeypatch.setenv("TIDELOG_ARCHIVE_ROOT", str(tmp_path / "archive"))
    monkeypatch.setenv("TIDELOG_TOPIC_PREFIX", PREFIX)
    settings = load_settings(tmp_path / "home")
    assert settings.snapshot_remote == root
    history = History(settings, TABLE).seed(250)
    base = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    for key in random.Random(5).sample(range(250), 5):
        history.event("u", key, v=-4.0, name=f"changed-{key}")
    history.event("d", 9)
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.built_from == base.id
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")

    def keys(sid: str) -> list[str]:
        found = s3.get_file_info(pafs.FileSelector(f"tidelog-snapshots/shared/{sid}",
                                                   recursive=True, allow_not_found=True))
        return sorted(i.path.rsplit(f"{sid}/", 1)[1] for i in found
                      if i.type == pafs.FileType.File)

    table = layered.tables[TABLE]
    assert "manifest.json" in keys(base.id) and table.files[0] in keys(base.id)
    assert table.files[0] not in keys(layered.id) and "manifest.json" in keys(layered.id)

    def digest_there() -> str:
        [got] = _duckdb_cli(snapshot_sql(settings, layered.id, root, with_salt=True),
                            digest_sql(f'"snap_{layered.id}".items', table.columns,
                                       salted=True))
        return ContentSum(*map(int, got.split(","))).hex

    assert digest_there() == table.content_digest
    delete_snapshot_files(settings, base.id)
    assert keys(base.id) == []  # its files went once the layered one had its own
    # no directory marker names its tables either
    assert s3.get_file_info(f"tidelog-snapshots/shared/{base.id}").type \
        == pafs.FileType.NotFound
    assert table.files[0] in keys(layered.id)
    assert digest_there() == table.content_digest
    # another machine's working copy, empty: it fetches the snapshot from the root
    other = dataclasses.replace(settings, snapshot_root=str(tmp_path / "machine-b"))
    fetched = open_snapshot(other, layered.id)
    assert fetched.path.parent == tmp_path / "machine-b"
    assert fetched.table(TABLE).equals(open_snapshot(settings, layered.id).table(TABLE))


def test_erasure_rewrites_an_archive_on_s3(tmp_path: Path, s3_endpoint: str) -> None:
    """The erasure of tests/unit/test_erasure.py with the archive on S3: no object keeps a
    byte of the subject, the recorded digests still verify, the cut still rebuilds."""
    from snapshotter.archive import Archive
    from snapshotter.verify import verify_snapshot
    from tests.unit.test_erasure import (
        SECRET_MAIL,
        SECRET_NAME,
        _cut,
        _digest_sql_check,
        _files_with,
        _world,
    )
    from tests.unit.test_erasure import TABLE as PEOPLE
    from trainer.erasure import erase

    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    s3.create_dir("tidelog-archive")
    settings, sids = _world(tmp_path, f"s3://tidelog-archive/a?endpoint_override="
                                      f"{s3_endpoint}&scheme=http&region=us-east-1")
    archive = Archive(settings.archive_root)

    def objects_with(needles: list[str], bucket: str = "tidelog-archive") -> list[str]:
        found = []
        for info in s3.get_file_info(pafs.FileSelector(bucket, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            data = s3.open_input_file(info.path).read()
            text = (str(archive.storage.scan(info.path).collect().rows())
                    if info.path.endswith(".parquet") else "")
            if any(n.encode() in data or n in text for n in needles):
                found.append(info.path)
        return found

    # the snapshots on S3 too (TIDELOG_SNAPSHOT_ROOT=s3://…): the erasure reaches them
    s3.create_dir("tidelog-snapshots-er")
    settings = dataclasses.replace(settings, snapshot_remote=(
        f"s3://tidelog-snapshots-er/s?endpoint_override={s3_endpoint}&scheme=http"
        "&region=us-east-1"))
    sync(settings)
    assert objects_with([SECRET_NAME, SECRET_MAIL])  # the subject is on S3 before
    assert objects_with([SECRET_NAME, SECRET_MAIL], "tidelog-snapshots-er")
    report = erase(settings, PEOPLE, {"id": 7}, "GDPR art. 17 request #2", "tester")
    assert report.erasure_id and len(report.segments) == 3
    assert objects_with([SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    assert objects_with([SECRET_NAME, SECRET_MAIL, '"id":7'], "tidelog-snapshots-er") == []
    assert _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    for sid in sids:
        assert verify_snapshot(settings, sid).ok and _digest_sql_check(settings, sid)
    again = create_snapshot(settings, [PEOPLE], _cut(15), incremental=False, catch_up=False)
    rows = open_snapshot(settings, again.id).table(PEOPLE)
    assert 7 not in rows["id"].to_list() and rows.height == 10
