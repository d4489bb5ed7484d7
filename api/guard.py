"""Before a route sees a request: its key is checked, then its body is bounded.

FastAPI reads and parses a request's body before it runs the route's dependencies, so
with authentication in a dependency anyone on the network could make the API buffer any
amount of JSON. This ASGI middleware answers 401/403 from the headers alone, refuses a
declared `Content-Length` over `max_body_bytes` at once, and otherwise reads the body
itself, up to that many bytes (a chunked body, or one longer than it declared, is cut off
at the limit), with 413 beyond. Requests that match no route pass through untouched:
Starlette answers their 404/405 without reading a body.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ROLE_ATTR, authenticate, check_role
from api.errors import HttpError, error_response, leaf_routes

__all__ = ["Guard", "role_of"]


def role_of(route: BaseRoute) -> str | None:
    """The role a route's dependencies require, or None for an open route."""
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        role = getattr(dependant.call, ROLE_ATTR, None)
        if role is not None:
            return str(role)
        pending.extend(dependant.dependencies)
    return None


class Guard:
    def __init__(self, app: ASGIApp, state: Any, router: Router) -> None:
        self.app = app
        self.state = state
        self.router = router
        self._roles: dict[int, str | None] = {}

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, Scope]:
        for route in leaf_routes(self.router.routes):
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route, child
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, child = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or []}
        try:
            await self._authorise(scope, route, headers)
            body = await self._read_body(receive, headers)
        except HttpError as exc:
            scope.update(child)  # what the router would add: the audit log names the route
            await self._refuse(scope, send, exc)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _authorise(self, scope: Scope, route: BaseRoute, headers: dict[str, str]
                         ) -> None:
        key = id(route)
        if key not in self._roles:
            self._roles[key] = role_of(route)
        needed = self._roles[key]
        if needed is None:
            return
        client = scope.get("client")
        principal = await authenticate(self.state, headers.get("authorization"),
                                       headers.get("x-api-key"),
                                       client[0] if client else "")
        scope.setdefault("state", {})["principal"] = principal
        check_role(principal, needed, scope["method"], scope.get("path", ""))

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes | None:
        limit = self.state.config.max_body_bytes
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, f"Content-Length is {int(declared)}")
        if not declared and "transfer-encoding" not in headers:
            return b""  # no body announced: nothing to read
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit, f"{size} bytes sent so far")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, send: Send, exc: HttpError) -> None:
        response = error_response(exc.status, exc.code, exc.message, dict(exc.details),
                                  exc.headers)
        if exc.status == 413:
            # The rest of the body stays unread: the connection cannot be reused.
            response.headers["Connection"] = "close"

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)


def _too_large(limit: int, how: str) -> HttpError:
    return HttpError(413, "payload_too_large",
                     f"the request body is larger than the limit of {limit} bytes ({how}); "
                     "send less, or have the operator raise TIDELOG_API_MAX_BODY",
                     limit=limit)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
