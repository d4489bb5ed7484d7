"""Serving's pure parts: request parsing, result building, batch and version-switch
planning, predictions turned into JSON; and the worker's transaction sequence over fakes
of the consumer, the transactional producer and the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest

from serving.batch import (
    AliasCheck,
    Message,
    commit_offsets,
    rewind_offsets,
    serve_batch,
    should_switch,
)
from serving.contract import (
    ERROR_CODES,
    Feature,
    Source,
    build_result,
    check_instance,
    parse_request,
    served_at,
)
from serving.metrics import ServingMetrics
from serving.model import ServedModel, json_predictions, predict_rows
from serving.predict import Predictor
from serving.worker import Worker, WorkerConfig, check_model_name
from tidelog.errors import BrokerError, ConfigError, InvalidInstance
from tidelog.settings import Settings
from tidelog.topics import (
    is_serving_topic,
    serving_labels_topic,
    serving_requests_topic,
    serving_results_topic,
)
from trainer.registry import AliasTarget

SCHEMAS = Path(__file__).resolve().parents[2] / "tidelog" / "schemas" / "serving" / "v1"
FEATURES = (Feature("x", "double"), Feature("n", "long"), Feature("flag", "boolean"),
            Feature("city", "string"))
SRC = Source("p.serving.m.requests", 2, 41)


def _schema(kind: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{kind}.json").read_text()))


def _target(version: str = "3") -> AliasTarget:
    return AliasTarget("m", "champion", version, f"run{version}", "snap" + version,
                       "digest" + version)


class SumModel:
    """predict = x + n per row; raises on a row whose city is 'boom' (a model bug)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls: list[int] = []

    def predict(self, frame: pd.DataFrame) -> Any:
        self.calls.append(len(frame))
        if (frame["city"] == "boom").any():
            raise ValueError("boom")
        return (frame["x"] + frame["n"] + self.offset).to_numpy()


def _model(version: str = "3", offset: float = 0.0) -> ServedModel:
    return ServedModel(_target(version), SumModel(offset), FEATURES)


def _value(**instance: Any) -> bytes:
    return json.dumps({"instance": {"x": 1.5, "n": 2, "flag": True, "city": "Oslo",
                                    **instance}}).encode()


# -- topics ----------------------------------------------------------------------------

def test_serving_topics_follow_the_contract_and_are_never_cdc_topics() -> None:
    assert serving_requests_topic("p", "churn") == "p.serving.churn.requests"
    assert serving_results_topic("p", "churn") == "p.serving.churn.results"
    assert serving_labels_topic("p", "churn") == "p.serving.churn.labels"
    assert is_serving_topic("p", "p.serving.churn.v2.results")
    # a captured table `serving.requests` has one dot after the prefix: a CDC topic
    assert not is_serving_topic("p", "p.serving.requests")
    assert not is_serving_topic("p", "p.serving.churn.other")
    assert not is_serving_topic("q", "p.serving.churn.requests")


def test_model_names_must_fit_in_a_topic_name() -> None:
    assert check_model_name("churn-v1.x_2") == "churn-v1.x_2"
    for bad in ("", "my model", "a/b", "x" * 201):
        with pytest.raises(ConfigError):
            check_model_name(bad)


# -- requests --------------------------------------------------------------------------

def test_a_request_id_comes_from_the_value_then_the_key_then_the_coordinates() -> None:
    body = json.dumps({"request_id": "r-9", "instance": {"x": 1.0, "n": 1, "flag": False,
                                                          "city": "a"}}).encode()
    assert parse_request(SRC, b"key", body, FEATURES).request_id == "r-9"
    assert parse_request(SRC, b"key", _value(), FEATURES).request_id == "key"
    assert parse_request(SRC, None, _value(), FEATURES).request_id == \
        "p.serving.m.requests/2/41"
    assert parse_request(SRC, b"\xff\xfe", _value(), FEATURES).request_id == \
        "p.serving.m.requests/2/41"


