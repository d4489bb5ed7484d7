"""One ASGI middleware around every request: a request id, metrics, and the audit log.

Plain ASGI rather than `BaseHTTPMiddleware`, which would copy every body through a queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.audit import AuditEntry
from tidelog.errors import TidelogError

__all__ = ["Observe", "AUDITED_RESULTS"]

_LOG = logging.getLogger("tidelog.api")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUDITED_RESULTS = {"ok", "accepted", "denied", "error"}


def _error_code(body: bytes) -> str | None:
    try:
        code = orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return str(code)[:100]


def _result(status: int) -> str:
    if status in (401, 403):
        return "denied"
    if status == 202:
        return "accepted"
    return "ok" if status < 400 else "error"


class Observe:
    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = given if given.isprintable() and given else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        location = ""
        error_code: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, location, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers") or [])
                location = next((v.decode() for k, v in raw if k.lower() == b"location"), "")
                raw.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": raw}
            elif (message["type"] == "http.response.body" and status >= 400
                  and error_code is None):
                error_code = _error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status, error_code = 500, "internal"
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self.state.metrics.observe(method, template, status,
                                       time.perf_counter() - started)
            if method not in _READ_METHODS or status in (401, 403):
                await to_thread.run_sync(self._audit, scope, route, method, status,
                                         location, request_id, error_code)

    def _audit(self, scope: Scope, route: Any, method: str, status: int, location: str,
               request_id: str, error_code: str | None) -> None:
        principal = scope.get("state", {}).get("principal")
        params = scope.get("path_params") or {}
        target = next((str(v) for k, v in params.items()
                       if k in ("snapshot_id", "key_id", "run_id", "job_id", "name")), None)
        job_id = location.rsplit("/", 1)[-1] if location.startswith("/jobs/") else None
        client = scope.get("client")
        try:
            self.state.audit.record(AuditEntry(
                actor=principal.key_id if principal else "unauthenticated",
                role=principal.role if principal else None,
                action=getattr(route, "name", None) or "unmatched",
                method=method, path=scope.get("path", ""), target=target, status=status,
                result=_result(status), job_id=job_id, request_id=request_id,
                client=client[0] if client else None,
                error_code=error_code if status >= 400 else None))
        except TidelogError as exc:
            _LOG.error("could not write the audit entry of %s %s: %s", method,
                       scope.get("path"), exc.message)
