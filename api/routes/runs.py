"""Training runs: train (a job), rebuild (a job), and a run's lineage and verification."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query

from api.auth import reader, writer
from api.bodies import NO_NULL_BODY
from api.keys import Principal
from api.operations import check_recipe
from api.responses import JSONBody
from api.routes.jobs import IdempotencyKey, accept
from api.schemas import JobOut, RebuildOptions, RunOut, TrainRequest
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs"])
State = Annotated[ApiState, Depends(get_state)]
RunPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ExperimentQuery = Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\- /]{1,200}$")]


@router.post("", status_code=202, response_model=JobOut, name="runs.train")
def train(state: State, body: TrainRequest, idempotency_key: IdempotencyKey = None,
          principal: Principal = writer) -> JSONBody:
    """Train a recipe on a snapshot and log the run with its cut (a job)."""
    check_recipe(state.config, body.recipe)
    return accept(state, "train", body.model_dump(mode="json"), principal, idempotency_key)


@router.post("/{run_id}/rebuild", status_code=202, response_model=JobOut,
             name="runs.rebuild", dependencies=NO_NULL_BODY)
def rebuild(state: State, run_id: RunPath,
            body: Annotated[RebuildOptions | None, Body()] = None,
            idempotency_key: IdempotencyKey = None,
            principal: Principal = writer) -> JSONBody:
    """Rebuild a run's dataset from the archive, check digests, retrain (a job)."""
    options = body or RebuildOptions()
    params: dict[str, Any] = {"run_id": run_id, "experiment": options.experiment}
    if options.without_erased:  # only when asked: other requests' params stay as they were
        params["without_erased"] = True
    return accept(state, "rebuild", params, principal, idempotency_key)


@router.get("/{run_id}", response_model=RunOut, name="runs.get")
def get_run(state: State, run_id: RunPath, experiment: ExperimentQuery = "tidelog",
            principal: Principal = reader) -> dict[str, Any]:
    """A tidelog run's recorded lineage and the verification of each rebuild."""
    return state.core.run(run_id, experiment)
