"""A pipeline's history: which triggers fired which runs, and what the gate decided."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipelines.config import Pipeline
from pipelines.registry import TRIGGER_TAG, Registry
from tidelog.settings import Settings

__all__ = ["pipeline_history"]


def pipeline_history(settings: Settings, pipeline: Pipeline) -> list[dict[str, Any]]:
    registry = Registry(settings, pipeline.experiment)
    rows = []
    for run in registry.pipeline_runs(pipeline.name, status=None):
        tags = run.data.tags
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
        rows.append({
            "run_id": run.info.run_id, "status": run.info.status,
            "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "triggers": tags.get(TRIGGER_TAG, ""),
            "cut_fingerprint": tags.get("tidelog.cut.fingerprint", ""),
            "snapshot_id": tags.get("tidelog.snapshot_id", ""),
            "gate": tags.get("tidelog.gate.decision", ""),
            "version": registry.version_of_run(pipeline.model, run.info.run_id),
            "metrics": {k: v for k, v in run.data.metrics.items()
                        if not k.startswith("tidelog.")},
        })
    return rows
