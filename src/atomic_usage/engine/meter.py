"""The TPS meter: records per second over 1 s, 60 s and 300 s, with queue, batch and latency figures."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

__all__ = ["BATCH_SIZE_BUCKETS", "RATE_WINDOWS_S", "TpsMeter"]

RATE_WINDOWS_S: Final = (1, 60, 300)
"""Windows, in seconds, over which records per second are reported."""

BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds of the batch-size histogram; larger batches count under ``"+Inf"``."""

_SLOTS: Final = max(RATE_WINDOWS_S) + 1  # the longest window plus the second in progress


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class TpsMeter:
    """Counts processed records per second and keeps the engine's health figures; thread-safe.

    Rates use one counter per whole second in a ring of 301 slots; a window of
    ``w`` seconds sums the last ``w`` *completed* seconds, so the figure does not
    dip at the start of every second. Until ``w`` seconds have passed since the
    meter started, the sum is divided by the time elapsed instead.

    Args:
        clock: monotonic seconds; replace it in tests.
        latency_window: how many recent record latencies the percentiles use.

    >>> m = TpsMeter()
    >>> m.record(3, latencies_s=[0.01, 0.02, 0.03])
    >>> m.snapshot()["records_total"]
    3
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, latency_window: int = 4096) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._sec = [-1] * _SLOTS
        self._count = [0] * _SLOTS
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._batches = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self._batch_records = 0
        self._records_total = 0
        self._replays_total = 0
        self._failed_total = 0
        self._queue_depth = 0
        self._worker_restarts = 0
        self._recovered_tasks = 0

    def record(self, n: int = 1, *, failed: int = 0, latencies_s: Iterable[float] = ()) -> None:
        """Counts ``n`` records finished now (``failed`` of them with an error) and their latencies."""
        now = self._clock()
        sec = int(now)
        slot = sec % _SLOTS
        with self._lock:
            if self._sec[slot] != sec:
                self._sec[slot], self._count[slot] = sec, 0
            self._count[slot] += n
            self._records_total += n
            self._failed_total += failed
            self._latencies.extend(latencies_s)

    def record_replay(self, n: int = 1, *, latencies_s: Iterable[float] = ()) -> None:
        """Counts ``n`` idempotent replays (calls answered with the result stored under their
        request id) and their latencies; their records are not counted again, nor in the rates."""
        with self._lock:
            self._replays_total += n
            self._latencies.extend(latencies_s)

    def observe_batch(self, size: int) -> None:
        """Counts one batch of ``size`` records in the histogram."""
        with self._lock:
            for i, bound in enumerate(BATCH_SIZE_BUCKETS):
                if size <= bound:
                    self._batches[i] += 1
                    break
            else:
                self._batches[-1] += 1
            self._batch_records += size

    def set_queue_depth(self, depth: int) -> None:
        """Sets the gauge of records waiting for a worker."""
        self._queue_depth = depth

    def worker_restarted(self, n: int = 1) -> None:
        """Counts workers replaced by the watchdog."""
        with self._lock:
            self._worker_restarts += n

    def tasks_recovered(self, n: int = 1) -> None:
        """Counts tasks resumed after a restart."""
        with self._lock:
            self._recovered_tasks += n

    def rate(self, window_s: int) -> float:
        """Records per second over the last ``window_s`` completed seconds (at most 300)."""
        now = self._clock()
        with self._lock:
            return self._rate(now, window_s)

    def _rate(self, now: float, window_s: int) -> float:
        current = int(now)
        lo = current - window_s
        total = sum(c for s, c in zip(self._sec, self._count, strict=True) if lo <= s < current)
        span = min(float(window_s), now - self._start)
        if span < 1.0:
            # Before the first whole second ends, report what the partial second shows.
            partial = sum(c for s, c in zip(self._sec, self._count, strict=True) if s >= lo)
            return partial / span if span > 0 else 0.0
        return total / span

    def snapshot(self) -> dict[str, Any]:
        """Every figure, JSON-ready.

        Returns:
            ``{"tps": {"1s", "60s", "300s"}, "records_total", "replays_total", "failed_total", "queue_depth",
            "batches_total", "batch_size": {"mean", "histogram": {"1", "2", ..., "+Inf"}},
            "latency_s": {"p50", "p90", "p99", "samples"}, "worker_restarts", "recovered_tasks",
            "uptime_s"}``; percentiles are ``None`` before any record finished.
        """
        now = self._clock()
        with self._lock:
            lat = sorted(self._latencies)
            n_batches = sum(self._batches)
            labels = [str(b) for b in BATCH_SIZE_BUCKETS] + ["+Inf"]
            return {
                "tps": {f"{w}s": self._rate(now, w) for w in RATE_WINDOWS_S},
                "records_total": self._records_total,
                "replays_total": self._replays_total,
                "failed_total": self._failed_total,
                "queue_depth": self._queue_depth,
                "batches_total": n_batches,
                "batch_size": {
                    "mean": self._batch_records / n_batches if n_batches else None,
                    "histogram": dict(zip(labels, self._batches, strict=True)),
                },
                "latency_s": {
                    "p50": _percentile(lat, 50),
                    "p90": _percentile(lat, 90),
                    "p99": _percentile(lat, 99),
                    "samples": len(lat),
                },
                "worker_restarts": self._worker_restarts,
                "recovered_tasks": self._recovered_tasks,
                "uptime_s": now - self._start,
            }
