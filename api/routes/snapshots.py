"""Snapshots: create (a job), list, get, diff, verify, pin, unpin, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from api.auth import reader, writer
from api.bodies import NO_NULL_BODY
from api.errors import HttpError
from api.keys import Principal
from api.listing import SnapshotFilter, page_snapshots
from api.operations import snapshot_params
from api.responses import JSONBody
from api.retention import delete_unless_kept
from api.routes.jobs import IdempotencyKey, accept
from api.schemas import (
    TABLE_PATTERN,
    DeleteOut,
    DiffReport,
    IsoDateTime,
    JobOut,
    ManifestOut,
    PinOut,
    PinRequest,
    SnapshotCreate,
    SnapshotPage,
    VerifyReport,
)
from api.state import ApiState, get_state
from snapshotter.store import SnapshotStore

__all__ = ["router"]

router = APIRouter(prefix="/snapshots", tags=["snapshots"])
State = Annotated[ApiState, Depends(get_state)]
SnapshotPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", examples=["3f2a9c1b7d4e5f60"])]
SnapshotQuery = Annotated[str, Query(pattern=r"^[0-9a-f]{16}$")]


@router.post("", status_code=202, response_model=JobOut, name="snapshots.create")
def create_snapshot(state: State, body: SnapshotCreate, idempotency_key: IdempotencyKey = None,
                    principal: Principal = writer) -> JSONBody:
    """Create a snapshot of tables at a cut (a job; same cut, same snapshot)."""
    at = body.at if isinstance(body.at, str) else body.at.model_dump()
    return accept(state, "snapshot.create",
                  snapshot_params(body.tables, at, body.allow_stale), principal,
                  idempotency_key)


@router.get("", response_model=SnapshotPage, name="snapshots.list")
def list_snapshots(
    state: State,
    principal: Principal = reader,
    table: Annotated[str | None, Query(pattern=TABLE_PATTERN)] = None,
    created_after: IsoDateTime | None = None,
    created_before: IsoDateTime | None = None,
    digest: Annotated[str | None, Query(pattern=r"^[0-9a-f]{1,128}$",
                                        description="overall or per-table digest")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """List snapshots, oldest first, filtered by table, time or digest."""
    where = SnapshotFilter(table, created_after, created_before, digest)
    return page_snapshots(state.core.list_snapshots(), set(state.pins.all()), where, cursor,
                          limit)


@router.get("/diff", response_model=DiffReport, name="snapshots.diff")
def diff_snapshots(state: State, a: SnapshotQuery, b: SnapshotQuery,
                   limit: Annotated[int, Query(ge=0, le=1000)] = 20,
                   principal: Principal = reader) -> dict[str, Any]:
    """Keys inserted, updated and deleted from snapshot a to snapshot b."""
    return state.core.diff_snapshots(a, b, limit)


@router.api_route("/diff", methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def diff_other_methods(request: Request) -> None:
    # Without this, DELETE /snapshots/diff would reach DELETE /snapshots/{snapshot_id}.
    raise HttpError(405, "method_not_allowed",
                    f"{request.method} is not allowed on /snapshots/diff; use GET",
                    {"Allow": "GET"})


diff_other_methods.refuses = True  # type: ignore[attr-defined]  # not in any Allow header


@router.get("/{snapshot_id}", response_model=ManifestOut, name="snapshots.get")
async def get_snapshot(state: State, snapshot_id: SnapshotPath,
                 principal: Principal = reader) -> dict[str, Any]:
    """A snapshot's manifest: cut, tables, schemas, row counts, digests."""
    # async: a manifest and a pin are small local reads, answered without a thread hop
    manifest = state.core.manifest(snapshot_id)
    pin = state.pins.get(snapshot_id)
    return {**manifest.to_json(), "pinned": pin is not None,
            "pin": None if pin is None else {"snapshot_id": snapshot_id, "pinned": True, **pin}}


@router.post("/{snapshot_id}/verify", response_model=VerifyReport, name="snapshots.verify")
def verify_snapshot(state: State, snapshot_id: SnapshotPath,
                    against_source: Annotated[bool, Query(
                        description="also compare with live Postgres")] = False,
                    principal: Principal = reader) -> dict[str, Any]:
    """Recompute every digest from the snapshot's files and compare."""
    return state.core.verify_snapshot(snapshot_id, against_source)


@router.post("/{snapshot_id}/pin", response_model=PinOut, name="snapshots.pin",
             dependencies=NO_NULL_BODY)
def pin_snapshot(state: State, snapshot_id: SnapshotPath,
                 body: Annotated[PinRequest | None, Body()] = None,
                 principal: Principal = writer) -> dict[str, Any]:
    """Pin a snapshot: it cannot be deleted until unpinned."""
    pin = state.pins.pin(snapshot_id, principal.key_id, body.reason if body else "",
                         exists=state.core.manifest,
                         guard=SnapshotStore.of(state.core.settings).shared)
    return {"snapshot_id": snapshot_id, "pinned": True, **pin}


@router.post("/{snapshot_id}/unpin", response_model=PinOut, name="snapshots.unpin")
def unpin_snapshot(state: State, snapshot_id: SnapshotPath,
                   principal: Principal = writer) -> dict[str, Any]:
    """Unpin a snapshot."""
    state.core.manifest(snapshot_id)
    state.pins.unpin(snapshot_id)
    return {"snapshot_id": snapshot_id, "pinned": False}


@router.delete("/{snapshot_id}", response_model=DeleteOut, name="snapshots.delete")
def delete_snapshot(state: State, snapshot_id: SnapshotPath,
                    principal: Principal = writer) -> dict[str, Any]:
    """Delete a snapshot, unless pinned or used by a registered model (409)."""
    delete_unless_kept(state.core, state.pins, snapshot_id)
    return {"deleted": snapshot_id}
