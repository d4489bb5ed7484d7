"""The serving contract in code: a request message parsed and checked against the model's
input schema, and the result message built from it (docs/serving.md; JSON Schemas in
tidelog/schemas/serving/v1/). Pure functions: no broker, no MLflow.

A bad request never stops the worker and is never dropped: it becomes a result whose
`error` says what was wrong and whose `prediction` is null.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "INVALID_JSON",
    "INVALID_REQUEST",
    "MISSING_FEATURES",
    "UNKNOWN_FEATURES",
    "INVALID_FEATURE_TYPE",
    "PREDICTION_FAILED",
    "ERROR_CODES",
    "Feature",
    "Source",
    "RequestError",
    "Request",
    "parse_request",
    "check_instance",
    "build_result",
    "encode",
    "served_at",
]

INVALID_JSON = "invalid_json"  # the value is not UTF-8 JSON
INVALID_REQUEST = "invalid_request"  # JSON, but not {"request_id"?: str, "instance": {...}}
MISSING_FEATURES = "missing_features"  # the instance lacks a feature the model needs
UNKNOWN_FEATURES = "unknown_features"  # the instance has features the model does not take
INVALID_FEATURE_TYPE = "invalid_feature_type"  # a feature's value has the wrong JSON type
PREDICTION_FAILED = "prediction_failed"  # the model raised, or answered a non-JSON value
ERROR_CODES = (INVALID_JSON, INVALID_REQUEST, MISSING_FEATURES, UNKNOWN_FEATURES,
               INVALID_FEATURE_TYPE, PREDICTION_FAILED)

# Integers a float64 carries exactly; beyond, a double feature would silently change.
_EXACT_FLOAT_INT = 2**53
_INT_BOUNDS = {"long": 2**63, "integer": 2**31}


@dataclass(frozen=True)
class Feature:
    """One input column of a model's signature: name and MLflow type name (`double`,
    `float`, `long`, `integer`, `boolean`, `string`; anything else is passed as sent)."""

    name: str
    kind: str


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class RequestError:
    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Request:
    """A request as the worker understood it: `row` is what the model gets (None when
    the request is refused, and then `error` says why); `instance` is echoed as sent."""

    request_id: str
    source: Source
    instance: dict[str, Any] | None
    row: dict[str, Any] | None
    error: RequestError | None


def _key_id(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None  # not text: the request is named by its coordinates


def parse_request(source: Source, key: bytes | None, value: bytes | None,
                  features: Sequence[Feature] | None) -> Request:
    """The request in one message. Its id: the value's `request_id`, else the key (UTF-8),
    else `<topic>/<partition>/<offset>`. `features` None: the model has no signature, and
    any instance of JSON scalars goes to it as sent."""
    fallback = _key_id(key) or source.coordinates
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return Request(fallback, source, None, None, RequestError(
            INVALID_JSON, f"the request value is not JSON ({exc}); send "
            '{"request_id": "...", "instance": {"feature": value, ...}} as UTF-8 JSON'))
    if not isinstance(body, dict):
        return Request(fallback, source, None, None, RequestError(
            INVALID_REQUEST, f"the request is a JSON {type(body).__name__}, not an object "
            'like {"request_id": "...", "instance": {...}}'))
    request_id = body.get("request_id", fallback)
    if not isinstance(request_id, str) or not request_id:
        return Request(fallback, source, None, None, RequestError(
            INVALID_REQUEST, "request_id must be a non-empty string when given"))
    instance = body.get("instance")
    if not isinstance(instance, dict):
        return Request(request_id, source, None, None, RequestError(
            INVALID_REQUEST, 'the request has no "instance" object of feature -> value'))
    extra = sorted(set(body) - {"request_id", "instance"})
    if extra:
        return Request(request_id, source, instance, None, RequestError(
            INVALID_REQUEST, f"unknown request fields {extra}; a request holds only "
            "request_id and instance"))
    row, error = check_instance(instance, features)
    return Request(request_id, source, instance, row, error)


def _check_value(name: str, kind: str, value: Any) -> tuple[Any, str | None]:
    """The value the model gets for one feature, or why it is refused."""
    if value is None:
        return None, f"{name} is null; every feature needs a value"
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"{name} must be a number, not {type(value).__name__}"
        if isinstance(value, int) and abs(value) > _EXACT_FLOAT_INT:
            return None, (f"{name} = {value} cannot be carried exactly as a {kind}; send "
                          "a float if rounding is acceptable")
        return float(value), None
    if kind in _INT_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{name} must be an integer, not {type(value).__name__}"
        bound = _INT_BOUNDS[kind]
        if not -bound <= value < bound:
            return None, f"{name} = {value} is outside the range of a {kind}"
        return value, None
    if kind == "boolean":
        if not isinstance(value, bool):
            return None, f"{name} must be true or false, not {type(value).__name__}"
        return value, None
    if kind == "string":
        if not isinstance(value, str):
            return None, f"{name} must be a string, not {type(value).__name__}"
        return value, None
    if isinstance(value, dict | list):
        return None, f"{name} must be a scalar, not {type(value).__name__}"
    return value, None


def check_instance(instance: Mapping[str, Any], features: Sequence[Feature] | None
                   ) -> tuple[dict[str, Any] | None, RequestError | None]:
    """The row for the model (features in signature order, values exactly as their
    types need), or the first reason the instance is refused."""
    if features is None:
        row: dict[str, Any] = {}
        for name, value in instance.items():
            checked, problem = _check_value(name, "any", value)
            if problem:
                return None, RequestError(INVALID_FEATURE_TYPE, problem)
            row[name] = checked
        return row, None
    names = [f.name for f in features]
    missing = [n for n in names if n not in instance]
    if missing:
        return None, RequestError(MISSING_FEATURES, f"the instance lacks features {missing}; "
                                  f"the model takes {names}")
    unknown = sorted(set(instance) - set(names))
    if unknown:
        return None, RequestError(UNKNOWN_FEATURES, f"the model does not take features "
                                  f"{unknown}; it takes {names}")
    row = {}
    for feature in features:
        checked, problem = _check_value(feature.name, feature.kind, instance[feature.name])
        if problem:
            return None, RequestError(INVALID_FEATURE_TYPE, problem)
        row[feature.name] = checked
    return row, None


def served_at(now: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC to the millisecond, e.g. 2026-12-01T10:41:07.123Z."""
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_result(request: Request, prediction: Any, model: Mapping[str, str],
                 latency_ms: float, at: str, error: RequestError | None = None
                 ) -> dict[str, Any]:
    """The result message's value. `model` holds name, version, run_id, alias,
    snapshot_id and cut_digest (trainer.registry.AliasTarget.to_json())."""
    error = error or request.error
    if not math.isfinite(latency_ms):
        raise ValueError(f"latency {latency_ms} is not a finite number of milliseconds")
    return {
        "request_id": request.request_id,
        "source": request.source.to_json(),
        "instance": request.instance,
        "prediction": None if error else prediction,
        "model": {"name": model["name"], "version": model["version"],
                  "run_id": model["run_id"], "alias": model["alias"]},
        "snapshot_id": model["snapshot_id"],
        "cut_digest": model["cut_digest"],
        "latency_ms": round(float(latency_ms), 3),
        "served_at": at,
        "error": error.to_json() if error else None,
    }


def encode(result: Mapping[str, Any]) -> bytes:
    return orjson.dumps(result)
