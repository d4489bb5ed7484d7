"""`tidelog monitor run`: a monitoring pass, then its consequences — metrics on the model
version's MLflow run, Prometheus gauges, and `drift.detected` events for the pipelines.

A pass that fails (broker or MLflow down, no results yet) is reported and the loop goes on
with the next; the reference (the recipe's features on the training snapshot) is computed
once per champion version, and again when the alias moves.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.alerts import drift_events
from monitoring.exposition import MetricsServer, mlflow_metrics, render, write_textfile
from monitoring.report import MonitorReport, Reference, load_reference, monitor_report
from tidelog.errors import TidelogError
from tidelog.events import events_enabled
from tidelog.settings import Settings

__all__ = ["PassResult", "Monitor", "monitor_pass"]

_LOG = logging.getLogger("tidelog.monitoring")


@dataclass(frozen=True)
class PassResult:
    report: MonitorReport
    logged: dict[str, float]  # the MLflow metrics written on the version's run
    events: list[dict[str, Any]] = field(default_factory=list)  # structured CloudEvents
    published: bool = False

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {"model": r.target.model, "version": r.target.version,
                "run_id": r.target.run_id, "generated_at": r.generated_at,
                "current": r.current, "drift_share": r.drift_share,
                "dataset_drift": r.dataset_drift, "drifted_columns": r.drifted_columns,
                "prediction_drifted": bool(r.prediction and r.prediction.drifted),
                "decayed": bool(r.decay and r.decay.decayed), "mlflow_metrics": self.logged,
                "events": self.events, "published": self.published}


def monitor_pass(settings: Settings, report: MonitorReport, experiment: str = "tidelog",
                 log_mlflow: bool = True, publish: bool = True) -> PassResult:
    """Log the report's numbers on the version's run and publish its events."""
    from tidelog.events import Publisher
    from trainer.tracking import connect

    logged: dict[str, float] = {}
    if log_mlflow:
        logged = mlflow_metrics(report)
        stamp = int(dt.datetime.fromisoformat(
            report.generated_at.replace("Z", "+00:00")).timestamp() * 1000)
        connect(settings, experiment).log_metrics(report.target.run_id, logged, stamp)
    events = drift_events(settings, report)
    sent = False
    if publish and events and events_enabled(settings):
        publisher = Publisher(settings)
        for event in events:
            publisher.publish(event)
        sent = True
    return PassResult(report, logged, [e.to_json() for e in events], sent)


class Monitor:
    """Repeated passes over one `model@alias`."""

    def __init__(self, settings: Settings, model: str, alias: str = "champion", *,
                 against: str | None = None, window: int | None = None,
                 experiment: str = "tidelog", decay_threshold: float = 0.1,
                 metrics_port: int | None = None, metrics_file: Path | None = None,
                 log_mlflow: bool = True, publish: bool = True) -> None:
        self.settings, self.model, self.alias = settings, model, alias
        self.against, self.window, self.experiment = against, window, experiment
        self.decay_threshold = decay_threshold
        self.metrics_file = metrics_file
        self.log_mlflow, self.publish = log_mlflow, publish
        self.server = MetricsServer(metrics_port) if metrics_port is not None else None
        self._reference: Reference | None = None

    def _current_reference(self) -> Reference:
        from pipelines.registry import Registry

        champ = Registry(self.settings, self.experiment).champion(self.model, self.alias)
        if (self._reference is None or champ is None
                or champ.version != self._reference.target.version):
            self._reference = load_reference(self.settings, self.model, self.alias,
                                             self.experiment)
        return self._reference

    def step(self) -> PassResult:
        report = monitor_report(self.settings, self.model, self.alias, against=self.against,
                                window=self.window, experiment=self.experiment,
                                decay_threshold=self.decay_threshold,
                                reference=self._current_reference())
        result = monitor_pass(self.settings, report, self.experiment, self.log_mlflow,
                              self.publish)
        text = render([report])
        if self.server is not None:
            self.server.update(text)
        if self.metrics_file is not None:
            write_textfile(self.metrics_file, text)
        return result

    def run(self, every: float, on_pass: Callable[[PassResult | TidelogError], None],
            passes: int | None = None) -> None:
        done = 0
        try:
            while passes is None or done < passes:
                started = time.monotonic()
                try:
                    on_pass(self.step())
                except TidelogError as exc:
                    _LOG.warning("monitoring pass failed: %s", exc.message)
                    on_pass(exc)
                done += 1
                if passes is not None and done >= passes:
                    break
                time.sleep(max(0.0, every - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
