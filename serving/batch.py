"""One batch of requests, planned and answered without any I/O: when to look at the alias
again, which offsets the batch's transaction commits (and where to rewind after an
abort), and the results of a batch under exactly one model version."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.contract import (
    Request,
    RequestError,
    Source,
    build_result,
    parse_request,
    served_at,
)
from serving.model import ServedModel, predict_rows

__all__ = ["Message", "AliasCheck", "commit_offsets", "rewind_offsets", "should_switch",
           "serve_batch"]


@dataclass(frozen=True)
class Message:
    """What the worker needs of a consumed request message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class AliasCheck:
    """Looks at the alias at most every `interval` seconds, and only between batches."""

    interval: float
    last: float = field(default=float("-inf"))

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval

    def done(self, now: float) -> None:
        self.last = now


def should_switch(serving: str, alias_points_at: str) -> bool:
    """Load another version when the alias names one other than the one serving (back to
    an older one too: the alias is the operator's word)."""
    return alias_points_at != serving


def commit_offsets(batch: Sequence[Message]) -> list[tuple[str, int, int]]:
    """The consumer positions the batch's transaction commits: one past the last offset
    of each partition it read."""
    ends: dict[tuple[str, int], int] = {}
    for m in batch:
        ends[(m.topic, m.partition)] = max(ends.get((m.topic, m.partition), -1), m.offset + 1)
    return [(t, p, o) for (t, p), o in sorted(ends.items())]


def rewind_offsets(batch: Sequence[Message]) -> list[tuple[str, int, int]]:
    """Where to seek after an aborted batch: its first offset in each partition."""
    starts: dict[tuple[str, int], int] = {}
    for m in batch:
        key = (m.topic, m.partition)
        starts[key] = min(starts.get(key, m.offset), m.offset)
    return [(t, p, o) for (t, p), o in sorted(starts.items())]


def serve_batch(batch: Sequence[Message], model: ServedModel,
                clock: Callable[[], float] = time.perf_counter,
                received: float | None = None) -> list[tuple[Request, dict[str, Any]]]:
    """Each message's request and result, all under `model`'s one version. Latency is
    the worker's time on the request: from the batch's arrival (`received`) until its
    result is built, so requests of one batch share the batch's prediction time."""
    start = clock() if received is None else received
    requests = [parse_request(Source(m.topic, m.partition, m.offset), m.key, m.value,
                              model.features) for m in batch]
    valid = [r for r in requests if r.error is None and r.row is not None]
    answers = dict(zip((id(r) for r in valid),
                       predict_rows(model, [r.row for r in valid if r.row is not None]),
                       strict=True))
    at = served_at()
    provenance = model.provenance
    results = []
    for request in requests:
        prediction: Any = None
        error: RequestError | None = request.error
        if error is None:
            prediction, error = answers[id(request)]
        latency_ms = (clock() - start) * 1000.0
        results.append((request, build_result(request, prediction, provenance, latency_ms,
                                              at, error)))
    return results
