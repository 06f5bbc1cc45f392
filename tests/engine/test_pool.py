"""Tests of the worker pool and its watchdog, with thread and process workers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from atomic_usage.config import Settings
from atomic_usage.engine.pool import WorkerPool
from atomic_usage.engine.watchdog import Watchdog, diagnose
from atomic_usage.engine.workers import Job, ProcessWorker, ThreadWorker
from atomic_usage.errors import EngineError, QueueFullError, WorkerCrashed

from . import _runners
from ._runners import HANG, POISON


def _pool(factory: Any, **kw: Any) -> WorkerPool:
    kw.setdefault("n_workers", 2)
    kw.setdefault("max_wait_s", 0.001)
    kw.setdefault("heartbeat_interval_s", 0.05)
    return WorkerPool(factory, **kw)


class TestThreadPool:
    """Thread workers run batches and answer each record."""

    def test_results_in_order(self) -> None:
        with _pool(_runners.doubler, max_batch_size=4) as pool:
            assert pool.map(range(50), timeout_s=10) == [2 * i for i in range(50)]
            stats = pool.stats()
        assert stats["records_total"] == 50 and stats["batches_total"] >= 13
        assert stats["workers"] == {"mode": "thread", "configured": 2, "alive": 2, "busy": 0}

    def test_per_record_errors_stay_per_record(self) -> None:
        with _pool(_runners.per_record_errors) as pool:
            out = pool.map([1, -2, 3], timeout_s=10)
        assert out[0] == 1 and out[2] == 3
        assert isinstance(out[1], ValueError) and str(out[1]) == "bad -2"
        assert pool.meter.snapshot()["failed_total"] == 1

    def test_wrong_number_of_results_fails_the_batch(self) -> None:
        with _pool(_runners.wrong_length, n_workers=1, max_batch_size=8, max_wait_s=0.05) as pool:
            out = pool.map([1, 2, 3], timeout_s=10)
        assert all(isinstance(r, EngineError) and "returned 2 results for 3" in str(r) for r in out)

    def test_from_settings(self) -> None:
        s = Settings(workers=3, batch_max_size=7, batch_max_wait_s=0.01)
        pool = WorkerPool.from_settings(_runners.doubler, s, mode="thread")
        assert pool.n_workers == 3 and pool.batcher.max_size == 7 and pool.batcher.max_wait_s == 0.01

    def test_bad_mode(self) -> None:
        with pytest.raises(EngineError, match="mode='fiber' is not 'thread' or 'process'"):
            WorkerPool(_runners.doubler, mode="fiber")  # type: ignore[arg-type]

    async def _await(self, pool: WorkerPool) -> Any:
        return await pool.asubmit(21)

    def test_asyncio_submit(self) -> None:
        import asyncio

        with _pool(_runners.doubler) as pool:
            assert asyncio.run(self._await(pool)) == 42


class TestCrashIsolation:
    """A record that breaks its worker fails alone; the rest of its batch completes."""

    def test_poison_record_is_isolated_by_bisection(self) -> None:
        items = list(range(16))
        items[11] = POISON
        with _pool(_runners.doubler, max_batch_size=16, max_wait_s=0.2) as pool:
            out = pool.map(items, timeout_s=30)
            restarts = pool.stats()["worker_restarts"]
        assert isinstance(out[11], WorkerCrashed) and "broke 2 workers in a row" in str(out[11])
        assert "SystemError: the runtime broke" in str(out[11])
        assert [r for i, r in enumerate(out) if i != 11] == [2 * i for i in items if i != POISON]
        assert 2 <= restarts <= 2 + 4  # one retry, then one crash per halving of 16
        assert pool.stats()["workers"]["alive"] == 0  # closed

    def test_hung_worker_is_replaced_and_its_batch_rerun(self) -> None:
        with _pool(_runners.doubler, n_workers=2, max_batch_size=1, batch_timeout_s=0.3) as pool:
            hung = pool.submit(HANG)
            fine = pool.map([1, 2, 3], timeout_s=10)
            with pytest.raises(WorkerCrashed, match="has run one batch for .* s \\(timeout 0.3 s\\)"):
                hung.result(timeout=15)
            assert fine == [2, 4, 6]
            assert pool.stats()["worker_restarts"] == 2
            assert pool.map([5], timeout_s=10) == [10]

    def test_workers_that_cannot_start_fail_the_records(self) -> None:
        pool = _pool(_runners.broken_factory, n_workers=1).start()
        try:
            deadline = time.monotonic() + 10
            while pool._broken is None and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(WorkerCrashed, match="cannot start: the runner factory raised RuntimeError"):
                pool.submit(1)
        finally:
            pool.close(1)

    def test_queued_records_fail_when_workers_cannot_start(self) -> None:
        pool = _pool(_runners.broken_factory, n_workers=1)
        fut = pool.submit(1)
        pool.start()
        with pytest.raises(WorkerCrashed, match="model file missing"):
            fut.result(timeout=10)
        pool.close(1)


class TestClose:
    """Closing fails what cannot finish and refuses new records."""

    def test_records_unfinished_at_the_deadline_fail(self) -> None:
        pool = _pool(_runners.doubler, n_workers=1, max_batch_size=1).start()
        hung = pool.submit(HANG)
        queued = pool.submit(1)
        time.sleep(0.1)
        pool.close(timeout_s=0.2)
        for fut in (hung, queued):
            with pytest.raises(EngineError, match="stopped before this record finished"):
                fut.result(timeout=5)
        with pytest.raises(EngineError, match="shut down"):
            pool.submit(2)

    def test_queue_limit(self) -> None:
        pool = _pool(_runners.doubler, max_queue=2)
        with pytest.raises(QueueFullError, match="takes at most 2"):
            pool.submit_many([1, 2, 3])
        pool.close(0.1)


class TestWatchdog:
    """The watchdog names why a worker must go."""

    class _Fake:
        def __init__(self, alive: bool = True, beat: float = 100.0, started: float | None = None) -> None:
            self.index, self.alive, self.beat = 7, alive, beat
            self.job = Job([]) if started is not None else None
            self.job_started = started
            self.ready, self.started_at = True, 90.0

        def is_alive(self) -> bool:
            return self.alive

        def last_beat(self) -> float:
            return self.beat

    def test_diagnoses(self) -> None:
        kw = {"heartbeat_timeout_s": 5.0, "batch_timeout_s": 20.0}
        assert diagnose(self._Fake(), 101.0, **kw) is None  # type: ignore[arg-type]
        assert diagnose(self._Fake(alive=False), 101.0, **kw) == "worker 7 stopped"  # type: ignore[arg-type]
        assert "no heartbeat for 6.0 s" in (diagnose(self._Fake(), 106.0, **kw) or "")  # type: ignore[arg-type]
        slow = self._Fake(beat=130.0, started=100.0)
        assert "has run one batch for 30.0 s" in (diagnose(slow, 130.0, **kw) or "")  # type: ignore[arg-type]

    def test_a_worker_still_starting_is_judged_by_the_batch_timeout_alone(self) -> None:
        """A process silent while it starts (a spawned interpreter's imports on a busy host, before
        its beat thread runs) is not hung: replaced as not ready, it would count as a start failure,
        and three such slow starts in a row would break the pool for good."""
        kw = {"heartbeat_timeout_s": 5.0, "batch_timeout_s": 20.0}
        starting = self._Fake(beat=80.0)
        starting.ready = False  # started at 90, silent since 80
        assert diagnose(starting, 105.0, **kw) is None  # type: ignore[arg-type]
        assert "has built its runner for 21.0 s" in (diagnose(starting, 111.0, **kw) or "")  # type: ignore[arg-type]
        assert diagnose(self._Fake(alive=False), 105.0, **kw) == "worker 7 stopped"  # type: ignore[arg-type]

    def test_check_replaces_and_survives_errors(self) -> None:
        replaced: list[str] = []

        class Pool:
            def live_workers(self) -> list[Any]:
                return [TestWatchdog._Fake(alive=False)]

            def replace_worker(self, worker: Any, reason: str) -> None:
                replaced.append(reason)
                if len(replaced) > 1:
                    raise RuntimeError("boom")

        dog = Watchdog(Pool(), interval_s=0.01)
        assert dog.check() == ["worker 7 stopped"]
        dog.start()
        time.sleep(0.1)
        dog.stop()
        assert len(replaced) > 2

    def test_thread_worker_beats_only_when_idle(self) -> None:
        w = ThreadWorker(0, _runners.doubler, None, heartbeat_interval_s=1.0)  # type: ignore[arg-type]
        before = w.last_beat()
        w.job = Job([])
        assert w.last_beat() >= before


class TestProcessPool:
    """Process workers get arrays through shared memory and are killed when they die or hang."""

    def test_arrays_round_trip_through_shared_memory(self) -> None:
        rng = np.random.default_rng(0)
        items = [rng.random((3, 288), dtype=np.float32) for _ in range(40)]
        with _pool(_runners.array_sum, n_workers=2, mode="process", max_batch_size=16) as pool:
            out = pool.map(items, timeout_s=60)
        for x, r in zip(items, out, strict=True):
            np.testing.assert_allclose(r, x.sum(axis=-1), rtol=1e-5)

    def test_objects_and_errors_go_through_the_pipe(self) -> None:
        with _pool(_runners.per_record_errors, n_workers=1, mode="process") as pool:
            out = pool.map([1, -1, 2], timeout_s=60)
        assert out[0] == 1 and out[2] == 2 and isinstance(out[1], ValueError)

    def test_each_worker_is_its_own_process(self) -> None:
        import os

        with _pool(_runners.pid_of_worker, n_workers=2, mode="process", max_batch_size=1) as pool:
            pids = set(pool.map(range(20), timeout_s=60))
        assert os.getpid() not in pids and 1 <= len(pids) <= 2

    def test_killed_worker_batch_completes_and_poison_fails(self) -> None:
        items = [np.full(4, i, dtype=np.int64) for i in range(8)]
        items[5] = np.full(4, POISON, dtype=np.int64)
        with _pool(_runners.doubler, n_workers=2, mode="process", max_batch_size=8, max_wait_s=0.5) as pool:
            out = pool.map(items, timeout_s=120)
            assert pool.stats()["worker_restarts"] >= 2
        assert isinstance(out[5], WorkerCrashed) and "exited with code 13" in str(out[5])
        for i, r in enumerate(out):
            if i != 5:
                np.testing.assert_array_equal(r, items[i] * 2)

    def test_hung_process_is_killed(self) -> None:
        with _pool(_runners.doubler, n_workers=1, mode="process", max_batch_size=1, batch_timeout_s=1.0) as pool:
            hung = pool.submit(HANG)
            with pytest.raises(WorkerCrashed, match="has run one batch"):
                hung.result(timeout=60)
            assert pool.map([4], timeout_s=60) == [8]


@pytest.mark.parametrize("worker_class", [ThreadWorker, ProcessWorker])
def test_watchdog_leaves_a_worker_being_started_alone(worker_class: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool lists a new worker before starting it; a watchdog round in between must not
    read it as stopped. It did: the process worker's kill() then raised on a process that had
    never started, the pool lost that worker, and its records waited for the timeout."""
    real_start = worker_class.start
    rounds: list[list[str]] = []

    def start_after_a_watchdog_round(self: Any) -> None:
        rounds.append(self._events.watchdog.check())
        real_start(self)

    monkeypatch.setattr(worker_class, "start", start_after_a_watchdog_round)
    mode = "thread" if worker_class is ThreadWorker else "process"
    items = [np.full(4, i, dtype=np.int64) for i in range(4)]
    with _pool(_runners.doubler, n_workers=2, mode=mode) as pool:
        out = pool.map(items, timeout_s=60)
        stats = pool.stats()
    assert rounds == [[], []]
    assert stats["worker_restarts"] == 0 and stats["workers"]["alive"] == 2
    for i, r in enumerate(out):
        np.testing.assert_array_equal(r, items[i] * 2)


