"""Pipelines: list, describe, evaluate (dry run), trigger (a retrain request), history.

Each handler calls the `pipelines.service` / `pipelines.history` function the CLI calls.
The API only reads the pipeline files in TIDELOG_API_PIPELINES; training runs in the
pipeline's worker (`tidelog pipeline run --follow`), which consumes the requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi import Path as PathParam

from api.auth import reader, writer
from api.keys import Principal
from api.pipeline_schemas import (
    PIPELINE_NAME_PATTERN,
    EvaluationOut,
    HistoryOut,
    PipelineList,
    PipelineOut,
    TriggerOut,
    TriggerRequest,
)
from api.responses import JSONBody
from api.routes.jobs import IdempotencyKey
from api.state import ApiState, get_state
from pipelines.config import Pipeline
from pipelines.history import pipeline_history
from pipelines.service import (
    evaluate_pipeline,
    find_pipeline,
    load_pipelines,
    pipeline_to_json,
    request_retrain,
)
from tidelog.errors import ConfigError

__all__ = ["router"]

router = APIRouter(prefix="/pipelines", tags=["pipelines"])
State = Annotated[ApiState, Depends(get_state)]
NamePath = Annotated[str, PathParam(pattern=PIPELINE_NAME_PATTERN, examples=["churn"])]


def _directory(state: ApiState) -> Path:
    if state.config.pipelines_dir is None:
        raise ConfigError("this API serves no pipelines: set TIDELOG_API_PIPELINES to a "
                          "directory of pipeline files (*.toml) and restart it")
    return state.config.pipelines_dir


def _described(pipeline: Pipeline) -> dict[str, Any]:
    return {**pipeline_to_json(pipeline),
            "links": {"self": f"/pipelines/{pipeline.name}",
                      "history": f"/pipelines/{pipeline.name}/history"}}


@router.get("", response_model=PipelineList, name="pipelines.list")
def list_pipelines(state: State, principal: Principal = reader) -> dict[str, Any]:
    """The pipelines of TIDELOG_API_PIPELINES, by name."""
    return {"items": [_described(p) for p in load_pipelines(_directory(state))]}


@router.get("/{name}", response_model=PipelineOut, name="pipelines.get")
def get_pipeline(state: State, name: NamePath, principal: Principal = reader
                 ) -> dict[str, Any]:
    """A pipeline: recipe, tables, model, triggers, debounce and gate."""
    return _described(find_pipeline(_directory(state), name))


@router.post("/{name}/evaluate", response_model=EvaluationOut, name="pipelines.evaluate")
def evaluate(state: State, name: NamePath, principal: Principal = reader) -> dict[str, Any]:
    """Whether each trigger would fire now, and why (a dry run: trains nothing)."""
    pipeline = find_pipeline(_directory(state), name)
    # Evaluating catches the archive up, which must not run twice at once in one process.
    with state.core.archive_lock:
        decided, _ = evaluate_pipeline(state.settings, pipeline, dry_run=True)
    return {"pipeline": pipeline.name, "dry_run": True, "plan": decided.to_json()}


@router.post("/{name}/trigger", status_code=202, response_model=TriggerOut,
             name="pipelines.trigger")
def trigger(state: State, name: NamePath,
            body: Annotated[TriggerRequest | None, Body()] = None,
            idempotency_key: IdempotencyKey = None,
            principal: Principal = writer) -> JSONBody:
    """Request a retrain: publish `retrain.requested`, which the pipeline's worker acts on."""
    pipeline = find_pipeline(_directory(state), name)
    event = request_retrain(state.settings, pipeline.name, (body or TriggerRequest()).reason,
                            principal.key_id, component="api", request_key=idempotency_key)
    return JSONBody({"pipeline": pipeline.name, "event": event.to_json(),
                     "links": {"history": f"/pipelines/{pipeline.name}/history"}},
                    status_code=202)


@router.get("/{name}/history", response_model=HistoryOut, name="pipelines.history")
def history(state: State, name: NamePath, principal: Principal = reader) -> dict[str, Any]:
    """The pipeline's runs, oldest first: the triggers and events that fired each, the
    gate's decision, the model version."""
    pipeline = find_pipeline(_directory(state), name)
    return {"pipeline": pipeline.name, "items": pipeline_history(state.settings, pipeline)}
