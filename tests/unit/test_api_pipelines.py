"""`/pipelines` over the TestClient: the pipeline files of TIDELOG_API_PIPELINES listed,
evaluated (the trigger rule for real, over a fake archive count), triggered (the request
event captured by a fake publisher) and their history read from a real MLflow on SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import mlflow
import pytest

import pipelines.observe
import pipelines.service
import snapshotter.snapshots
from api.config import load_api_config
from pipelines.config import load_pipeline
from pipelines.observe import signals_from
from pipelines.registry import PIPELINE_TAG, SIGNALS_TAG, TRIGGER_TAG
from pipelines.triggers import ChangeLog
from tests.unit import test_api as base
from tests.unit.test_api import Api, AppFactory, _open, assert_error
from tidelog.events import CloudEvent, event_id, load_schema
from tidelog.settings import Settings
from trainer.testing import FakeSnapshotProvider

# test_api's fixtures: a real MLflow on SQLite, the fake snapshotter, the app factory.
_quiet, settings, source, make_app = base._quiet, base.settings, base.source, base.make_app

CHURN = """
name = "churn"
recipe = "examples.churn:train"
tables = ["public.customers"]
model = "churn-api"

[[triggers]]
kind = "changed_rows"
min_rows = 50

[[triggers]]
kind = "manual"

[debounce]
quiet_seconds = 0

[[gate]]
metric = "accuracy"
min_absolute_change = 0.0
"""

NIGHTLY = """
name = "nightly"
recipe = "examples.churn:train"
tables = ["public.customers", "public.payments"]
model = "nightly-api"

[[triggers]]
kind = "schedule"
cron = "0 3 * * *"

