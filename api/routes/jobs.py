"""Jobs: `GET /jobs`, `GET /jobs/{id}`, and the 202 answer every job-starting POST gives."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query

from api.auth import reader
from api.keys import Principal
from api.listing import decode_cursor, encode_cursor
from api.responses import JSONBody
from api.schemas import JobOut, JobPage
from api.state import ApiState, get_state

__all__ = ["router", "accept", "IdempotencyKey"]

router = APIRouter(tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[!-~]+$",
           description="Repeat a POST safely: the same key and request return the same "
                       "job; the same key with another request is a 409."),
]


def accept(state: ApiState, kind: str, params: dict[str, Any], principal: Principal,
           idempotency_key: str | None) -> JSONBody:
    """Queue a job (or find the one this idempotency key made) and answer 202."""
    fingerprint = hashlib.sha256(json.dumps({"kind": kind, "params": params},
                                            sort_keys=True).encode()).hexdigest()
    job, created = state.runner.submit(kind, params, principal.key_id, idempotency_key,
                                       fingerprint)
    headers = {"Location": f"/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONBody(job.to_json(), status_code=202, headers=headers)


@router.get("/jobs", response_model=JobPage, name="jobs.list")
def list_jobs(
    state: Annotated[ApiState, Depends(get_state)],
    principal: Principal = reader,
    job_state: Annotated[Literal["queued", "running", "succeeded", "failed"] | None,
                         Query(alias="state")] = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z.]{1,40}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """List jobs, oldest first."""
    after = decode_cursor(cursor, int) or 0
    jobs, last = state.jobs.page(state=job_state, kind=kind, after=after, limit=limit)
    return {"items": [j.to_json() for j in jobs],
            "next_cursor": encode_cursor(last) if last is not None else None}


@router.get("/jobs/{job_id}", response_model=JobOut, name="jobs.get")
async def get_job(state: Annotated[ApiState, Depends(get_state)],
            job_id: Annotated[str, Path(pattern=r"^job_[0-9a-f]{32}$")],
            principal: Principal = reader) -> dict[str, Any]:
    """A job's state, parameters, plan, result or error."""
    return state.jobs.get(job_id).to_json()
