"""tidelog snapshots as MLflow-native datasets: a run's dataset input loads back to the exact
rows in any MLflow client, from the snapshot or rebuilt from the archive, digest-checked.

Real archive directory (no Kafka), real MLflow on SQLite; the entry points are the ones
the installed project declares in pyproject.toml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from snapshotter.snapshots import create_snapshot, open_snapshot
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.errors import DigestMismatch, SnapshotError
from tidelog.settings import Settings
from trainer.datasets import MLFLOW_DIGEST_CHARS, TidelogDatasetSource, dataset_for, open_data

TABLE = "public.items"


@pytest.fixture(autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    pass


@pytest.fixture()
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    settings = _settings(tmp_path)
    settings = Settings(**{**settings.__dict__, "mlflow_uri": f"sqlite:///{tmp_path}/ml.db"})
    history = History(settings, TABLE).seed(50)
    history.event("u", 3, v=33.0, name="changed")
    history.event("d", 4)
    manifest = create_snapshot(settings, [TABLE], history.cut())
    # load() in "any client" finds tidelog through the usual settings sources
    for name, value in (("TIDELOG_HOME", settings.home), ("TIDELOG_TOPIC_PREFIX", PREFIX),
                        ("TIDELOG_ARCHIVE_ROOT", settings.archive_root),
                        ("TIDELOG_SNAPSHOT_ROOT", settings.snapshot_root)):
        monkeypatch.setenv(name, str(value))
    return settings, manifest.id


PREFIX = "lay"


def _logged_input(settings: Settings, snapshot_id: str) -> tuple[str, object]:
    mlflow.set_tracking_uri(settings.mlflow_uri)
    data = open_data(snapshot_id, settings=settings)
    with mlflow.start_run() as run:
        tags = data.log_to_mlflow()
    got = mlflow.MlflowClient(settings.mlflow_uri).get_run(run.info.run_id)
    assert got.data.tags["tidelog.snapshot_id"] == snapshot_id == tags["tidelog.snapshot_id"]
    (dataset_input,) = got.inputs.dataset_inputs
    return run.info.run_id, dataset_input


def test_a_logged_input_loads_back_to_the_exact_snapshot(stored: tuple[Settings, str]) -> None:
    settings, sid = stored
    _, dataset_input = _logged_input(settings, sid)
    manifest = open_snapshot(settings, sid).manifest
    entity = dataset_input.dataset  # type: ignore[attr-defined]
    assert entity.source_type == "tidelog"
    assert entity.digest == manifest.tables[TABLE].digest[:MLFLOW_DIGEST_CHARS]
    assert json.loads(entity.profile)["num_rows"] == manifest.tables[TABLE].rows == 49
    source = mlflow.data.get_source(dataset_input)
    assert isinstance(source, TidelogDatasetSource)
    expected = open_snapshot(settings, sid).table(TABLE)
    assert_frame_equal(source.load(), expected)
    assert source.load(as_="arrow").equals(expected.to_arrow())
    assert list(source.load(as_="pandas")["name"]) == list(expected["name"])


def test_load_rebuilds_from_the_archive_when_the_snapshot_is_gone(
        stored: tuple[Settings, str]) -> None:
    settings, sid = stored
    _, dataset_input = _logged_input(settings, sid)
    expected = open_snapshot(settings, sid).table(TABLE)
    shutil.rmtree(Path(settings.snapshot_root) / sid)
    frame = mlflow.data.get_source(dataset_input).load()
    assert_frame_equal(frame, expected)
    assert (Path(settings.home) / "cache" / "datasets" / sid / "manifest.json").exists()


def test_load_never_returns_rows_that_differ_from_the_recorded_digest(
        stored: tuple[Settings, str]) -> None:
    settings, sid = stored
    _, dataset_input = _logged_input(settings, sid)
    source = mlflow.data.get_source(dataset_input)
    assert isinstance(source, TidelogDatasetSource)
    forged = TidelogDatasetSource.from_dict({**source.to_dict(), "digest": "0" * 64})
    with pytest.raises(DigestMismatch, match="not the recorded"):
        forged.load()


def test_a_damaged_snapshot_is_rebuilt_not_served(stored: tuple[Settings, str]) -> None:
    settings, sid = stored
    snap = open_snapshot(settings, sid)
    expected = snap.table(TABLE)
    (data_file,) = snap.manifest.tables[TABLE].files
    damaged = snap.table(TABLE).with_columns(pl.lit("forged").alias("name"))
    damaged.write_parquet(snap.path / data_file)
    source = dataset_for(snap.manifest, TABLE).source
    assert_frame_equal(source.load(), expected)
    with pytest.raises(SnapshotError, match="no longer matches its recorded digest"):
        open_data(sid, settings=settings)


def test_any_mlflow_client_resolves_the_source_through_the_entry_points(
        stored: tuple[Settings, str], tmp_path: Path) -> None:
    settings, sid = stored
    run_id, _ = _logged_input(settings, sid)
    expected = open_snapshot(settings, sid).table(TABLE)
    # A fresh interpreter that imports only mlflow: the entry points bring tidelog in.
    script = (
        "import sys, mlflow, mlflow.data\n"
        f"run = mlflow.MlflowClient({settings.mlflow_uri!r}).get_run({run_id!r})\n"
        "frame = mlflow.data.get_source(run.inputs.dataset_inputs[0]).load()\n"
        "frame.write_parquet(sys.argv[1])\n"
        f"assert mlflow.data.from_tidelog({sid!r}, {TABLE!r}).digest\n"
    )
    out = tmp_path / "loaded.parquet"
    result = subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path,
                            env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_frame_equal(pl.read_parquet(out), expected)


def test_the_source_is_registered_whichever_module_is_imported_first() -> None:
    """Imported before mlflow.data, this module is half-initialised when MLflow loads the
    entry points, which then skip it; the module registers itself once complete."""
    root = Path(__file__).resolve().parents[2]
    for first in ("trainer.datasets", "mlflow.data"):
        code = (f"import {first}, trainer.datasets, mlflow.data; "
                "from mlflow.data.dataset_source_registry import _dataset_source_registry as r; "
                "print(hasattr(mlflow.data, 'from_tidelog'), "
                "any(s._get_source_type() == 'tidelog' for s in r.sources))")
        done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                              capture_output=True, text=True, cwd=root, timeout=120)
        assert done.stdout.split() == ["True", "True"], (first, done.stdout, done.stderr)


def test_the_api_loads_mlflow_before_any_thread_can() -> None:
    """Two threads importing MLflow for the first time at once break it; the API's handlers
    and jobs import lazily on threads, so `api.app` loads MLflow in the importing thread."""
    root = Path(__file__).resolve().parents[2]
    race = (
        "import threading, sys\n"
        "errors = []\n"
        "def load(name):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "{before}"
        "threads = [threading.Thread(target=load, args=(n,)) "
        "for n in ('mlflow.data', 'trainer.erasure')]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "import mlflow.data\n"
        "print(errors or 'ok', hasattr(mlflow.data, 'from_tidelog'))\n"
    )

    def run(before: str) -> str:
        done = subprocess.run([sys.executable, "-c", race.format(before=before)],
                              capture_output=True, text=True, cwd=root, timeout=120)
        return done.stdout.strip() or done.stderr.strip().splitlines()[-1]

    assert "partially initialized module 'mlflow'" in run("")  # the hazard is real
    assert run("import api.app\n") == "ok True"
