"""What `tidelog pipeline ...` and `/pipelines` both call: find pipeline files, describe
one, evaluate its triggers, request a retrain, read its history.

The CLI and the API are two ways to call these functions; neither holds logic of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.config import (
    ChangedRowsTrigger,
    DriftTrigger,
    Pipeline,
    ScheduleTrigger,
    Trigger,
    load_pipeline,
)
from pipelines.observe import read_signals
from pipelines.registry import Registry
from pipelines.triggers import Plan
from pipelines.worker import Cycle, evaluate_once
from tidelog.errors import ConfigError, PipelineNotFound
from tidelog.events import CloudEvent, Publisher, new_event
from tidelog.settings import Settings

__all__ = ["load_pipelines", "find_pipeline", "pipeline_to_json",
           "evaluate_pipeline", "request_retrain"]


def load_pipelines(directory: str | Path) -> list[Pipeline]:
    """Every pipeline file (`*.toml`) in `directory`, by name; two files naming the same
    pipeline are refused: a trigger would not know which one it means."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"pipeline directory {root} does not exist or is not a "
                          "directory; create it or point TIDELOG_API_PIPELINES elsewhere")
    found: dict[str, Pipeline] = {}
    for path in sorted(root.glob("*.toml")):
        pipeline = load_pipeline(path)
        if pipeline.name in found:
            raise ConfigError(f"pipeline {pipeline.name!r} is defined twice, in "
                              f"{found[pipeline.name].source} and {path}; rename one")
        found[pipeline.name] = pipeline
    return [found[n] for n in sorted(found)]


def find_pipeline(directory: str | Path, name: str) -> Pipeline:
    for pipeline in load_pipelines(directory):
        if pipeline.name == name:
            return pipeline
    raise PipelineNotFound(f"no pipeline named {name!r} among the pipeline files; "
                           "`GET /pipelines` (or `ls` of the directory) lists them", pipeline=name)


def _trigger_json(t: Trigger) -> dict[str, Any]:
    if isinstance(t, ChangedRowsTrigger):
        return {"kind": t.kind, "min_rows": t.min_rows, "table": t.table}
    if isinstance(t, ScheduleTrigger):
        return {"kind": t.kind, "cron": t.cron.expression}
    if isinstance(t, DriftTrigger):
        return {"kind": t.kind, "threshold": t.threshold, "metric": t.metric}
    return {"kind": t.kind}


def pipeline_to_json(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline file as read (its source path left out: a server path is nobody's
    business but the operator's)."""
    return {"name": pipeline.name, "recipe": pipeline.recipe, "tables": list(pipeline.tables),
            "model": pipeline.model, "alias": pipeline.alias,
            "experiment": pipeline.experiment, "params": dict(pipeline.params),
            "seed": pipeline.seed, "evaluator": pipeline.evaluator,
            "triggers": [_trigger_json(t) for t in pipeline.triggers],
            "debounce": dataclasses.asdict(pipeline.debounce),
            "gate": [dataclasses.asdict(g) for g in pipeline.gate]}


def evaluate_pipeline(settings: Settings, pipeline: Pipeline, *, dry_run: bool = True
                      ) -> tuple[Plan, Cycle | None]:
    """Each trigger's decision and why; without `dry_run` also act on it once (snapshot,
    train, gate, promote, with events)."""
    if not dry_run:
        settings = dataclasses.replace(settings, events=True)
    registry = Registry(settings, pipeline.experiment)
    return evaluate_once(settings, pipeline, read_signals(settings, pipeline),
                         registry=registry, publisher=None if dry_run else Publisher(settings),
                         act=not dry_run)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_retrain(settings: Settings, pipeline: str, reason: str, requested_by: str, *,
                    component: str = "cli", request_key: str | None = None) -> CloudEvent:
    """Publish `retrain.requested` for `pipeline` (its manual trigger) and return it.

    The id derives from the request: its time, or `request_key` (an HTTP Idempotency-Key)
    when given, so a retried request is the same event and the worker acts on it once."""
    at = _utc_now()
    data = {"pipeline": pipeline, "requested_at": at, "reason": reason,
            "requested_by": requested_by}
    identity = ((pipeline, "key", requested_by, request_key) if request_key is not None
                else (pipeline, at, reason, requested_by))
    event = new_event(settings, "retrain.requested", pipeline, data, identity, component,
                      time=at)
    Publisher(settings).publish(event)
    return event
