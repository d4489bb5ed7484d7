"""A pipeline's history: which triggers and events fired which runs, and what the gate
decided.

Per run: the trigger kinds that fired it, the id of the `pipeline.triggered` event that
announced the cycle (a function of pipeline and cut, see pipelines.worker), and the ids of
the drift / retrain events the cycle acted on (the run's `tidelog.pipeline.signals` tag).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipelines.config import Pipeline
from pipelines.registry import SIGNALS_TAG, TRIGGER_TAG, Registry
from tidelog.events import event_id
from tidelog.settings import Settings

__all__ = ["pipeline_history"]


def pipeline_history(settings: Settings, pipeline: Pipeline) -> list[dict[str, Any]]:
    registry = Registry(settings, pipeline.experiment)
    rows = []
    for run in registry.pipeline_runs(pipeline.name, status=None):
        tags = run.data.tags
        fingerprint = tags.get("tidelog.cut.fingerprint", "")
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
        rows.append({
            "run_id": run.info.run_id, "status": run.info.status,
            "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "triggers": tags.get(TRIGGER_TAG, ""),
            "cut_fingerprint": fingerprint,
            "events": {
                "triggered": (event_id("pipeline.triggered", pipeline.name, fingerprint)
                              if fingerprint else None),
                "signals": [i for i in tags.get(SIGNALS_TAG, "").split(",") if i]},
            "snapshot_id": tags.get("tidelog.snapshot_id", ""),
            "gate": tags.get("tidelog.gate.decision", ""),
            "version": registry.version_of_run(pipeline.model, run.info.run_id),
            "metrics": {k: v for k, v in run.data.metrics.items()
                        if not k.startswith("tidelog.")},
        })
    return rows
