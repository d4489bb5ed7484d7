"""The MLflow side of pipelines on a real (SQLite) MLflow store: which runs are a
pipeline's, finding the run for a cut, abandoned runs, handled signals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.registry import PIPELINE_TAG, Registry
from tidelog.settings import Settings
from trainer.tags import REBUILD_OF


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    """MLflow on SQLite (tests/unit/conftest.py)."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("registry")
    settings = Settings(home=Path(home), mlflow_uri=f"sqlite:///{home}/mlflow.db")
    yield Registry(settings, "pipelines-test")


def _run(registry: Registry, tags: dict[str, str], status: str = "FINISHED") -> str:
    run = registry.client.create_run(registry.tracking.experiment_id, tags=tags)
    if status != "RUNNING":
        registry.client.set_terminated(run.info.run_id, status)
    return str(run.info.run_id)


def test_runs_of_a_pipeline_exclude_rebuilds_and_other_pipelines(registry: Registry) -> None:
    cut = "a" * 64
    first = _run(registry, {PIPELINE_TAG: "p1", "tidelog.cut.fingerprint": cut})
    _run(registry, {PIPELINE_TAG: "p1", "tidelog.cut.fingerprint": cut, REBUILD_OF: first})
    _run(registry, {PIPELINE_TAG: "p2", "tidelog.cut.fingerprint": cut})
    killed = _run(registry, {PIPELINE_TAG: "p1", "tidelog.cut.fingerprint": "b" * 64},
                  status="RUNNING")
    assert [r.info.run_id for r in registry.pipeline_runs("p1")] == [first]
    assert registry.run_for_cut("p1", cut).info.run_id == first
    assert registry.run_for_cut("p1", "b" * 64) is None  # only finished runs count
    assert registry.abandon_unfinished("p1", "b" * 64) == [killed]
    assert registry.get_run(killed).info.status == "KILLED"
    last = registry.last_training_at("p1")
    assert last is not None
    assert int(last.timestamp() * 1000) == registry.get_run(first).info.start_time
    assert registry.last_training_at("nobody") is None


def test_signals_recorded_on_a_run_are_handled(registry: Registry) -> None:
    run = _run(registry, {PIPELINE_TAG: "p3", "tidelog.cut.fingerprint": "c" * 64})
    assert registry.handled_signals("p3") == frozenset()
    registry.record_signals(run, ["e1", "e2"])
    registry.record_signals(run, ["e2", "e3"])
    assert registry.handled_signals("p3") == {"e1", "e2", "e3"}
    assert registry.get_run(run).data.tags["tidelog.pipeline.signals"] == "e1,e2,e3"
    assert registry.champion("no-such-model") is None
