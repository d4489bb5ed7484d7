"""Running a pipeline: evaluate the triggers, and when they fire snapshot, train, gate,
promote — publishing an event at each step.

Every step is found again before it is redone, so a replayed trigger or a worker killed at
any point and restarted does each thing once:

1. the cut is the newest transaction-consistent one the archive serves; its fingerprint
   names the cycle (`pipeline.triggered` has a deterministic id);
2. training: a FINISHED run tagged with this pipeline and cut fingerprint is reused, runs
   a killed worker left RUNNING at that cut are marked KILLED, else `trainer.train`;
3. registration: the run's existing model version is reused, else registered once;
4. the gate scores challenger and champion on the challenger's snapshot;
5. promotion is one alias move in the registry: done or not done.

Drift and retrain events come from a consumer group whose offsets are committed only when
no signal is waiting, so a restarted worker is handed every unhandled request again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.config import Pipeline
from pipelines.gate import GateResult, gate
from pipelines.observe import observe, signals_from
from pipelines.registry import PIPELINE_TAG, TRIGGER_TAG, Registry
from pipelines.triggers import Plan, Signal, plan
from snapshotter.cut import Cut
from tidelog.events import Publisher, new_event
from tidelog.settings import Settings

__all__ = ["Cycle", "run_cycle", "evaluate_once", "Worker", "utc_now"]

_LOG = logging.getLogger("tidelog.pipeline")
GATE_TAG = "tidelog.gate.decision"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Cycle:
    """What one fired trigger led to."""

    pipeline: str
    cut_fingerprint: str
    run_id: str
    trained: bool  # False: the run for this cut existed already
    version: str
    gate: GateResult | None
    promoted: bool
    triggers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "cut_fingerprint": self.cut_fingerprint,
                "run_id": self.run_id, "trained": self.trained, "version": self.version,
                "gate": self.gate.to_json() if self.gate else None,
                "promoted": self.promoted, "triggers": list(self.triggers)}


def _gate_event(settings: Settings, pipeline: Pipeline, run_id: str, version: str,
                result: GateResult, previous: str | None) -> Any:
    kind = "model.promoted" if result.passed else "model.rejected"
    data: dict[str, Any] = {
        "model": pipeline.model, "version": version, "alias": pipeline.alias,
        "run_id": run_id, "pipeline": pipeline.name,
        "gate": {"passed": result.passed, "checks": [c.to_json() for c in result.checks],
                 "champion_run_id": result.champion_run_id,
                 "champion_version": result.champion_version}}
    if result.passed:
        data["previous_version"] = previous
    return new_event(settings, kind, pipeline.model, data,
                     (pipeline.model, version, pipeline.alias, result.champion_version or ""),
                     "pipeline")


def run_cycle(settings: Settings, pipeline: Pipeline, decided: Plan, cut: Cut, *,
              registry: Registry, publisher: Publisher,
              now: Callable[[], dt.datetime] = utc_now) -> Cycle:
    from trainer.announce import model_trained_from_run
    from trainer.train import train

    fingerprint = cut.fingerprint()
    kinds = tuple(sorted({t.kind for t in decided.fired})) or ("manual",)
    publisher.publish(new_event(settings, "pipeline.triggered", pipeline.name, {
        "pipeline": pipeline.name, "cut": cut.to_json(), "cut_fingerprint": fingerprint,
        "decided_at": _iso(now()),
        "triggers": [{"kind": t.kind, "reason": t.reason} for t in decided.fired]
        or [{"kind": "manual", "reason": decided.reason}]},
        (pipeline.name, fingerprint), "pipeline"))

    existing = registry.run_for_cut(pipeline.name, fingerprint)
    if existing is None:
        abandoned = registry.abandon_unfinished(pipeline.name, fingerprint)
        if abandoned:
            _LOG.warning("marked runs %s of a killed worker KILLED", abandoned)
        result = train(settings, pipeline.recipe, at=cut, tables=pipeline.tables,
                       params=pipeline.params, seed=pipeline.seed,
                       experiment=pipeline.experiment,
                       tags={PIPELINE_TAG: pipeline.name, TRIGGER_TAG: ",".join(kinds)})
        run_id, trained = result.run_id, True
    else:
        run_id, trained = existing.info.run_id, False
    # Before the gate: a request replayed after a crash from here on finds its id.
    registry.record_signals(run_id, [sig.event_id for sig in decided.signals])
    version = registry.register(pipeline.model, run_id)
    if not trained:  # the first attempt may have died before its event went out
        publisher.publish(model_trained_from_run(settings, registry.get_run(run_id),
                                                 registry.model_uri(run_id), pipeline.model,
                                                 version))

    champ = registry.champion(pipeline.model, pipeline.alias)
    if champ is not None and champ.run_id == run_id:
        # Promoted before a crash; say so again (same event id), decide nothing anew.
        result_gate = gate(settings, run_id, pipeline.model, pipeline.alias, pipeline.gate,
                           evaluator=pipeline.evaluator, experiment=pipeline.experiment,
                           registry=registry)
        # The champion it was gated against was tagged before the alias moved: the
        # resent event gets the original's id.
        previous = registry.get_run(run_id).data.tags.get("tidelog.gate.champion_version")
        previous = None if previous in (None, "none") else previous
        result_gate = dataclasses.replace(result_gate, passed=True,
                                          champion_version=previous, champion_run_id=None)
        publisher.publish(_gate_event(settings, pipeline, run_id, version, result_gate,
                                      previous))
        return Cycle(pipeline.name, fingerprint, run_id, trained, version, result_gate, True,
                     kinds)
    decision = gate(settings, run_id, pipeline.model, pipeline.alias, pipeline.gate,
                    evaluator=pipeline.evaluator, experiment=pipeline.experiment,
                    registry=registry)
    registry.set_tags(run_id, {GATE_TAG: decision.decision,
                               "tidelog.gate.champion_version": decision.champion_version
                               or "none"})
    if decision.passed:
        registry.set_alias(pipeline.model, pipeline.alias, version)
    publisher.publish(_gate_event(settings, pipeline, run_id, version, decision,
                                  champ.version if champ else None))
    return Cycle(pipeline.name, fingerprint, run_id, trained, version, decision,
                 decision.passed, kinds)


def evaluate_once(settings: Settings, pipeline: Pipeline, signals: list[Signal], *,
                  registry: Registry, publisher: Publisher | None,
                  now: Callable[[], dt.datetime] = utc_now, act: bool = True
                  ) -> tuple[Plan, Cycle | None]:
    obs, cut, _champ = observe(settings, pipeline, registry, now(), signals)
    decided = plan(pipeline, obs)
    if not (act and decided.fire):
        return decided, None
    assert publisher is not None
    return decided, run_cycle(settings, pipeline, decided, cut, registry=registry,
                              publisher=publisher, now=now)


class Worker:
    """`tidelog pipeline run --follow`: a consumer group on the drift and retrain topics,
    and trigger evaluation every `interval` seconds or when an event arrives."""

    def __init__(self, settings: Settings, pipeline: Pipeline, *, interval: float = 10.0,
                 now: Callable[[], dt.datetime] = utc_now,
                 report: Callable[[Plan, Cycle | None], None] | None = None) -> None:
        from pipelines.feed import Feed

        # The worker always publishes: its events are how the loop is observed.
        self.settings = dataclasses.replace(settings, events=True)
        self.pipeline = pipeline
        self.interval = interval
        self.now = now
        self.report = report
        self.registry = Registry(self.settings, pipeline.experiment)
        self.publisher = Publisher(self.settings)
        self.feed = Feed(self.settings, f"tidelog-pipeline-{pipeline.name}",
                         ["drift", "retrain"])
        self.feed.join()
        self.pending: dict[str, Signal] = {}
        self.stop = threading.Event()
        self.cycles: list[Cycle] = []

    def step(self, poll: float = 0.5) -> tuple[Plan, Cycle | None]:
        for s in signals_from(self.feed.poll(poll), self.pipeline):
            self.pending.setdefault(s.event_id, s)
        decided, cycle = evaluate_once(self.settings, self.pipeline, list(self.pending.values()),
                                       registry=self.registry, publisher=self.publisher,
                                       now=self.now)
        if cycle is not None:
            self.cycles.append(cycle)
        # Keep what is due but waiting (debounce); what fired is older than the newest
        # training now, and a signal no trigger is due on (a drift score below the
        # threshold, a request without a manual trigger) never will be.
        waiting = {s.event_id for t in decided.triggers if t.due and not decided.fire
                   for s in t.signals}
        self.pending = {k: s for k, s in self.pending.items() if k in waiting}
        if not self.pending:
            self.feed.commit()
        if self.report is not None:
            self.report(decided, cycle)
        return decided, cycle

    def run(self, follow: bool = True) -> list[Cycle]:
        try:
            self.step()
            while follow and not self.stop.is_set():
                deadline = self.now() + dt.timedelta(seconds=self.interval)
                while not self.stop.is_set() and self.now() < deadline:
                    events = self.feed.poll(0.5)
                    fresh = [s for s in signals_from(events, self.pipeline)
                             if s.event_id not in self.pending]
                    for s in fresh:
                        self.pending[s.event_id] = s
                    if fresh:
                        break
                if not self.stop.is_set():
                    self.step(poll=0.0)
        finally:
            self.feed.close()
        return self.cycles
