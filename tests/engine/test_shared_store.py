"""Several engine processes over one store (ATOMIC_PROCESSES > 1): one history, one task per request id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomic_usage import Settings
from atomic_usage.engine.predictor import UsagePredictor
from atomic_usage.engine.store import TaskStore
from atomic_usage.models.baselines import PredictLinear

T0 = 1_767_600_000  # 2026-01-05T08:00:00Z


def rec(mid: str, k: int, **values: float) -> dict[str, object]:
    return {"id": mid, "timestamp": T0 + 300 * k, **values}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[UsagePredictor, UsagePredictor]]:
    """Two predictors sharing one data folder, as two serving processes would."""
    settings = Settings(data_dir=tmp_path / "data", workers=1, processes=2, sqlite_synchronous="NORMAL")
    with UsagePredictor(settings, model=PredictLinear()) as a, UsagePredictor(settings, model=PredictLinear()) as b:
        yield a, b


class TestSharedHistory:
    """What one process accepted is in the history the other forecasts from."""

    def test_alternating_processes_match_one_process(
        self, pair: tuple[UsagePredictor, UsagePredictor], tmp_path: Path
    ) -> None:
        """Records sent to two processes in turn get the results one process gives them all."""
        a, b = pair
        shared = [(a, b)[k % 2].process({"usageData": [rec("vm", k, cpuLoad=10.0 + 3 * k)]}) for k in range(15)]
        with UsagePredictor(Settings(data_dir=tmp_path / "solo", workers=1), model=PredictLinear()) as solo:
            alone = [solo.process({"usageData": [rec("vm", k, cpuLoad=10.0 + 3 * k)]}) for k in range(15)]
        assert [r["results"] for r in shared] == [r["results"] for r in alone]
        assert shared[-1]["results"][0]["forecasts"]["cpuLoad"]["historyLength"] == 15

    def test_a_trimmed_log_rebuilds_the_history(self, pair: tuple[UsagePredictor, UsagePredictor]) -> None:
        """A process whose unread log entries were trimmed rebuilds its history from the store."""
        a, b = pair
        for k in range(3):
            a.process({"usageData": [rec("vm", k, cpuLoad=20.0)]})
        assert isinstance(a.store, TaskStore)
        assert a.store.trim_log(-1.0) == 3  # everything, before b read it
        assert a.store.trim_log(-1.0) == 0  # nothing left
        assert b.store.read_log(0).trimmed
        r = b.process({"usageData": [rec("vm", 3, cpuLoad=20.0)]})
        assert r["results"][0]["forecasts"]["cpuLoad"]["historyLength"] == 4
        assert not b.store.read_log(b._log_pos).trimmed

    def test_one_process_alone_writes_no_log(self, tmp_path: Path) -> None:
        """Without ATOMIC_PROCESSES the observation log stays empty (no cost for one process)."""
        with UsagePredictor(Settings(data_dir=tmp_path / "d", workers=1), model=PredictLinear()) as p:
            p.process({"usageData": [rec("vm", 0, cpuLoad=20.0)]})
            assert isinstance(p.store, TaskStore)
            assert p.store.read_log(0).entries == []


class TestSharedTasks:
    """Request ids and tasks are the store's, whichever process is asked."""

    def test_same_request_id_in_two_processes_is_one_task(self, pair: tuple[UsagePredictor, UsagePredictor]) -> None:
        """The second process returns the first one's task and results, and runs nothing."""
        a, b = pair
        body = {"usageData": [rec("vm", 0, cpuLoad=20.0), rec("db", 0, memoryUsage=70.0)]}
        first = a.process(body, request_id="key-1")
        again = b.process(body, request_id="key-1")
        assert again == first
        assert b.store.counts()["done"] == 1

    def test_task_lookup_from_the_other_process(self, pair: tuple[UsagePredictor, UsagePredictor]) -> None:
        """A task run by one process is read, with its opened results, from the other."""
        a, b = pair
        r = a.process({"usageData": [rec("vm", 0, cpuLoad=20.0)]})
        t = b.task(r["taskId"])
        assert t["status"] == "done" and t["results"] == r["results"]


class TestSharedRecovery:
    """A task left by a process that died is resumed by one of the live ones, once."""

    def test_dead_process_task_recovered_once(self, tmp_path: Path) -> None:
        """Two processes start on a store holding a task whose owner died: one attempt more, one count."""
        data = tmp_path / "data"
        store = TaskStore(data / "engine.sqlite3")
        body = {"usageData": [rec("vm", 0, cpuLoad=20.0)], "horizon": 12}
        rows = [("vm", "cpuLoad", float(T0), 20.0)]
        task = store.accept(body, request_id="orphan", observations=rows, owner="dead", lease_s=-1.0, claim=True).task
        store.close()
        settings = Settings(data_dir=data, workers=1, processes=2, sqlite_synchronous="NORMAL")
        with UsagePredictor(settings, model=PredictLinear()) as a, UsagePredictor(settings, model=PredictLinear()) as b:
            deadline = time.monotonic() + 30
            while a.store.get(task.task_id).status.value != "done" and time.monotonic() < deadline:
                time.sleep(0.05)
            done = a.store.get(task.task_id)
            assert done.status.value == "done" and done.attempts == 2
            assert a.stats()["recovered_tasks"] + b.stats()["recovered_tasks"] == 1
