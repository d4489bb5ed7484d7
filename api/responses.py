"""The API's JSON response class: orjson, with exact decimals and timestamps."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["JSONBody", "dumps"]


def _default(value: Any) -> Any:
    # Decimal as text: a numeric(12, 2) must come back exactly, not as a binary float.
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_INT64 = range(-(2**63), 2**64)  # what orjson writes itself (signed, or unsigned 64-bit)


def _big_ints(value: Any) -> Any:
    """`value` with every integer orjson cannot write replaced by its exact digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints(v) for v in value]
    return value


def dumps(content: Any) -> bytes:
    try:
        return orjson.dumps(content, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        # Postgres numeric keys and DuckDB HUGEINTs exceed 64 bits; JSON numbers do not
        # have to. Rare, so only then walk the content.
        if "64-bit" not in str(exc):
            raise
        return orjson.dumps(_big_ints(content), default=_default, option=_OPTIONS)


class JSONBody(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
