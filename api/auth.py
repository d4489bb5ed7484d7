"""Who is calling: `Authorization: Bearer <key>` or `X-API-Key: <key>`, and may they?

Roles are ordered reader < writer < admin: reads need reader, anything that changes state
needs writer, key management and the audit log need admin. Health and metrics need no key.

`api.guard` calls `authenticate` and `check_role` from the request's headers alone, before
any body is read; the route dependencies (`reader`, `writer`, `admin`) declare the role a
route needs, re-check it, and hand the principal to the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import HttpError
from api.keys import ANONYMOUS, Principal

__all__ = ["require", "reader", "writer", "admin", "bearer", "api_key_header",
           "authenticate", "check_role", "ROLE_ATTR", "UI_COOKIE"]

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer tlk_...`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="`X-API-Key: tlk_...`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidelog"'}
# Set by the audit pages' sign-in form; only api/routes/ui.py reads it, and only for GET
# requests of its read-only pages, so a forged cross-site request can change nothing.
UI_COOKIE = "tidelog_key"
ROLE_ATTR = "tidelog_role"  # on a dependency: the role its routes need


def _token(authorization: str | None, header_key: str | None) -> str | None:
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if header_key and header_key.strip():
        return header_key.strip()
    if authorization:
        raise HttpError(401, "unauthorized",
                        "the Authorization header must read `Bearer <key>`", _CHALLENGE)
    return None


async def authenticate(state: Any, authorization: str | None, header_key: str | None,
                       client: str) -> Principal:
    """The caller's principal, or a 401 (429 after too many failures from `client`)."""
    # Answered on the event loop without a thread hop, except for the one scrypt check
    # per key and process, which goes to a worker thread.
    if not state.config.auth:
        return ANONYMOUS
    token = _token(authorization, header_key)
    if token is None:
        hint = ("" if state.keys.active_count() else
                "; no key exists yet: create one with "
                "`tidelog api keys create --role admin`")
        raise HttpError(401, "unauthorized",
                        "missing API key: send `Authorization: Bearer <key>` or "
                        f"`X-API-Key: <key>`{hint}", _CHALLENGE)
    found, needs_hash = state.keys.authenticate(token, client=client, hash_allowed=False)
    if needs_hash:
        found, _ = await run_in_threadpool(state.keys.authenticate, token, client=client)
    if found is None:
        raise HttpError(401, "unauthorized",
                        "unknown or revoked API key; ask an admin for a key "
                        "(`tidelog api keys create`)", _CHALLENGE)
    principal: Principal = found
    return principal


def check_role(principal: Principal, needed: str, method: str, path: str) -> None:
    if not principal.allows(needed):
        raise HttpError(403, "forbidden",
                        f"key {principal.key_id} has role {principal.role}; "
                        f"{method} {path} needs {needed}",
                        role=principal.role, needed=needed)


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Security(bearer)],
                         header_key: Annotated[str | None, Security(api_key_header)]
                         ) -> Principal:
        # The guard has normally authenticated already; the parameters above are what
        # puts both header schemes into the OpenAPI document.
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            client = request.client.host if request.client else ""
            principal = await authenticate(request.app.state.tidelog,
                                           request.headers.get("authorization"),
                                           request.headers.get("x-api-key"), client)
            request.state.principal = principal
        check_role(principal, role, request.method, request.url.path)
        return principal

    setattr(dependency, ROLE_ATTR, role)
    return dependency


reader = Depends(require("reader"))
writer = Depends(require("writer"))
admin = Depends(require("admin"))
