"""Synchronous prediction with a registered model, answered with its provenance."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from api.auth import reader
from api.keys import Principal
from api.schemas import PredictOut, PredictRequest
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["serving"])
State = Annotated[ApiState, Depends(get_state)]


@router.post("/{name}/predict", response_model=PredictOut, name="models.predict")
def predict(
    state: State,
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- ]{0,199}$",
                              description="registered model name")],
    body: PredictRequest,
    principal: Principal = reader,
) -> dict[str, Any]:
    """Predict with `name@alias` (default champion): predictions in instance order, and
    the model version, run, snapshot and cut digest that made them."""
    return state.predictor.predict(name, body.instances, body.alias).to_json()
