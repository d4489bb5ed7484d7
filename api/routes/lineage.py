"""Lineage: a model version back to its data, and a row key forward to snapshots and runs."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from api.auth import reader
from api.errors import HttpError
from api.keys import Principal
from api.schemas import TABLE_PATTERN, ModelLineageOut, RowLineageOut
from api.state import ApiState, get_state

__all__ = ["router", "parse_row_key"]

router = APIRouter(prefix="/lineage", tags=["lineage"])
State = Annotated[ApiState, Depends(get_state)]
ExperimentQuery = Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\- /]{1,200}$")]


def _invalid_key(message: str) -> HttpError:
    return HttpError(422, "validation_error", "invalid input: query.key",
                     errors=[{"field": "query.key", "loc": ["query", "key"],
                              "message": message, "type": "row_key"}])


def parse_row_key(text: str) -> dict[str, Any]:
    """`{"id": 5}` -> {"id": 5}: a JSON object of column -> scalar.

    Integers are kept exactly, however long (a Postgres numeric key can exceed 64 bits);
    NaN and infinities, which match nothing and have no JSON form, are refused."""
    try:
        key = json.loads(text)
    except ValueError:
        key = None
    if (not isinstance(key, dict) or not key
            or not all(isinstance(v, str | int | float | bool) for v in key.values())):
        raise _invalid_key('the key must be a JSON object of column to scalar value, '
                           'e.g. {"id": 5}')
    infinite = sorted(c for c, v in key.items() if isinstance(v, float) and not math.isfinite(v))
    if infinite:
        raise _invalid_key(f"key values must be finite numbers; {', '.join(infinite)} is "
                           "NaN or out of the float range (give a big value as an integer "
                           "or as a string)")
    return key


@router.get("/models/{name:path}", response_model=ModelLineageOut, name="lineage.model")
async def model_lineage(
    state: State,
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- /]{0,199}$",
                              description="registered model name")],
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1,
                                         description="default: the newest")] = None,
    experiment: ExperimentQuery = "tidelog",
    principal: Principal = reader,
) -> dict[str, Any]:
    """A registered model version back to run, snapshot, cut and source."""
    return await state.core.model_lineage_async(name, version, experiment)


@router.get("/rows", response_model=RowLineageOut, name="lineage.row")
async def row_lineage(
    state: State,
    table: Annotated[str, Query(pattern=TABLE_PATTERN)],
    key: Annotated[str, Query(min_length=2, max_length=2000,
                              description='primary key as JSON, e.g. {"id": 5}')],
    experiment: ExperimentQuery = "tidelog",
    principal: Principal = reader,
) -> dict[str, Any]:
    """Which snapshots hold a row key, which version each saw, which runs used them."""
    return await state.core.row_lineage_async(table, parse_row_key(key), experiment)
