"""Publishing snapshots to another root and the SQL that reads them there (local roots
here; S3 through moto and the DuckDB CLI in tests/integration/test_snapshot_remote.py)."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest

from snapshotter.remote import locate, publish_snapshot, snapshot_sql
from snapshotter.snapshots import create_snapshot, open_snapshot
from snapshotter.storage import Storage
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.errors import ConfigError, SnapshotNotFound
from tidelog.settings import Settings

TABLE = "public.items"


def _layered(tmp_path: Path) -> tuple[Settings, str, str]:
    """A full snapshot of 200 rows, then a layered one after 5 changes; their ids."""
    settings = _settings(tmp_path)
    history = History(settings, TABLE).seed(200)
    base = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    rng = random.Random(7)
    for key in rng.sample(range(200), 4):
        history.event("u", key, v=-1.0, name=f"changed{key}")
    history.event("d", 3)
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.built_from == base.id and layered.tables[TABLE].delete_files
    return settings, base.id, layered.id


def _rows(con: duckdb.DuckDBPyConnection, sql: str, sid: str) -> list[tuple[object, ...]]:
    con.execute(sql)
    return con.execute(f'select * from "snap_{sid}".items order by id').fetchall()


def test_published_layered_snapshot_reads_base_files_from_the_base(tmp_path: Path) -> None:
    settings, base_id, sid = _layered(tmp_path)
    root = tmp_path / "published"
    done = publish_snapshot(settings, sid, str(root))
    assert done.uploaded == (base_id, sid)  # the base first, its manifest before ours
    manifest = open_snapshot(settings, sid).manifest
    table = manifest.tables[TABLE]
    owners = locate(Storage.open(str(root)), manifest)[TABLE]
    assert all(owners[f] == base_id for f in table.files)
    assert owners[table.delete_files[0]] == sid and owners[table.delta_files[0]] == sid
    # the shared data files exist only under the base; nothing is copied twice
    assert not (root / sid / table.files[0]).exists()
    assert (root / base_id / table.files[0]).is_file()
    again = publish_snapshot(settings, sid, str(root))
    assert again.uploaded == () and again.files == 0

    local = open_snapshot(settings, sid).duckdb().execute(
        "select * from public.items order by id").fetchall()
    assert len(local) == 199
    remote = _rows(duckdb.connect(), snapshot_sql(settings, sid, str(root)), sid)
    assert remote == local
    # the local form reads the snapshot in place
    assert _rows(duckdb.connect(), snapshot_sql(settings, sid), sid) == local


def test_base_missing_at_publish_time_copies_its_files_under_the_snapshot(
        tmp_path: Path) -> None:
    import shutil

    settings, base_id, sid = _layered(tmp_path)
    shutil.rmtree(Path(settings.snapshot_root) / base_id)
    root = tmp_path / "published"
    done = publish_snapshot(settings, sid, str(root))
    assert done.uploaded == (sid,)
    table = open_snapshot(settings, sid).manifest.tables[TABLE]
    assert (root / sid / table.files[0]).is_file()
    rows = _rows(duckdb.connect(), snapshot_sql(settings, sid, str(root)), sid)
    assert len(rows) == 199


def test_s3_sql_carries_no_secret_and_names_the_endpoint(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from snapshotter.remote import _secret_sql

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Very-s3cret-key")
    lines = "\n".join(_secret_sql("s3://b/p?endpoint_override=127.0.0.1:9000&scheme=http"
                                  "&region=eu-west-1", "env"))
    assert "Very-s3cret-key" not in lines
    assert "getenv('AWS_SECRET_ACCESS_KEY')" in lines
    assert "ENDPOINT '127.0.0.1:9000'" in lines and "USE_SSL false" in lines
    assert "REGION 'eu-west-1'" in lines
    chain = "\n".join(_secret_sql("s3://b/p", "chain"))
    assert "PROVIDER credential_chain" in chain and "ENDPOINT" not in chain
    with pytest.raises(ConfigError, match="credentials"):
        snapshot_sql(_settings(tmp_path), "x", "s3://b/p", credentials="plain")


def test_sql_for_a_snapshot_not_published_there_says_how(tmp_path: Path) -> None:
    settings, _, sid = _layered(tmp_path)
    with pytest.raises(SnapshotNotFound, match="tidelog snapshot publish"):
        snapshot_sql(settings, sid, str(tmp_path / "empty"))


def test_a_snapshot_root_of_another_scheme_is_refused_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Path("gs://b/p")` is the relative directory `gs:/b/p`: building there would
    look like success while nothing reached object storage. Only S3 is mirrored."""
    from tidelog.settings import load_settings

    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT",
                       "gs://AKIAEXAMPLE:sekrit@bucket/snaps?endpoint_override=h:9000")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    message = caught.value.message
    assert "TIDELOG_SNAPSHOT_ROOT" in message and "local directory" in message
    assert "s3://bucket/prefix" in message
    assert "sekrit" not in message
    assert not (tmp_path / "gs:").exists()
    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT", str(tmp_path / "snaps"))
    assert load_settings(tmp_path).snapshot_root == str(tmp_path / "snaps")


def test_a_long_chain_of_layered_snapshots_is_located_without_recursion(
        tmp_path: Path) -> None:
    """Every incremental snapshot adds one to the chain of bases: 3,000 of them (more
    than Python's recursion limit) still locate their shared files in the first."""
    import dataclasses
    import sys

    from snapshotter.mirror import _depths

    settings, base_id, sid = _layered(tmp_path)
    base = open_snapshot(settings, base_id).manifest
    layered = open_snapshot(settings, sid).manifest
    depth = sys.getrecursionlimit() * 3
    chain = {"s0": dataclasses.replace(base, id="s0")}
    for number in range(1, depth):
        chain[f"s{number}"] = dataclasses.replace(layered, id=f"s{number}",
                                                  built_from=f"s{number - 1}")
    top = chain[f"s{depth - 1}"]
    owners = locate(Storage.open(str(tmp_path / "nowhere")), top, chain.get)[TABLE]
    table = top.tables[TABLE]
    assert all(owners[f] == "s0" for f in table.files)
    assert owners[table.delta_files[0]] == top.id
    depths = _depths(chain)
    assert depths["s0"] == 0 and depths[top.id] == depth - 1
