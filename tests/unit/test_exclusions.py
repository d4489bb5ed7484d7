"""Exclusions (anomaly removal): the append-only store, the filter, and train/rebuild
applying exactly the recorded set. The fake snapshotter and a real MLflow SQLite store."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import polars as pl
import pytest

from examples.churn import demo_tables
from tidelog.errors import ExclusionNotFound, TrainingError
from tidelog.settings import Settings
from trainer.exclusions import (
    EXCLUSIONS_ARTIFACT,
    ExclusionSet,
    ExclusionStore,
    apply_exclusions,
    parse_key,
)
from trainer.lineage import model_lineage
from trainer.rebuild import rebuild
from trainer.testing import FakeSnapshotProvider
from trainer.tracking import connect
from trainer.train import train

# Wraps the churn recipe and records the customer ids it was handed, as a run tag.
SEEN_IDS = """
    from examples.churn import train as churn

    def train(tables, params, seed):
        result = churn(tables, params, seed)
        customers = next(f for n, f in tables.items() if n.endswith(".customers"))
        ids = ",".join(str(i) for i in sorted(customers["id"].to_list()))
        result.tags["test.customer_ids"] = ids
        return result
"""


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    """Every test here runs MLflow (tests/unit/conftest.py)."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
                    archive_root=str(tmp_path / "archive"),
                    snapshot_root=str(tmp_path / "snapshots"))


@pytest.fixture(scope="module")
def source() -> FakeSnapshotProvider:
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=120).items():
        fake.put(name, frame)
    return fake


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "recipe_seen_ids.py").write_text(textwrap.dedent(SEEN_IDS))
    return "recipe_seen_ids:train"


def _ids(settings: Settings, run_id: str) -> list[int]:
    tags = connect(settings).get_run(run_id).data.tags
    return [int(i) for i in tags["test.customer_ids"].split(",")]


def test_store_is_append_only_and_replays_any_position(tmp_path: Path) -> None:
    store = ExclusionStore(tmp_path)
    a = store.add("public.customers", {"id": 3}, "bot account", by="ana")
    b = store.add("public.customers", {"id": 4}, "test data", by="ana")
    store.remove(a.id, "was real", by="bo")
    lines = store.log.read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["add", "add", "remove"]
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[0])["by"] == "ana" and json.loads(lines[0])["reason"] == "bot account"
    assert [e.id for e in store.active().entries] == [b.id]
    assert {e.id for e in store.active(2).entries} == {a.id, b.id}
    assert store.active(2).id == "xs-2" and store.active().id == "xs-3"
    # the digest depends on what is excluded, not on when or why
    assert store.active(2).digest != store.active().digest
    same = ExclusionSet(9, tuple(reversed(store.active(2).entries)))
    assert same.digest == store.active(2).digest
    with pytest.raises(ExclusionNotFound):
        store.remove(a.id)
    with pytest.raises(TrainingError, match="fewer than the 7"):
        store.active(7)
    # a torn last line (a crash mid-append) is no entry, and the next append stands alone
    with open(store.log, "ab") as fh:
        fh.write(b'{"seq": 4, "op": "add", "id": "exc_torn"')
    assert [e.id for e in store.active().entries] == [b.id]
    c = store.add("public.customers", {"id": 5}, "dup")
    assert {e.id for e in store.active().entries} == {b.id, c.id}


def test_keys_and_reasons_are_checked(tmp_path: Path) -> None:
    store = ExclusionStore(tmp_path)
    with pytest.raises(TrainingError, match="--reason"):
        store.add("public.customers", {"id": 1}, "  ")
    with pytest.raises(TrainingError, match="schema.table"):
        store.add("customers", {"id": 1}, "x")
    for bad in ('{"id": null}', '{"id": [1]}', "[1]", "{}", "not json"):
        with pytest.raises(TrainingError):
            parse_key(bad)
    assert parse_key('{"b": "x", "a": 1}') == {"a": 1, "b": "x"}


def test_apply_removes_exactly_the_matching_rows() -> None:
    frames = {"public.t": pl.DataFrame({"id": [1, 2, 3, 4], "k": ["a", "b", "a", "b"],
                                        "v": [1.0, 2.0, 3.0, 4.0]}),
              "public.u": pl.DataFrame({"id": [1, 2]})}
    store_entries = ExclusionSet(2, (
        _entry("e1", "public.t", {"id": 2}),
        _entry("e2", "public.t", {"id": "3", "k": "a"}),  # text read as the column's type
        _entry("e3", "public.other", {"id": 1}),
    ))
    kept, removed = apply_exclusions(frames, store_entries)
    assert kept["public.t"]["id"].to_list() == [1, 4]
    assert kept["public.u"] is frames["public.u"]
    assert removed == {"public.t": 2}
    with pytest.raises(TrainingError, match="does not have"):
        apply_exclusions(frames, ExclusionSet(1, (_entry("e4", "public.t", {"nope": 1}),)))
    with pytest.raises(TrainingError, match="cannot be read as"):
        apply_exclusions(frames, ExclusionSet(1, (_entry("e5", "public.t", {"id": "x"}),)))


def _entry(eid: str, table: str, key: dict[str, object]) -> object:
    from trainer.exclusions import Exclusion

    return Exclusion(eid, table, dict(key), "r", "me", "now")


