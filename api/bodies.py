"""Optional request bodies: no body at all means the defaults; JSON `null` is refused.

FastAPI hands an optional body parameter `None` both for an empty body and for `null`;
every required body answers `null` with 422, so the optional ones do too.
"""

from __future__ import annotations

from fastapi import Depends, Request

from api.errors import HttpError

__all__ = ["no_null_body", "NO_NULL_BODY"]


async def no_null_body(request: Request) -> None:
    if (await request.body()).strip() == b"null":
        raise HttpError(422, "validation_error", "invalid input: body",
                        errors=[{"field": "body", "loc": ["body"],
                                 "message": "the body must be a JSON object, or absent for "
                                            "the defaults; not null",
                                 "type": "model_type"}])


NO_NULL_BODY = [Depends(no_null_body)]
