"""The serving worker's Prometheus metrics, in the text exposition format (0.0.4).

prometheus_client is not a dependency of tidelog, so, like api/metrics.py, these render
the format themselves; `tidelog serve --metrics-port` serves them at `/metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tidelog.errors import ConfigError

__all__ = ["ServingMetrics", "CONTENT_TYPE", "BUCKETS", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServingMetrics:
    """Counters, a latency histogram and the version gauge of one worker (thread-safe:
    the metrics endpoint reads while the worker writes)."""

    def __init__(self, model: str, alias: str) -> None:
        self.model = model
        self.alias = alias
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}  # version -> count
        self._errors: dict[str, int] = {}  # error code -> count
        self._batches = 0
        self._aborted = 0
        self._hist = [0.0] * (len(BUCKETS) + 2)  # buckets..., sum, count
        self._version = 0.0

    def served(self, version: str, latencies: Iterable[float], errors: Iterable[str]) -> None:
        with self._lock:
            self._batches += 1
            for seconds in latencies:
                self._requests[version] = self._requests.get(version, 0) + 1
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        self._hist[i] += 1
                self._hist[-2] += seconds
                self._hist[-1] += 1
            for code in errors:
                self._errors[code] = self._errors.get(code, 0) + 1

    def aborted(self) -> None:
        with self._lock:
            self._aborted += 1

    def set_version(self, version: str) -> None:
        with self._lock:
            self._version = float(version)

    def render(self) -> str:
        with self._lock:
            requests, errors = dict(self._requests), dict(self._errors)
            hist, batches, aborted, version = (list(self._hist), self._batches,
                                               self._aborted, self._version)
        base = (("model", self.model),)
        lines = ["# HELP tidelog_serve_requests_total Requests answered (results committed "
                 "or being committed), by model version.",
                 "# TYPE tidelog_serve_requests_total counter"]
        for v, count in sorted(requests.items()):
            lines.append(f"tidelog_serve_requests_total{_labels((*base, ('version', v)))} "
                         f"{count}")
        lines += ["# HELP tidelog_serve_errors_total Requests answered with an error "
                  "result, by error code.", "# TYPE tidelog_serve_errors_total counter"]
        for code, count in sorted(errors.items()):
            lines.append(f"tidelog_serve_errors_total{_labels((*base, ('code', code)))} "
                         f"{count}")
        lines += ["# HELP tidelog_serve_batches_total Batches answered.",
                  "# TYPE tidelog_serve_batches_total counter",
                  f"tidelog_serve_batches_total{_labels(base)} {batches}",
                  "# HELP tidelog_serve_transactions_aborted_total Batches whose "
                  "transaction was aborted (and retried).",
                  "# TYPE tidelog_serve_transactions_aborted_total counter",
                  f"tidelog_serve_transactions_aborted_total{_labels(base)} {aborted}"]
        name = "tidelog_serve_latency_seconds"
        lines += [f"# HELP {name} Worker time per request, from its batch's arrival to "
                  "its result.", f"# TYPE {name} histogram"]
        for bound, cumulative in zip(BUCKETS, hist, strict=False):
            lines.append(f"{name}_bucket{_labels((*base, ('le', repr(bound))))} "
                         f"{_number(cumulative)}")
        lines.append(f"{name}_bucket{_labels((*base, ('le', '+Inf')))} {_number(hist[-1])}")
        lines.append(f"{name}_sum{_labels(base)} {repr(hist[-2])}")
        lines.append(f"{name}_count{_labels(base)} {_number(hist[-1])}")
        lines += ["# HELP tidelog_serve_model_version The model version serving now.",
                  "# TYPE tidelog_serve_model_version gauge",
                  f"tidelog_serve_model_version{_labels((*base, ('alias', self.alias)))} "
                  f"{_number(version)}"]
        return "\n".join(lines) + "\n"


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
