"""Tests of the group committer: many callers' writes in shared transactions, each durable and alone in failing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from atomic_usage.engine.commit import GroupCommitter
from atomic_usage.engine.memory_store import MemoryStore
from atomic_usage.engine.status import TaskStatus
from atomic_usage.engine.store import AcceptOp, CompleteOp, FailOp, StoreOp, TaskStore
from atomic_usage.errors import EngineError, IdempotencyError, StoreError, TaskNotFound


class _GatedStore(TaskStore):
    """A TaskStore whose apply() waits for a gate, so writes queue up behind a running commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.group_sizes: list[int] = []

    def apply(self, ops: Any) -> list[Any]:
        self.gate.wait(10)
        self.group_sizes.append(len(ops))
        return super().apply(ops)


class _BrokenStore(MemoryStore):
    """A store whose transactions all fail, as a full disk would make them."""

    def apply(self, ops: Any) -> list[Any]:
        raise StoreError("The task store failed: disk I/O error")


class TestGroupCommitter:
    """Writes queued while a commit runs are committed together, and each caller gets its own result."""

    def test_concurrent_accepts_are_all_durable(self, tmp_path: Path) -> None:
        """Every accepted task of 32 threads is in the database after a reopen, with its observations."""
        path = tmp_path / "s.sqlite3"
        store = TaskStore(path)
        results: list[Any] = []
        with GroupCommitter(store) as gc:

            def go(i: int) -> None:
                op = AcceptOp({"n": i}, f"r-{i}", [(f"m{i}", "cpuLoad", float(i), 1.0)], "me", claim=True)
                results.append(gc.submit(op).result(10))

            threads = [threading.Thread(target=go, args=(i,)) for i in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert gc.writes == 32 and 1 <= gc.groups <= 32
        store.close()
        assert all(r.created and r.task.status is TaskStatus.RUNNING for r in results)
        with TaskStore(path) as again:
            assert {t.request_id for t in again.list_tasks(limit=100)} == {f"r-{i}" for i in range(32)}
            assert len(again.load_histories(5)) == 32

    def test_writes_queued_during_a_commit_share_the_next_one(self, tmp_path: Path) -> None:
        """While one transaction is held up, the writes that arrive meanwhile go into one group."""
        store = _GatedStore(tmp_path / "s.sqlite3")
        with GroupCommitter(store) as gc:
            first = gc.submit(AcceptOp({"n": 0}, "r-0"))
            while not store.group_sizes and gc.depth():  # the writer took the first write
                threading.Event().wait(0.001)
            rest = gc.submit_many([AcceptOp({"n": i}, f"r-{i}") for i in range(1, 11)])
            store.gate.set()
            assert first.result(10).created and all(f.result(10).created for f in rest)
        store.close()
        assert store.group_sizes[0] in (1, 11) and sum(store.group_sizes) == 11
        assert len(store.group_sizes) <= 2

    def test_an_error_in_one_write_loses_no_other(self, tmp_path: Path) -> None:
        """A refused write fails alone: the others of its group are committed and answered."""
        with TaskStore(tmp_path / "s.sqlite3") as store, GroupCommitter(store) as gc:
            store.accept({"n": 0}, request_id="taken")
            ops: list[StoreOp] = [
                AcceptOp({"n": 1}, "r-1"),
                AcceptOp({"other": True}, "taken"),
                CompleteOp("missing", [b"x"]),
                FailOp("missing", "why"),
                AcceptOp({"n": 2}, "r-2"),
            ]
            futures = gc.submit_many(ops)
            assert futures[0].result(10).created and futures[4].result(10).created
            with pytest.raises(IdempotencyError):
                futures[1].result(10)
            for f in futures[2:4]:
                with pytest.raises(TaskNotFound):
                    f.result(10)
            assert store.find("r-1") is not None and store.find("r-2") is not None

    def test_same_request_id_from_many_threads_makes_one_task(self, tmp_path: Path) -> None:
        """Concurrent accepts of one request id create exactly one task; the others find it."""
        with TaskStore(tmp_path / "s.sqlite3") as store, GroupCommitter(store) as gc:
            barrier = threading.Barrier(16)
            out: list[Any] = []

            def go() -> None:
                barrier.wait()
                out.append(gc.submit(AcceptOp({"n": 1}, "same", [("m", "cpuLoad", 1.0, 2.0)], "me")).result(10))

            threads = [threading.Thread(target=go) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(a.created for a in out) == 1
            assert len({a.task.task_id for a in out}) == 1
            assert len(store.list_tasks()) == 1

    def test_failed_transaction_fails_every_write_of_the_group(self) -> None:
        """When the transaction itself fails, each write of it raises that StoreError."""
        with GroupCommitter(_BrokenStore()) as gc:
            futures = gc.submit_many([AcceptOp({"n": i}, f"r-{i}") for i in range(3)])
            for f in futures:
                with pytest.raises(StoreError, match="disk I/O error"):
                    f.result(10)

    def test_close_commits_what_is_queued_then_refuses(self) -> None:
        """close() lets queued writes commit; later writes are refused with EngineError."""
        store = MemoryStore()
        gc = GroupCommitter(store)
        futures = gc.submit_many([AcceptOp({"n": i}, f"r-{i}") for i in range(50)])
        gc.close()
        assert all(f.result(1).created for f in futures)
        with pytest.raises(EngineError, match="shut down"):
            gc.submit(AcceptOp({"n": 99}, "late"))
        assert store.find("late") is None

    def test_max_group_bounds_a_transaction(self) -> None:
        """No transaction holds more than max_group writes."""
        sizes: list[int] = []

        class _Counting(MemoryStore):
            def apply(self, ops: Any) -> list[Any]:
                sizes.append(len(ops))
                return super().apply(ops)

        with GroupCommitter(_Counting(), max_group=4) as gc:
            futures = gc.submit_many([AcceptOp({"n": i}, f"r-{i}") for i in range(10)])
            assert all(f.result(10).created for f in futures)
        assert max(sizes) <= 4 and sum(sizes) == 10
        with pytest.raises(EngineError, match="at least 1"):
            GroupCommitter(MemoryStore(), max_group=0)