[[gate]]
metric = "accuracy"
threshold = 0.5
"""


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pipelines"
    root.mkdir()
    (root / "churn.toml").write_text(CHURN)
    (root / "nightly.toml").write_text(NIGHTLY)
    (root / "notes.txt").write_text("not a pipeline")
    return root


@pytest.fixture
def api(make_app: AppFactory, pipeline_dir: Path) -> Iterator[Api]:
    yield from _open(make_app(pipelines_dir=pipeline_dir))


class FakePublisher:
    """Stands in for `tidelog.events.Publisher`: the broker is a list."""

    sent: list[CloudEvent] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(self, event: CloudEvent) -> None:
        FakePublisher.sent.append(event)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[CloudEvent]:
    FakePublisher.sent = []
    monkeypatch.setattr(pipelines.service, "Publisher", FakePublisher)
    return FakePublisher.sent


def test_the_setting_names_the_directory(settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDELOG_API_PIPELINES", raising=False)
    assert load_api_config(settings).pipelines_dir is None
    monkeypatch.setenv("TIDELOG_API_PIPELINES", "/etc/tidelog/pipelines")
    config = load_api_config(settings)
    assert config.pipelines_dir == Path("/etc/tidelog/pipelines")


def test_list_and_get_read_the_pipeline_files(api: Api, pipeline_dir: Path) -> None:
    listed = api.get("/pipelines", role="reader")
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [p["name"] for p in items] == ["churn", "nightly"]
    churn = api.get("/pipelines/churn", role="reader").json()
    assert churn == items[0]
    assert churn["model"] == "churn-api" and churn["tables"] == ["public.customers"]
    assert churn["triggers"] == [{"kind": "changed_rows", "min_rows": 50, "table": None},
                                 {"kind": "manual"}]
    assert churn["gate"][0]["metric"] == "accuracy"
    assert churn["evaluator"] == "examples.churn:evaluate"
    assert churn["links"]["history"] == "/pipelines/churn/history"
    assert str(pipeline_dir) not in listed.text  # server paths stay on the server
    assert api.get("/pipelines/nightly").json()["triggers"] == [
        {"kind": "schedule", "cron": "0 3 * * *"}]
    # a file added while the API runs is served at once: the directory is read per request
    (pipeline_dir / "late.toml").write_text(CHURN.replace('"churn"', '"late"', 1))
    assert "late" in {p["name"] for p in api.get("/pipelines").json()["items"]}
    err = assert_error(api.get("/pipelines/nope"), 404, "pipeline_not_found")
    assert "nope" in err["message"] and err["details"] == {"pipeline": "nope"}
    assert_error(api.get("/pipelines/bad%20name"), 422, "validation_error")


def test_a_broken_or_ambiguous_directory_is_a_clear_error(api: Api, pipeline_dir: Path
                                                          ) -> None:
    (pipeline_dir / "copy.toml").write_text(CHURN)
    err = assert_error(api.get("/pipelines"), 503, "not_configured")
    assert "'churn' is defined twice" in err["message"]
    (pipeline_dir / "copy.toml").write_text("name = 'x'\nbogus = 1\n")
    err = assert_error(api.get("/pipelines/churn"), 503, "not_configured")
    assert "copy.toml" in err["message"]


def test_without_the_setting_pipelines_are_not_served(make_app: AppFactory) -> None:
    for api in _open(make_app()):
        for call in (api.get("/pipelines"), api.post("/pipelines/churn/evaluate"),
                     api.post("/pipelines/churn/trigger", {})):
            err = assert_error(call, 503, "not_configured")
            assert "TIDELOG_API_PIPELINES" in err["message"]


def test_trigger_publishes_a_retrain_request_the_worker_fires_on(
        api: Api, published: list[CloudEvent], pipeline_dir: Path) -> None:
    resp = api.post("/pipelines/churn/trigger", {"reason": "new pricing"}, role="writer")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    [event] = published
    assert body["event"] == event.to_json()
    jsonschema.validate(event.to_json(), load_schema("retrain.requested"))
    writer_id = api.keys["writer"]["Authorization"].split("_")[1]
    assert event.kind == "retrain.requested" and event.subject == "churn"
    assert event.data["reason"] == "new pricing"
    assert event.data["requested_by"] == writer_id  # the key's id, never its secret
    secret = api.keys["writer"]["Authorization"].removeprefix("Bearer ")
    assert secret not in resp.text and secret not in str(event.to_kafka())
    assert event.source.endswith(":api")
    # the worker's own reading of it: a manual signal for this pipeline, not another's
    pipeline = load_pipeline(pipeline_dir / "churn.toml")
    [signal] = signals_from([event], pipeline)
    assert (signal.kind, signal.event_id, signal.reason) == ("manual", event.id,
                                                             "new pricing")
    assert signals_from([event], load_pipeline(pipeline_dir / "nightly.toml")) == []
    # audit-logged like every write, with the key and the pipeline
    entries, _ = api.state.audit.query(action="pipelines.trigger")
    assert [(e["actor"], e["target"], e["status"], e["result"]) for e in entries] == [
        (writer_id, "churn", 202, "accepted")]


def test_trigger_is_idempotent_with_a_key_and_strict(api: Api,
                                                     published: list[CloudEvent]) -> None:
    key = {"Idempotency-Key": "retrain-1"}
    first = api.post("/pipelines/churn/trigger", None, role="writer", headers=key)
    again = api.post("/pipelines/churn/trigger", None, role="writer", headers=key)
    other = api.post("/pipelines/churn/trigger", None, role="writer")
    assert first.status_code == again.status_code == other.status_code == 202
    ids = [e.id for e in published]
    assert ids[0] == ids[1] != ids[2]
    assert published[0].data["reason"] == "requested over HTTP"
    err = assert_error(api.post("/pipelines/churn/trigger", {"reason": "x", "force": True},
                                role="writer"), 422, "validation_error")
    assert err["details"]["errors"][0]["field"] == "body.force"
    assert_error(api.post("/pipelines/nope/trigger", {}, role="writer"), 404,
                 "pipeline_not_found")
    assert len(published) == 3  # neither refused request published anything
    assert_error(api.post("/pipelines/churn/trigger", {}, role="reader"), 403, "forbidden")


def test_evaluate_is_a_dry_run_saying_why_for_each_trigger(
        api: Api, monkeypatch: pytest.MonkeyPatch, source: FakeSnapshotProvider,
        settings: Settings) -> None:
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    counts = {"n": 30}

    def latest(settings_: Settings, tables: Any, at: Any, **_: Any) -> Any:
        return source.resolve_cut(settings_, tables, "latest")

    def archived(settings_: Settings, latest_: Any, base: Any, base_name: str) -> ChangeLog:
        return ChangeLog({"public.customers": [now_ms - 60_000 + i
                                               for i in range(counts["n"])]}, base_name)

    requests: list[CloudEvent] = []
    monkeypatch.setattr(snapshotter.snapshots, "resolve_cut", latest)
    monkeypatch.setattr(pipelines.observe, "change_log", archived)
    monkeypatch.setattr(pipelines.service, "read_signals",
                        lambda s, p: signals_from(requests, p))
    resp = api.post("/pipelines/churn/evaluate", role="reader")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["dry_run"] is True and body["pipeline"] == "churn"
    assert body["plan"]["fire"] is False
    rows, manual = body["plan"]["triggers"]
    assert (rows["kind"], rows["due"], rows["details"]["changed_rows"]) == (
        "changed_rows", False, 30)
    assert "30 changed rows" in rows["reason"] and "fewer than 50" in rows["reason"]
    assert "no champion yet" in rows["reason"]
    assert (manual["kind"], manual["due"]) == ("manual", False)

    counts["n"] = 80
    body = api.post("/pipelines/churn/evaluate").json()
    assert body["plan"]["fire"] is True
    assert body["plan"]["triggers"][0]["due"] is True
    assert "80 changed rows" in body["plan"]["triggers"][0]["reason"]

    published: list[CloudEvent] = []
    monkeypatch.setattr(pipelines.service, "Publisher", FakePublisher)
    FakePublisher.sent = published
    api.post("/pipelines/churn/trigger", {"reason": "asked"}, role="writer")
    requests.extend(published)
    manual = api.post("/pipelines/churn/evaluate").json()["plan"]["triggers"][1]
    assert manual["due"] is True and "asked" in manual["reason"]
    assert manual["signals"] == [published[0].id]
    # a dry run trains nothing: no run in MLflow, nothing published but the request
    assert api.get("/pipelines/churn/history").json()["items"] == []
    assert len(published) == 1


def test_history_says_which_events_fired_which_runs(api: Api, settings: Settings) -> None:
    assert api.get("/pipelines/nightly/history", role="reader").json() == {
        "pipeline": "nightly", "items": []}
    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = mlflow.MlflowClient(settings.mlflow_uri)
    experiment = (client.get_experiment_by_name("tidelog")
                  or client.get_experiment(client.create_experiment("tidelog")))
    run = client.create_run(experiment.experiment_id, tags={
        PIPELINE_TAG: "nightly", TRIGGER_TAG: "manual,schedule",
        "tidelog.cut.fingerprint": "f" * 64, SIGNALS_TAG: "ev-1,ev-2",
        "tidelog.gate.decision": "promoted"})
    client.log_metric(run.info.run_id, "accuracy", 0.75)
    client.set_terminated(run.info.run_id, "FINISHED")
    other = client.create_run(experiment.experiment_id, tags={PIPELINE_TAG: "churn"})
    client.set_terminated(other.info.run_id, "FINISHED")

    [row] = api.get("/pipelines/nightly/history", role="reader").json()["items"]
    assert row["run_id"] == run.info.run_id and row["status"] == "FINISHED"
    assert row["triggers"] == "manual,schedule" and row["gate"] == "promoted"
    assert row["events"] == {"triggered": event_id("pipeline.triggered", "nightly", "f" * 64),
                             "signals": ["ev-1", "ev-2"]}
    assert row["metrics"] == {"accuracy": 0.75} and row["version"] is None
    assert_error(api.get("/pipelines/nope/history"), 404, "pipeline_not_found")


def test_the_cli_trigger_calls_what_the_api_calls(
        published: list[CloudEvent], pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    from tidelog.cli import main

    monkeypatch.setenv("TIDELOG_HOME", str(tmp_path))
    assert main(["pipeline", "trigger", str(pipeline_dir / "churn.toml"), "--reason", "cli",
                 "--requested-by", "ops", "--json"]) == 0
    [event] = published
    assert json.loads(capsys.readouterr().out) == event.to_json()
    assert (event.subject, event.data["reason"], event.data["requested_by"]) == (
        "churn", "cli", "ops")
    assert event.source.endswith(":cli")
