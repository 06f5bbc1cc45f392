"""Tests of the micro-batcher."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from atomic_usage.engine.batcher import Batcher
from atomic_usage.engine.meter import TpsMeter
from atomic_usage.errors import EngineError, QueueFullError


class TestBatching:
    """Batches close when full or when their oldest record has waited max_wait_s."""

    def test_full_batch_goes_at_once(self) -> None:
        b: Batcher[int] = Batcher(max_size=3, max_wait_s=10.0)
        b.submit_many(range(7))
        t0 = time.monotonic()
        assert [p.item for p in b.next_batch()] == [0, 1, 2]  # type: ignore[union-attr]
        assert [p.item for p in b.next_batch()] == [3, 4, 5]  # type: ignore[union-attr]
        assert time.monotonic() - t0 < 1.0

    def test_partial_batch_waits_max_wait(self) -> None:
        b: Batcher[int] = Batcher(max_size=10, max_wait_s=0.1)
        b.submit(1)
        t0 = time.monotonic()
        batch = b.next_batch()
        assert batch is not None and [p.item for p in batch] == [1]
        assert 0.05 <= time.monotonic() - t0 < 1.0

    def test_records_from_many_threads_share_batches(self) -> None:
        b: Batcher[int] = Batcher(max_size=64, max_wait_s=0.2)
        threads = [threading.Thread(target=b.submit, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batch = b.next_batch()
        assert batch is not None and sorted(p.item for p in batch) == list(range(20))

    def test_timeout_without_records(self) -> None:
        assert Batcher[int]().next_batch(timeout_s=0.01) is None

    def test_cancelled_records_are_dropped(self) -> None:
        b: Batcher[int] = Batcher(max_size=10, max_wait_s=0.0)
        f1, f2 = b.submit_many([1, 2])
        f1.cancel()
        batch = b.next_batch()
        assert batch is not None and [p.item for p in batch] == [2] and f2.running()
        f3 = b.submit(3)
        f3.cancel()
        b.submit(4)
        assert [p.item for p in b.next_batch(timeout_s=0) or []] == [4]

    def test_depth_feeds_the_meter(self) -> None:
        meter = TpsMeter()
        b: Batcher[int] = Batcher(max_size=2, max_wait_s=0.0, meter=meter)
        b.submit_many(range(5))
        assert b.depth() == 5 and meter.snapshot()["queue_depth"] == 5
        b.next_batch()
        assert meter.snapshot()["queue_depth"] == 3

    def test_bad_size(self) -> None:
        with pytest.raises(EngineError, match="max_size=0 must be at least 1"):
            Batcher[int](max_size=0)

    def test_asubmit(self) -> None:
        b: Batcher[int] = Batcher(max_size=1, max_wait_s=0.0)

        def serve() -> None:
            batch = b.next_batch(timeout_s=5)
            assert batch is not None
            batch[0].future.set_result(batch[0].item + 1)

        t = threading.Thread(target=serve)
        t.start()
        assert asyncio.run(b.asubmit(41)) == 42
        t.join()


class TestLimitsAndClose:
    """The queue refuses what it cannot hold and stops cleanly."""

    def test_queue_full_is_all_or_nothing(self) -> None:
        b: Batcher[int] = Batcher(max_queue=3)
        b.submit_many([1, 2])
        with pytest.raises(QueueFullError, match="holds 2 records and takes at most 3; 2 more do not fit"):
            b.submit_many([3, 4])
        assert b.depth() == 2

    def test_close_drains_then_ends(self) -> None:
        b: Batcher[int] = Batcher(max_size=10, max_wait_s=10.0)
        b.submit(1)
        assert b.close() == [] and b.closed
        batch = b.next_batch()
        assert batch is not None and [p.item for p in batch] == [1]
        assert b.next_batch() is None
        with pytest.raises(EngineError, match="shut down"):
            b.submit(2)

    def test_close_without_drain_returns_the_queue(self) -> None:
        b: Batcher[int] = Batcher()
        b.submit_many([1, 2])
        assert [p.item for p in b.close(drain=False)] == [1, 2] and b.depth() == 0

    def test_close_wakes_a_waiting_consumer(self) -> None:
        b: Batcher[int] = Batcher()
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(b.next_batch()))
        t.start()
        time.sleep(0.05)
        b.close()
        t.join(5)
        assert got == [None]