def test_train_without_excluded_rows_and_rebuild_applies_the_recorded_set(
        settings: Settings, source: FakeSnapshotProvider, recipe: str) -> None:
    fake = copy.deepcopy(source)
    store = ExclusionStore.for_settings(settings)
    store.add("public.customers", {"id": 7}, "fraudulent sign-up")
    store.add("public.customers", {"id": 11}, "load test")
    store.add("public.elsewhere", {"id": 1}, "another table: not in this run's set")
    result = train(settings, recipe, tables=list(fake._log), register="churn", seed=3,
                   params={"model": "logreg"}, provider=fake)
    seen = _ids(settings, result.run_id)
    assert 7 not in seen and 11 not in seen and len(seen) == 118
    tags = result.tags
    assert tags["tidelog.exclusions.id"] == "xs-3"
    assert tags["tidelog.exclusions.count"] == "2"
    assert tags["tidelog.exclusions.removed.public.customers"] == "2"
    recorded = json.loads(connect(settings).read_text(result.run_id, EXCLUSIONS_ARTIFACT))
    assert {e["key"]["id"] for e in recorded["entries"]} == {7, 11}
    assert recorded["digest"] == tags["tidelog.exclusions.digest"]
    version = connect(settings).model_version("churn", result.registered_version)
    assert version.tags["tidelog.exclusions.digest"] == tags["tidelog.exclusions.digest"]
    # the snapshot itself is untouched: still every row, with its recorded digest
    assert result.manifest.tables["public.customers"].rows == 120

    # later changes to the exclusions do not change the rebuild
    store.add("public.customers", {"id": 12}, "added after training")
    store.remove(store.active().entries[0].id, "removed after training")
    report = rebuild(settings, result.run_id, provider=fake)
    assert report.verified, report.to_json()
    assert _ids(settings, report.new_run_id) == seen
    rebuilt_tags = connect(settings).get_run(report.new_run_id).data.tags
    assert rebuilt_tags["tidelog.exclusions.digest"] == tags["tidelog.exclusions.digest"]

    # and a new run uses today's set
    again = train(settings, recipe, tables=list(fake._log), seed=3,
                  params={"model": "logreg"}, provider=fake)
    now_seen = _ids(settings, again.run_id)
    assert 7 in now_seen and 11 not in now_seen and 12 not in now_seen
    assert again.tags["tidelog.exclusions.id"] == "xs-5"

    lineage = model_lineage(settings, "churn").to_json()
    assert lineage["exclusions"]["id"] == "xs-3"
    assert lineage["exclusions"]["rows_removed"] == {"public.customers": 2}


def test_rebuild_falls_back_to_the_log_and_refuses_a_changed_one(
        settings: Settings, source: FakeSnapshotProvider, recipe: str) -> None:
    fake = copy.deepcopy(source)
    store = ExclusionStore.for_settings(settings)
    store.add("public.customers", {"id": 20}, "duplicate")
    result = train(settings, recipe, tables=list(fake._log), seed=3,
                   params={"model": "logreg"}, provider=fake)
    artifacts = Path(settings.home) / "mlartifacts"
    (recorded,) = [p for p in artifacts.rglob("exclusions.json")
                   if result.run_id in str(p)]
    recorded.unlink()  # the artefact lost: the log at the recorded position still has it
    assert rebuild(settings, result.run_id, provider=fake).verified
    store.log.write_text("")  # the log truncated
    with pytest.raises(TrainingError, match="truncated or replaced"):
        rebuild(settings, result.run_id, provider=fake)
    store.add("public.customers", {"id": 21}, "another row at the same position")
    with pytest.raises(TrainingError, match="restore the log"):
        rebuild(settings, result.run_id, provider=fake)


def test_a_run_without_exclusions_records_none(settings: Settings,
                                               source: FakeSnapshotProvider) -> None:
    result = train(settings, "examples.churn:train", tables=list(source._log), seed=1,
                   params={"model": "logreg"}, provider=copy.deepcopy(source))
    assert not any(k.startswith("tidelog.exclusions") for k in result.tags)
    assert result.to_json()["exclusions"] is None


def test_cli_exclude_list_remove_and_lineage(settings: Settings, source: FakeSnapshotProvider,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tidelog.cli import main

    for name in ("TIDELOG_ARCHIVE_ROOT", "TIDELOG_SNAPSHOT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIDELOG_HOME", str(settings.home))
    monkeypatch.setenv("TIDELOG_MLFLOW_URI", settings.mlflow_uri)
    assert main(["exclude", "--table", "public.customers", "--key", '{"id": 9}',
                 "--reason", "chargeback fraud", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["key"] == {"id": 9} and added["reason"] == "chargeback fraud"
    assert main(["exclude", "--table", "public.customers", "--key", '{"id": 9}']) == 2
    assert "--reason" in capsys.readouterr().err
    train(settings, "examples.churn:train", tables=list(source._log), seed=1,
          params={"model": "logreg"}, register="cli-churn", provider=copy.deepcopy(source))
    assert main(["lineage", "model", "cli-churn"]) == 0
    assert "trained without exclusion set xs-1 (1 entries" in capsys.readouterr().out
    assert main(["exclude", "--remove", added["id"], "--reason", "was fine"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["exclusions", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == []
    assert main(["exclusions", "list", "--all"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert len(history) == 2 and "remove" in history[1] and "was fine" in history[1]
