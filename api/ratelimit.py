"""Failed key checks, counted per (key id, client address) in token buckets.

Key ids are not secret (readers see them in `GET /jobs`), so anyone can guess secrets for
a known id. Each pair may fail `per_minute` times in a burst, then once every
`60 / per_minute` seconds; beyond that `api.keys` answers wrong secrets with 429 and
Retry-After. The buckets only decide who gets a 429: what keeps a guess cheap is the
key's check bits (`api.keys`); see docs/security.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["FailureLimiter"]

Key = tuple[str, str]


class FailureLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_buckets: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: dict[Key, tuple[float, float]] = {}  # key -> (tokens, as of)
        self._lock = threading.Lock()

    def _level(self, key: Key, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait(self, key: Key) -> float:
        """Seconds until `key` may fail again; 0.0 if it may now."""
        with self._lock:
            tokens = self._level(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: Key) -> float:
        """Use one failure of `key` (0.0), or the seconds to wait when none is left."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens < 1:
                return (1 - tokens) / self.rate
            if key not in self._buckets and len(self._buckets) >= self._max_buckets:
                self._prune(now)
            self._buckets[key] = (tokens - 1, now)
            return 0.0

    def _prune(self, now: float) -> None:
        # Full buckets carry no state; if every bucket is in use, forget the oldest half
        # (a memory bound under address churn, at the price of a fresh burst for those).
        full = [k for k in self._buckets if self._level(k, now) >= self.capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_buckets:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]
