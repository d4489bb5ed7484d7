"""Liveness, readiness and metrics: no key needed, so probes and scrapers stay simple."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from api.errors import HttpError
from api.metrics import CONTENT_TYPE, Gauges
from api.schemas import LiveOut, ReadyOut
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(tags=["health"])
State = Annotated[ApiState, Depends(get_state)]


@router.get("/healthz", response_model=LiveOut, name="health.live")
def live() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, name="health.ready")
def ready(state: State) -> dict[str, Any]:
    """Readiness: Postgres, broker, Kafka Connect, MLflow and the archive root."""
    checks = state.core.readiness()
    failing = sorted(name for name, check in checks.items() if not check["ok"])
    if failing:
        raise HttpError(503, "not_ready", f"not ready: {', '.join(failing)} failing",
                        checks=checks)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", name="health.metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
def metrics(state: State) -> Response:
    """Prometheus metrics (text format)."""
    jobs: dict[tuple[tuple[str, str], ...], float] = {
        (("kind", kind), ("state", job_state)): float(n)
        for (kind, job_state), n in state.jobs.counts().items()}
    cache = state.core.lineage_cache
    gauges: Gauges = {
        "tidelog_api_jobs": ("gauge", "Jobs in the store by kind and state.", jobs),
        "tidelog_api_lineage_cache_total": (
            "counter", "Lineage answers served from memory (hit) or computed (miss).",
            {(("outcome", "hit"),): float(cache.hits),
             (("outcome", "miss"),): float(cache.misses)}),
    }
    return Response(state.metrics.render(gauges), media_type=CONTENT_TYPE)
