"""One JSON error shape for every API error, and how tidelog's errors map onto HTTP.

    {"error": {"code": "snapshot_not_found", "message": "...", "details": {...}}}

`code` is stable and machine-readable; `message` says what went wrong and what to do
next (it is the core library's own message for a `TidelogError`); `details` carries
structured facts (field paths of a validation error, the model versions holding a
snapshot, ...). docs/api.md lists the codes.

Every `TidelogError` class carries its own `code` and HTTP `status` (tidelog/errors.py
draws the tree); the API reads them and nothing else. Below the root it adds:

    TidelogError
    └── ApiError               api_error              500
        └── HttpError          (its own code and status, per instance)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from api.responses import JSONBody
from tidelog.errors import TidelogError

__all__ = [
    "leaf_routes",
    "ApiError",
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


class ApiError(TidelogError):
    """An HTTP-level error raised by the API layer itself."""

    code = "api_error"
    status = 500


class HttpError(ApiError):
    """An error the API layer raises itself, with its HTTP status and stable code."""

    code = "http_error"

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
    502: _doc("A component of the stack failed the request"),
    503: _doc("A component of the stack is unavailable"),
    507: _doc("The archive or snapshot storage is full or not writable"),
}

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
                 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "validation_error", 429: "too_many_requests", 500: "internal",
                 503: "unavailable"}


def status_for(exc: TidelogError) -> tuple[int, str]:
    """The HTTP status and error code: the error's own, by class (HttpError: by instance)."""
    return exc.status, exc.code


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
    routes = list(leaf_routes(request.app.routes))
    methods = sorted({m for route in routes for m in getattr(route, "methods", None) or ()})
    allowed = []
    for method in methods:
        for route in routes:
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                if not getattr(getattr(route, "endpoint", None), "refuses", False):
                    allowed.append(method)
                break
    return allowed


def leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route that serves requests, inside included routers too."""
    # FastAPI >= 0.16x keeps an included router as one route object (`original_router`)
    # instead of copying its routes into the app; tidelog's routers have no include prefix.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from leaf_routes(inner.routes)
        else:
            yield route


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
