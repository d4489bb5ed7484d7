"""Admin: API keys, the audit log, erasures and garbage collection."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query

from api.auth import admin
from api.bodies import NO_NULL_BODY
from api.keys import Principal
from api.listing import decode_cursor, encode_cursor, utc_text
from api.responses import JSONBody
from api.schemas import (
    AuditPage,
    AuditVerifyReport,
    ErasureCreate,
    ErasureList,
    ErasureOut,
    GcReport,
    GcRequest,
    IsoDateTime,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
)
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(tags=["admin"])
State = Annotated[ApiState, Depends(get_state)]


@router.post("/admin/keys", status_code=201, response_model=KeyCreated, name="keys.create")
def create_key(state: State, body: KeyCreate, principal: Principal = admin) -> JSONBody:
    """Create an API key (admin); the secret is in this response only."""
    info, token = state.keys.create(body.role, body.name, principal.key_id)
    return JSONBody({**info.to_json(), "key": token}, status_code=201)


@router.get("/admin/keys", response_model=KeyList, name="keys.list")
def list_keys(state: State, principal: Principal = admin) -> dict[str, Any]:
    """List API keys (admin), without secrets."""
    return {"items": [k.to_json() for k in state.keys.all()]}


@router.delete("/admin/keys/{key_id}", response_model=KeyOut, name="keys.revoke")
def revoke_key(state: State, key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
               principal: Principal = admin) -> dict[str, Any]:
    """Revoke an API key (admin); it stops working at once."""
    return state.keys.revoke(key_id, principal.key_id).to_json()


@router.get("/audit", response_model=AuditPage, name="audit.list")
def audit_log(
    state: State,
    principal: Principal = admin,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    result: Literal["ok", "accepted", "denied", "error", "succeeded", "failed"] | None = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Query the append-only audit log (admin), oldest first."""
    after = decode_cursor(cursor, int) or 0
    items, last = state.audit.query(actor=actor, action=action, result=result,
                                    since=utc_text(since), until=utc_text(until),
                                    after=after, limit=limit)
    return {"items": items, "next_cursor": encode_cursor(last) if last is not None else None}


@router.get("/audit/verify", response_model=AuditVerifyReport, name="audit.verify")
def verify_audit(state: State, principal: Principal = admin) -> dict[str, Any]:
    """Check the audit log's hash chain (admin): the first entry changed, replaced or
    missing."""
    return state.audit.verify()


@router.post("/erasures", response_model=ErasureOut, name="erasures.create")
def create_erasure(state: State, body: ErasureCreate, principal: Principal = admin
                   ) -> dict[str, Any]:
    """Erase a subject (table + key) from the archive, every snapshot and the catalog, and
    flag the runs and model versions that saw it (admin; docs/erasure.md)."""
    return state.core.erase(body.table, body.key, body.reason,
                            f"api:{principal.name or principal.key_id}", dry_run=body.dry_run)


@router.get("/erasures", response_model=ErasureList, name="erasures.list")
def list_erasures(state: State, principal: Principal = admin) -> dict[str, Any]:
    """The erasure ledger (admin), oldest first, with its hash-chain check."""
    return state.core.erasures()
@router.post("/gc", response_model=GcReport, name="gc.run", dependencies=NO_NULL_BODY)
def run_gc(state: State, body: Annotated[GcRequest | None, Body()] = None,
           principal: Principal = admin) -> dict[str, Any]:
    """Retention by reachability (admin): delete snapshots and archive segments that no
    registered model version, pin or recent run needs; a dry run unless `dry_run` is
    false. The report says why each kept item is kept."""
    from api.gc import collect_garbage

    options = body or GcRequest()
    with state.pins.lock:  # no pin slips in between the plan and the deletes
        report = collect_garbage(state.settings, state.pins.all(), dry_run=options.dry_run,
                                 keep_days=options.keep_days,
                                 keep_snapshots=options.keep_snapshots, by=principal.key_id)
    state.core.lineage_cache.clear()
    return report