def test_killing_a_process_worker_that_never_started_is_a_no_op() -> None:
    pool = _pool(_runners.doubler, mode="process")
    worker = ProcessWorker(0, _runners.doubler, pool, heartbeat_interval_s=0.05)
    worker.kill()
    assert worker.retired and not worker.is_alive() and worker.pid is None


def test_a_replacement_that_cannot_start_is_retried_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose start() raises (no thread or process left) counts as a start failure:
    the pool tries again, as for a runner that cannot be built. It was dropped instead, and a
    pool left with no worker kept its records waiting forever, never broken."""
    real_start = ThreadWorker.start
    starts: list[int] = []

    def second_start_fails(self: Any) -> None:
        starts.append(self.index)
        if len(starts) == 2:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(ThreadWorker, "start", second_start_fails)
    with _pool(_runners.doubler, n_workers=1) as pool:
        poison, fine = pool.submit(POISON), pool.submit(3)
        with pytest.raises(WorkerCrashed, match="broke 2 workers"):
            poison.result(timeout=30)
        assert fine.result(timeout=30) == 6
        assert pool.stats()["workers"]["alive"] == 1


def test_a_pool_runs_short_rather_than_fail_records_its_workers_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """One more worker that cannot start (3 tries in a row) while another serves: the pool runs
    on with the one that serves. It gave up instead, failing every record with WorkerCrashed."""
    real_start = ThreadWorker.start
    starts: list[int] = []

    def only_the_first_starts(self: Any) -> None:
        starts.append(self.index)
        if len(starts) == 1:
            real_start(self)
            return
        first = self._events._workers[0]
        for _ in range(1000):  # the failures come once the first worker serves
            if first.ready:
                break
            time.sleep(0.01)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(ThreadWorker, "start", only_the_first_starts)
    with _pool(_runners.doubler, n_workers=2) as pool:
        assert pool.map(range(6), timeout_s=30) == [0, 2, 4, 6, 8, 10]
        stats = pool.stats()
    assert len(starts) == 4  # the first, then three tries for the second, and no more
    assert stats["workers"]["alive"] == 1


def test_workers_that_cannot_be_started_fail_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(self: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(ThreadWorker, "start", never)
    pool = _pool(_runners.doubler, n_workers=1)
    queued = pool.submit(1)
    pool.start()
    try:
        with pytest.raises(WorkerCrashed, match="cannot start: starting it raised RuntimeError"):
            queued.result(timeout=30)
        with pytest.raises(WorkerCrashed):
            pool.submit(2)
        # asyncio callers are told why too, not that the engine was shut down
        with pytest.raises(WorkerCrashed, match="cannot start"):
            asyncio.run(pool.asubmit(2))
    finally:
        pool.close(1)


def test_a_batch_on_its_way_to_a_worker_when_close_gives_up_fails() -> None:
    """close() waits for queued, retried and running batches; one the dispatcher had taken from
    the batcher but not yet handed to a worker was none of those, so close() stopped waiting,
    the batch went to a worker being stopped, and a process worker killed before it answered
    left its records waiting forever."""
    pool = _pool(_runners.doubler, n_workers=1, mode="process")
    real_next_batch = pool.batcher.next_batch
    taken = threading.Event()

    def next_batch_then_wait_for_close(timeout_s: float | None = None) -> Any:
        batch = real_next_batch(timeout_s=timeout_s)
        if batch:
            taken.set()
            with pool._cond:
                pool._cond.wait_for(lambda: pool._stopping, timeout=30)
        return batch

    pool.batcher.next_batch = next_batch_then_wait_for_close  # type: ignore[method-assign]
    fut = pool.submit(HANG)
    pool.start()
    assert taken.wait(30)
    pool.close(timeout_s=5)
    with pytest.raises(EngineError, match="stopped before this record finished"):
        fut.result(timeout=10)


def slow_factory() -> Any:
    time.sleep(1.0)  # loading a large model
    return _runners.doubler()


def test_a_thread_worker_building_its_runner_is_not_read_as_silent() -> None:
    """A thread worker's own thread builds its runner, so it cannot beat meanwhile. A runner
    slower to build than the heartbeat timeout had every worker replaced as silent, again and
    again, and the records waited forever."""
    with _pool(slow_factory, n_workers=1, heartbeat_timeout_s=0.2) as pool:
        assert pool.map([3], timeout_s=60) == [6]
        assert pool.stats()["worker_restarts"] == 0


def hung_factory() -> Any:
    time.sleep(30)
    return _runners.doubler()


def test_a_runner_that_is_never_built_fails_the_records() -> None:
    pool = _pool(hung_factory, n_workers=1, batch_timeout_s=0.3)
    queued = pool.submit(1)
    pool.start()
    try:
        with pytest.raises(WorkerCrashed, match="cannot start: worker .* has built its runner for"):
            queued.result(timeout=30)
    finally:
        pool.close(1)


def test_a_thread_worker_that_just_built_a_slow_runner_is_not_read_as_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread worker's first heartbeat came one heartbeat interval after it was ready, so
    until then it read as silent since it was created: a runner slower to build than the
    heartbeat timeout had each idle worker replaced the moment it was ready, its replacement
    too, and the pool rebuilt its runners forever (every 15 s with the defaults)."""
    real_on_ready = WorkerPool.on_ready
    rounds: list[list[str]] = []
    checked = threading.Event()

    def check_on_ready(self: WorkerPool, worker: Any) -> None:
        real_on_ready(self, worker)
        rounds.append(self.watchdog.check())
        checked.set()

    monkeypatch.setattr(WorkerPool, "on_ready", check_on_ready)
    with _pool(slow_factory, n_workers=1, heartbeat_interval_s=0.1, heartbeat_timeout_s=0.5) as pool:
        assert checked.wait(30)
        assert rounds[0] == []
        assert pool.map([3], timeout_s=60) == [6]
        assert pool.stats()["worker_restarts"] == 0
