"""Prometheus metrics through prometheus_client: request counts and latency histograms
per route template, jobs per kind and state, and the lineage cache's hits and misses.

Each API instance has its own registry (tests run many apps in one process); values read
from the job store and the cache are collected at scrape time, never kept twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["Metrics", "CONTENT_TYPE", "Gauges"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# name -> (type, help, {((label, value), ...): sample}); the type is "gauge" or "counter"
Gauges = dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], float]]]
# `*_created` series (one per label set) double a scrape for nothing Prometheus needs here.
disable_created_metrics()
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Samples(Collector):
    """Values computed at scrape time, handed over as a `Gauges` mapping."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, (kind, help_text, samples) in sorted(self.gauges.items()):
            labels = sorted({k for pairs in samples for k, _ in pairs})
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), help_text,
                                             labels=labels)
            else:
                family = GaugeMetricFamily(name, help_text, labels=labels)
            for pairs, value in sorted(samples.items()):
                values = dict(pairs)
                family.add_metric([values.get(k, "") for k in labels], value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "tidelog_api_requests", "HTTP requests by method, route, status.",
            ("method", "route", "status"), registry=self.registry)
        self._latency = Histogram(
            "tidelog_api_request_duration_seconds", "Time to answer a request, by method and "
            "route.", ("method", "route"), buckets=BUCKETS, registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(seconds)

    def render(self, gauges: Gauges) -> str:
        """The exposition text: the request metrics, then `gauges` as read now."""
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Samples(gauges))
        return (generate_latest(self.registry) + generate_latest(scrape)).decode()
