"""The watchdog: finds workers that died, went silent or hang on a batch, and has them replaced."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from .workers import Worker

__all__ = [
    "DEFAULT_BATCH_TIMEOUT_S",
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "Supervised",
    "Watchdog",
    "diagnose",
]

DEFAULT_HEARTBEAT_INTERVAL_S: Final = 0.5
"""Seconds between two heartbeats of a worker."""

DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 10.0
"""Seconds without a heartbeat after which a worker counts as hung."""

DEFAULT_BATCH_TIMEOUT_S: Final = 60.0
"""Seconds one batch may run before its worker counts as hung."""

_log = logging.getLogger(__name__)


class Supervised(Protocol):
    """What the watchdog needs from a pool."""

    def live_workers(self) -> Sequence[Worker]: ...
    def replace_worker(self, worker: Worker, reason: str) -> None: ...


def diagnose(worker: Worker, now: float, *, heartbeat_timeout_s: float, batch_timeout_s: float) -> str | None:
    """Why ``worker`` must be replaced, or ``None`` when it is healthy.

    Args:
        worker: the worker to judge.
        now: monotonic seconds.
        heartbeat_timeout_s: silence after which it counts as hung.
        batch_timeout_s: time on one batch after which it counts as hung.
    """
    if not worker.is_alive():
        return f"worker {worker.index} stopped"
    since = worker.started_at
    if not worker.ready:
        # Starting (a spawned interpreter's imports, then loading the model) may take longer than
        # a heartbeat timeout on a busy host, before the process's beat thread even runs: judged
        # by the batch timeout alone, so a slow start is not counted as a failed one.
        if since is not None and now - since > batch_timeout_s:
            return f"worker {worker.index} has built its runner for {now - since:.1f} s (timeout {batch_timeout_s} s)"
        return None
    silent = now - worker.last_beat()
    if silent > heartbeat_timeout_s:
        return f"worker {worker.index} sent no heartbeat for {silent:.1f} s (timeout {heartbeat_timeout_s} s)"
    started = worker.job_started
    if worker.job is not None and started is not None and now - started > batch_timeout_s:
        return f"worker {worker.index} has run one batch for {now - started:.1f} s (timeout {batch_timeout_s} s)"
    return None


class Watchdog:
    """Checks a pool's workers every ``interval_s`` and replaces the unhealthy ones.

    The pool re-queues the batch a replaced worker held (see ``WorkerPool``).

    Args:
        pool: the pool to watch.
        heartbeat_timeout_s: silence after which a worker counts as hung.
        batch_timeout_s: time on one batch after which a worker counts as hung.
        interval_s: seconds between two checks.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        pool: Supervised,
        *,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[str]:
        """One round: replaces every unhealthy worker; returns the reasons found."""
        found = []
        for worker in self.pool.live_workers():
            reason = diagnose(
                worker,
                self._clock(),
                heartbeat_timeout_s=self.heartbeat_timeout_s,
                batch_timeout_s=self.batch_timeout_s,
            )
            if reason is not None:
                _log.warning("watchdog: replacing a worker: %s", reason)
                self.pool.replace_worker(worker, reason)
                found.append(reason)
        return found

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any one bad round
                _log.exception("watchdog: a check failed; trying again in %s s", self.interval_s)

    def start(self) -> None:
        """Starts checking in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="atomic-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops checking (waits for the round in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
