"""Issue 15, monitoring, on the real stack: a model trained from Postgres through Debezium,
Tansu and MLflow; served results written to the results topic exactly as the serving
worker's contract says, with features shifted; the report finds the shifted feature and
nothing else, Chromium renders it, and the drift event it publishes fires the pipeline's
drift trigger, which retrains."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import polars as pl
import pytest

from cdc.connector import ConnectorSpec, apply, delete
from examples import churn
from examples.shop import Shop
from monitoring.served import labels_topic, results_topic
from pipelines.config import load_pipeline
from pipelines.feed import read_events
from pipelines.registry import Registry
from pipelines.worker import Worker
from snapshotter.snapshots import open_snapshot
from tests.integration.cdc_helpers import cli_env, private_settings, unique_name
from tests.unit.test_serving import metric
from tidelog.adapters.kafka import producer
from tidelog.demo.capture import wait_for_capture
from tidelog.events import ensure_topics, load_schema
from tidelog.settings import Settings
from trainer.fingerprint import predict
from trainer.tracking import connect
from trainer.train import TrainResult, read_tables, train

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "examples.churn:train"
PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 15, "max_depth": 5}
SEED = 5
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PIPELINE = """
name = "{name}"
recipe = "{recipe}"
tables = {tables}
model = "{model}"
seed = {seed}

[params]
model = "forest"
n_estimators = 15
max_depth = 5

[[triggers]]
kind = "drift"
threshold = 0.3
metric = "drift_share"

