"""Tests of the engine store: the shared contract, then what only SQLite does."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from atomic_usage.config import Settings
from atomic_usage.engine import store as store_mod
from atomic_usage.engine.memory_store import MemoryStore
from atomic_usage.engine.status import TaskStatus
from atomic_usage.engine.store import (
    SCHEMA_VERSION,
    STORE_FILENAME,
    AcceptOp,
    CompleteOp,
    Store,
    TaskStore,
    map_sqlite_errors,
    open_store,
    payload_hash,
)
from atomic_usage.errors import StoreError

from .check_store import STORE_CHECKS, FakeClock, check_task_store


@pytest.fixture(params=["sqlite", "memory"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[FakeClock], Store]:
    counter = iter(range(1000))
    if request.param == "sqlite":
        return lambda clock: TaskStore(tmp_path / f"s{next(counter)}.sqlite3", clock=clock)
    return lambda clock: MemoryStore(clock=clock)


class TestStoreContract:
    """Both stores pass every check of the contract suite."""

    @pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
    def test_check(self, factory: Callable[[FakeClock], Store], check: Callable[..., None]) -> None:
        clock = FakeClock()
        store = factory(clock)
        try:
            check(store, clock)
        finally:
            store.close()

    def test_whole_suite(self, factory: Callable[[FakeClock], Store]) -> None:
        check_task_store(factory)


class TestPayloadHash:
    """The hash ignores key order and tells payloads apart."""

    def test_key_order_does_not_matter(self) -> None:
        assert payload_hash({"a": 1, "b": [1, 2]}) == payload_hash({"b": [1, 2], "a": 1})

    def test_values_matter(self) -> None:
        assert payload_hash({"a": 1}) != payload_hash({"a": 2})


class TestTaskStoreDurability:
    """What one TaskStore wrote, a new one on the same file reads back."""

    def test_reopen_keeps_tasks_results_and_observations(self, tmp_path: Path) -> None:
        path = tmp_path / "db.sqlite3"
        with TaskStore(path) as s:
            acc = s.accept({"x": 1}, request_id="r", observations=[("m", "cpuLoad", 1.0, 5.0)])
            s.claim(acc.task.task_id, owner="o")
            s.complete(acc.task.task_id, [b"\x00sealed"])
        with TaskStore(path) as s:
            again = s.accept({"x": 1}, request_id="r")
            assert not again.created and again.results == [b"\x00sealed"]
            assert s.load_histories(5) == {("m", "cpuLoad"): [(1.0, 5.0)]}

    def test_trim_tasks_in_batches(self, tmp_path: Path) -> None:
        """Many old tasks go in several short transactions, every one of them and only them."""
        clock = FakeClock()
        with TaskStore(tmp_path / "s.db", clock=clock) as store:
            for k in range(7):
                store.complete(store.accept({"k": k}, request_id=f"old-{k}").task.task_id, [b"x"])
            clock.advance(1000)
            store.complete(store.accept({"k": 9}, request_id="new").task.task_id, [b"y"])
            assert store.trim_tasks(500, batch=2) == 7
            assert [t.request_id for t in store.list_tasks()] == ["new"]

    def test_trim_tasks_stops_near_most(self, tmp_path: Path) -> None:
        """With ``most`` a backlog goes over several calls, whole batches each, oldest first, so a
        maintenance pass gets back to renewing leases; the last call finds what is left."""
        clock = FakeClock()
        with TaskStore(tmp_path / "s.db", clock=clock) as store:
            for k in range(7):
                store.complete(store.accept({"k": k}, request_id=f"old-{k}").task.task_id, [b"x"])
                clock.advance(1)
            clock.advance(1000)
            assert store.trim_tasks(500, batch=2, most=3) == 4
            assert [t.request_id for t in store.list_tasks()][::-1] == ["old-4", "old-5", "old-6"]
            assert store.trim_tasks(500, batch=2, most=3) == 3
            assert store.trim_tasks(500, batch=2, most=3) == 0

    def test_pragmas(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3", synchronous="normal", busy_timeout_s=2.0) as s:
            conn = s._conn()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
        with TaskStore(tmp_path / "b.sqlite3") as s:
            assert s._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    def test_bad_synchronous_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="synchronous='OFF' is not FULL or NORMAL"):
            TaskStore(tmp_path / "a.sqlite3", synchronous="OFF")

    def test_one_connection_per_thread(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            seen: list[sqlite3.Connection] = []
            th = threading.Thread(target=lambda: seen.append(s._conn()))
            th.start()
            th.join()
            assert seen[0] is not s._conn() and s._conn() is s._conn()

    def test_forked_child_reconnects(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            first = s._conn()
            s._local.pid = -1  # what a fork looks like from the child's side
            assert s._conn() is not first

    def test_closed_store_raises(self, tmp_path: Path) -> None:
        s = TaskStore(tmp_path / "a.sqlite3")
        s.close()
        with pytest.raises(StoreError, match="is closed; open a new TaskStore"):
            s.get("x")

    def test_failed_transaction_stores_nothing(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            with pytest.raises(StoreError, match="failed: .*Error"):
                s.accept({"x": 1}, observations=[("m", "cpuLoad", 1.0)])  # type: ignore[list-item]
            assert s.list_tasks() == [] and s.load_histories(5) == {}


class TestTaskStoreApply:
    """A group of writes commits together; a write that fails in SQLite is undone alone."""

    def test_sqlite_error_in_one_write_keeps_the_others(self, tmp_path: Path) -> None:
        path = tmp_path / "a.sqlite3"
        with TaskStore(path) as s:
            out = s.apply(
                [
                    AcceptOp({"n": 1}, "r-1", [("m", "cpuLoad", 1.0, 5.0)]),
                    AcceptOp({"n": 2}, "r-2", [("m", "cpuLoad", 2.0)]),  # type: ignore[list-item]
                    AcceptOp({"n": 3}, "r-3"),
                ]
            )
            assert out[0].created and out[2].created
            assert isinstance(out[1], StoreError) and "failed" in str(out[1])
        with TaskStore(path) as s:  # durable, and the failed write left nothing behind
            assert {t.request_id for t in s.list_tasks()} == {"r-1", "r-3"}
            assert s.load_histories(5) == {("m", "cpuLoad"): [(1.0, 5.0)]}

    def test_failed_transaction_stores_none_of_the_group(self, tmp_path: Path) -> None:
        path = tmp_path / "a.sqlite3"
        with TaskStore(path, busy_timeout_s=0.05) as s:
            done = s.accept({"n": 0}).task
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StoreError, match="database is locked"):
                    s.apply([AcceptOp({"n": 1}, "r-1"), CompleteOp(done.task_id, [b"x"])])
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert s.find("r-1") is None and s.results(done.task_id) == []


class TestTaskStoreSchema:
    """The schema is versioned and migrated in order, and results cannot be rewritten."""

    def test_fresh_database_is_at_latest_version(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            assert s.schema_version() == SCHEMA_VERSION == 2

    def test_version_1_database_gains_the_observation_log(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A database written before the observation log is migrated to it, its tasks kept."""
        path = tmp_path / "a.sqlite3"
        monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS[:1])
        with TaskStore(path) as s:
            task = s.accept({"n": 1}).task
            assert s.schema_version() == 1
        monkeypatch.undo()
        with TaskStore(path) as s:
            assert s.schema_version() == 2 and s.get(task.task_id) == task
            assert s.read_log(0) == (0, False, [])

    def test_later_migrations_run_once_in_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "a.sqlite3"
        TaskStore(path).close()
        v = SCHEMA_VERSION
        extra = (
            (v + 1, ("CREATE TABLE t2 (a INTEGER)",)),
            (v + 2, ("INSERT INTO t2 SELECT COUNT(*) FROM t2",)),
        )
        monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS + extra)
        with TaskStore(path) as s:
            assert s.schema_version() == v + 2
        with TaskStore(path) as s:
            conn = s._conn()
            assert conn.execute("SELECT a FROM t2").fetchall() == [(0,)]
            assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == list(range(1, v + 3))

    def test_failed_migration_is_rolled_back(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "a.sqlite3"
        TaskStore(path).close()
        bad = ((SCHEMA_VERSION + 1, ("CREATE TABLE t2 (a INTEGER)", "NOT SQL")),)
        monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS + bad)
        with pytest.raises(StoreError, match="syntax error"):
            TaskStore(path)
        monkeypatch.undo()
        with TaskStore(path) as s:
            assert s.schema_version() == SCHEMA_VERSION
            assert s._conn().execute("SELECT name FROM sqlite_master WHERE name = 't2'").fetchall() == []

    def test_newer_database_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "a.sqlite3"
        with TaskStore(path) as s:
            s._conn().execute("INSERT INTO schema_version VALUES (99, 0)")
        with pytest.raises(StoreError, match="schema version 99, newer than this atomic-usage knows"):
            TaskStore(path)

    def test_results_cannot_be_updated(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            tid = s.accept({"x": 1}).task.task_id
            s.complete(tid, [b"first"])
            with pytest.raises(sqlite3.IntegrityError, match="never rewritten"):
                s._conn().execute("UPDATE results SET body = x'00'")
            assert s.results(tid) == [b"first"]

    def test_task_as_dict(self, tmp_path: Path) -> None:
        with TaskStore(tmp_path / "a.sqlite3") as s:
            t = s.accept({"x": 1}, request_id="r").task
        d = t.as_dict()
        assert d["status"] == "accepted" and d["request_id"] == "r" and "payload" not in d
        assert t.as_dict(with_payload=True)["payload"] == {"x": 1}


class TestErrorMapping:
    """Every sqlite3 error type becomes a StoreError that keeps its cause."""

    @pytest.mark.parametrize(
        "exc_type",
        [
            sqlite3.Error,
            sqlite3.InterfaceError,
            sqlite3.DatabaseError,
            sqlite3.DataError,
            sqlite3.OperationalError,
            sqlite3.IntegrityError,
            sqlite3.InternalError,
            sqlite3.ProgrammingError,
            sqlite3.NotSupportedError,
        ],
    )
    def test_mapped(self, exc_type: type[sqlite3.Error]) -> None:
        with pytest.raises(StoreError, match="'db' failed: .*boom; check free disk space") as info:
            with map_sqlite_errors("db"):
                raise exc_type("boom")
        assert isinstance(info.value.__cause__, exc_type)

    def test_other_errors_pass_through(self) -> None:
        with pytest.raises(KeyError):
            with map_sqlite_errors():
                raise KeyError("x")

    def test_locked_database_is_a_store_error(self, tmp_path: Path) -> None:
        path = tmp_path / "a.sqlite3"
        with TaskStore(path, busy_timeout_s=0.05) as s:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StoreError, match="database is locked"):
                    s.accept({"x": 1})
            finally:
                other.execute("ROLLBACK")
                other.close()

    def test_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.sqlite3"
        path.write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(StoreError, match="file is not a database"):
            TaskStore(path)


class TestOpenStore:
    """open_store follows SKIP_PERSISTENCE and the SQLite settings."""

    def test_memory_when_persistence_is_skipped(self, tmp_path: Path) -> None:
        s = open_store(Settings(data_dir=tmp_path, skip_persistence=True))
        assert isinstance(s, MemoryStore)
        s.close()
        assert not (tmp_path / STORE_FILENAME).exists()

    def test_sqlite_in_the_data_dir(self, tmp_path: Path) -> None:
        s = open_store(Settings(data_dir=tmp_path / "d", sqlite_synchronous="NORMAL"))
        assert isinstance(s, TaskStore) and s.synchronous == "NORMAL"
        assert s.path == tmp_path / "d" / STORE_FILENAME and s.path.exists()
        s.close()

    def test_status_values(self) -> None:
        assert [str(s) for s in TaskStatus] == ["accepted", "running", "done", "failed"]
        assert TaskStatus.DONE.is_final and not TaskStatus.RUNNING.is_final
