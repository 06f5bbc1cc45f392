"""Tests of the TPS meter."""

from __future__ import annotations

import threading

from atomic_usage.engine.meter import TpsMeter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestRates:
    """Rates count completed seconds over 1, 60 and 300 s windows."""

    def test_steady_rate(self) -> None:
        clock = Clock()
        m = TpsMeter(clock=clock)
        for _ in range(400):
            m.record(10)
            clock.now += 1
        tps = m.snapshot()["tps"]
        assert tps == {"1s": 10.0, "60s": 10.0, "300s": 10.0}

    def test_burst_then_idle(self) -> None:
        clock = Clock()
        m = TpsMeter(clock=clock)
        clock.now += 100
        m.record(600)
        clock.now += 30
        assert m.rate(1) == 0.0 and m.rate(60) == 10.0 and m.rate(300) == 600 / 130

    def test_young_meter_uses_elapsed_time(self) -> None:
        clock = Clock(1000.0)
        m = TpsMeter(clock=clock)
        clock.now = 1000.5
        m.record(5)
        assert m.rate(1) == 10.0
        clock.now = 1000.0
        assert TpsMeter(clock=clock).rate(60) == 0.0

    def test_old_slots_are_reused(self) -> None:
        clock = Clock()
        m = TpsMeter(clock=clock)
        m.record(1000)
        clock.now += 301
        m.record(1)
        clock.now += 1
        assert m.rate(1) == 1.0 and m.snapshot()["records_total"] == 1001

    def test_threads(self) -> None:
        m = TpsMeter()

        def hammer() -> None:
            for _ in range(1000):
                m.record(1)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert m.snapshot()["records_total"] == 4000


class TestFigures:
    """The snapshot carries batch sizes, latency percentiles, gauges and counters."""

    def test_empty_snapshot(self) -> None:
        s = TpsMeter().snapshot()
        assert s["latency_s"] == {"p50": None, "p90": None, "p99": None, "samples": 0}
        assert s["batch_size"]["mean"] is None and s["batches_total"] == 0

    def test_full_snapshot(self) -> None:
        m = TpsMeter(latency_window=100)
        m.record(100, failed=3, latencies_s=[i / 100 for i in range(1, 101)])
        for size in (1, 3, 256, 5000):
            m.observe_batch(size)
        m.set_queue_depth(17)
        m.worker_restarted()
        m.worker_restarted(2)
        m.tasks_recovered(4)
        s = m.snapshot()
        assert s["latency_s"] == {"p50": 0.5, "p90": 0.9, "p99": 0.99, "samples": 100}
        hist = s["batch_size"]["histogram"]
        assert hist["1"] == 1 and hist["4"] == 1 and hist["256"] == 1 and hist["+Inf"] == 1
        assert s["batch_size"]["mean"] == (1 + 3 + 256 + 5000) / 4
        assert s["queue_depth"] == 17 and s["worker_restarts"] == 3 and s["recovered_tasks"] == 4
        assert s["failed_total"] == 3 and s["records_total"] == 100 and s["uptime_s"] >= 0

    def test_replays_are_not_records(self) -> None:
        """A replay adds its latency and one replay, and neither records nor the rates."""
        clock = Clock()
        m = TpsMeter(clock=clock)
        m.record(4, latencies_s=[0.2])
        m.record_replay(latencies_s=[0.1])
        m.record_replay(2)
        clock.now += 1
        s = m.snapshot()
        assert (s["records_total"], s["replays_total"], s["latency_s"]["samples"]) == (4, 3, 2)
        assert m.rate(1) == 4.0
