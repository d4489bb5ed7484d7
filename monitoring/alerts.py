"""`drift.detected` events from a monitoring pass, one per threshold crossed.

| metric             | when                                  | score                         |
|--------------------|---------------------------------------|-------------------------------|
| `drift_share`      | the dataset drifted (share >= 0.5)    | the share of drifted features |
| `prediction_drift` | the predictions drifted               | the distance, or 1 - p-value  |
| `decay`            | the live metric is worse than trained | the relative degradation      |

The id is a UUIDv5 of the model, version, metric and the sample compared (the current
snapshot id, or the offsets of the results window): the same comparison published twice
is one event for the pipelines, which de-duplicate on it.
"""

from __future__ import annotations

from typing import Any

from monitoring.report import MonitorReport
from tidelog.events import CloudEvent, new_event
from tidelog.settings import Settings

__all__ = ["drift_events", "COMPONENT"]

COMPONENT = "monitor"


def _event(settings: Settings, report: MonitorReport, metric: str, score: float,
           reason: str, extra: dict[str, Any]) -> CloudEvent:
    t = report.target
    data: dict[str, Any] = {
        "model": t.model, "version": t.version, "score": float(score), "metric": metric,
        "detected_at": report.generated_at, "run_id": t.run_id,
        "snapshot_id": t.snapshot_id, "cut_digest": t.cut_digest,
        "basis": report.current["basis"], "compared_with": report.current["identity"],
        "details": {"reason": reason, **extra}}
    return new_event(settings, "drift.detected", t.model, data,
                     (t.model, t.version, metric, report.current["identity"]), COMPONENT,
                     time=report.generated_at)


def drift_events(settings: Settings, report: MonitorReport) -> list[CloudEvent]:
    events = []
    t = report.target
    if report.dataset_drift:
        drifted = report.drifted_columns
        events.append(_event(
            settings, report, "drift_share", report.drift_share,
            f"{len(drifted)} of {len(report.columns)} features of {t.model}/{t.version} "
            f"drifted ({', '.join(drifted)})", {"drifted_columns": drifted}))
    p = report.prediction
    if p is not None and p.drifted:
        score = p.score if p.score_kind == "distance" else 1.0 - p.score
        events.append(_event(
            settings, report, "prediction_drift", score,
            f"predictions of {t.model}/{t.version} drifted ({p.method} {p.score_kind} "
            f"{p.score:.4g}, threshold {p.threshold})",
            {"method": p.method, p.score_kind: p.score}))
    d = report.decay
    if d is not None and d.decayed and d.degradation is not None:
        events.append(_event(
            settings, report, "decay", d.degradation,
            f"live {d.metric} of {t.model}/{t.version} is {d.live[d.metric or '']:.4g} over "
            f"{d.labelled} labelled requests, {d.degradation:.1%} worse than the recorded "
            f"{d.recorded.get(d.metric or '', float('nan')):.4g}",
            {"live": d.live, "recorded": d.recorded}))
    return events
