"""Polling until something is ready, retrying only what `TidelogError.transient` marks
as worth retrying; a terminal error ends the wait at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tidelog.errors import TidelogError

__all__ = ["poll"]

T = TypeVar("T")


def poll(attempt: Callable[[], T | None], *, timeout: float, interval: float = 0.3,
         timed_out: Callable[[TidelogError | None], TidelogError]) -> T:
    """Call `attempt` until it returns something other than None.

    A transient TidelogError from `attempt` counts as "not yet"; any other error
    propagates. After `timeout` seconds, raise `timed_out(last transient error or None)`.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: TidelogError | None = None
        try:
            result = attempt()
        except TidelogError as exc:
            if not exc.transient:
                raise
            last = exc
        else:
            if result is not None:
                return result
        if time.monotonic() >= deadline:
            raise timed_out(last) from last
        time.sleep(interval)
