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


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_default,
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


class JSONBody(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
