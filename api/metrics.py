"""Prometheus metrics in the text exposition format (version 0.0.4), without a client
library: request counts and latency histograms per route template, jobs per kind and
state, and the lineage cache's hits and misses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Metrics", "CONTENT_TYPE", "Gauges"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# name -> (type, help, {((label, value), ...): sample})
Gauges = dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], float]]]
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # buckets..., sum, count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._latency.setdefault((method, route), [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def render(self, gauges: Gauges) -> str:
        """The exposition text; `gauges` maps name -> (type, help, {labels: value})."""
        lines = ["# HELP tidelog_api_requests_total HTTP requests by method, route, status.",
                 "# TYPE tidelog_api_requests_total counter"]
        with self._lock:
            requests = dict(self._requests)
            latency = {k: list(v) for k, v in self._latency.items()}
        for (method, route, status), count in sorted(requests.items()):
            text = _labels((("method", method), ("route", route), ("status", status)))
            lines.append(f"tidelog_api_requests_total{text} {count}")
        name = "tidelog_api_request_duration_seconds"
        lines += [f"# HELP {name} Time to answer a request, by method and route.",
                  f"# TYPE {name} histogram"]
        for (method, route), hist in sorted(latency.items()):
            base = (("method", method), ("route", route))
            for bound, cumulative in zip(BUCKETS, hist, strict=False):
                lines.append(f"{name}_bucket{_labels((*base, ('le', repr(bound))))} "
                             f"{_number(cumulative)}")
            lines.append(f"{name}_bucket{_labels((*base, ('le', '+Inf')))} "
                         f"{_number(hist[-1])}")
            lines.append(f"{name}_sum{_labels(base)} {repr(hist[-2])}")
            lines.append(f"{name}_count{_labels(base)} {_number(hist[-1])}")
        for metric, (kind, help_text, samples) in sorted(gauges.items()):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            for labels, value in sorted(samples.items()):
                lines.append(f"{metric}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"