def test_a_valid_request_gives_the_row_in_signature_order_with_exact_types() -> None:
    request = parse_request(SRC, b"k", _value(x=3), FEATURES)
    assert request.error is None
    assert request.row == {"x": 3.0, "n": 2, "flag": True, "city": "Oslo"}
    assert isinstance(request.row["x"], float)
    assert request.instance == {"x": 3, "n": 2, "flag": True, "city": "Oslo"}  # as sent


@pytest.mark.parametrize(("value", "code"), [
    (b"{nope", "invalid_json"),
    (b"", "invalid_json"),
    (b"NaN", "invalid_json"),
    (b'"text"', "invalid_request"),
    (b'{"request_id": 5, "instance": {}}', "invalid_request"),
    (b'{"request_id": "a"}', "invalid_request"),
    (b'{"instance": [1, 2]}', "invalid_request"),
    (b'{"instance": {}, "extra": 1}', "invalid_request"),
    (_value(n=None), "invalid_feature_type"),
    (_value(x="1.5"), "invalid_feature_type"),
    (_value(x=True), "invalid_feature_type"),
    (_value(x=2**60), "invalid_feature_type"),  # not exact as a double
    (_value(n=2.0), "invalid_feature_type"),
    (_value(n=2**63), "invalid_feature_type"),
    (_value(flag=1), "invalid_feature_type"),
    (_value(city=7), "invalid_feature_type"),
    (_value(colour="red"), "unknown_features"),
    (b'{"instance": {"x": 1.0}}', "missing_features"),
])
def test_a_bad_request_is_answered_with_an_error_not_dropped(value: bytes, code: str) -> None:
    request = parse_request(SRC, b"k", value, FEATURES)
    assert request.row is None
    assert request.error is not None and request.error.code == code
    assert code in ERROR_CODES
    result = build_result(request, None, _target().to_json(), 0.5, served_at())
    jsonschema.validate(result, _schema("result"))
    assert result["error"]["code"] == code and result["prediction"] is None


def test_without_a_signature_any_scalar_instance_passes_as_sent() -> None:
    row, error = check_instance({"a": 1, "b": "x"}, None)
    assert error is None and row == {"a": 1, "b": "x"}
    _, error = check_instance({"a": [1]}, None)
    assert error is not None and error.code == "invalid_feature_type"


# -- results ---------------------------------------------------------------------------

def test_a_result_carries_the_contract_fields_and_matches_the_schema() -> None:
    request = parse_request(SRC, b"k", _value(), FEATURES)
    result = build_result(request, 0.75, _target().to_json(), 1.23456,
                          "2026-12-01T10:00:00.000Z")
    assert result == {
        "request_id": "k", "source": {"topic": SRC.topic, "partition": 2, "offset": 41},
        "instance": request.instance, "prediction": 0.75,
        "model": {"name": "m", "version": "3", "run_id": "run3", "alias": "champion"},
        "snapshot_id": "snap3", "cut_digest": "digest3", "latency_ms": 1.235,
        "served_at": "2026-12-01T10:00:00.000Z", "error": None}
    jsonschema.validate(result, _schema("result"))
    jsonschema.validate(json.loads(_value()), _schema("request"))


def test_served_at_is_rfc3339_utc_milliseconds() -> None:
    import datetime as dt

    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert served_at(at) == "2026-01-02T01:04:05.678Z"


def test_predictions_become_json_values_per_row() -> None:
    assert json_predictions(np.array([1, 0]), 2) == [1, 0]
    assert json_predictions(pd.Series([0.5, 1.5]), 2) == [0.5, 1.5]
    assert json_predictions(np.array([[0.2, 0.8], [0.9, 0.1]]), 2) == [[0.2, 0.8], [0.9, 0.1]]
    assert json_predictions(pd.DataFrame({"a": [1], "b": ["x"]}), 1) == [[1, "x"]]
    assert json_predictions(np.array(["yes"]), 1) == ["yes"]
    for bad in (np.array([float("nan")]), np.array([1, 2])):
        with pytest.raises(ValueError):
            json_predictions(bad, 1)


