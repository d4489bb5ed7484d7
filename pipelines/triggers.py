"""Deciding whether a pipeline trains now: pure functions over an `Observation`.

The I/O that fills an observation (archive counts, MLflow, events) is in
`pipelines.observe`; here is only the rule, so it is tested with a fake clock. Rules:

- changed_rows: due when at least `min_rows` change events were committed after the
  champion's training cut (in one table or in all); due since the commit of the N-th.
- schedule: due when the cron fired after the pipeline's last training; due since then.
- drift: due on a `drift.detected` event for the model with a score above the threshold,
  newer than the last training and not acted on by a cycle (runs record the event ids).
- manual: due on a `retrain.requested` event, on the same terms.

Debounce: nothing fires within `min_interval_seconds` of the last training. A due trigger
then waits until no change was committed for `quiet_seconds`, but at most
`max_wait_seconds` after it became due. A manual request skips the debounce: someone asked.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import (
    ChangedRowsTrigger,
    DriftTrigger,
    ManualTrigger,
    Pipeline,
    ScheduleTrigger,
    Trigger,
)

__all__ = ["ChangeLog", "Signal", "Observation", "TriggerState", "Plan", "evaluate_triggers",
           "plan"]


def _ms_to_dt(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


@dataclass(frozen=True)
class ChangeLog:
    """Commit times (ms, ascending) of the change events after the base cut, per table."""

    times_ms: Mapping[str, Sequence[int]]
    base: str  # what the count starts from, for people: "the cut of champion churn/3"

    def _times(self, table: str | None) -> Sequence[int]:
        if table is not None:
            return self.times_ms.get(table, ())
        if len(self.times_ms) == 1:
            return next(iter(self.times_ms.values()))
        return list(heapq.merge(*self.times_ms.values()))

    def count(self, table: str | None = None) -> int:
        if table is not None:
            return len(self.times_ms.get(table, ()))
        return sum(len(v) for v in self.times_ms.values())

    def nth_ms(self, n: int, table: str | None = None) -> int | None:
        times = self._times(table)
        return int(times[n - 1]) if len(times) >= n else None

    def last_ms(self) -> int | None:
        ends = [int(v[-1]) for v in self.times_ms.values() if len(v)]
        return max(ends) if ends else None


@dataclass(frozen=True)
class Signal:
    """A drift or retrain event that may fire a trigger."""

    kind: str  # "drift" | "manual"
    event_id: str
    at: dt.datetime
    reason: str
    score: float | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Observation:
    now: dt.datetime
    changes: ChangeLog
    last_training_at: dt.datetime | None  # the pipeline's newest run, whatever its outcome
    champion: str | None = None  # "model/version", for messages
    signals: tuple[Signal, ...] = ()
    handled: frozenset[str] = frozenset()  # signal event ids a cycle already acted on


@dataclass(frozen=True)
class TriggerState:
    kind: str
    due: bool
    reason: str
    due_since: dt.datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)
    signals: tuple[Signal, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "due": self.due, "reason": self.reason,
                "due_since": _iso(self.due_since), "details": self.details,
                "signals": [s.event_id for s in self.signals]}


@dataclass(frozen=True)
class Plan:
    fire: bool
    reason: str
    triggers: tuple[TriggerState, ...]
    wait_until: dt.datetime | None = None

    @property
    def fired(self) -> tuple[TriggerState, ...]:
        return tuple(t for t in self.triggers if t.due) if self.fire else ()

    @property
    def signals(self) -> tuple[Signal, ...]:
        return tuple(s for t in self.fired for s in t.signals)

    def to_json(self) -> dict[str, Any]:
        return {"fire": self.fire, "reason": self.reason, "wait_until": _iso(self.wait_until),
                "triggers": [t.to_json() for t in self.triggers]}


def _newer(signal: Signal, obs: Observation) -> bool:
    """Not acted on yet: no cycle recorded its id, and it came after the last training."""
    if signal.event_id in obs.handled:
        return False
    return obs.last_training_at is None or signal.at > obs.last_training_at


def _changed_rows(t: ChangedRowsTrigger, obs: Observation) -> TriggerState:
    where = t.table or "all tables"
    count = obs.changes.count(t.table)
    details = {"changed_rows": count, "min_rows": t.min_rows, "table": t.table,
               "since": obs.changes.base}
    nth = obs.changes.nth_ms(t.min_rows, t.table)
    if nth is None:
        return TriggerState(t.kind, False, f"{count} changed rows in {where} since "
                            f"{obs.changes.base}, fewer than {t.min_rows}", details=details)
    since = _ms_to_dt(nth)
    return TriggerState(t.kind, True, f"{count} changed rows in {where} since "
                        f"{obs.changes.base} (>= {t.min_rows}, reached at {_iso(since)})",
                        since, details)


def _schedule(t: ScheduleTrigger, obs: Observation) -> TriggerState:
    fired = t.cron.previous(obs.now)
    last = obs.last_training_at
    details = {"cron": t.cron.expression, "last_fire": _iso(fired),
               "next_fire": _iso(t.cron.next(obs.now)), "last_training": _iso(last)}
    if last is not None and fired <= last:
        return TriggerState(t.kind, False, f"cron {t.cron.expression!r} last fired at "
                            f"{_iso(fired)}, before the last training at {_iso(last)}; next "
                            f"at {details['next_fire']}", details=details)
    return TriggerState(t.kind, True, f"cron {t.cron.expression!r} fired at {_iso(fired)}, "
                        f"after the last training ({_iso(last) or 'none yet'})", fired, details)


def _drift(t: DriftTrigger, obs: Observation) -> TriggerState:
    seen = [s for s in obs.signals if s.kind == "drift" and _newer(s, obs)
            and (t.metric is None or s.metric == t.metric)]
    above = [s for s in seen if s.score is not None and s.score > t.threshold]
    top = max((s.score for s in seen if s.score is not None), default=None)
    details = {"threshold": t.threshold, "metric": t.metric, "events": len(seen),
               "max_score": top}
    if not above:
        return TriggerState(t.kind, False, f"{len(seen)} drift events since the last "
                            f"training, highest score {top} (not above {t.threshold})",
                            details=details)
    first = min(above, key=lambda s: s.at)
    return TriggerState(t.kind, True, f"drift score {first.score} > {t.threshold} "
                        f"({first.reason or first.metric or 'drift'}) at {_iso(first.at)}",
                        first.at, details, tuple(above))


def _manual(t: ManualTrigger, obs: Observation) -> TriggerState:
    asked = sorted((s for s in obs.signals if s.kind == "manual" and _newer(s, obs)),
                   key=lambda s: s.at)
    if not asked:
        return TriggerState(t.kind, False, "no retrain request since the last training",
                            details={"requests": 0})
    return TriggerState(t.kind, True, f"retrain requested at {_iso(asked[0].at)}: "
                        f"{asked[0].reason or 'no reason given'}", asked[0].at,
                        {"requests": len(asked)}, tuple(asked))


def evaluate_triggers(triggers: Sequence[Trigger], obs: Observation
                      ) -> tuple[TriggerState, ...]:
    states = []
    for t in triggers:
        if isinstance(t, ChangedRowsTrigger):
            states.append(_changed_rows(t, obs))
        elif isinstance(t, ScheduleTrigger):
            states.append(_schedule(t, obs))
        elif isinstance(t, DriftTrigger):
            states.append(_drift(t, obs))
        else:
            states.append(_manual(t, obs))
    return tuple(states)


def plan(pipeline: Pipeline, obs: Observation) -> Plan:
    """Whether to train now, which triggers are due, and why (or until when to wait)."""
    states = evaluate_triggers(pipeline.triggers, obs)
    due = [s for s in states if s.due]
    if not due:
        return Plan(False, "no trigger is due", states)
    if any(s.kind == "manual" for s in due):
        return Plan(True, "a retrain was requested: debounce skipped", states)
    d = pipeline.debounce
    now = obs.now
    if obs.last_training_at is not None and d.min_interval_seconds > 0:
        earliest = obs.last_training_at + dt.timedelta(seconds=d.min_interval_seconds)
        if now < earliest:
            return Plan(False, f"due, but the last training was at "
                        f"{_iso(obs.last_training_at)}: min interval "
                        f"{d.min_interval_seconds:g}s ends at {_iso(earliest)}", states,
                        earliest)
    due_since = min(s.due_since for s in due if s.due_since is not None)
    cap = due_since + dt.timedelta(seconds=d.max_wait_seconds)
    last = obs.changes.last_ms()
    if d.quiet_seconds > 0 and last is not None:
        settled = _ms_to_dt(last) + dt.timedelta(seconds=d.quiet_seconds)
        if now < settled and now < cap:
            return Plan(False, f"due since {_iso(due_since)}, waiting for "
                        f"{d.quiet_seconds:g}s without changes (last change "
                        f"{_iso(_ms_to_dt(last))}) or the max wait of "
                        f"{d.max_wait_seconds:g}s", states, min(settled, cap))
        if now < settled:
            return Plan(True, f"changes keep coming, but the max wait of "
                        f"{d.max_wait_seconds:g}s since {_iso(due_since)} is over", states)
    return Plan(True, f"due since {_iso(due_since)}", states)
