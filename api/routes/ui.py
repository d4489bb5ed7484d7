"""The audit pages (read-only HTML for auditors): models → run → snapshot → cut → source,
"which models saw row K of table T", and the erasure ledger, exclusions and retention.
Same keys and roles as the JSON API (reader); a browser signs in once at /ui/login and
the key rides in an HttpOnly cookie that only GET requests under /ui accept."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from api.audit_page import lineage_graph, render
from api.auth import UI_COOKIE, api_key_header, authenticate, bearer, check_role
from api.errors import HttpError
from api.keys import Principal
from api.routes.lineage import parse_row_key
from api.state import ApiState, get_state
from tidelog.errors import TidelogError

__all__ = ["router"]

router = APIRouter(prefix="/ui", tags=["audit pages"], include_in_schema=False)
State = Annotated[ApiState, Depends(get_state)]
_LOGIN = "/ui/login"
_MAX_LOGIN_BODY = 4096


async def _principal(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Security(bearer)],
                     header_key: Annotated[str | None, Security(api_key_header)]
                     ) -> Principal | None:
    """The caller, or None when it has no valid key (the page then asks for one).

    Besides the usual headers, a GET may carry the key in the sign-in cookie."""
    authorization = request.headers.get("authorization")
    key = request.headers.get("x-api-key")
    if not authorization and not key and request.method == "GET":
        key = request.cookies.get(UI_COOKIE)
    client = request.client.host if request.client else ""
    try:
        principal = await authenticate(request.app.state.tidelog, authorization, key, client)
    except HttpError as exc:
        if exc.status == 401:
            return None
        raise
    check_role(principal, "reader", request.method, request.url.path)
    return principal


Caller = Annotated[Principal | None, Depends(_principal)]


def _page(template: str, principal: Principal, status: int = 200, **context: Any
          ) -> HTMLResponse:
    html = render(template, principal=f"{principal.name} ({principal.role})", **context)
    return HTMLResponse(html, status_code=status,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src 'self'; "
                                 "form-action 'self'; frame-ancestors 'none'"})


def _message(exc: Exception) -> str:
    """What a person should read: a validation error's own explanation, else the message."""
    errors = getattr(exc, "details", {}).get("errors") or []
    return "; ".join(str(e.get("message", "")) for e in errors) or str(exc)


@router.get("/", name="ui.models")
async def models(state: State, principal: Caller) -> Response:
    if principal is None:
        return RedirectResponse(_LOGIN, status_code=303)
    from trainer.registry import registered_models

    found = await run_in_threadpool(registered_models, state.settings)
    return _page("models.html", principal, title="Registered models", models=found)


@router.get("/models/{name:path}/{version}", name="ui.model")
async def model(name: str, version: int, state: State, principal: Caller) -> Response:
    if principal is None:
        return RedirectResponse(_LOGIN, status_code=303)
    from api.audit_page import _lsn, _time

    lineage = await state.core.model_lineage_async(name, version)
    return _page("model.html", principal, title=f"{name} v{version}", lineage=lineage,
                 graph=lineage_graph(lineage), lsn=_lsn(lineage["cut"].get("lsn")),
                 commit_time=_time(lineage["cut"].get("commit_time_ms")))


@router.get("/monitor/{name:path}", name="ui.monitor")
async def monitor(name: str, state: State, principal: Caller,
                  alias: Annotated[str, Query(pattern=r"^[A-Za-z0-9_\-]{1,100}$")] = "champion",
                  against: Annotated[str | None, Query(pattern=r"^(latest|[0-9a-f]{8,64})$")
                                     ] = None) -> Response:
    """The drift report of `name@alias` (the same page as `GET /models/{name}/monitor`)."""
    if principal is None:
        return RedirectResponse(_LOGIN, status_code=303)
    from api.routes.monitor import monitor as report

    return await report(state=state, name=name, alias=alias, against=against, window=None,
                        format="html", experiment="tidelog", principal=principal)


@router.get("/rows", name="ui.rows")
async def rows(state: State, principal: Caller,
               table: Annotated[str | None, Query(max_length=200)] = None,
               key: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    if principal is None:
        return RedirectResponse(_LOGIN, status_code=303)
    context: dict[str, Any] = {"title": "Which models saw a row?", "table": table, "key": key}
    if not table or not key:
        return _page("rows.html", principal, **context)
    try:
        result = await state.core.row_lineage_async(table, parse_row_key(key))
    except (HttpError, TidelogError) as exc:
        return _page("rows.html", principal, status=getattr(exc, "status", 400),
                     error=_message(exc), **context)
    from trainer.registry import versions_for_runs

    run_ids = {r["run_id"] for s in result["snapshots"] for r in s["runs"]}
    versions = await run_in_threadpool(versions_for_runs, state.settings, run_ids)
    saw = sorted({v.ref for s in result["snapshots"] if s["present"]
                  for r in s["runs"] for v in versions.get(r["run_id"], [])})
    return _page("rows.html", principal, result=result, versions=versions, saw=saw,
                 **context)


@router.get("/retention", name="ui.retention")
async def retention(state: State, principal: Caller) -> Response:
    if principal is None:
        return RedirectResponse(_LOGIN, status_code=303)
    from api.audit_page import retention_context

    context = await run_in_threadpool(retention_context, state.settings, state.pins.all())
    return _page("retention.html", principal, title="Erasures, exclusions and retention",
                 **context)


@router.get("/login", name="ui.login")
async def login_form(principal: Caller) -> Response:
    if principal is not None:
        return RedirectResponse("/ui/", status_code=303)
    html = render("login.html", principal="nobody", title="Sign in")
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.post("/login", name="ui.login_submit")
async def login(request: Request, state: State) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_LOGIN_BODY:
            raise HttpError(413, "payload_too_large", "a sign-in form is a few bytes")
    token = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
    found = None
    if token:
        client = request.client.host if request.client else ""
        found, _ = await run_in_threadpool(state.keys.authenticate, token, client=client)
    if found is None or not found.allows("reader"):
        html = render("login.html", principal="nobody", title="Sign in",
                      error="unknown or revoked API key")
        return HTMLResponse(html, status_code=401, headers={"Cache-Control": "no-store"})
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(UI_COOKIE, token, httponly=True, samesite="strict", path="/ui",
                        secure=request.url.scheme == "https", max_age=8 * 3600)
    return response
