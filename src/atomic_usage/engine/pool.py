"""The worker pool: micro-batches from the batcher, run by N workers under a watchdog.

Every submitted record ends with a result or an exception, never hangs:

- a worker that dies, goes silent or hangs on a batch is replaced and its batch
  re-queued (ahead of new work);
- a batch that breaks ``max_crashes`` workers is split in two, and halves that
  break a worker again are split again, so a poison record is found in
  ``log2(batch size)`` more crashes; alone, it fails with :class:`WorkerCrashed`
  while the rest of its batch completes;
- when workers cannot even start (the runner factory raises every time), the
  pool fails queued and new records with :class:`WorkerCrashed` instead of
  retrying forever;
- :meth:`WorkerPool.close` fails whatever has not run by its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Final

from ..errors import EngineError, WorkerCrashed
from .batcher import DEFAULT_MAX_QUEUE, Batcher, Pending
from .meter import TpsMeter
from .watchdog import (
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    Watchdog,
)
from .workers import Job, Mode, ProcessWorker, RunnerFactory, ThreadWorker, Worker

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["DEFAULT_MAX_CRASHES", "DEFAULT_MAX_START_FAILURES", "WorkerPool"]

DEFAULT_MAX_CRASHES: Final = 2
"""Workers a batch may break before it is split to find the record that does it."""

DEFAULT_MAX_START_FAILURES: Final = 3
"""Workers in a row that may fail to start before the pool gives up."""

_STOPPED: Final = "The engine stopped before this record finished; send it again."

_log = logging.getLogger(__name__)


def _settle(fut: Future[Any], value: Any) -> bool:
    """Resolves ``fut`` unless something resolved it first; returns whether this call did."""
    try:
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)
    except Exception:  # InvalidStateError: an earlier run of the record won
        return False
    return True


class WorkerPool:
    """Runs ``run_batch`` on micro-batches of submitted records in N threads or processes.

    Args:
        runner_factory: builds one worker's ``run_batch``; called once per worker
            (picklable when ``mode="process"``).
        n_workers: workers to run; ``None`` means one per core.
        mode: ``"thread"`` or ``"process"``.
        max_batch_size: records per batch at most.
        max_wait_s: seconds a batch waits to fill.
        max_queue: records that may wait; more raise ``QueueFullError``.
        meter: the TPS meter to feed; a new one when ``None``.
        heartbeat_interval_s: seconds between heartbeats.
        heartbeat_timeout_s: silence after which a worker is replaced.
        batch_timeout_s: time on one batch after which its worker is replaced.
        max_crashes: workers a batch may break before it is split.
        start_method: multiprocessing start method for process workers.

    >>> def factory():
    ...     return lambda items: [x * 2 for x in items]
    >>> with WorkerPool(factory, n_workers=1) as pool:
    ...     pool.map([1, 2, 3])
    [2, 4, 6]
    """

    def __init__(
        self,
        runner_factory: RunnerFactory,
        *,
        n_workers: int | None = None,
        mode: Mode = "thread",
        max_batch_size: int = 256,
        max_wait_s: float = 0.005,
        max_queue: int = DEFAULT_MAX_QUEUE,
        meter: TpsMeter | None = None,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        max_crashes: int = DEFAULT_MAX_CRASHES,
        start_method: str = "spawn",
    ) -> None:
        if mode not in ("thread", "process"):
            raise EngineError(f"mode={mode!r} is not 'thread' or 'process'.")
        self.runner_factory = runner_factory
        self.n_workers = n_workers or (os.cpu_count() or 1)
        self.mode: Mode = mode
        self.max_crashes = max_crashes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.start_method = start_method
        self.meter = meter if meter is not None else TpsMeter()
        self.batcher: Batcher[Any] = Batcher(
            max_size=max_batch_size, max_wait_s=max_wait_s, max_queue=max_queue, meter=self.meter
        )
        self.watchdog = Watchdog(
            self,
            heartbeat_timeout_s=heartbeat_timeout_s,
            batch_timeout_s=batch_timeout_s,
            interval_s=min(heartbeat_interval_s, 0.5),
        )
        self._cond = threading.Condition()
        self._workers: list[Worker] = []
        self._idle: deque[Worker] = deque()
        self._retry: deque[Job] = deque()
        self._next_index = 0
        self._start_failures = 0
        self._broken: str | None = None
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="atomic-dispatcher", daemon=True)

    @classmethod
    def from_settings(cls, runner_factory: RunnerFactory, settings: Settings, **kwargs: Any) -> WorkerPool:
        """A pool sized by ``settings`` (workers, batch size and wait); ``kwargs`` override."""
        kw: dict[str, Any] = {
            "n_workers": settings.n_workers,
            "max_batch_size": settings.batch_max_size,
            "max_wait_s": settings.batch_max_wait_s,
        }
        kw.update(kwargs)
        return cls(runner_factory, **kw)

    # --- life cycle -------------------------------------------------------------
    def start(self) -> WorkerPool:
        """Starts the workers, the dispatcher and the watchdog; returns the pool."""
        for _ in range(self.n_workers):
            self._spawn()
        self._dispatcher.start()
        self.watchdog.start()
        return self

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> None:
        with self._cond:
            if self._stopping:
                return
            index, self._next_index = self._next_index, self._next_index + 1
            worker: Worker
            if self.mode == "thread":
                worker = ThreadWorker(index, self.runner_factory, self, heartbeat_interval_s=self.heartbeat_interval_s)
            else:
                worker = ProcessWorker(
                    index,
                    self.runner_factory,
                    self,
                    heartbeat_interval_s=self.heartbeat_interval_s,
                    start_method=self.start_method,
                )
            self._workers.append(worker)
        try:
            worker.start()
        except Exception as exc:
            # No thread or process to be had (or a process without its reader): a start failure
            # like a runner that cannot be built, so the pool tries again and gives up after
            # several in a row, failing the records, instead of running a worker short for good.
            worker.kill()
            self.on_start_failed(worker, f"starting it raised {type(exc).__name__}: {exc}")
            return
        with self._cond:
            worker.started_at = time.monotonic()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops taking records, lets queued ones finish for up to ``timeout_s``, then stops.

        Records still unfinished at the deadline fail with :class:`EngineError`.
        """
        self.batcher.close(drain=True)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while time.monotonic() < deadline and (
                self.batcher.depth() or self._retry or any(w.job for w in self._workers)
            ):
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
            workers = list(self._workers)
            leftovers = [e for job in self._retry for e in job.entries]
            leftovers += [e for w in workers if w.job is not None for e in w.job.entries]
            self._retry.clear()
        self.watchdog.stop()
        if self._dispatcher.is_alive():
            self._dispatcher.join(5.0)
        leftovers += self.batcher.close(drain=False)
        stopped = EngineError(_STOPPED)
        for e in leftovers:
            _settle(e.future, stopped)
        for w in workers:
            w.stop(1.0)

    # --- submitting -------------------------------------------------------------
    def submit(self, item: Any) -> Future[Any]:
        """Queues one record; the future resolves with its result or exception."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Iterable[Any]) -> list[Future[Any]]:
        """Queues records together; see :meth:`Batcher.submit_many`.

        Raises:
            WorkerCrashed: the workers cannot start, so nothing would run.
        """
        if self._broken is not None:
            raise WorkerCrashed(self._broken)
        return self.batcher.submit_many(items)

    async def asubmit(self, item: Any) -> Any:
        """Queues one record and awaits its result (for asyncio callers).

        Raises:
            WorkerCrashed: the workers cannot start, so nothing would run.
        """
        return await asyncio.wrap_future(self.submit(item))

    def map(self, items: Iterable[Any], *, timeout_s: float | None = None) -> list[Any]:
        """Runs ``items`` and waits: each record's result, or its exception instance.

        Args:
            items: the records.
            timeout_s: overall wait; records unfinished by then get an ``EngineError``.
        """
        futures = self.submit_many(items)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out: list[Any] = []
        for fut in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(fut.result(left))
            except FutureTimeout:
                out.append(EngineError(f"The record did not finish within {timeout_s} s."))
            except Exception as exc:
                out.append(exc)
        return out

    # --- dispatch ---------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._idle and not self._stopping:
                    self._cond.wait(0.1)
                if self._stopping:
                    return
                worker = self._idle.popleft()
                job = self._retry.popleft() if self._retry else None
            if job is None:
                batch = self.batcher.next_batch(timeout_s=0.05)
                job = Job(batch) if batch else None
            with self._cond:
                if job is not None and self._stopping:
                    # close() gave up waiting while this batch was between the batcher and a
                    # worker, so its leftovers miss it, and the workers are being stopped.
                    self._fail(job.entries, EngineError(_STOPPED))
                    return
                if job is None or worker.retired or self._broken is not None:
                    if job is not None and self._broken is None:
                        self._retry.appendleft(job)
                    elif job is not None:
                        self._fail(job.entries, WorkerCrashed(self._broken or ""))
                    if not worker.retired:
                        self._idle.appendleft(worker)
                    continue
                worker.job, worker.job_started = job, time.monotonic()
            self.meter.observe_batch(len(job.entries))
            worker.run(job)

    def _fail(self, entries: Sequence[Pending[Any]], exc: BaseException) -> None:
        for e in entries:
            _settle(e.future, exc)
        self.meter.record(len(entries), failed=len(entries))

    # --- worker events (WorkerEvents) ---------------------------------------------
    def on_ready(self, worker: Worker) -> None:
        """A worker built its runner and takes batches."""
        with self._cond:
            worker.ready = True
            if not worker.retired:
                self._start_failures = 0
                self._idle.append(worker)
                self._cond.notify_all()

    def on_done(self, worker: Worker, job: Job, results: Sequence[Any]) -> None:
        """A worker returned one result per record (late results of replaced workers count too)."""
        now = time.monotonic()
        if len(results) != len(job.entries):
            bad = EngineError(f"run_batch returned {len(results)} results for {len(job.entries)} records.")
            results = [bad] * len(job.entries)
        settled = failed = 0
        for e, r in zip(job.entries, results, strict=True):
            if _settle(e.future, r):
                settled += 1
                failed += isinstance(r, BaseException)
        self.meter.record(settled, failed=failed, latencies_s=[now - e.enqueued_at for e in job.entries])
        with self._cond:
            if worker.job is job:
                worker.job = worker.job_started = None
                if not worker.retired:
                    self._idle.append(worker)
            self._cond.notify_all()

    def on_crash(self, worker: Worker, job: Job | None, reason: str) -> None:
        """A worker died or raised out of ``run_batch``: replace it and re-queue its batch."""
        if not worker.ready and job is None:
            self.on_start_failed(worker, reason)  # died while building its runner
        else:
            self._retire(worker, reason)

    def on_start_failed(self, worker: Worker, reason: str) -> None:
        """A worker could not build its runner; after several in a row, run short while other
        workers serve, and give up (failing the records) only when none does."""
        with self._cond:
            worker.retired = True
            if worker not in self._workers:  # counted already (replaced, then its runner failed too)
                return
            self._workers.remove(worker)
            self._start_failures += 1
            too_many = self._start_failures >= DEFAULT_MAX_START_FAILURES
            # Workers that serve keep serving: the failing one is then not replaced again, so a
            # runner that cannot be built for one more worker (memory, say) fails no record.
            serving = sum(1 for w in self._workers if w.ready and not w.retired) if too_many else 0
            give_up = too_many and not serving
            if give_up:
                self._broken = (
                    f"The engine workers cannot start: {reason} "
                    f"({self._start_failures} tries); fix the model or runner and restart the engine."
                )
                pending = [e for job in self._retry for e in job.entries]
                self._retry.clear()
            self._cond.notify_all()
        if serving:
            _log.error(
                "worker %s failed to start: %s; %d tries in a row, so the pool runs on with %d of %d workers",
                worker.index,
                reason,
                self._start_failures,
                serving,
                self.n_workers,
            )
            return
        _log.error("worker %s failed to start: %s", worker.index, reason)
        if give_up:
            self._fail(pending + self.batcher.close(drain=False), WorkerCrashed(self._broken or ""))
        else:
            self._spawn()

    # --- supervision (Supervised) -------------------------------------------------
    def live_workers(self) -> list[Worker]:
        """The workers currently in service (started, not retired)."""
        with self._cond:
            return [w for w in self._workers if w.started_at is not None and not w.retired]

    def replace_worker(self, worker: Worker, reason: str) -> None:
        """Stops ``worker`` (kill or abandon), starts another, and re-queues its batch.

        A worker that never built its runner counts as one that failed to start, so a runner
        that cannot be built in time fails the records after a few tries instead of having
        workers replaced forever while the records wait.
        """
        if not worker.ready:
            worker.kill()
            self.on_start_failed(worker, reason)
            return
        self._retire(worker, reason)

    def _retire(self, worker: Worker, reason: str) -> None:
        with self._cond:
            if worker.retired and worker not in self._workers:
                return
            worker.retired = True
            if worker in self._workers:
                self._workers.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            job, worker.job = worker.job, None
            if job is not None:
                self._requeue(job, reason)
            self._cond.notify_all()
        worker.kill()
        self.meter.worker_restarted()
        _log.warning("worker %s replaced: %s", worker.index, reason)
        self._spawn()

    def _requeue(self, job: Job, reason: str) -> None:
        """Puts a batch back after a crash, split when it broke too many workers (lock held)."""
        entries = [e for e in job.entries if not e.future.done()]
        if not entries:
            return
        crashes = job.crashes + 1
        if crashes < self.max_crashes:
            self._retry.appendleft(Job(entries, crashes))
        elif len(entries) == 1:
            self._fail(
                entries,
                WorkerCrashed(
                    f"This record broke {crashes} workers in a row (last: {reason}); it was set aside "
                    "so the rest of its batch could finish. Check its values and the worker logs."
                ),
            )
        else:
            mid = len(entries) // 2
            # Each half gets one more try before it is split again.
            self._retry.appendleft(Job(entries[mid:], self.max_crashes - 1))
            self._retry.appendleft(Job(entries[:mid], self.max_crashes - 1))

    # --- figures ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The meter's snapshot plus the pool's mode and workers."""
        snap = self.meter.snapshot()
        with self._cond:
            snap["workers"] = {
                "mode": self.mode,
                "configured": self.n_workers,
                "alive": sum(1 for w in self._workers if not w.retired),
                "busy": sum(1 for w in self._workers if w.job is not None),
            }
            snap["queue_depth"] = self.batcher.depth() + sum(len(j.entries) for j in self._retry)
        return snap
