"""The serving worker's Prometheus metrics, through prometheus_client (one registry per
worker); `tidelog serve --metrics-port` serves them at `/metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tidelog.errors import ConfigError

__all__ = ["ServingMetrics", "CONTENT_TYPE", "BUCKETS", "serve_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
disable_created_metrics()  # no `*_created` series: nothing here needs them


class ServingMetrics:
    """Counters, a latency histogram and the version gauge of one worker (the client
    library is thread-safe: the metrics endpoint reads while the worker writes)."""

    def __init__(self, model: str, alias: str) -> None:
        self.model = model
        self.alias = alias
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "tidelog_serve_requests", "Requests answered (results committed or being "
            "committed), by model version.", ("model", "version"), registry=self.registry)
        self._errors = Counter(
            "tidelog_serve_errors", "Requests answered with an error result, by error code.",
            ("model", "code"), registry=self.registry)
        self._batches = Counter("tidelog_serve_batches", "Batches answered.", ("model",),
                                registry=self.registry)
        self._aborted = Counter(
            "tidelog_serve_transactions_aborted", "Batches whose transaction was aborted "
            "(and retried).", ("model",), registry=self.registry)
        self._latency = Histogram(
            "tidelog_serve_latency_seconds", "Worker time per request, from its batch's "
            "arrival to its result.", ("model",), buckets=BUCKETS, registry=self.registry)
        self._version = Gauge("tidelog_serve_model_version", "The model version serving now.",
                              ("model", "alias"), registry=self.registry)
        # Present from the start, so a scrape before the first batch shows zeros.
        self._batches.labels(model)
        self._aborted.labels(model)
        self._latency.labels(model)
        self._version.labels(model, alias)

    def served(self, version: str, latencies: Iterable[float], errors: Iterable[str]) -> None:
        self._batches.labels(self.model).inc()
        for seconds in latencies:
            self._requests.labels(self.model, version).inc()
            self._latency.labels(self.model).observe(seconds)
        for code in errors:
            self._errors.labels(self.model, code).inc()

    def aborted(self) -> None:
        self._aborted.labels(self.model).inc()

    def set_version(self, version: str) -> None:
        self._version.labels(self.model, self.alias).set(float(version))

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def serve_metrics(metrics: ServingMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve `/metrics` on a daemon thread; the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # scrapes are not worth a log line

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                          "pick a free --metrics-port", host=host, port=port) from exc
    threading.Thread(target=server.serve_forever, name="serve-metrics", daemon=True).start()
    return server
