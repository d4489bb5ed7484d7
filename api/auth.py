"""Who is calling: `Authorization: Bearer <key>` or `X-API-Key: <key>`, and may they?

Roles are ordered reader < writer < admin: reads need reader, anything that changes state
needs writer, key management and the audit log need admin. Health and metrics need no key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import HttpError
from api.keys import ANONYMOUS, Principal

__all__ = ["require", "reader", "writer", "admin", "bearer", "api_key_header", "UI_COOKIE"]

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer tlk_...`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="`X-API-Key: tlk_...`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidelog"'}
# Set by the audit pages' sign-in form (api/routes/ui.py). Accepted only on GET under
# /ui: read-only pages, so a forged cross-site request can change nothing.
UI_COOKIE = "tidelog_key"


def _token(request: Request, credentials: HTTPAuthorizationCredentials | None,
           header_key: str | None) -> str | None:
    if credentials is not None and credentials.credentials:
        return credentials.credentials.strip()
    if header_key:
        return header_key.strip()
    if request.headers.get("authorization"):
        raise HttpError(401, "unauthorized",
                        "the Authorization header must read `Bearer <key>`", _CHALLENGE)
    cookie = request.cookies.get(UI_COOKIE)
    if cookie and request.method == "GET" and request.url.path.startswith("/ui/"):
        return cookie.strip()
    return None


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    # async: answered on the event loop without a thread hop, except for the one scrypt
    # check per key and process, which goes to a worker thread.
    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Security(bearer)],
                         header_key: Annotated[str | None, Security(api_key_header)]
                         ) -> Principal:
        state: Any = request.app.state.tidelog
        if not state.config.auth:
            principal = ANONYMOUS
        else:
            token = _token(request, credentials, header_key)
            if token is None:
                hint = ("" if state.keys.active_count() else
                        "; no key exists yet: create one with "
                        "`tidelog api keys create --role admin`")
                raise HttpError(401, "unauthorized",
                                "missing API key: send `Authorization: Bearer <key>` or "
                                f"`X-API-Key: <key>`{hint}", _CHALLENGE)
            found, needs_hash = state.keys.authenticate(token, hash_allowed=False)
            if needs_hash:
                found, _ = await run_in_threadpool(state.keys.authenticate, token)
            if found is None:
                raise HttpError(401, "unauthorized",
                                "unknown or revoked API key; ask an admin for a key "
                                "(`tidelog api keys create`)", _CHALLENGE)
            principal = found
        request.state.principal = principal
        if not principal.allows(role):
            raise HttpError(403, "forbidden",
                            f"key {principal.key_id} has role {principal.role}; "
                            f"{request.method} {request.url.path} needs {role}",
                            role=principal.role, needed=role)
        return principal

    return dependency


reader = Depends(require("reader"))
writer = Depends(require("writer"))
admin = Depends(require("admin"))