[[gate]]
metric = "accuracy"
min_absolute_change = -1.0
"""


@dataclasses.dataclass
class World:
    env: Settings
    shop: Shop
    root: Path
    model: str
    trained: TrainResult
    features: pl.DataFrame
    served: dict[str, list[str]]  # batch -> request ids


def _cli_env(env: Settings) -> dict[str, str]:
    return cli_env(env, TIDELOG_EVENTS="on")


def _cli(env: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args, "--app-dir", str(ROOT)],
                          cwd=ROOT, env=_cli_env(env), text=True, capture_output=True,
                          timeout=600)


def _serve(env: Settings, world_model: str, trained: TrainResult, model: Any,
           instances: pl.DataFrame, batch: str, version: str = "1",
           wrong_labels: int = 0) -> list[str]:
    """Write one results message per instance (the serving contract), and for the first
    `wrong_labels` requests a label that contradicts the prediction."""
    results = results_topic(env.topic_prefix, world_model)
    labels = labels_topic(env.topic_prefix, world_model)
    ensure_topics(env, [results, labels])
    predictions = predict(model, instances.to_pandas()).tolist()
    rng = np.random.default_rng(len(batch))
    out = producer(env.kafka_config(**{"linger.ms": 5}))
    ids = []
    for i, (row, prediction) in enumerate(zip(instances.iter_rows(named=True), predictions,
                                              strict=True)):
        request_id = f"{batch}-{i}"
        ids.append(request_id)
        value = {"request_id": request_id,
                 "source": {"topic": f"{env.topic_prefix}.requests", "partition": 0,
                            "offset": i},
                 "instance": row, "prediction": prediction,
                 "model": {"name": world_model, "version": version, "run_id": trained.run_id,
                           "alias": "champion"},
                 "snapshot_id": trained.snapshot_id, "cut_digest": trained.manifest.digest,
                 "latency_ms": float(rng.gamma(2.0, 3.0)),
                 "served_at": f"2026-12-01T10:{len(batch):02d}:{i // 60:02d}.{i % 60:03d}Z",
                 "error": None}
        out.produce(results, key=request_id.encode(), value=json.dumps(value).encode())
        if i < wrong_labels:
            out.produce(labels, key=request_id.encode(),
                        value=json.dumps({"request_id": request_id,
                                          "label": 1 - int(prediction)}).encode())
    # one failed request: counted, never compared
    failed = {"request_id": f"{batch}-failed", "instance": {}, "prediction": None,
              "model": {"name": world_model, "version": version, "run_id": trained.run_id,
                        "alias": "champion"}, "served_at": "2026-12-01T09:00:00Z",
              "error": {"code": "bad_instance", "message": "missing feature"}}
    out.produce(results, key=b"failed", value=json.dumps(failed).encode())
    assert out.flush(30) == 0
    return ids


@pytest.fixture(scope="module")
def world(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = unique_name("mon")
    root = tmp_path_factory.mktemp("monitor")
    env = dataclasses.replace(private_settings(settings, root, name), events=True)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=300)
    apply(env, spec, timeout=180)
    try:
        wait_for_capture(env, dict(shop.events))
        model = f"churn-{name}"
        trained = train(env, RECIPE, at="latest", tables=shop.tables, params=PARAMS,
                        seed=SEED, register=model)
        Registry(env, "tidelog").set_alias(model, "champion", "1")
        features, _ = churn.features(read_tables(open_snapshot(env, trained.snapshot_id)))
        yield World(env, shop, root, model, trained, features, {})
    finally:
        delete(env, spec, drop_slot=True)
        shop.drop()


@pytest.fixture(scope="module")
def served(world: World) -> World:
    loaded = connect(world.env).load_model(f"models:/{world.model}/1")
    # batch A: every training row served, with tenure_days moved by 2000 days
    a = world.features.with_columns(pl.col("tenure_days") + 2000.0)
    world.served["a"] = _serve(world.env, world.model, world.trained, loaded, a, "a",
                               wrong_labels=120)
    # results of another version: never compared with version 1's training data
    _serve(world.env, world.model, world.trained, loaded, world.features.head(20), "other",
           version="99")
    return world


def _validate(event: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(load_schema("drift.detected"),
                                    format_checker=jsonschema.FormatChecker()).validate(event)


def test_the_report_finds_the_shifted_feature_only(served: World) -> None:
    rows = served.features.height
    done = _cli(served.env, "monitor", "report", f"{served.model}@champion", "--window",
                str(rows), "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dataset"]["drifted_columns"] == ["tenure_days"]
    assert report["dataset"]["drifted"] is False
    assert {f["column"] for f in report["features"]} == set(churn.FEATURES)
    stable = [f for f in report["features"] if f["column"] != "tenure_days"]
    # the very rows of the training data: every test finds nothing (p = 1)
    assert all(f["score"] == 1.0 and not f["drifted"] for f in stable), stable
    kinds = {f["column"]: f["method"] for f in report["features"]}
    assert kinds["total_paid"] == "ks" and kinds["tenure_days"] == "ks"
    tenure = next(f for f in report["features"] if f["column"] == "tenure_days")
    assert tenure["method"] == "ks" and tenure["score"] < 1e-10 and tenure["psi_drifted"]
    assert report["current"]["rows"] == rows and report["current"]["basis"] == "results"
    assert report["current"]["errors"] == 1 and report["current"]["other_versions"] == 21
    trained = served.trained
    assert report["model"]["run_id"] == trained.run_id and report["model"]["version"] == "1"
    assert report["model"]["snapshot_id"] == trained.snapshot_id
    assert report["model"]["cut_digest"] == trained.manifest.digest
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] and latency["count"] == rows
    assert report["outliers"]["share"] > report["outliers"]["reference_share"]
    decay = report["decay"]
    assert decay["labelled"] == 120 and decay["live"]["accuracy"] == 0.0 and decay["decayed"]
    assert decay["recorded"]["accuracy"] == pytest.approx(trained.metrics["accuracy"])


def test_chromium_renders_the_html_report(served: World) -> None:
    from playwright.sync_api import sync_playwright

    out = served.root / "drift.html"
    done = _cli(served.env, "monitor", "report", f"{served.model}@champion", "--window",
                str(served.features.height), "--format", "html", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(out.as_uri())
            drifted = page.locator("#features tr.drifted td:first-child").all_text_contents()
            assert [d.strip() for d in drifted] == ["tenure_days"]
            assert page.locator("#features tr.stable").count() == len(churn.FEATURES) - 1
            lineage = page.inner_text("#lineage")
            assert served.trained.run_id in lineage and served.trained.snapshot_id in lineage
            assert page.locator("#lineage a").first.get_attribute("href") == \
                f"/ui/models/{served.model}/1"
            assert "decayed" in page.inner_text("#decay")
        finally:
            browser.close()


def test_a_drift_event_fires_the_pipelines_drift_trigger_and_it_retrains(
        served: World) -> None:
    env = served.env
    loaded = connect(env).load_model(f"models:/{served.model}/1")
    # batch B: three of the six features move: the dataset drifts (share 0.5)
    b = served.features.with_columns(pl.col("tenure_days") + 2000.0,
                                     pl.col("n_payments") + 40.0, pl.col("total_paid") * 5)
    _serve(env, served.model, served.trained, loaded, b, "bb")
    rows = str(served.features.height)
    metrics = served.root / "monitor.prom"
    first = _cli(env, "monitor", "run", f"{served.model}@champion", "--once", "--window",
                 rows, "--json", "--metrics-file", str(metrics))
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["dataset_drift"] and result["published"]
    assert sorted(result["drifted_columns"]) == ["n_payments", "tenure_days", "total_paid"]
    share = next(e for e in result["events"] if e["data"]["metric"] == "drift_share")
    _validate(share)
    assert share["data"]["score"] == 0.5 and share["data"]["run_id"] == served.trained.run_id
    again = _cli(env, "monitor", "run", f"{served.model}@champion", "--once", "--window",
                 rows, "--json")
    assert again.returncode == 0, again.stderr
    assert [e["id"] for e in json.loads(again.stdout)["events"]] == \
        [e["id"] for e in result["events"]]  # the same window: the same events

    on_broker = [e for e in read_events(env, ["drift"]) if e.data.get("model") == served.model]
    assert {e.id for e in on_broker} == {e["id"] for e in result["events"]}
    for event in on_broker:
        _validate(event.to_json())

    history = connect(env).metric_history(served.trained.run_id, "monitor.drift_share")
    assert [v for _, v in history] == [0.5, 0.5]
    assert connect(env).metric_history(served.trained.run_id,
                                       "monitor.drifted.total_paid")[-1][1] == 1.0
    text = metrics.read_text()
    assert metric(text, "tidelog_monitor_drift_share", model=served.model, version="1") == 0.5

    path = served.root / "drift-pipeline.toml"
    path.write_text(PIPELINE.format(name=f"p-{served.model}", recipe=RECIPE,
                                    tables=json.dumps(list(served.shop.tables)),
                                    model=served.model, seed=SEED))
    pipeline = load_pipeline(path)
    worker = Worker(env, pipeline, interval=1.0)
    try:
        plan, cycle = worker.step(poll=5.0)
    finally:
        worker.feed.close()
    drift = next(t for t in plan.triggers if t.kind == "drift")
    assert drift.due and drift.details["max_score"] == 0.5, drift.reason
    assert share["id"] in drift.to_json()["signals"]
    assert cycle is not None and cycle.trained and cycle.triggers == ("drift",)
    assert cycle.version == "2" and cycle.promoted
    handled = Registry(env, "tidelog").handled_signals(pipeline.name)
    assert share["id"] in handled  # the run records the event it acted on


def test_a_shift_in_postgres_drifts_against_the_latest_snapshot(served: World) -> None:
    import psycopg

    env, shop = served.env, served.shop
    with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
        changed = conn.execute(f"update {shop.schema}.payments set amount = amount * 5"
                               ).rowcount
    assert changed > 0
    shop.events[f"{shop.schema}.payments"] += changed
    wait_for_capture(env, dict(shop.events))
    done = _cli(env, "monitor", "report", f"{served.model}@champion", "--against", "latest")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # only the paid amounts moved: of the recipe's features, total_paid alone
    assert report["dataset"]["drifted_columns"] == ["total_paid"]
    current = report["current"]
    assert current["basis"] == "snapshot"
    assert current["snapshot_id"] not in (None, report["model"]["snapshot_id"])
    assert report["latency_ms"] is None and report["decay"] is None
