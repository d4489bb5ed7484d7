"""One JSON error shape for every API error, and how tidelog's errors map onto HTTP.

    {"error": {"code": "snapshot_not_found", "message": "...", "details": {...}}}

`code` is stable and machine-readable; `message` says what went wrong and what to do
next (it is the core library's own message for a `TidelogError`); `details` carries
structured facts (field paths of a validation error, the model versions holding a
snapshot, ...). docs/api.md lists the codes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from api.responses import JSONBody
from tidelog.errors import (
    ApiError,
    ArchiveError,
    BrokerError,
    ConfigError,
    ConnectorError,
    CutError,
    DecodeError,
    DigestMismatch,
    LogIdentityError,
    SnapshotError,
    SourceError,
    StackError,
    TidelogError,
    TrainingError,
)

__all__ = [
    "HttpError",
    "ErrorDetail",
    "ErrorResponse",
    "ERROR_RESPONSES",
    "status_for",
    "error_body",
    "field_path",
    "install_handlers",
]

_LOG = logging.getLogger("tidelog.api")


class HttpError(ApiError):
    """An error the API layer raises itself, with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, **details: object) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    code: str = Field(examples=["snapshot_not_found"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Declared on every operation, so the OpenAPI document describes every error body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Bad request: the input is well-formed but cannot be served"),
    401: _doc("No API key, or an unknown or revoked one"),
    403: _doc("The key's role does not allow this"),
    404: _doc("Not found"),
    405: _doc("Method not allowed"),
    409: _doc("Conflict with the current state"),
    413: _doc("The request body is over TIDELOG_API_MAX_BODY"),
    422: _doc("Validation failed; details.errors lists each field path"),
    429: _doc("Too many failed key checks from this address; see Retry-After"),
    500: _doc("Internal error"),
    503: _doc("A component of the stack is unavailable"),
}

# (error class, message pattern or None, status, code): the first match wins, so
# subclasses come before their parents. Core errors carry no status of their own; the
# message patterns pin the few cases one class covers with different meanings, and
# tests/unit/test_api.py checks them against the core's real messages.
_RULES: list[tuple[type[TidelogError], re.Pattern[str] | None, int, str]] = [
    (HttpError, None, 0, ""),  # carries its own
    (DigestMismatch, None, 409, "digest_mismatch"),
    (SnapshotError, re.compile(r"^no snapshot "), 404, "snapshot_not_found"),
    (SnapshotError, None, 400, "snapshot_error"),
    (LogIdentityError, None, 409, "log_identity_changed"),
    (ArchiveError, None, 503, "archive_unavailable"),
    (CutError, None, 400, "invalid_cut"),
    (TrainingError, re.compile(r"^(unknown run|no registered model|model .* has no version|"
                               r"no snapshot holds table)"), 404, "not_found"),
    (TrainingError, re.compile(r"^MLflow at \S+ failed"), 503, "mlflow_unavailable"),
    (TrainingError, None, 400, "training_error"),
    (ConnectorError, re.compile(r"^no connector named"), 404, "connector_not_found"),
    (ConnectorError, None, 503, "connector_unavailable"),
    (BrokerError, None, 503, "broker_unavailable"),
    (SourceError, re.compile(r"^cannot connect"), 503, "source_unavailable"),
    (SourceError, None, 400, "source_not_ready"),
    (ConfigError, None, 503, "not_configured"),
    (StackError, None, 503, "stack_unavailable"),
    (DecodeError, None, 500, "decode_error"),
    (TidelogError, None, 500, "tidelog_error"),
]

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
                 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "validation_error", 429: "too_many_requests", 500: "internal",
                 503: "unavailable"}


def status_for(exc: TidelogError) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.code
    for cls, pattern, status, code in _RULES:
        if isinstance(exc, cls) and (pattern is None or pattern.search(exc.message)):
            return status, code
    return 500, "tidelog_error"


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return str(value)


def error_body(code: str, message: str, details: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "details": _jsonable(details or {})}}


def error_response(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return JSONBody(error_body(code, message, details), status_code=status, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "tables", 0) -> "body.tables[0]"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        errors.append({"field": field_path(loc), "loc": [str(p) if not isinstance(p, int)
                                                         else p for p in loc],
                       "message": err.get("msg", ""), "type": err.get("type", "")})
    return {"errors": errors}


async def _tidelog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidelogError)
    status, code = status_for(exc)
    if status >= 500:
        _LOG.error("%s %s failed: %s", request.method, request.url.path, exc.message,
                   exc_info=exc if status == 500 else None)
    headers = exc.headers if isinstance(exc, HttpError) else None
    return error_response(status, code, exc.message, dict(exc.details), headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    fields = ", ".join(e["field"] or "request" for e in details["errors"][:5])
    return error_response(422, "validation_error", f"invalid input: {fields}", details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}; see /docs"
    if exc.status_code == 405:
        # Starlette names only the first route matching the path; list them all.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {request.url.path}; use " \
                  f"{' or '.join(allowed)}"
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods whose request to this path reaches a route that serves it: the first
    route matching path and method decides, as in the router, and a route that only
    answers 405 (`endpoint.refuses`) serves nothing."""
    methods = sorted({m for route in request.app.routes
                      for m in getattr(route, "methods", None) or ()})
    allowed = []
    for method in methods:
        for route in request.app.routes:
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                if not getattr(getattr(route, "endpoint", None), "refuses", False):
                    allowed.append(method)
                break
    return allowed


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "")
    _LOG.error("%s %s raised %s (request %s)", request.method, request.url.path,
               type(exc).__name__, request_id, exc_info=exc)
    return error_response(500, "internal",
                          f"internal error ({type(exc).__name__}); the API log has the "
                          f"traceback under request id {request_id}",
                          {"request_id": request_id})


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TidelogError, _tidelog_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
