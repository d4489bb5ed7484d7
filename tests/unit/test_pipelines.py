"""Pipeline files, cron, trigger planning with a fake clock, debounce, and the gate rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from pipelines.config import (
    ChangedRowsTrigger,
    Debounce,
    DriftTrigger,
    ManualTrigger,
    MetricThreshold,
    ScheduleTrigger,
    load_pipeline,
)
from pipelines.cron import CronSchedule
from pipelines.gate import compare, parse_threshold
from pipelines.observe import signals_from
from pipelines.triggers import ChangeLog, Observation, Signal, plan
from tidelog.errors import ConfigError
from tidelog.events import new_event
from tidelog.settings import Settings

UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)

FILE = """
name = "churn"
recipe = "examples.churn:train"
tables = ["shop.payments", "shop.customers"]
model = "churn-model"
seed = 7

[params]
model = "forest"
n_estimators = 10

[[triggers]]
kind = "changed_rows"
min_rows = 100
table = "shop.customers"

[[triggers]]
kind = "schedule"
cron = "0 3 * * *"

[[triggers]]
kind = "drift"
threshold = 0.3

[[triggers]]
kind = "manual"

[debounce]
quiet_seconds = 30
max_wait_seconds = 300
min_interval_seconds = 60

[[gate]]
metric = "accuracy"
threshold = 0.6
min_relative_change = 0.0
"""


def _pipeline(tmp_path: Path, text: str = FILE):  # type: ignore[no-untyped-def]
    path = tmp_path / "churn.toml"
    path.write_text(text)
    return load_pipeline(path)


def test_a_pipeline_file_is_read_completely(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    assert (p.name, p.recipe, p.model, p.seed, p.alias) == (
        "churn", "examples.churn:train", "churn-model", 7, "champion")
    assert p.tables == ("shop.customers", "shop.payments")
    assert p.params == {"model": "forest", "n_estimators": 10}
    assert [t.kind for t in p.triggers] == ["changed_rows", "schedule", "drift", "manual"]
    assert p.triggers[0] == ChangedRowsTrigger(100, "shop.customers")
    assert p.debounce == Debounce(30.0, 300.0, 60.0)
    assert p.gate == (MetricThreshold("accuracy", True, 0.6, None, 0.0),)
    assert p.evaluator == "examples.churn:evaluate"


@pytest.mark.parametrize("change, message", [
    (("min_rows = 100", "min_rows = 0"), "at least 1"),
    (('kind = "manual"', 'kind = "weekly"'), "unknown trigger kind"),
    (("seed = 7", "seed = 7\ncolour = 1"), "unknown keys"),
    (("threshold = 0.3", 'threshold = "high"'), "threshold"),
    (('cron = "0 3 * * *"', 'cron = "0 25 * * *"'), "outside 0-23"),
    (("[[gate]]", "[[gate_]]"), "no \\[\\[gate\\]\\]"),
])
def test_a_wrong_pipeline_file_is_refused_with_the_key_named(
        tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _pipeline(tmp_path, FILE.replace(*change))


def test_cron_fields_ranges_steps_lists_and_names() -> None:
    c = CronSchedule.parse("*/15 3,4 * * mon-fri")
    assert c.minutes == {0, 15, 30, 45} and c.hours == {3, 4}
    assert c.weekdays == {1, 2, 3, 4, 5}
    tue = dt.datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # a Tuesday
    assert c.previous(tue) == dt.datetime(2026, 12, 1, 4, 45, tzinfo=UTC)
    assert c.next(tue) == dt.datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    sat = dt.datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert c.next(sat) == dt.datetime(2026, 12, 7, 3, 0, tzinfo=UTC)  # Monday
    assert CronSchedule.parse("0 0 * * 7").weekdays == {0}
    # both day fields restricted: either matches (Vixie cron)
    either = CronSchedule.parse("0 0 13 * fri")
    assert either.matches(dt.datetime(2026, 12, 4, 0, 0, tzinfo=UTC))  # a Friday
    assert either.matches(dt.datetime(2026, 12, 13, 0, 0, tzinfo=UTC))  # the 13th
    leap = CronSchedule.parse("0 0 29 2 *")
    assert leap.next(tue) == dt.datetime(2028, 2, 29, 0, 0, tzinfo=UTC)
    for bad in ("* * * *", "61 * * * *", "0 0 31 2 *", "5-1 * * * *", "x * * * *"):
        with pytest.raises(ConfigError):
            CronSchedule.parse(bad)


def _obs(times: dict[str, list[int]], now: dt.datetime, last: dt.datetime | None = None,
         signals: tuple[Signal, ...] = ()) -> Observation:
    return Observation(now, ChangeLog(times, "the cut of champion churn/1"), last,
                       "churn/1", signals)


def _only(tmp_path: Path, *triggers, debounce: Debounce | None = None):  # type: ignore[no-untyped-def]
    return dataclasses.replace(_pipeline(tmp_path), triggers=triggers,
                               debounce=debounce or Debounce())


def test_changed_rows_counts_per_table_or_in_total(tmp_path: Path) -> None:
    times = {"shop.customers": [MS0 + i for i in range(60)],
             "shop.payments": [MS0 + 100 + i for i in range(50)]}
    per_table = _only(tmp_path, ChangedRowsTrigger(100, "shop.customers"))
    decided = plan(per_table, _obs(times, T0 + dt.timedelta(hours=1)))
    assert not decided.fire
    assert decided.triggers[0].details["changed_rows"] == 60
    assert "60 changed rows in shop.customers" in decided.triggers[0].reason
    total = _only(tmp_path, ChangedRowsTrigger(100))
    decided = plan(total, _obs(times, T0 + dt.timedelta(hours=1)))
    assert decided.fire and decided.triggers[0].details["changed_rows"] == 110
    # due since the commit of the 100th change: the 40th payment (ms 100 + 39)
    assert decided.triggers[0].due_since == dt.datetime.fromtimestamp(
        (MS0 + 139) / 1000, UTC)


def test_schedule_with_a_fake_clock(tmp_path: Path) -> None:
    nightly = _only(tmp_path, ScheduleTrigger(CronSchedule.parse("0 3 * * *")))
    trained = dt.datetime(2026, 12, 1, 3, 5, tzinfo=UTC)
    assert not plan(nightly, _obs({}, dt.datetime(2026, 12, 1, 23, 59, tzinfo=UTC),
                                  trained)).fire
    decided = plan(nightly, _obs({}, dt.datetime(2026, 12, 2, 3, 0, tzinfo=UTC), trained))
    assert decided.fire
    assert decided.triggers[0].due_since == dt.datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert "fired at 2026-12-02T03:00:00Z" in decided.triggers[0].reason
    assert plan(nightly, _obs({}, T0, None)).fire  # never trained: the last fire counts


def _signal(kind: str, at: dt.datetime, score: float | None = None,
            metric: str | None = None) -> Signal:
    return Signal(kind, f"{kind}-{at.isoformat()}-{score}", at, "test", score, metric)


def test_drift_fires_above_the_threshold_and_only_after_the_last_training(
        tmp_path: Path) -> None:
    p = _only(tmp_path, DriftTrigger(0.3, "psi"))
    last = T0 - dt.timedelta(hours=1)
    low = _signal("drift", T0, 0.2, "psi")
    other = _signal("drift", T0, 0.9, "ks")
    old = _signal("drift", last - dt.timedelta(minutes=1), 0.9, "psi")
    assert not plan(p, _obs({}, T0, last, (low, other, old))).fire
    high = _signal("drift", T0, 0.31, "psi")
    decided = plan(p, _obs({}, T0, last, (low, high)))
    assert decided.fire and decided.signals == (high,)
    assert "0.31 > 0.3" in decided.triggers[0].reason


def test_manual_request_fires_at_once_skipping_the_debounce(tmp_path: Path) -> None:
    p = _only(tmp_path, ManualTrigger(), ChangedRowsTrigger(1),
              debounce=Debounce(quiet_seconds=600, max_wait_seconds=3600,
                                min_interval_seconds=3600))
    last = T0 - dt.timedelta(seconds=10)
    asked = _signal("manual", T0)
    assert plan(p, _obs({"t": [MS0]}, T0, last, (asked,))).fire
    assert not plan(p, _obs({"t": [MS0]}, T0, last)).fire  # min interval holds otherwise
    stale = _signal("manual", last - dt.timedelta(seconds=1))
    assert not plan(dataclasses.replace(p, triggers=(ManualTrigger(),)),
                    _obs({}, T0, last, (stale,))).fire


def test_debounce_under_a_continuous_stream_waits_for_quiet_but_not_forever(
        tmp_path: Path) -> None:
    p = _only(tmp_path, ChangedRowsTrigger(10),
              debounce=Debounce(quiet_seconds=30, max_wait_seconds=120,
                                min_interval_seconds=0))
    # a change every second from T0 on: the 10th at T0+9s makes the trigger due
    fired_at = None
    for second in range(0, 400):
        now = T0 + dt.timedelta(seconds=second)
        times = {"t": [MS0 + 1000 * s for s in range(second + 1)]}
        decided = plan(p, _obs(times, now))
        if second < 9:
            assert not decided.triggers[0].due
        elif decided.fire:
            fired_at = second
            break
        else:
            assert decided.wait_until is not None and "without changes" in decided.reason
    # never quiet, so it fires exactly when the max wait since the 10th change ends
    assert fired_at == 9 + 120
    # a stream that stops: fires once it has been quiet for 30 s
    times = {"t": [MS0 + 1000 * s for s in range(20)]}
    assert not plan(p, _obs(times, T0 + dt.timedelta(seconds=19 + 29))).fire
    assert plan(p, _obs(times, T0 + dt.timedelta(seconds=19 + 30))).fire


def test_min_interval_between_trainings(tmp_path: Path) -> None:
    p = _only(tmp_path, ChangedRowsTrigger(1),
              debounce=Debounce(min_interval_seconds=600))
    last = T0 - dt.timedelta(seconds=599)
    decided = plan(p, _obs({"t": [MS0]}, T0, last))
    assert not decided.fire and decided.wait_until == last + dt.timedelta(seconds=600)
    assert plan(p, _obs({"t": [MS0]}, T0 + dt.timedelta(seconds=1), last)).fire


def test_gate_thresholds_as_mlflow_validates_them() -> None:
    acc = MetricThreshold("accuracy", threshold=0.7, min_absolute_change=0.01)
    loss = MetricThreshold("log_loss", greater_is_better=False, min_relative_change=0.05)
    ok = compare([acc, loss], {"accuracy": 0.80, "log_loss": 0.50},
                 {"accuracy": 0.78, "log_loss": 0.60})
    assert ok.passed and ok.decision == "promote"
    worse = compare([acc, loss], {"accuracy": 0.785, "log_loss": 0.59},
                    {"accuracy": 0.78, "log_loss": 0.60})
    assert not worse.passed
    assert [c.passed for c in worse.checks] == [False, False]
    assert "relative gain +1.6667% < 5.0000%" in worse.checks[1].reason
    first = compare([acc], {"accuracy": 0.71}, None)
    assert first.passed and "no champion" in first.checks[0].reason
    assert not compare([acc], {"accuracy": 0.69}, None).passed  # threshold still applies
    assert not compare([acc], {"roc_auc": 0.9}, {"accuracy": 0.5}).passed  # metric missing
    with pytest.raises(ConfigError):
        compare([], {"accuracy": 1.0}, None)


def test_threshold_option_syntax() -> None:
    assert parse_threshold("accuracy:threshold=0.7,min_relative_change=0.01") == \
        MetricThreshold("accuracy", True, 0.7, None, 0.01)
    assert parse_threshold("log_loss:greater_is_better=false").greater_is_better is False
    for bad in ("accuracy:threshold", "accuracy:limit=1", ":threshold=1",
                "accuracy:threshold=high"):
        with pytest.raises(ConfigError):
            parse_threshold(bad)


def test_signals_are_taken_once_per_event_id_and_only_for_this_pipeline(
        tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    settings = Settings(home=tmp_path)
    drift = new_event(settings, "drift.detected", "churn-model",
                      {"model": "churn-model", "score": 0.5, "metric": "psi",
                       "detected_at": "2026-12-01T12:00:00Z"}, ("a",), "test",
                      time="2026-12-01T12:00:00.000Z")
    elsewhere = new_event(settings, "drift.detected", "other",
                          {"model": "other", "score": 0.9, "detected_at": "x"}, ("b",), "test")
    asked = new_event(settings, "retrain.requested", "churn",
                      {"pipeline": "churn", "requested_at": "x", "reason": "why not"},
                      ("c",), "test", time="2026-12-01T12:00:01.000Z")
    found = signals_from([drift, drift, elsewhere, asked], p)
    assert [(s.kind, s.score, s.metric) for s in found] == [
        ("drift", 0.5, "psi"), ("manual", None, None)]
    assert found[0].at == T0


def test_the_example_pipeline_file_parses() -> None:
    root = Path(__file__).resolve().parents[2]
    p = load_pipeline(root / "examples" / "churn_pipeline.toml")
    assert p.name == "churn" and p.evaluator == "examples.churn:evaluate"
    assert {t.kind for t in p.triggers} == {"changed_rows", "schedule", "drift", "manual"}
    assert [g.metric for g in p.gate] == ["accuracy", "roc_auc"]


def test_churn_evaluate_scores_on_the_split_train_makes() -> None:
    from examples import churn

    tables = churn.demo_tables(customers=200, seed=1)
    params = {"model": "logreg"}
    result = churn.train(tables, params, 5)
    scored = churn.evaluate(tables, params, 5, result.model)
    assert scored == {k: result.metrics[k] for k in ("accuracy", "roc_auc")}


def test_a_signal_a_cycle_acted_on_never_fires_again(tmp_path: Path) -> None:
    p = _only(tmp_path, ManualTrigger())
    future = _signal("manual", T0 + dt.timedelta(days=365))  # a publisher's clock ahead
    obs = _obs({}, T0, T0 - dt.timedelta(hours=1), (future,))
    assert plan(p, obs).fire
    assert not plan(p, dataclasses.replace(obs, handled=frozenset({future.event_id}))).fire