def test_a_failing_row_fails_alone() -> None:
    model = _model()
    rows = [{"x": 1.0, "n": 1, "flag": True, "city": "a"},
            {"x": 1.0, "n": 1, "flag": True, "city": "boom"},
            {"x": 2.0, "n": 3, "flag": True, "city": "c"}]
    answers = predict_rows(model, rows)
    assert [a for a, _ in answers] == [2.0, None, 5.0]
    assert answers[1][1] is not None and answers[1][1].code == "prediction_failed"
    assert model.pyfunc.calls == [3, 1, 1, 1]  # the batch once, then row by row


# -- batches ---------------------------------------------------------------------------

def _msg(partition: int, offset: int, value: bytes | None = None,
         key: bytes | None = None) -> Message:
    return Message("t", partition, offset, key or f"r{partition}-{offset}".encode(),
                   value if value is not None else _value(x=float(offset)))


def test_a_batch_commits_one_past_its_last_offset_per_partition_and_rewinds_to_its_first(
        ) -> None:
    batch = [_msg(0, 5), _msg(1, 9), _msg(0, 6), _msg(1, 10), _msg(0, 7)]
    assert commit_offsets(batch) == [("t", 0, 8), ("t", 1, 11)]
    assert rewind_offsets(batch) == [("t", 0, 5), ("t", 1, 9)]


def test_the_alias_is_looked_at_no_more_often_than_the_interval() -> None:
    check = AliasCheck(5.0)
    assert check.due(100.0)
    check.done(100.0)
    assert not check.due(104.9) and check.due(105.0)
    assert should_switch("3", "4") and should_switch("4", "3") and not should_switch("3", "3")


def test_a_batch_names_one_version_and_answers_good_and_bad_requests() -> None:
    batch = [_msg(0, 1), _msg(0, 2, b"{bad"), _msg(0, 3, _value(city="boom"))]
    ticks = iter([10.0, 10.002, 10.004, 10.006])
    results = serve_batch(batch, _model("7"), clock=lambda: next(ticks))
    values = [r for _, r in results]
    assert [v["model"]["version"] for v in values] == ["7", "7", "7"]
    assert values[0]["prediction"] == 3.0 and values[0]["error"] is None
    assert values[1]["error"]["code"] == "invalid_json"
    assert values[2]["error"]["code"] == "prediction_failed"
    assert len({v["served_at"] for v in values}) == 1
    assert [v["latency_ms"] for v in values] == [2.0, 4.0, 6.0]
    for v in values:
        jsonschema.validate(v, _schema("result"))


# -- the worker over fakes -------------------------------------------------------------

class FakeMessage:
    def __init__(self, m: Message) -> None:
        self.m = m

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.m.topic

    def partition(self) -> int:
        return self.m.partition

    def offset(self) -> int:
        return self.m.offset

    def key(self) -> bytes | None:
        return self.m.key

    def value(self) -> bytes | None:
        return self.m.value


class FakeConsumer:
    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches
        self.seeks: list[tuple[str, int, int]] = []

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return [FakeMessage(m) for m in self.batches.pop(0)] if self.batches else []

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


