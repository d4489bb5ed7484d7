"""Bodies of `/pipelines` (api/routes/pipelines.py), as published in the OpenAPI document.

Kept beside `api.schemas` rather than in it: the same strict inputs (unknown fields are a
422) and open outputs (the core may add keys later).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PIPELINE_NAME_PATTERN", "TriggerRequest", "PipelineOut", "PipelineList",
           "EvaluationOut", "TriggerOut", "HistoryOut"]

PIPELINE_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,200}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class TriggerRequest(_In):
    reason: Annotated[str, Field(max_length=500, description="why, for people")] = \
        "requested over HTTP"


class PipelineOut(_Out):
    name: str
    recipe: str
    tables: list[str]
    model: str
    alias: str
    experiment: str
    params: dict[str, Any]
    seed: int
    evaluator: str
    triggers: list[dict[str, Any]]
    debounce: dict[str, float]
    gate: list[dict[str, Any]]
    links: dict[str, str]


class PipelineList(_Out):
    items: list[PipelineOut]


class TriggerStateOut(_Out):
    kind: str
    due: bool
    reason: str
    due_since: str | None
    details: dict[str, Any]
    signals: list[str]


class PlanOut(_Out):
    fire: bool
    reason: str
    wait_until: str | None
    triggers: list[TriggerStateOut]


class EvaluationOut(_Out):
    pipeline: str
    dry_run: bool
    plan: PlanOut


class TriggerOut(_Out):
    pipeline: str
    event: dict[str, Any] = Field(description="the retrain.requested CloudEvent published "
                                  "(structured form); the pipeline's worker acts on it")
    links: dict[str, str]


class HistoryRunOut(_Out):
    run_id: str
    status: str
    started_at: str
    triggers: str
    cut_fingerprint: str
    events: dict[str, Any]
    snapshot_id: str
    gate: str
    version: str | None
    metrics: dict[str, float]


class HistoryOut(_Out):
    pipeline: str
    items: list[HistoryRunOut]
