"""CDC: the Debezium connector in Kafka Connect, and the change-log archive."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from api.auth import reader, writer
from api.bodies import NO_NULL_BODY
from api.keys import Principal
from api.responses import JSONBody
from api.routes.jobs import IdempotencyKey, accept
from api.schemas import (
    ArchiveStatusOut,
    ArchiveVerifyReport,
    ConnectorApply,
    ConnectorRestart,
    ConnectorStatusOut,
    JobOut,
)
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/cdc", tags=["cdc"])
State = Annotated[ApiState, Depends(get_state)]


@router.get("/connector", response_model=ConnectorStatusOut, name="cdc.connector_status")
def connector_status(state: State,
                     name: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")] = None,
                     principal: Principal = reader) -> dict[str, Any]:
    """The Debezium connector's and its tasks' state in Kafka Connect."""
    return state.core.connector_status(name or state.settings.connector_name)


@router.post("/connector/apply", status_code=202, response_model=JobOut,
             name="cdc.connector_apply")
def connector_apply(state: State, body: ConnectorApply, idempotency_key: IdempotencyKey = None,
                    principal: Principal = writer) -> JSONBody:
    """Create or update the connector and wait until it streams (a job)."""
    return accept(state, "connector.apply", body.model_dump(mode="json"), principal,
                  idempotency_key)


@router.post("/connector/restart", status_code=202, response_model=JobOut,
             name="cdc.connector_restart", dependencies=NO_NULL_BODY)
def connector_restart(state: State,
                      body: Annotated[ConnectorRestart | None, Body()] = None,
                      idempotency_key: IdempotencyKey = None,
                      principal: Principal = writer) -> JSONBody:
    """Restart the connector and its tasks (a job)."""
    params = (body or ConnectorRestart()).model_dump(mode="json")
    return accept(state, "connector.restart", params, principal, idempotency_key)


@router.get("/archive", response_model=ArchiveStatusOut, name="cdc.archive_status")
def archive_status(state: State,
                   lag: Annotated[bool, Query(description="ask the broker for end offsets")
                                  ] = True,
                   principal: Principal = reader) -> dict[str, Any]:
    """Archive high-water mark, log identity and broker lag per partition."""
    return state.core.archive_status(lag)


@router.post("/archive/verify", response_model=ArchiveVerifyReport, name="cdc.archive_verify",
             response_model_exclude_none=True)
def verify_archive(state: State, principal: Principal = reader) -> dict[str, Any]:
    """Check every archived segment against its recorded checksum (`tidelog archive verify`)."""
    return state.core.verify_archive()