class FakeTransactions:
    """Records the calls; `fail_commit` makes the next commit raise (an unreachable
    broker, say)."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.fail_commit = False
        self.timeout = 1.0

    def begin(self) -> None:
        self.log.append("begin")

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.log.append(("produce", topic, key, json.loads(value)))

    def flush(self) -> None:
        self.log.append("flush")

    def commit(self, offsets: Any, metadata: Any) -> None:
        if self.fail_commit:
            self.fail_commit = False
            raise BrokerError("cannot commit a transaction: broker down", fatal=False)
        self.log.append(("commit", offsets, metadata))

    def abort(self) -> None:
        self.log.append("abort")


class FakeRegistry:
    def __init__(self, versions: dict[str, ServedModel], pointed: str) -> None:
        self.versions = versions
        self.pointed = pointed
        self.alias_calls = 0
        self.loads: list[str] = []

    def alias_version(self, name: str, alias: str) -> str:
        self.alias_calls += 1
        return self.pointed

    def load(self, name: str, alias: str) -> ServedModel:
        self.loads.append(self.pointed)
        return self.versions[self.pointed]


def _worker(batches: list[list[Message]], registry: FakeRegistry, clock: list[float]
            ) -> tuple[Worker, FakeConsumer, FakeTransactions]:
    settings = Settings(home=Path("/nonexistent"), bootstrap_servers="127.0.0.1:1",
                        topic_prefix="p")
    worker = Worker(settings, WorkerConfig(model="m", alias_interval=5.0),
                    registry=registry,  # type: ignore[arg-type]
                    clock=lambda: clock[0])
    consumer, tx = FakeConsumer(batches), FakeTransactions()
    worker._consumer, worker._tx = consumer, tx  # type: ignore[assignment]
    worker.model = registry.load("m", "champion")
    worker.alias_check.done(clock[0])
    return worker, consumer, tx


def test_each_batch_is_one_transaction_with_its_offsets() -> None:
    registry = FakeRegistry({"1": _model("1")}, "1")
    worker, _, tx = _worker([[_msg(0, 0), _msg(1, 4)], [], [_msg(0, 1)]], registry, [0.0])
    assert worker.requests_topic == "p.serving.m.requests"
    assert worker.transactional_id == "tidelog-serve.p.m.0"
    assert [worker.step(), worker.step(), worker.step()] == [2, 0, 1]
    kinds = [e if isinstance(e, str) else e[0] for e in tx.log]
    assert kinds == ["begin", "produce", "produce", "flush", "commit",
                     "begin", "produce", "flush", "commit"]
    commits = [e for e in tx.log if e[0] == "commit"]
    assert commits[0][1] == [("t", 0, 1), ("t", 1, 5)]
    assert commits[0][2] == "group-metadata"
    assert commits[1][1] == [("t", 0, 2)]
    produced = [e for e in tx.log if e[0] == "produce"]
    assert all(e[1] == "p.serving.m.results" for e in produced)
    assert [e[2] for e in produced] == [b"r0-0", b"r1-4", b"r0-1"]  # key = request id


def test_a_failed_commit_aborts_and_rewinds_to_the_batch_start() -> None:
    registry = FakeRegistry({"1": _model("1")}, "1")
    worker, consumer, tx = _worker([[_msg(0, 3), _msg(0, 4), _msg(2, 8)]], registry, [0.0])
    tx.fail_commit = True
    with pytest.raises(BrokerError):
        worker.step()
    assert tx.log[-1] == "abort"
    assert consumer.seeks == [("t", 0, 3), ("t", 2, 8)]
    assert metric(worker.metrics.render(), "tidelog_serve_transactions_aborted_total",
                  model="m") == 1


def test_a_moved_alias_switches_between_batches_only_and_is_checked_sparingly() -> None:
    registry = FakeRegistry({"1": _model("1"), "2": _model("2", offset=100.0)}, "1")
    clock = [0.0]
    batches = [[_msg(0, i)] for i in range(6)]
    worker, _, tx = _worker(batches, registry, clock)
    worker.step()
    registry.pointed = "2"  # moved: not seen until the interval has passed
    clock[0] = 1.0
    worker.step()
    clock[0] = 5.0
    worker.step()
    worker.step()
    assert registry.alias_calls == 1  # one look at t=5, none at t=1 or in between
    versions = [e[3]["model"]["version"] for e in tx.log if e[0] == "produce"]
    assert versions == ["1", "1", "2", "2"]
    predictions = [e[3]["prediction"] for e in tx.log if e[0] == "produce"]
    assert predictions[2] == 2.0 + 2 + 100.0  # answered by version 2 itself
    assert metric(worker.metrics.render(), "tidelog_serve_model_version", model="m",
                  alias="champion") == 2


def test_the_worker_refuses_bad_settings() -> None:
    for kwargs in ({"batch_size": 0}, {"max_wait_ms": -1}, {"worker_id": "a b"},
                   {"model": "a/b"}, {"partitions": 0}):
        with pytest.raises(ConfigError):
            WorkerConfig(**{"model": "m", **kwargs})  # type: ignore[arg-type]


# -- metrics ---------------------------------------------------------------------------

def test_a_taken_metrics_port_is_a_config_error() -> None:
    import socket

    from serving.metrics import serve_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError) as caught:
            serve_metrics(ServingMetrics("m", "a"), "127.0.0.1", taken.getsockname()[1])
    assert "--metrics-port" in caught.value.message


def test_metrics_render_counts_errors_latency_and_version() -> None:
    metrics = ServingMetrics("m", "champion")
    metrics.set_version("4")
    metrics.served("4", [0.002, 0.2], ["invalid_json"])
    text = metrics.render()
    assert metric(text, "tidelog_serve_requests_total", model="m", version="4") == 2
    assert metric(text, "tidelog_serve_errors_total", model="m", code="invalid_json") == 1
    assert metric(text, "tidelog_serve_latency_seconds_bucket", model="m", le="0.0025") == 1
    assert metric(text, "tidelog_serve_latency_seconds_bucket", model="m", le="+Inf") == 2
    assert metric(text, "tidelog_serve_model_version", model="m", alias="champion") == 4
    assert metric(text, "tidelog_serve_batches_total", model="m") == 1


# -- synchronous predict ---------------------------------------------------------------

def test_sync_predict_checks_every_instance_and_follows_the_alias() -> None:
    registry = FakeRegistry({"1": _model("1"), "2": _model("2", offset=100.0)}, "1")
    clock = [0.0]
    predictor = Predictor(Settings(home=Path("/x")), alias_interval=5.0,
                          registry=lambda: registry,  # type: ignore[arg-type, return-value]
                          clock=lambda: clock[0])
    good = {"x": 1.0, "n": 2, "flag": True, "city": "a"}
    answer = predictor.predict("m", [good, good]).to_json()
    assert answer == {"model": {"name": "m", "version": "1", "run_id": "run1",
                                "alias": "champion"},
                      "snapshot_id": "snap1", "cut_digest": "digest1",
                      "predictions": [3.0, 3.0]}
    with pytest.raises(InvalidInstance) as caught:
        predictor.predict("m", [good, {**good, "n": "two"}, {"x": 1.0}])
    assert [e["index"] for e in caught.value.details["errors"]] == [1, 2]  # type: ignore[union-attr]
    registry.pointed = "2"
    clock[0] = 4.0
    assert predictor.predict("m", [good]).model.version == "1"
    clock[0] = 6.0
    assert predictor.predict("m", [good]).to_json()["predictions"] == [103.0]
    assert registry.loads == ["1", "2"]


# -- the transactional producer's errors -----------------------------------------------

class RaisingProducer:
    def __init__(self, error: Any) -> None:
        self.error = error

    def init_transactions(self, timeout: float) -> None:
        from confluent_kafka import KafkaException

        raise KafkaException(self.error)


def test_transaction_errors_are_mapped_into_the_tree() -> None:
    from confluent_kafka import KafkaError

    from tidelog.adapters.kafka import Transactions
    from tidelog.errors import BrokerUnreachable

    config = {"bootstrap.servers": "127.0.0.1:1"}
    fenced = Transactions(config, "tx-1", client=RaisingProducer(
        KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)))
    with pytest.raises(BrokerError) as caught:
        fenced.init()
    assert caught.value.details["fatal"] is True
    assert "--worker-id" in caught.value.message and "tx-1" in caught.value.message
    down = Transactions(config, "tx-1", client=RaisingProducer(
        KafkaError(KafkaError._TRANSPORT, "connection refused")))
    with pytest.raises(BrokerUnreachable) as unreachable:
        down.init()
    assert unreachable.value.details["fatal"] is False and unreachable.value.transient


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return None
