"""Issue 15, serving, on the real stack: `tidelog serve` answers requests from the broker
with results that name the model version, run, snapshot and digest; a moved alias
switches at a batch boundary; a killed worker loses and duplicates nothing.

Real Postgres, Debezium in Kafka Connect, the Tansu broker and MLflow of the session
stack. Two versions of one model are trained on the shop's snapshot and registered; each
test serves under its own topic prefix, so each has its own requests and results topics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import load_api_config
from cdc.connector import ConnectorSpec, apply, delete
from examples.churn import FEATURES
from examples.shop import Shop
from pipelines.registry import Registry
from tests.integration.cdc_helpers import private_settings, unique_name
from tests.unit.test_serving import metric
from tidelog.adapters.kafka import KafkaAdmin
from tidelog.demo.capture import wait_for_capture
from tidelog.settings import Settings
from tidelog.topics import serving_requests_topic, serving_results_topic
from trainer.tracking import connect
from trainer.train import TrainResult, train

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tidelog" / "schemas" / "serving" / "v1"
RECIPE = "examples.churn:train"
BATCH = 20


@dataclasses.dataclass
class Served:
    env: Settings
    model: str
    first: TrainResult
    second: TrainResult
    registry: Registry


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    name = unique_name("serve")
    root = tmp_path_factory.mktemp("serve")
    env = private_settings(settings, root, name)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=300)
    apply(env, spec, timeout=180)
    try:
        wait_for_capture(env, dict(shop.events))
        model = f"serve-churn-{name}"
        first = train(env, RECIPE, at="latest", tables=shop.tables,
                      params={"model": "logreg"}, seed=1, register=model)
        second = train(env, RECIPE, snapshot_id=first.snapshot_id, tables=shop.tables,
                       params={"model": "forest", "n_estimators": 10, "max_depth": 3},
                       seed=2, register=model)
        registry = Registry(env, "tidelog")
        registry.set_alias(model, "champion", str(first.registered_version))
        yield Served(env, model, first, second, registry)
    finally:
        delete(env, spec, drop_slot=True)
        shop.drop()


# -- helpers ---------------------------------------------------------------------------

def _schema(kind: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{kind}.json").read_text()))


def _env(env: Settings, prefix: str, **extra: str) -> dict[str, str]:
    values = {"TIDELOG_HOME": str(env.home), "TIDELOG_BOOTSTRAP_SERVERS": env.bootstrap_servers,
              "TIDELOG_MLFLOW_URI": env.mlflow_uri, "TIDELOG_TOPIC_PREFIX": prefix}
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    return {**base, **values, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(served: Served, prefix: str, *args: str, partitions: int = 3, **env: str
            ) -> subprocess.Popen[str]:
    # The topics exist before anyone produces or reads (as an operator would create them):
    # a broker that auto-creates a topic on first produce would pick its own partitions.
    KafkaAdmin.for_settings(served.env).ensure_topics(
        [serving_requests_topic(prefix, served.model), serving_results_topic(prefix, served.model)],
        partitions)
    return subprocess.Popen(
        [sys.executable, "-m", "tidelog.cli", "serve", "--model", served.model,
         "--batch-size", str(BATCH), "--max-wait-ms", "50", "--alias-interval", "0.5",
         *args], cwd=ROOT, env=_env(served.env, prefix, **env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _instance(rng: random.Random) -> dict[str, float]:
    return {"tenure_days": float(rng.randint(0, 900)), "n_subscriptions": float(rng.randint(0, 4)),
            "mean_fee": round(rng.uniform(5, 60), 2), "n_payments": float(rng.randint(0, 30)),
            "failed_ratio": round(rng.random(), 3), "total_paid": round(rng.uniform(0, 900), 2)}


def _requests(count: int, stem: str, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    return [(f"{stem}-{i}", {"request_id": f"{stem}-{i}", "instance": _instance(rng)})
            for i in range(count)]


def _produce(env: Settings, topic: str, messages: list[tuple[bytes | None, bytes]],
             pause: float = 0.0) -> None:
    producer = Producer({"bootstrap.servers": env.bootstrap_servers, "linger.ms": 5})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        if pause:
            producer.poll(0)
            time.sleep(pause)
    assert producer.flush(30) == 0


def _produce_requests(env: Settings, topic: str, requests: list[tuple[str, dict[str, Any]]],
                      pause: float = 0.0) -> None:
    schema = _schema("request")
    for _, value in requests:
        jsonschema.validate(value, schema)  # what the tests send is what the docs say
    _produce(env, topic, [(k.encode(), json.dumps(v).encode()) for k, v in requests], pause)


def _read_results(env: Settings, topic: str, wanted: set[str], timeout: float = 120
                  ) -> list[tuple[int, int, str, dict[str, Any]]]:
    """Every committed result on `topic` (partition, offset, key, value), read until each
    of `wanted` has one and the topic is quiet for a moment."""
    partitions = KafkaAdmin.for_settings(env).partitions([topic])
    reader = Consumer({"bootstrap.servers": env.bootstrap_servers, "group.id": unique_name("r"),
                       "isolation.level": "read_committed", "enable.auto.commit": False})
    reader.assign([TopicPartition(t, p, 0) for t, p in partitions])
    found: list[tuple[int, int, str, dict[str, Any]]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            m = reader.poll(0.2)
            if m is None or m.error():
                if wanted <= seen and time.monotonic() - quiet_since > 2.0:
                    break
                continue
            quiet_since = time.monotonic()
            value = json.loads(m.value())
            found.append((m.partition(), m.offset(), m.key().decode(), value))
            seen.add(value["request_id"])
    finally:
        reader.close()
    missing = wanted - seen
    assert not missing, f"{len(missing)} requests have no result, e.g. {sorted(missing)[:5]}"
    return found


def _local_predictions(served: Served, version: str, instances: list[dict[str, Any]]
                       ) -> list[Any]:
    import pandas as pd

    tracking = connect(served.env)
    model = tracking.load_pyfunc(f"models:/{served.model}/{version}")
    frame = pd.DataFrame([[i[f] for f in FEATURES] for i in instances], columns=FEATURES)
    return [v.item() for v in model.predict(frame)]


# -- tests -----------------------------------------------------------------------------

def test_results_name_the_version_run_snapshot_and_digest(served: Served) -> None:
    prefix = unique_name("s1")
    requests = _requests(60, "a")
    port = _free_port()
    worker = _worker(served, prefix, "--metrics-port", str(port))
    try:
        _produce_requests(served.env, serving_requests_topic(prefix, served.model), requests)
        results = _read_results(served.env, serving_results_topic(prefix, served.model),
                                {k for k, _ in requests})
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        code, err = _stop(worker)
    assert code == 0, err
    schema = _schema("result")
    for _, _, key, value in results:
        jsonschema.validate(value, schema)
        assert key == value["request_id"]
    assert len(results) == len(requests)  # exactly one each: no crash, no duplicate
    by_id = {v["request_id"]: v for _, _, _, v in results}
    first = served.first
    version = str(first.registered_version)
    for v in by_id.values():
        assert v["error"] is None
        assert v["model"] == {"name": served.model, "version": version,
                              "run_id": first.run_id, "alias": "champion"}
        assert v["snapshot_id"] == first.snapshot_id
        assert v["cut_digest"] == first.manifest.digest
        assert v["source"]["topic"] == serving_requests_topic(prefix, served.model)
    # the predictions are the registered version's own, instance by instance
    instances = [r["instance"] for _, r in requests]
    expected = _local_predictions(served, version, instances)
    assert [by_id[k]["prediction"] for k, _ in requests] == expected
    assert [by_id[k]["instance"] for k, _ in requests] == instances
    text = metrics.decode()
    assert metric(text, "tidelog_serve_requests_total", model=served.model,
                  version=version) == 60
    assert metric(text, "tidelog_serve_model_version", model=served.model,
                  alias="champion") == float(version)
    assert metric(text, "tidelog_serve_latency_seconds_count", model=served.model) == 60


def test_bad_requests_get_error_results_and_the_worker_goes_on(served: Served) -> None:
    prefix = unique_name("s2")
    topic = serving_requests_topic(prefix, served.model)
    good = _instance(random.Random(5))
    bad: list[tuple[bytes | None, bytes]] = [
        (b"b-json", b"{not json"),
        (b"b-array", b"[1, 2]"),
        (b"b-noinst", json.dumps({"request_id": "b-noinst"}).encode()),
        (b"b-missing", json.dumps({"instance": {"tenure_days": 3.0}}).encode()),
        (b"b-type", json.dumps({"instance": {**good, "mean_fee": "high"}}).encode()),
        (b"b-unknown", json.dumps({"instance": {**good, "colour": 1.0}}).encode()),
        (b"b-null", json.dumps({"instance": {**good, "total_paid": None}}).encode()),
        (None, json.dumps({"instance": good}).encode()),  # no key, no id: coordinates
        (b"b-good", json.dumps({"instance": good}).encode()),
    ]
    worker = _worker(served, prefix, partitions=1)
    try:
        _produce(served.env, topic, bad)
        results = _read_results(served.env, serving_results_topic(prefix, served.model),
                                {"b-json", "b-good", "b-null"})
    finally:
        code, err = _stop(worker)
    assert code == 0, err
    schema = _schema("result")
    for _, _, _, value in results:
        jsonschema.validate(value, schema)
    by_id = {v["request_id"]: v for _, _, _, v in results}
    assert len(results) == len(bad)
    codes = {k: (v["error"] or {}).get("code") for k, v in by_id.items()}
    assert codes == {"b-json": "invalid_json", "b-array": "invalid_request",
                     "b-noinst": "invalid_request", "b-missing": "missing_features",
                     "b-type": "invalid_feature_type", "b-unknown": "unknown_features",
                     "b-null": "invalid_feature_type", f"{topic}/0/7": None,
                     "b-good": None}
    assert by_id["b-json"]["instance"] is None and by_id["b-json"]["prediction"] is None
    assert by_id["b-type"]["instance"]["mean_fee"] == "high"  # echoed as sent
    assert by_id["b-good"]["prediction"] == _local_predictions(
        served, str(served.first.registered_version), [good])[0]
    assert all(v["model"]["version"] == str(served.first.registered_version)
               for v in by_id.values())


def _batches(results: list[tuple[int, int, str, dict[str, Any]]]
             ) -> dict[tuple[str, int], set[str]]:
    """Version(s) named per batch: a batch's results share one served_at and partition
    of the requests topic (one transaction), so this groups by them."""
    groups: dict[tuple[str, int], set[str]] = {}
    for _, _, _, v in results:
        key = (v["served_at"], v["source"]["partition"])
        groups.setdefault(key, set()).add(v["model"]["version"])
    return groups


def test_a_moved_alias_switches_at_a_batch_boundary(served: Served) -> None:
    prefix = unique_name("s3")
    topic = serving_requests_topic(prefix, served.model)
    results_topic = serving_results_topic(prefix, served.model)
    v1, v2 = str(served.first.registered_version), str(served.second.registered_version)
    before = _requests(120, "m1", 1)
    after: list[tuple[str, dict[str, Any]]] = []
    worker = _worker(served, prefix)
    try:
        _produce_requests(served.env, topic, before, pause=0.005)
        _read_results(served.env, results_topic, {k for k, _ in before})
        served.registry.set_alias(served.model, "champion", v2)
        # mid-stream: requests keep coming while the worker notices and loads v2
        deadline = time.monotonic() + 120
        while True:
            chunk = _requests(30, f"m2.{len(after)}", len(after))
            _produce_requests(served.env, topic, chunk, pause=0.01)
            after += chunk
            seen = _read_results(served.env, results_topic, {k for k, _ in chunk})
            if any(v["model"]["version"] == v2 for _, _, _, v in seen):
                break
            assert time.monotonic() < deadline, "the worker never switched to v2"
        final = _requests(40, "m3", 3)  # produced after the switch: all v2
        _produce_requests(served.env, topic, final)
        after += final
        results = _read_results(served.env, results_topic, {k for k, _ in before + after})
    finally:
        served.registry.set_alias(served.model, "champion", v1)
        code, err = _stop(worker)
    assert code == 0, err
    assert len(results) == len(before) + len(after)
    by_id = {v["request_id"]: v for _, _, _, v in results}
    assert {by_id[k]["model"]["version"] for k, _ in before} == {v1}
    assert {by_id[k]["model"]["version"] for k, _ in final} == {v2}
    for v in by_id.values():
        expected_run = served.first.run_id if v["model"]["version"] == v1 else \
            served.second.run_id
        assert v["model"]["run_id"] == expected_run
    # no batch mixes versions, and per partition the switch happens once, in order
    assert all(len(versions) == 1 for versions in _batches(results).values())
    for partition in {v["source"]["partition"] for v in by_id.values()}:
        seq = [v["model"]["version"] for v in sorted(
            (v for v in by_id.values() if v["source"]["partition"] == partition),
            key=lambda v: v["source"]["offset"])]
        assert seq == sorted(seq, key=int), seq
    # the v2 predictions are v2's own
    switched = [(k, r) for k, r in after if by_id[k]["model"]["version"] == v2]
    assert switched
    assert [by_id[k]["prediction"] for k, _ in switched] == _local_predictions(
        served, v2, [r["instance"] for _, r in switched])


def _exactly_once_after(results: list[tuple[int, int, str, dict[str, Any]]],
                        wanted: set[str]) -> int:
    """Check the documented reading rule (last result per key in offset order) gives one
    result per request; the extra records the broker let through, counted."""
    last: dict[str, tuple[int, int, dict[str, Any]]] = {}
    for partition, offset, key, value in sorted(results, key=lambda r: (r[0], r[1])):
        assert key == value["request_id"]
        last[key] = (partition, offset, value)
    assert set(last) == wanted
    extra = len(results) - len(last)
    print(f"{len(results)} result records for {len(last)} requests: {extra} from aborted "
          "transactions the broker showed to a read_committed reader")
    return extra


def test_a_crash_before_commit_loses_and_duplicates_no_committed_result(
        served: Served) -> None:
    prefix = unique_name("s4")
    requests = _requests(100, "c", 4)
    topic = serving_requests_topic(prefix, served.model)
    crashed = _worker(served, prefix, TIDELOG_CRASH_AT="serve.before_commit")
    try:
        _produce_requests(served.env, topic, requests)
        _, err = crashed.communicate(timeout=120)  # it dies on its own at the point
        code = crashed.returncode
    finally:
        if crashed.poll() is None:
            crashed.kill()
    assert code == 137, err  # exited at the crash point: results produced, not committed
    worker = _worker(served, prefix)
    try:
        results = _read_results(served.env, serving_results_topic(prefix, served.model),
                                {k for k, _ in requests})
    finally:
        code, err = _stop(worker)
    assert code == 0, err
    extra = _exactly_once_after(results, {k for k, _ in requests})
    # At most the one open batch of the crashed worker: on a broker that filters aborted
    # transactions (Apache Kafka) none; Tansu shows aborted records to read_committed.
    assert extra <= BATCH, extra


def test_sigkill_under_load_then_restart_answers_every_request_once(served: Served) -> None:
    prefix = unique_name("s5")
    requests = _requests(600, "k", 5)
    topic = serving_requests_topic(prefix, served.model)
    results_topic = serving_results_topic(prefix, served.model)
    worker = _worker(served, prefix)
    try:
        _produce_requests(served.env, topic, requests[:300], pause=0.002)
        _read_results(served.env, results_topic, {k for k, _ in requests[:150]}, timeout=120)
        _produce_requests(served.env, topic, requests[300:], pause=0.001)
        worker.send_signal(signal.SIGKILL)  # under load: mid-batch, mid-transaction
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    restarted = _worker(served, prefix)
    try:
        results = _read_results(served.env, results_topic, {k for k, _ in requests})
    finally:
        code, err = _stop(restarted)
    assert code == 0, err
    extra = _exactly_once_after(results, {k for k, _ in requests})
    assert extra <= BATCH * 3, extra  # at most one open batch (per partition it read)


def test_sigterm_finishes_the_batch_in_hand_and_a_restart_duplicates_nothing(
        served: Served) -> None:
    prefix = unique_name("s6")
    requests = _requests(400, "t", 6)
    topic = serving_requests_topic(prefix, served.model)
    results_topic = serving_results_topic(prefix, served.model)
    worker = _worker(served, prefix)
    try:
        _produce_requests(served.env, topic, requests[:100])
        _read_results(served.env, results_topic, {k for k, _ in requests[:50]})
        _produce_requests(served.env, topic, requests[100:])
        code, err = _stop(worker, signal.SIGTERM)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 0, err
    assert "finishing the batch in hand" in err
    restarted = _worker(served, prefix)
    try:
        results = _read_results(served.env, results_topic, {k for k, _ in requests})
    finally:
        code, err = _stop(restarted)
    assert code == 0, err
    # a graceful stop commits or aborts before exiting: nothing is left for the broker
    # to show twice, whatever it does with aborted transactions
    assert len(results) == len(requests)
    assert len({v["request_id"] for _, _, _, v in results}) == len(requests)


def test_http_predict_answers_with_the_same_provenance(served: Served) -> None:
    config = dataclasses.replace(load_api_config(served.env), auth=False)
    app = create_app(served.env, config=config)
    rng = random.Random(9)
    instances = [_instance(rng) for _ in range(25)]
    with TestClient(app) as client:
        resp = client.post(f"/models/{served.model}/predict", json={"instances": instances})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        bad = client.post(f"/models/{served.model}/predict",
                          json={"instances": [instances[0], {"tenure_days": "x"}]})
        missing = client.post("/models/no-such-model/predict", json={"instances": instances})
    version = str(served.first.registered_version)
    assert body["model"] == {"name": served.model, "version": version,
                             "run_id": served.first.run_id, "alias": "champion"}
    assert body["snapshot_id"] == served.first.snapshot_id
    assert body["cut_digest"] == served.first.manifest.digest
    assert body["predictions"] == _local_predictions(served, version, instances)
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert error["code"] == "invalid_instance"
    assert [e["index"] for e in error["details"]["errors"]] == [1]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
