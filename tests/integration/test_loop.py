"""Issue 14 on the real stack: data changes trigger training through events on the
broker, a gate decides what takes the champion alias, and a killed worker resumes exactly.

Real Postgres, Debezium in Kafka Connect, the Tansu broker and MLflow of the session
stack; the shop lives in its own schema, captured under its own topic prefix.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cdc.connector import ConnectorSpec, apply, delete
from examples.shop import Shop
from pipelines.config import Pipeline, load_pipeline
from pipelines.feed import read_events
from pipelines.registry import Registry
from pipelines.worker import Cycle, Worker
from snapshotter.archiving import cdc_topics
from tests.integration.cdc_helpers import cli_env, execute, private_settings, unique_name
from tidelog.demo.capture import wait_for_capture
from tidelog.events import CloudEvent, Publisher, event_topics, load_schema, new_event
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHANGED = 60  # customers updated between the first and the second training
PIPELINE = """
name = "{name}"
recipe = "tests.integration.loop_recipes:train"
tables = {tables}
model = "{model}"
seed = 3

[params]
model = "forest"
n_estimators = 15
max_depth = 5

[[triggers]]
kind = "changed_rows"
min_rows = {min_rows}

[[triggers]]
kind = "manual"

[[gate]]
metric = "accuracy"
threshold = 0.0
{gate}
"""
STRICT = "min_relative_change = 0.5"  # +50% accuracy: no second model passes
LENIENT = "min_absolute_change = -1.0"


def _write(root: Path, name: str, model: str, tables: tuple[str, ...], gate: str,
           min_rows: int = 50, file: str | None = None) -> Pipeline:
    path = root / f"{file or name}.toml"
    path.write_text(PIPELINE.format(name=name, model=model, tables=list(tables),
                                    min_rows=min_rows, gate=gate).replace("'", '"'))
    return load_pipeline(path)


@dataclasses.dataclass
class Loop:
    env: Settings
    shop: Shop
    root: Path
    strict: Pipeline
    plans: dict[str, Any]
    cycles: dict[str, Cycle | None]
    aliases: dict[str, str | None]
    runs_after_replay: int
    events: list[CloudEvent]


def _champion_version(registry: Registry, pipeline: Pipeline) -> str | None:
    champ = registry.champion(pipeline.model, pipeline.alias)
    return champ.version if champ else None


def _request(env: Settings, pipeline: str, at: str) -> CloudEvent:
    data = {"pipeline": pipeline, "requested_at": at, "reason": "test replay",
            "requested_by": "test"}
    return new_event(env, "retrain.requested", pipeline, data, (pipeline, at), "test",
                     time=at)


@pytest.fixture(scope="module")
def shop_env(settings: Settings, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Settings, Shop, Path]]:
    name = unique_name("loop")
    root = tmp_path_factory.mktemp("loop")
    env = dataclasses.replace(private_settings(settings, root, name), events=True)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=300)
    apply(env, spec, timeout=180)
    try:
        wait_for_capture(env, dict(shop.events))
        yield env, shop, root
    finally:
        delete(env, spec, drop_slot=True)
        shop.drop()


@pytest.fixture(scope="module")
def loop(shop_env: tuple[Settings, Shop, Path]) -> Loop:
    env, shop, root = shop_env
    model = f"churn-{shop.schema}"
    strict = _write(root, f"p-{shop.schema}", model, shop.tables, STRICT)
    registry = Registry(env, strict.experiment)
    plans: dict[str, Any] = {}
    cycles: dict[str, Cycle | None] = {}
    aliases: dict[str, str | None] = {}

    worker = Worker(env, strict, interval=1.0)
    try:
        # 1. no champion yet: every row of the log counts, the first model is promoted
        plans["first"], cycles["first"] = worker.step()
        aliases["first"] = _champion_version(registry, strict)
        # 2. nothing changed since the champion's cut
        plans["idle"], cycles["idle"] = worker.step()
        # 3. change exactly CHANGED rows, each its own commit, then retrain: the strict
        #    gate rejects the second model
        for key in range(1, CHANGED + 1):
            execute(env, f"update {shop.schema}.customers set marketing_opt_in = "
                    f"not marketing_opt_in where id = {key}")
        shop.events[f"{shop.schema}.customers"] += CHANGED
        wait_for_capture(env, dict(shop.events))
        plans["changed"], cycles["changed"] = worker.step()
        aliases["changed"] = _champion_version(registry, strict)
        # 4. the same retrain request delivered twice: one cycle, no new run
        request = _request(env, strict.name, "2030-01-01T00:00:00.000Z")
        publisher = Publisher(env)
        publisher.publish(request)
        publisher.publish(request)
        time.sleep(1.0)
        plans["replay"], cycles["replay"] = worker.step(poll=5.0)
        runs_after_replay = len(registry.pipeline_runs(strict.name))
    finally:
        worker.feed.close()
    # 5. a lenient gate on the same cut: the existing run is gated again and promoted
    lenient = _write(root, strict.name, model, shop.tables, LENIENT, file="lenient")
    request = _request(env, strict.name, "2030-01-01T00:00:01.000Z")
    Publisher(env).publish(request)
    worker = Worker(env, lenient, interval=1.0)
    try:
        plans["lenient"], cycles["lenient"] = worker.step(poll=5.0)
    finally:
        worker.feed.close()
    aliases["lenient"] = _champion_version(registry, strict)
    events = read_events(env, ["dataset", "model", "pipeline", "retrain", "drift"])
    return Loop(env, shop, root, strict, plans, cycles, aliases, runs_after_replay, events)


def test_first_training_without_a_champion_is_promoted(loop: Loop) -> None:
    first = loop.cycles["first"]
    assert first is not None and first.trained and first.promoted
    assert first.version == "1" and loop.aliases["first"] == "1"
    states = {t.kind: t for t in loop.plans["first"].triggers}
    assert states["changed_rows"].due
    assert "no champion yet" in states["changed_rows"].reason
    assert loop.cycles["idle"] is None
    idle = {t.kind: t for t in loop.plans["idle"].triggers}
    assert not idle["changed_rows"].due
    assert idle["changed_rows"].details["changed_rows"] == 0


def test_crossing_the_threshold_trains_at_the_right_cut_and_the_gate_rejects(
        loop: Loop) -> None:
    changed = {t.kind: t for t in loop.plans["changed"].triggers}["changed_rows"]
    assert changed.due and changed.details["changed_rows"] == CHANGED  # exact, from offsets
    cycle = loop.cycles["changed"]
    assert cycle is not None and cycle.trained and cycle.triggers == ("changed_rows",)
    assert cycle.version == "2"
    assert cycle.gate is not None and not cycle.gate.passed and not cycle.promoted
    assert loop.aliases["changed"] == "1"  # the alias did not move
    registry = Registry(loop.env, loop.strict.experiment)
    run = registry.get_run(cycle.run_id)
    assert run.data.tags["tidelog.pipeline"] == loop.strict.name
    # the tag holds the latest decision: the lenient gate of the last step promoted it
    assert run.data.tags["tidelog.gate.decision"] == "promote"
    # the run's cut ends exactly at the archive's transaction-consistent end of the tables
    customers = f"{loop.env.topic_prefix}.{loop.shop.schema}.customers"
    first = registry.get_run(loop.cycles["first"].run_id)  # type: ignore[union-attr]
    gap = (int(run.data.tags[f"tidelog.cut.end.{customers}/0"])
           - int(first.data.tags[f"tidelog.cut.end.{customers}/0"]))
    assert gap == CHANGED
    assert run.data.tags["tidelog.cut.fingerprint"] == cycle.cut_fingerprint


def test_the_same_event_twice_trains_nothing_twice(loop: Loop) -> None:
    replay = loop.cycles["replay"]
    assert replay is not None and not replay.trained
    assert replay.run_id == loop.cycles["changed"].run_id  # type: ignore[union-attr]
    assert loop.runs_after_replay == 2
    # the run records the request it acted on, so a later replay of it is ignored
    registry = Registry(loop.env, loop.strict.experiment)
    handled = registry.handled_signals(loop.strict.name)
    request = _request(loop.env, loop.strict.name, "2030-01-01T00:00:00.000Z")
    assert request.id in handled
    manual = {t.kind: t for t in loop.plans["replay"].triggers}["manual"]
    assert manual.due and manual.details["requests"] == 1  # the duplicate was one event


def test_a_passing_gate_moves_the_alias(loop: Loop) -> None:
    cycle = loop.cycles["lenient"]
    assert cycle is not None and not cycle.trained and cycle.promoted
    assert cycle.version == "2" and loop.aliases["lenient"] == "2"
    assert cycle.gate is not None and cycle.gate.champion_version == "1"


def _validate(event: CloudEvent) -> None:
    jsonschema.Draft202012Validator(load_schema(event.kind),
                                    format_checker=jsonschema.FormatChecker()
                                    ).validate(event.to_json())


def test_events_are_on_the_broker_in_order_and_valid(loop: Loop) -> None:
    assert loop.events
    for event in loop.events:
        _validate(event)
    first, changed = loop.cycles["first"], loop.cycles["changed"]
    assert first is not None and changed is not None
    model_events = [(e.kind, e.data.get("run_id"), e.data.get("version"))
                    for e in loop.events if e.kind.startswith("model.")]
    assert model_events == [
        ("model.trained", first.run_id, None), ("model.promoted", first.run_id, "1"),
        ("model.trained", changed.run_id, None), ("model.rejected", changed.run_id, "2"),
        ("model.trained", changed.run_id, None), ("model.rejected", changed.run_id, "2"),
        ("model.trained", changed.run_id, None), ("model.promoted", changed.run_id, "2"),
    ]
    # a replayed step resends the same fact under the same id
    trained_ids = {e.id for e in loop.events if e.kind == "model.trained"
                   and e.data["run_id"] == changed.run_id}
    assert len(trained_ids) == 1
    ready = [e for e in loop.events if e.kind == "dataset.ready"]
    fingerprints = [e.data["cut_fingerprint"] for e in ready]
    assert first.cut_fingerprint in fingerprints and changed.cut_fingerprint in fingerprints
    second = next(e for e in ready if e.data["cut_fingerprint"] == changed.cut_fingerprint)
    assert set(second.data["tables"]) == set(loop.shop.tables)
    assert second.data["rows"] == sum(t["rows"] for t in second.data["tables"].values())
    triggered = [e.data["cut_fingerprint"] for e in loop.events
                 if e.kind == "pipeline.triggered"]
    assert triggered[:2] == [first.cut_fingerprint, changed.cut_fingerprint]
    assert len({e.id for e in loop.events if e.kind == "pipeline.triggered"}) == 2
    # the event topics are not change-data topics for the archiver
    topics = set(event_topics(loop.env))
    assert topics & {f"{loop.env.topic_prefix}.tidelog.events.{c}" for c in
                     ("dataset", "model", "pipeline")}
    assert not topics & set(cdc_topics(loop.env))


def _cli_env(env: Settings, **extra: str) -> dict[str, str]:
    return cli_env(env, TIDELOG_EVENTS="on", **extra)


def _worker(pipeline_file: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidelog.cli", "pipeline", "run", str(pipeline_file),
         "--app-dir", str(ROOT), "--json"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(marker: Path, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, "the worker never reached the pause"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize("step", ["TRAIN", "GATE"])
def test_sigkill_of_the_worker_then_restart_gives_one_run_per_trigger(
        shop_env: tuple[Settings, Shop, Path], step: str) -> None:
    env, shop, root = shop_env
    name = f"k{step.lower()}-{shop.schema}"
    pipeline = _write(root, name, f"churn-{name}", shop.tables, LENIENT, min_rows=1)
    path = Path(pipeline.source)
    marker = root / f"paused-{step}"
    killed = _worker(path, _cli_env(env, **{f"TIDELOG_TEST_PAUSE_IN_{step}": str(marker)}))
    _kill_when(marker, killed)
    registry = Registry(env, pipeline.experiment)
    finished = registry.pipeline_runs(name)
    assert len(finished) == (1 if step == "GATE" else 0)
    assert registry.champion(pipeline.model) is None  # nothing half-promoted

    done = subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "pipeline", "run", str(path), "--app-dir",
         str(ROOT), "--json"], cwd=ROOT, env=_cli_env(env), text=True,
        capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = registry.pipeline_runs(name)
    assert len(runs) == 1
    if step == "GATE":
        assert runs[0].info.run_id == finished[0].info.run_id  # found again, not retrained
    assert registry.pipeline_runs(name, status="RUNNING") == []
    champ = registry.champion(pipeline.model)
    assert champ is not None and champ.run_id == runs[0].info.run_id and champ.version == "1"
    again = subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "pipeline", "evaluate", str(path),
         "--dry-run", "--json", "--app-dir", str(ROOT)], cwd=ROOT, env=_cli_env(env),
        text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert '"fire": false' in again.stdout


def _cli(env: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args], cwd=ROOT,
                          env=_cli_env(env), text=True, capture_output=True, timeout=timeout)


def test_gate_and_verify_run_give_ci_exit_codes(loop: Loop) -> None:
    import json

    changed = loop.cycles["changed"]
    first = loop.cycles["first"]
    assert changed is not None and first is not None
    model = loop.strict.model
    # run 2 holds the alias now; run 1 against it, on run 1's snapshot
    common = ["gate", "--candidate", first.run_id, "--champion", f"{model}@champion",
              "--app-dir", str(ROOT), "--evaluator", "tests.integration.loop_recipes:evaluate"]
    failed = _cli(loop.env, *common, "--threshold", "accuracy:min_relative_change=0.5")
    assert failed.returncode == 1, failed.stderr
    assert "gate FAILED" in failed.stdout and "relative gain" in failed.stdout
    passed = _cli(loop.env, *common, "--threshold", "accuracy:min_absolute_change=-1",
                  "--json")
    assert passed.returncode == 0, passed.stderr
    report = json.loads(passed.stdout)
    assert report["passed"] and report["champion_version"] == "2"
    assert report["champion_run_id"] == changed.run_id
    error = _cli(loop.env, "gate", "--candidate", first.run_id, "--champion", model)
    assert error.returncode == 2 and "MODEL@ALIAS" in error.stderr

    verified = _cli(loop.env, "verify", "run", first.run_id, "--rebuild", "--app-dir",
                    str(ROOT), "--json")
    assert verified.returncode == 0, verified.stderr
    body = json.loads(verified.stdout)
    assert body["ok"] and body["snapshot"]["ok"] and body["rebuild"]["dataset_match"]
    unknown = _cli(loop.env, "verify", "run", "0" * 32)
    assert unknown.returncode == 2 and "unknown run" in unknown.stderr


def test_a_drift_event_above_the_threshold_makes_the_drift_trigger_due(loop: Loop) -> None:
    import json

    path = loop.root / "drift.toml"
    path.write_text(Path(loop.strict.source).read_text().replace(
        '[[triggers]]\nkind = "manual"',
        '[[triggers]]\nkind = "drift"\nthreshold = 0.3\nmetric = "psi"'))
    for score in ("0.1", "0.9"):
        sent = _cli(loop.env, "pipeline", "drift", "--model", loop.strict.model,
                    "--score", score, "--metric", "psi", "--json")
        assert sent.returncode == 0, sent.stderr
        _validate(CloudEvent(**{k: v for k, v in json.loads(sent.stdout).items()
                                if k not in ("specversion", "datacontenttype")}))
    plan = _cli(loop.env, "pipeline", "evaluate", str(path), "--dry-run", "--json",
                "--app-dir", str(ROOT))
    assert plan.returncode == 0, plan.stderr
    drift = next(t for t in json.loads(plan.stdout)["plan"]["triggers"]
                 if t["kind"] == "drift")
    assert drift["due"] and drift["details"]["max_score"] == 0.9
    assert drift["details"]["events"] == 2 and "0.9 > 0.3" in drift["reason"]
