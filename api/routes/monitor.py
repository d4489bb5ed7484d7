"""Monitoring over HTTP: the drift report of `model@alias` (monitoring.report), as JSON or
as the self-contained HTML page `tidelog monitor report --format html` writes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.auth import reader
from api.keys import Principal
from api.operations import check_recipe
from api.state import ApiState, get_state

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["monitoring"])
State = Annotated[ApiState, Depends(get_state)]
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'")


@router.get("/{name:path}/monitor", name="models.monitor",
            responses={200: {"content": {"text/html": {}},
                             "description": "the drift report (JSON or HTML)"}})
async def monitor(
    state: State,
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- /]{0,199}$",
                              description="registered model name")],
    alias: Annotated[str, Query(pattern=r"^[A-Za-z0-9_\-]{1,100}$")] = "champion",
    against: Annotated[str | None, Query(pattern=r"^(latest|[0-9a-f]{8,64})$",
                                         description="a snapshot id, or latest")] = None,
    window: Annotated[int | None, Query(ge=1, le=1_000_000,
                                        description="the last N served results "
                                                    "(default 1000)")] = None,
    format: Annotated[Literal["json", "html"], Query()] = "json",
    experiment: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\- /]{1,200}$")] = "tidelog",
    principal: Principal = reader,
) -> Response:
    """Drift of the version `alias` points at: per feature, of the dataset and of the
    predictions; serving latency, outliers and decay (docs/monitoring.md)."""
    from monitoring.html import render_html
    from monitoring.report import monitor_report

    def allow(recipe: str) -> None:
        check_recipe(state.config, recipe)  # the recipe runs inside the API

    report = await run_in_threadpool(
        monitor_report, state.settings, name, alias, against=against, window=window,
        experiment=experiment, allow_recipe=allow, provider=state.core.provider)
    if format == "html":
        return HTMLResponse(render_html(report),
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": _CSP})
    body: dict[str, Any] = report.to_json()
    return JSONResponse(body)
