"""Monitoring statistics against scipy reference values computed here, against numbers
worked out by hand, and the report, events, gauges and HTML built from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.spatial import distance

from monitoring import stattests as st
from monitoring.alerts import drift_events
from monitoring.decay import decay, live_metrics
from monitoring.exposition import mlflow_metrics, render
from monitoring.html import render_html
from monitoring.outliers import outliers
from monitoring.report import Current, Reference, Target, compare, parse_model_ref
from monitoring.served import parse_result
from tests.unit.test_serving import metric
from tidelog.errors import MonitorError
from tidelog.events import load_schema
from tidelog.settings import Settings

RNG = np.random.default_rng(7)


# -- the statistics -----------------------------------------------------------------------

def test_identical_samples_do_not_drift_by_any_method() -> None:
    sample = RNG.normal(size=400)
    d, p = st.ks_test(sample, sample)
    assert d == 0.0 and p == 1.0
    assert st.wasserstein_normed(sample, sample) == 0.0
    assert st.psi(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert st.jensen_shannon(sample, sample, categorical=False) == pytest.approx(0.0, abs=1e-7)
    cats = np.array(["a", "b", "c", "d", "e", "f"] * 50, dtype=object)
    assert st.chi_squared_test(cats, cats) == (0.0, 1.0)
    assert not st.column_drift("x", sample, sample).drifted
    assert not st.column_drift("c", cats, cats).drifted


def test_ks_matches_scipy_and_a_shifted_normal_drifts() -> None:
    ref, cur = RNG.normal(size=500), RNG.normal(loc=0.5, size=500)
    expected = stats.ks_2samp(ref, cur)
    assert st.ks_test(ref, cur) == (pytest.approx(expected.statistic),
                                    pytest.approx(expected.pvalue))
    drift = st.column_drift("x", ref, cur)
    assert drift.method == "ks" and drift.kind == "num" and drift.drifted
    assert drift.score == pytest.approx(expected.pvalue) and drift.threshold == 0.05
    same = st.column_drift("x", ref, RNG.normal(size=500))
    assert same.method == "ks" and not same.drifted and same.score > 0.05


def test_ks_by_hand_on_disjoint_samples() -> None:
    d, p = st.ks_test([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
    assert d == 1.0  # the empirical CDFs are 1 apart between 6 and 7
    assert p == pytest.approx(2 / math.comb(12, 6))  # exact: 2 of C(12,6) orderings


def test_wasserstein_normed_by_hand_and_against_scipy() -> None:
    # every point moves by 1; the reference's (population) standard deviation is 0.5
    assert st.wasserstein_normed([0, 0, 1, 1], [1, 1, 2, 2]) == pytest.approx(2.0)
    ref, cur = RNG.normal(size=3000), RNG.normal(loc=0.3, size=3000)
    expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert st.wasserstein_normed(ref, cur) == pytest.approx(expected)
    drift = st.column_drift("x", ref, cur)
    assert drift.method == "wasserstein" and drift.drifted and drift.score >= 0.1
    assert not st.column_drift("x", ref, RNG.normal(size=3000)).drifted
    # a constant reference is normed by Evidently's floor of 0.001, not divided by 0
    assert st.wasserstein_normed([5.0] * 10, [5.001] * 10) == pytest.approx(1.0)


def test_psi_by_hand() -> None:
    # shares 0.5/0.5 against 0.25/0.75: 0.25 ln 2 + 0.25 ln 1.5
    ref = ["a"] * 50 + ["b"] * 50
    cur = ["a"] * 25 + ["b"] * 75
    assert st.psi(ref, cur, categorical=True) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5))
    # an empty bin counts as 0.0001: shares (1, 0) and (0.5, 0.5)
    expected = ((1 - 0.5) * math.log(1 / 0.5)) + ((0.0001 - 0.5) * math.log(0.0001 / 0.5))
    assert st.psi(["a"] * 4, ["a", "a", "b", "b"], categorical=True) == pytest.approx(expected)


def test_jensen_shannon_by_hand_and_against_scipy() -> None:
    # disjoint categories: the divergence is ln 2, the distance its square root
    assert st.jensen_shannon(["a"] * 10, ["b"] * 10) == pytest.approx(math.sqrt(math.log(2)))
    ref = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    cur = ["a"] * 40 + ["b"] * 40 + ["c"] * 20
    assert st.jensen_shannon(ref, cur) == pytest.approx(
        distance.jensenshannon([0.7, 0.2, 0.1], [0.4, 0.4, 0.2]))


def test_chi_squared_by_hand_and_a_new_category() -> None:
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 20 + ["b"] * 30 + ["c"] * 50
    chi2, p = st.chi_squared_test(ref, cur)
    assert chi2 == pytest.approx((20 - 50) ** 2 / 50 + (50 - 20) ** 2 / 20)  # 63
    assert p == pytest.approx(stats.chi2.sf(63.0, 2))
    # expected counts scale to the current sample's size
    chi2_half, _ = st.chi_squared_test(ref, cur[::2])
    assert chi2_half == pytest.approx((10 - 25) ** 2 / 25 + (25 - 10) ** 2 / 10)
    assert st.chi_squared_test(["a", "b"] * 10, ["a", "b", "z"] * 5) == (math.inf, 0.0)


def test_z_test_by_hand() -> None:
    ref = ["yes"] * 60 + ["no"] * 40
    cur = ["yes"] * 40 + ["no"] * 60
    z, p = st.z_test(ref, cur)
    assert z == pytest.approx((0.4 - 0.6) / math.sqrt(0.25 * (2 / 100)))
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)))
    drift = st.column_drift("flag", ref, cur)
    assert drift.method == "z" and drift.kind == "cat" and drift.drifted


def test_methods_follow_evidentlys_defaults() -> None:
    small_num, big_num = RNG.normal(size=1000), RNG.normal(size=1001)
    assert st.column_drift("a", small_num, small_num).method == "ks"
    assert st.column_drift("a", big_num, big_num).method == "wasserstein"
    few = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 100)  # numbers with 5 values: categorical
    assert st.column_drift("a", few, few).method == "chisquare"
    cats = np.array(list("abc") * 400, dtype=object)
    assert st.column_drift("a", cats, cats).method == "jensenshannon"
    assert st.column_drift("a", [True, False] * 10, [True] * 20).method == "z"
    nan = np.array([np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # NaN is left out
    assert st.column_drift("a", nan, nan).reference_rows == 6


def test_dataset_drift_at_half_of_the_columns() -> None:
    ref = RNG.normal(size=300)
    cols = [st.column_drift("a", ref, ref + 3), st.column_drift("b", ref, ref)]
    assert st.drift_share(cols) == (0.5, True)
    assert st.drift_share(cols[1:]) == (0.0, False)
    assert st.drift_share([]) == (0.0, False)


# -- decay, outliers ----------------------------------------------------------------------

def test_decay_of_a_classifier_and_a_regressor() -> None:
    truth, predicted = [1, 0, 1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0, 0, 1]
    live = live_metrics(True, truth, predicted)
    assert live["accuracy"] == 5 / 8
    assert live["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # P 2/3, R 1/2
    found = decay(True, truth, predicted, {"accuracy": 0.8})
    assert found is not None and found.metric == "accuracy" and found.decayed
    assert found.degradation == pytest.approx((0.8 - 0.625) / 0.8)
    assert decay(True, truth, predicted, {"accuracy": 0.65}).decayed is False  # type: ignore[union-attr]
    reg = live_metrics(False, [1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert reg == {"mae": pytest.approx(2 / 3), "rmse": pytest.approx(math.sqrt(4 / 3))}
    worse = decay(False, [1.0, 2.0, 3.0], [1.0, 2.0, 5.0], {"mae": 0.5})
    assert worse is not None and worse.degradation == pytest.approx((2 / 3 - 0.5) / 0.5)
    assert decay(True, [], [], {"accuracy": 0.9}) is None


def test_isolation_forest_is_deterministic_and_finds_far_rows() -> None:
    ref = pl.DataFrame({"a": RNG.normal(size=400), "b": RNG.normal(size=400)})
    near = pl.DataFrame({"a": RNG.normal(size=100), "b": RNG.normal(size=100)})
    far = near.with_columns(pl.col("a") + 25.0)
    first, again = outliers(ref, far), outliers(ref, far)
    assert first is not None and again is not None and first.scores == again.scores
    assert first.share == 1.0
    calm = outliers(ref, near)
    assert calm is not None and calm.share < 0.3 and calm.score_p50 > first.score_p50
    assert outliers(pl.DataFrame({"s": ["x"]}), pl.DataFrame({"s": ["y"]})) is None


# -- the report ---------------------------------------------------------------------------

TARGET = Target("churn", "champion", "3", "r" * 32, "s" * 16, "d" * 64, "f" * 16,
                "examples.churn:train")


def _reference(n: int = 600) -> Reference:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    features = pl.DataFrame({"tenure": rng.normal(100, 20, n), "fee": rng.normal(20, 5, n),
                             "plan": rng.choice(["basic", "pro", "team"], n)})
    x = features.select("tenure", "fee").to_numpy()
    y = (x[:, 0] > 100).astype(int)
    model = LogisticRegression().fit(x, y)
    return Reference(TARGET, features, model.predict(x), True, {"accuracy": 0.95}, model,
                     lineage=None)


def _current(reference: Reference, shift: float, labelled: int = 0) -> Current:
    rng = np.random.default_rng(2)
    n = 300
    frame = pl.DataFrame({"tenure": rng.normal(100 + shift, 20, n),
                          "fee": rng.normal(20, 5, n),
                          "plan": rng.choice(["basic", "pro", "team"], n)})
    preds = reference.model.predict(frame.select("tenure", "fee").to_numpy()).tolist()
    truth = [1 - p for p in preds[:labelled]]  # every labelled prediction is wrong
    return Current("results", "t@0:0-299", frame, preds,
                   latency_ms=[1.0 * i for i in range(1, 101)], truth=truth,
                   labelled_predictions=preds[:labelled])


def test_a_shifted_feature_drifts_alone_and_the_report_says_so() -> None:
    reference = _reference()
    report = compare(reference, _current(reference, shift=40.0, labelled=50))
    by_name = {c.column: c for c in report.columns}
    assert report.drifted_columns == ["tenure"]
    assert by_name["tenure"].method == "ks" and by_name["plan"].method == "chisquare"
    assert report.drift_share == pytest.approx(1 / 3) and not report.dataset_drift
    assert report.prediction is not None and report.prediction.drifted  # tenure decides
    assert report.latency == {"p50": 50.5, "p95": pytest.approx(95.05),
                              "p99": pytest.approx(99.01), "mean": 50.5, "max": 100.0,
                              "count": 100.0}
    assert report.decay is not None and report.decay.live["accuracy"] == 0.0
    assert report.decay.decayed
    body = report.to_json()
    assert body["dataset"]["drifted_columns"] == ["tenure"]
    assert body["model"]["links"]["audit"] == "/ui/models/churn/3"
    assert body["distributions"]["plan"]["kind"] == "cat"
    assert not compare(reference, _current(reference, shift=0.0)).drifted_columns


def _valid(event: Any) -> None:
    jsonschema.Draft202012Validator(load_schema("drift.detected"),
                                    format_checker=jsonschema.FormatChecker()
                                    ).validate(event.to_json())


def test_events_for_each_crossed_threshold_with_stable_ids(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, topic_prefix="shop")
    reference = _reference()
    current = _current(reference, shift=40.0, labelled=50)
    wide = Current(current.basis, current.identity,
                   current.features.with_columns(pl.col("fee") + 30.0), current.predictions,
                   truth=current.truth, labelled_predictions=current.labelled_predictions)
    report = compare(reference, wide)
    assert report.dataset_drift  # tenure and fee
    events = drift_events(settings, report)
    assert [e.data["metric"] for e in events] == ["drift_share", "prediction_drift", "decay"]
    for event in events:
        _valid(event)
        assert event.subject == "churn" and event.data["model"] == "churn"
        assert event.data["version"] == "3" and event.data["run_id"] == TARGET.run_id
    share = events[0]
    assert share.data["score"] == pytest.approx(2 / 3)
    assert share.data["details"]["drifted_columns"] == ["tenure", "fee"]  # feature order
    assert "2 of 3 features" in share.data["details"]["reason"]
    again = drift_events(settings, compare(reference, wide))
    assert [e.id for e in again] == [e.id for e in events]  # the same window, the same ids
    other = Current(wide.basis, "t@0:300-599", wide.features, wide.predictions)
    assert drift_events(settings, compare(reference, other))[0].id != share.id
    calm = compare(reference, _current(reference, shift=0.0))
    assert drift_events(settings, calm) == []


def test_gauges_and_mlflow_metrics() -> None:
    reference = _reference()
    report = compare(reference, _current(reference, shift=40.0, labelled=10))
    text = render([report])
    base = {"model": "churn", "version": "3"}
    assert metric(text, "tidelog_monitor_feature_drifted", **base, feature="tenure") == 1.0
    assert metric(text, "tidelog_monitor_feature_drifted", **base, feature="fee") == 0.0
    assert "# TYPE tidelog_monitor_drift_share gauge" in text
    assert metric(text, "tidelog_monitor_latency_ms", **base, quantile="0.99") == 99.01
    metrics = mlflow_metrics(report)
    assert metrics["monitor.drift_share"] == pytest.approx(1 / 3)
    assert metrics["monitor.drifted.tenure"] == 1.0 and metrics["monitor.drifted.fee"] == 0.0
    assert metrics["monitor.drift.tenure"] == report.columns[0].score
    assert metrics["monitor.latency_ms.p50"] == 50.5 and "monitor.outlier_share" in metrics


def test_html_report_is_self_contained_and_names_the_lineage() -> None:
    reference = _reference()
    html = render_html(compare(reference, _current(reference, shift=40.0)))
    assert '<tr class="drifted" data-feature="tenure">' in html
    assert '<tr class="stable" data-feature="fee">' in html
    assert 'href="/ui/models/churn/3"' in html and TARGET.cut_digest in html
    assert TARGET.snapshot_id in html and "<svg" in html
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


def test_results_messages_and_model_refs() -> None:
    body = (b'{"request_id": "r1", "source": {"topic": "in", "partition": 0, "offset": 4},'
            b' "instance": {"a": 1}, "prediction": [1], "model": {"name": "m", "version": 2,'
            b' "run_id": "abc", "alias": "champion"}, "snapshot_id": "s", "cut_digest": "d",'
            b' "latency_ms": 3.5, "served_at": "2026-01-01T00:00:00Z", "error": null}')
    parsed = parse_result(body, 0, 9)
    assert parsed is not None and parsed.version == "2" and parsed.latency_ms == 3.5
    assert parsed.offset == 9 and parsed.instance == {"a": 1}
    assert parse_result(b"not json", 0, 1) is None
    assert parse_model_ref("churn@champion") == ("churn", "champion")
    with pytest.raises(MonitorError, match="MODEL@ALIAS"):
        parse_model_ref("churn")


def test_metrics_server_and_textfile_serve_the_latest_pass(tmp_path: Path) -> None:
    import httpx

    from monitoring.exposition import CONTENT_TYPE, MetricsServer, write_textfile

    reference = _reference()
    text = render([compare(reference, _current(reference, shift=40.0))])
    server = MetricsServer(0)
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert "no monitoring pass yet" in httpx.get(f"{url}/metrics").text
        server.update(text)
        resp = httpx.get(f"{url}/metrics")
        assert resp.status_code == 200 and resp.text == text
        assert resp.headers["content-type"] == CONTENT_TYPE
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.close()
    target = tmp_path / "monitor.prom"
    write_textfile(target, text)
    assert target.read_text() == text and not list(tmp_path.glob(".*.tmp"))


def test_the_loop_reports_a_failed_pass_and_goes_on(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from monitoring.loop import Monitor
    from tidelog.errors import BrokerUnreachable

    monitor = Monitor(Settings(home=tmp_path), "churn")
    outcomes: list[Any] = [BrokerUnreachable("broker down"), "second pass"]

    def step() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(monitor, "step", step)
    seen: list[Any] = []
    monitor.run(0.0, seen.append, passes=2)
    assert isinstance(seen[0], BrokerUnreachable) and seen[1] == "second pass"
