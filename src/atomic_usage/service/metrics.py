"""Prometheus metrics: the engine's figures read from ``predictor.stats()`` at scrape time.

Everything lives in the app's own :class:`~prometheus_client.CollectorRegistry`, so
two apps in one process (tests) never share or clash over metrics.

| metric | type | from |
| --- | --- | --- |
| ``atomic_records_per_second{window="1s"|"60s"|"300s"}`` | gauge | the TPS meter |
| ``atomic_records_total``, ``atomic_records_failed_total`` | counter | the TPS meter (new records only) |
| ``atomic_replays_total`` | counter | idempotent replays: calls answered with the stored result of their request id |
| ``atomic_process_latency_seconds{quantile}`` | gauge | process() latency p50/p90/p99 |
| ``atomic_batch_size`` | histogram | records per engine batch |
| ``atomic_queue_depth`` | gauge | records waiting for a worker |
| ``atomic_workers_alive``, ``atomic_workers_busy``, ``atomic_workers_configured`` | gauge | the pool |
| ``atomic_worker_restarts_total``, ``atomic_recovered_tasks_total`` | counter | watchdog, recovery |
| ``atomic_tasks{status}`` | gauge | the store |
| ``atomic_model_info{name,version}`` | gauge (1) | the served model |
| ``atomic_http_request_duration_seconds{method,route,status}`` | histogram | this service |
| ``atomic_processes`` | gauge | serving processes the scrape covered (``serve --processes``; 1 otherwise) |

With several serving processes over one store, the scraped process merges its siblings'
figures with its own (:mod:`.peers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS_S", "EngineCollector", "make_registry"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bucket bounds (seconds) of the HTTP latency histogram."""


class EngineCollector(Collector):
    """Turns one ``stats()`` snapshot into Prometheus metric families at each scrape.

    Args:
        stats: returns the predictor's stats, or ``None`` while it is not running
            (then only ``atomic_up 0`` is exported).
    """

    def __init__(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; describe nothing so registering never scrapes

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily("atomic_up", "1 when the engine is running", value=0 if s is None else 1)
        if s is None:
            return
        tps = GaugeMetricFamily("atomic_records_per_second", "Records processed per second", labels=["window"])
        for window, rate in s["tps"].items():
            tps.add_metric([window], float(rate))
        yield tps
        yield CounterMetricFamily("atomic_records", "Records processed", value=s["records_total"])
        yield CounterMetricFamily(
            "atomic_replays",
            "Idempotent replays: calls answered with the stored result of their request id (no new records)",
            value=s.get("replays_total", 0),
        )
        yield CounterMetricFamily("atomic_records_failed", "Records that failed", value=s.get("failed_total", 0))
        lat = s["latency_s"]
        q = GaugeMetricFamily(
            "atomic_process_latency_seconds",
            "process() latency percentiles (recent window)",
            labels=["quantile"],
        )
        for name, quant in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
            if lat.get(name) is not None:
                q.add_metric([quant], float(lat[name]))
        yield q
        hist = s["batch_size"]["histogram"]
        buckets, running = [], 0
        for bound, n in hist.items():
            running += int(n)
            buckets.append((bound, running))
        mean = s["batch_size"].get("mean") or 0.0
        yield HistogramMetricFamily(
            "atomic_batch_size", "Records per engine batch", buckets=buckets, sum_value=mean * running
        )
        yield GaugeMetricFamily("atomic_queue_depth", "Records waiting for a worker", value=s["queue_depth"])
        w = s["workers"]
        yield GaugeMetricFamily("atomic_workers_alive", "Workers alive", value=w["alive"])
        yield GaugeMetricFamily("atomic_workers_busy", "Workers running a batch", value=w["busy"])
        yield GaugeMetricFamily("atomic_workers_configured", "Workers configured", value=w["configured"])
        yield CounterMetricFamily(
            "atomic_worker_restarts", "Workers replaced by the watchdog", value=s["worker_restarts"]
        )
        yield CounterMetricFamily("atomic_recovered_tasks", "Tasks resumed after a crash", value=s["recovered_tasks"])
        tasks = GaugeMetricFamily("atomic_tasks", "Stored tasks by status", labels=["status"])
        for status, n in s["tasks"].items():
            tasks.add_metric([status], n)
        yield tasks
        info = GaugeMetricFamily("atomic_model_info", "The served model", labels=["name", "version"])
        info.add_metric([str(s["model"]["name"]), str(s["model"]["version"])], 1)
        yield info
        yield GaugeMetricFamily(
            "atomic_processes", "Serving processes this scrape covers", value=int(s.get("processes", 1))
        )


def make_registry(stats: Callable[[], dict[str, Any] | None]) -> tuple[CollectorRegistry, Histogram]:
    """A registry holding an :class:`EngineCollector` and the HTTP latency histogram.

    Returns:
        The registry and the histogram (labels ``method``, ``route``, ``status``) to observe.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(stats))
    http = Histogram(
        "atomic_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS_S,
        registry=registry,
    )
    return registry, http
