"""`archive run` and `snapshot create` when the broker is down or the disk is full: one
clear error through the CLI, no traceback, nothing partial left behind; and a source
table named `transaction` is archived as a table, not as Debezium's transaction topic."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import snapshotter.storage
from snapshotter.archive import TRANSACTION_SCHEMA, Archive
from snapshotter.archiving import archive_topics
from snapshotter.snapshots import create_snapshot
from tests.unit.fakes import FakeBroker
from tests.unit.test_snapshot_layout import History
from tests.unit.test_snapshot_layout import _settings as layout_settings
from tidelog import cli
from tidelog.adapters import kafka
from tidelog.errors import ArchiveWriteError, SnapshotWriteError
from tidelog.settings import Settings

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"


def _env(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> None:
    for name in list(os.environ):
        if name.startswith("TIDELOG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TIDELOG_HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _one_paragraph_error(err: str) -> str:
    assert "Traceback" not in err and "KafkaException" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("topics", [[], ["--topics", "tidelog.public.orders"]])
def test_archive_run_with_the_broker_down_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        topics: list[str]) -> None:
    _env(monkeypatch, tmp_path, TIDELOG_BOOTSTRAP_SERVERS="127.0.0.1:1")
    monkeypatch.setattr(kafka, "TIMEOUT", 1.0)  # the real client, a short wait
    assert cli.main(["archive", "run", *topics]) == 2
    captured = capsys.readouterr()
    line = _one_paragraph_error(captured.err)
    assert "127.0.0.1:1" in line and "TIDELOG_BOOTSTRAP_SERVERS" in line
    assert "tidelog stack status" in line  # what to do
    assert captured.out == ""


def _recorded(topic_of: dict[str, str]) -> FakeBroker:
    """The recorded Debezium messages, on the topics `topic_of` names."""
    broker = FakeBroker()
    for path in sorted(RECORDED.glob("*.json")):
        doc = json.loads(path.read_text())
        key, value = doc["key"], doc["value"]
        broker.produce(topic_of[doc["topic"]], key.encode() if key else None,
                       value.encode() if value else None)
    return broker


def _fail_writes_with_enospc(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Archive writes get half their bytes onto the disk, then ENOSPC."""
    attempted: list[str] = []

    class FullDisk:
        def __init__(self, path: str) -> None:
            attempted.append(path)
            self.fh = builtins.open(path, "wb")

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(snapshotter.storage, "open",
                        lambda path, mode="r", *a, **k: FullDisk(path), raising=False)
    return attempted


def test_archive_run_on_a_full_disk_is_one_clear_error_and_leaves_no_temporaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, TIDELOG_BOOTSTRAP_SERVERS="fake:9092",
         TIDELOG_TOPIC_PREFIX="rec")
    broker = _recorded({"rec.public.t1": "rec.public.t1",
                        "rec.transaction": "rec.transaction"}).install(monkeypatch)
    attempted = _fail_writes_with_enospc(monkeypatch)
    assert cli.main(["archive", "run"]) == 2
    line = _one_paragraph_error(capsys.readouterr().err)
    root = tmp_path / "archive"
    assert "No space left on device" in line and str(root) in line
    assert "tidelog archive run" in line  # what to do: free space, rerun
    assert attempted and all(Path(p).name.startswith(".tmp-") for p in attempted)
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]

    monkeypatch.undo()  # space again: the rerun archives everything, once
    _env(monkeypatch, tmp_path, TIDELOG_BOOTSTRAP_SERVERS="fake:9092",
         TIDELOG_TOPIC_PREFIX="rec")
    broker.install(monkeypatch)
    assert cli.main(["archive", "run", "--json"]) == 0
    marks = {r["topic"]: r["high_water_mark"] for r in json.loads(capsys.readouterr().out)}
    assert marks == {t: len(msgs) for t, msgs in broker.topics.items()}


def test_snapshot_on_a_full_disk_is_a_storage_error_not_an_archive_problem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polars as pl

    settings = layout_settings(tmp_path)
    history = History(settings, "public.t").seed(20)
    cut = history.cut()
    real_write = pl.DataFrame.write_parquet

    def full_disk(self: pl.DataFrame, path: Any, *args: Any, **kwargs: Any) -> None:
        real_write(self.head(1), path)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full_disk)
    with pytest.raises(SnapshotWriteError) as caught:
        create_snapshot(settings, ["public.t"], cut, catch_up=False)
    root = Path(settings.snapshot_root)
    assert caught.value.status == 507 and caught.value.code == "snapshot_write_failed"
    assert "No space left on device" in caught.value.message
    assert "archive verify" not in caught.value.message  # the archive is fine
    assert str(root) in caught.value.message
    assert [p.name for p in root.iterdir() if not p.name.startswith(".lock-")] == []

    monkeypatch.undo()
    manifest = create_snapshot(settings, ["public.t"], cut, catch_up=False)
    assert manifest.tables["public.t"].rows == 20


def test_an_archive_write_error_names_the_file_and_removes_its_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = snapshotter.storage.Storage.open(str(tmp_path))
    _fail_writes_with_enospc(monkeypatch)
    with pytest.raises(ArchiveWriteError) as caught:
        storage.write_bytes(f"{tmp_path}/t/p0/log.json", b"{}" * 100)
    assert f"{tmp_path}/t/p0/log.json" in caught.value.message
    assert caught.value.status == 507
    assert list((tmp_path / "t" / "p0").iterdir()) == []


def test_a_table_named_transaction_is_archived_as_a_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path, bootstrap_servers="fake:9092", topic_prefix="rec",
                        archive_root=str(tmp_path / "archive"))
    # The recorded table's events on `rec.public.transaction`, Debezium's transaction
    # metadata on `rec.transaction`.
    broker = _recorded({"rec.public.t1": "rec.public.transaction",
                        "rec.transaction": "rec.transaction"}).install(monkeypatch)
    marks = archive_topics(settings, sorted(broker.topics))
    assert marks == {(t, 0): len(m) for t, m in broker.topics.items()}
    archive = Archive(settings.archive_root)

    def columns(topic: str) -> set[str]:
        [segment] = archive.segments(topic, 0, 0)
        return set(pq.read_schema(segment.path).names)

    table_columns = columns("rec.public.transaction")
    assert {"__op", "__key", "id"} <= table_columns
    assert not set(TRANSACTION_SCHEMA.names) - {"__partition", "__offset", "id"} \
        <= table_columns  # not the transaction layout
    assert columns("rec.transaction") == set(TRANSACTION_SCHEMA.names)
