"""A monitoring pass as Prometheus metrics, through prometheus_client like `api/metrics.py`:
gauges labelled by model and version, served by `MetricsServer` on /metrics or written to
a file for node_exporter's textfile collector."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from monitoring.report import MonitorReport

__all__ = ["CONTENT_TYPE", "render", "mlflow_metrics", "write_textfile", "MetricsServer"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
Sample = tuple[tuple[tuple[str, str], ...], float]


def _gauges(report: MonitorReport) -> dict[str, tuple[str, list[Sample]]]:
    t = report.target
    base = (("model", t.model), ("version", t.version))
    g: dict[str, tuple[str, list[Sample]]] = {
        "tidelog_monitor_drift_share": ("Share of the model's features that drifted.",
                                        [(base, report.drift_share)]),
        "tidelog_monitor_dataset_drift": ("1 when the share of drifted features is >= 0.5.",
                                          [(base, float(report.dataset_drift))]),
        "tidelog_monitor_feature_drift_score": (
            "Drift score per feature: the p-value of a test or the distance (see method).",
            [((*base, ("feature", c.column), ("method", c.method)), c.score)
             for c in report.columns]),
        "tidelog_monitor_feature_drifted": (
            "1 when the feature crossed its method's threshold.",
            [((*base, ("feature", c.column)), float(c.drifted)) for c in report.columns]),
        "tidelog_monitor_feature_psi": (
            "Population stability index per feature.",
            [((*base, ("feature", c.column)), c.psi) for c in report.columns]),
        "tidelog_monitor_current_rows": ("Rows in the current sample.",
                                         [(base, float(report.current["rows"]))]),
    }
    if report.prediction is not None:
        p = report.prediction
        g["tidelog_monitor_prediction_drift_score"] = (
            "Drift score of the predictions (p-value or distance, see method).",
            [((*base, ("method", p.method)), p.score)])
        g["tidelog_monitor_prediction_drifted"] = ("1 when the predictions drifted.",
                                                   [(base, float(p.drifted))])
    if report.latency is not None:
        g["tidelog_monitor_latency_ms"] = (
            "Inference latency of served requests, milliseconds, by quantile.",
            [((*base, ("quantile", q)), report.latency[k])
             for q, k in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))])
    if report.outliers is not None:
        g["tidelog_monitor_outlier_share"] = (
            "Share of current rows an isolation forest fitted on the training features "
            "calls outliers.", [(base, report.outliers.share)])
    if report.decay is not None:
        d = report.decay
        g["tidelog_monitor_live_metric"] = (
            "The model's metric on labelled served requests.",
            [((*base, ("metric", k)), v) for k, v in sorted(d.live.items())])
        if d.degradation is not None:
            g["tidelog_monitor_decay"] = ("Relative degradation of the live metric against "
                                          "the training run's.", [(base, d.degradation)])
    return g


class _Pass(Collector):
    """The gauges of monitoring passes, as prometheus_client metric families."""

    def __init__(self, reports: Iterable[MonitorReport]) -> None:
        self.merged: dict[str, tuple[str, list[Sample]]] = {}
        for report in reports:
            for name, (help_text, samples) in _gauges(report).items():
                self.merged.setdefault(name, (help_text, []))[1].extend(samples)

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, samples) in sorted(self.merged.items()):
            names = sorted({k for labels, _ in samples for k, _ in labels})
            family = GaugeMetricFamily(name, help_text, labels=names)
            for labels, value in sorted(samples):
                given = dict(labels)
                family.add_metric([given.get(k, "") for k in names], value)
            yield family


def render(reports: Iterable[MonitorReport]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Pass(reports))
    return generate_latest(registry).decode()


def mlflow_metrics(report: MonitorReport) -> dict[str, float]:
    """The same numbers as MLflow metric names on the model version's run."""
    m = {"monitor.drift_share": report.drift_share,
         "monitor.dataset_drift": float(report.dataset_drift),
         "monitor.current_rows": float(report.current["rows"])}
    for c in report.columns:
        m[f"monitor.drift.{c.column}"] = c.score
        m[f"monitor.drifted.{c.column}"] = float(c.drifted)
        m[f"monitor.psi.{c.column}"] = c.psi
    if report.prediction is not None:
        m["monitor.prediction_drift"] = report.prediction.score
        m["monitor.prediction_drifted"] = float(report.prediction.drifted)
    if report.latency is not None:
        for k in ("p50", "p95", "p99"):
            m[f"monitor.latency_ms.{k}"] = report.latency[k]
    if report.outliers is not None:
        m["monitor.outlier_share"] = report.outliers.share
    if report.decay is not None:
        m.update({f"monitor.live.{k}": v for k, v in report.decay.live.items()})
        if report.decay.degradation is not None:
            m["monitor.decay"] = report.decay.degradation
    # MLflow stores floats; an infinite chi² stays out rather than failing the batch.
    return {k: v for k, v in m.items() if v == v and abs(v) != float("inf")}


def write_textfile(path: Path, text: str) -> None:
    """Atomically: node_exporter never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsServer:
    """GET /metrics answers the text of the latest pass; everything else is a 404."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._text = "# no monitoring pass yet\n"
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = server.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass  # a scrape every few seconds is not news

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def update(self, text: str) -> None:
        with self._lock:
            self._text = text

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
