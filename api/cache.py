"""Lineage answers kept in memory until the data behind them changes.

A row-lineage answer costs ~40-60 ms (two MLflow searches and a DuckDB lookup per
snapshot), far too much to compute per request at a few hundred requests a second. Its
inputs change rarely: the set of snapshots, and MLflow's runs and model versions. So an
answer is kept until a watcher thread sees a cheap fingerprint of those inputs change
(checked every `check_every` seconds), until this API
finishes a job or deletes a snapshot (`clear()`), and never longer than `max_age`.
`max_age <= 0` turns caching off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["LineageCache"]

T = TypeVar("T")
_LOG = logging.getLogger("tidelog.api")
MAX_ENTRIES = 10_000


class LineageCache:
    def __init__(self, fingerprint: Callable[[], Hashable] | None = None,
                 max_age: float = 60.0, check_every: float = 1.0) -> None:
        self.fingerprint = fingerprint
        self.max_age = max_age
        self.check_every = check_every
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last: Hashable = None
        self.hits = 0
        self.misses = 0

    def peek(self, key: Hashable) -> tuple[bool, Any]:
        """(True, answer) when `key` is cached and fresh; never computes or blocks."""
        found = self._values.get(key) if self.max_age > 0 else None
        if found is not None and found[0] > time.monotonic():
            self.hits += 1
            return True, found[1]
        return False, None

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if self.max_age <= 0:
            return compute()
        found = self._values.get(key)
        if found is not None and found[0] > time.monotonic():
            self.hits += 1
            return found[1]
        with self._lock:
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:  # one computation per key; the others wait for its answer
            found = self._values.get(key)
            if found is not None and found[0] > time.monotonic():
                self.hits += 1
                return found[1]
            self.misses += 1
            generation = self._last
            value = compute()
            with self._lock:
                if len(self._values) >= MAX_ENTRIES:
                    self._values.clear()
                    self._locks.clear()
                # An answer computed across a change of the inputs is not kept.
                if generation == self._last:
                    self._values[key] = (time.monotonic() + self.max_age, value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._last = object()  # answers being computed now are not kept either

    # -- watcher ------------------------------------------------------------------------

    def start(self) -> None:
        if self.fingerprint is None or self.max_age <= 0 or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="tidelog-lineage-watch",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        assert self.fingerprint is not None
        seen: Hashable = None
        while not self._stop.wait(self.check_every):
            try:
                now = self.fingerprint()
            except Exception as exc:  # noqa: BLE001 - unsure means stale: drop everything
                _LOG.warning("lineage cache: cannot check for changes (%s); clearing", exc)
                self.clear()
                seen = None
                continue
            if now != seen:
                # Also on the first look: answers computed before it had no baseline.
                self.clear()
                seen = now
