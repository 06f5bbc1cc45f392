"""The engine's durable store: observations, tasks and their results in one SQLite database.

A task is a ``process()`` payload. It is written, with the observations it
carries, in one transaction before any work on it starts (:meth:`TaskStore.accept`),
then moves ``accepted -> running -> done | failed``. A running task holds a
*lease* (``lease_until``, renewed by its engine process); when the process dies
the lease runs out and :meth:`TaskStore.recover` hands the task back. Results
are written once: a second completion of the same task (recovered work that
finishes late) keeps the first results, and a trigger refuses any ``UPDATE`` of
a stored result.

:class:`~atomic_usage.engine.memory_store.MemoryStore` has the same interface and keeps everything in memory
(``SKIP_PERSISTENCE=1``). Both pass ``tests/engine/check_store.check_task_store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from ..errors import IdempotencyError, StoreError, TaskNotFound
from .status import TaskStatus

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_ATTEMPTS",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "AcceptOp",
    "Acceptance",
    "CompleteOp",
    "FailOp",
    "Histories",
    "LogRead",
    "Observation",
    "RecoveryReport",
    "Store",
    "StoreOp",
    "Task",
    "TaskStore",
    "map_sqlite_errors",
    "open_store",
    "payload_hash",
]

STORE_FILENAME: Final = "engine.sqlite3"
"""File name of the database inside ``ATOMIC_DATA_DIR``."""

DEFAULT_LEASE_S: Final = 30.0
"""Seconds a claimed task stays owned by its process without a renewal."""

DEFAULT_MAX_ATTEMPTS: Final = 3
"""Claims of one task after which recovery fails it instead of resuming it again."""

DEFAULT_BUSY_TIMEOUT_S: Final = 10.0
"""Seconds a connection waits for another writer's lock before it fails."""

Observation = tuple[str, str, float, float]
"""``(machine_id, metric, ts, value)``; ``ts`` in epoch seconds (UTC)."""

Histories = dict[tuple[str, str], list[tuple[float, float]]]
"""``{(machine_id, metric): [(ts, value), ...]}``, oldest first."""

_OPEN: Final = (TaskStatus.ACCEPTED.value, TaskStatus.RUNNING.value)

# Each migration is a tuple of single statements: ``executescript`` would commit
# the migration's transaction half-way, so statements run one by one instead.
_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE observations (
                machine_id TEXT NOT NULL, metric TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL,
                PRIMARY KEY (machine_id, metric, ts))""",
            """CREATE TABLE tasks (
                task_id TEXT PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, payload_hash TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('accepted', 'running', 'done', 'failed')),
                attempts INTEGER NOT NULL DEFAULT 0, error TEXT, lease_until REAL, owner TEXT,
                created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
            "CREATE INDEX tasks_by_status ON tasks (status, lease_until)",
            "CREATE INDEX tasks_by_created ON tasks (created_at)",
            """CREATE TABLE results (
                task_id TEXT NOT NULL REFERENCES tasks (task_id), record_index INTEGER NOT NULL,
                body BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (task_id, record_index))""",
            """CREATE TRIGGER results_written_once BEFORE UPDATE ON results
                BEGIN SELECT RAISE(ABORT, 'a stored result is never rewritten'); END""",
        ),
    ),
    (
        2,
        (
            # The observations each accepted task brought, in commit order, for the other engine
            # processes sharing this store (``ATOMIC_PROCESSES`` > 1): each one reads what was
            # added since it last looked into its in-memory history. AUTOINCREMENT, so a
            # sequence number is never handed out twice even after every row was trimmed.
            """CREATE TABLE observation_log (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, created_at REAL NOT NULL,
                observations BLOB NOT NULL)""",
            "CREATE INDEX observation_log_by_created ON observation_log (created_at)",
            """CREATE TABLE observation_log_trim (
                id INTEGER PRIMARY KEY CHECK (id = 1), through INTEGER NOT NULL)""",
        ),
    ),
)

SCHEMA_VERSION: Final = _MIGRATIONS[-1][0]
"""The schema version this code writes; older databases are migrated on open."""


@dataclass(frozen=True)
class Task:
    """One task as stored.

    Attributes:
        task_id: the engine's id of the task.
        request_id: the caller's idempotency key (generated when none was given).
        payload_hash: SHA-256 of the canonical JSON of ``payload``.
        payload: the payload, as JSON-decoded data.
        status: where the task is in its life cycle.
        attempts: how many times it was claimed to run.
        error: why it failed (``None`` unless ``status`` is ``failed``).
        lease_until: epoch seconds until which ``owner`` holds it, if anyone does.
        owner: the engine process that holds it.
        created_at: epoch seconds of acceptance.
        updated_at: epoch seconds of the last change.
    """

    task_id: str
    request_id: str
    payload_hash: str
    payload: Any
    status: TaskStatus
    attempts: int
    error: str | None
    lease_until: float | None
    owner: str | None
    created_at: float
    updated_at: float

    def as_dict(self, *, with_payload: bool = False) -> dict[str, Any]:
        """The task as a JSON-ready mapping (for the CLI and the HTTP service)."""
        d: dict[str, Any] = {
            "task_id": self.task_id,
            "request_id": self.request_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "error": self.error,
            "lease_until": self.lease_until,
            "owner": self.owner,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if with_payload:
            d["payload"] = self.payload
        return d


class Acceptance(NamedTuple):
    """What :meth:`Store.accept` found or created.

    Attributes:
        task: the task, new or the one the request id already named.
        created: whether this call created it (``False``: an idempotent retry).
        results: the stored result bodies when the existing task is done, else ``None``.
    """

    task: Task
    created: bool
    results: list[bytes] | None


class RecoveryReport(NamedTuple):
    """What :meth:`Store.recover` did.

    Attributes:
        resumed: tasks handed back as ``accepted``; the caller claims and runs them.
        failed: tasks failed because they had used up their attempts.
    """

    resumed: list[Task]
    failed: list[Task]


class AcceptOp(NamedTuple):
    """:meth:`Store.accept` as one operation of :meth:`Store.apply` (the same arguments).

    ``log``, when given, is written to the observation log with a new task (in the same
    transaction), for the other engine processes sharing the store (:meth:`TaskStore.read_log`).
    """

    payload: Any
    request_id: str | None = None
    observations: Sequence[Observation] = ()
    owner: str | None = None
    lease_s: float = DEFAULT_LEASE_S
    claim: bool = False
    log: bytes | None = None


class LogRead(NamedTuple):
    """What :meth:`TaskStore.read_log` found after a position.

    Attributes:
        through: the position to read after next time (the last sequence number read).
        trimmed: entries after the asked position were trimmed away before they were read:
            the reader's history misses them and must be rebuilt from the store.
        entries: ``(owner, observations)`` of each new entry, in commit order.
    """

    through: int
    trimmed: bool
    entries: list[tuple[str, bytes]]


class CompleteOp(NamedTuple):
    """:meth:`Store.complete` as one operation of :meth:`Store.apply`."""

    task_id: str
    bodies: Sequence[bytes]


class FailOp(NamedTuple):
    """:meth:`Store.fail` as one operation of :meth:`Store.apply`."""

    task_id: str
    error: str


StoreOp = AcceptOp | CompleteOp | FailOp
"""One write of :meth:`Store.apply`; its result is what the matching method returns."""


class Store(Protocol):
    """The interface shared by :class:`TaskStore` and ``MemoryStore``."""

    def accept(
        self,
        payload: Any,
        *,
        request_id: str | None = None,
        observations: Iterable[Observation] = (),
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        claim: bool = False,
    ) -> Acceptance: ...
    def apply(self, ops: Sequence[StoreOp]) -> list[Any]: ...
    def claim(self, task_id: str, *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Task | None: ...
    def renew(self, task_ids: Iterable[str], *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> int: ...
    def complete(self, task_id: str, bodies: Sequence[bytes]) -> list[bytes]: ...
    def fail(self, task_id: str, error: str) -> bool: ...
    def recover(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, force: bool = False) -> RecoveryReport: ...
    def get(self, task_id: str) -> Task: ...
    def find(self, request_id: str) -> Task | None: ...
    def list_tasks(self, *, status: TaskStatus | None = None, limit: int = 100) -> list[Task]: ...
    def unfinished(self) -> list[Task]: ...
    def results(self, task_id: str) -> list[bytes]: ...
    def counts(self) -> dict[TaskStatus, int]: ...
    def load_histories(self, limit: int) -> Histories: ...
    def history_snapshot(self, limit: int) -> tuple[Histories, int]: ...
    def read_log(self, after: int) -> LogRead: ...
    def trim_log(self, older_than_s: float) -> int: ...
    def trim_observations(self, limit: int) -> int: ...
    def trim_tasks(self, older_than_s: float, *, most: int | None = None) -> int: ...
    def close(self) -> None: ...


def payload_hash(payload: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``payload``: sorted keys, no spaces.

    >>> payload_hash({"b": 1, "a": [1.5]}) == payload_hash({"a": [1.5], "b": 1})
    True

    Raises:
        TypeError: the payload holds something JSON cannot encode.
    """
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_ROWS_PER_INSERT: Final = 200
"""Rows one multi-row INSERT writes at most (4 parameters each, far below SQLite's limit)."""


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: Iterable[tuple[Any, ...]], width: int) -> None:
    """Inserts ``rows`` with multi-row ``INSERT ... VALUES (...), (...)`` statements.

    One statement step per 200 rows instead of one per row: sqlite3 releases and takes back
    the GIL around every step, and under load each of those hand-offs waits for another
    thread, so ``executemany`` of a task's 30 observations cost 30 of them.
    ``sql`` holds ``{}`` where the ``VALUES`` list goes; the order of rows is kept (a later
    row for the same key wins, as with ``executemany``).
    """
    rows = list(rows)
    if any(len(r) != width for r in rows):
        # What executemany would say; without this check, rows of other widths could still
        # add up to whole rows' worth of parameters and be stored misaligned.
        raise sqlite3.ProgrammingError(f"Incorrect number of bindings supplied: every row needs {width} values.")
    one = "(" + ", ".join("?" * width) + ")"
    for a in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[a : a + _ROWS_PER_INSERT]
        conn.execute(sql.format(", ".join([one] * len(chunk))), [v for r in chunk for v in r])


def _new_id() -> str:
    return uuid.uuid4().hex


def _give_up_message(attempts: int) -> str:
    return (
        f"Gave up after {attempts} attempts: the engine stopped while running this task each time; "
        "check the payload and the logs, then send it again with a new request id."
    )


@contextlib.contextmanager
def map_sqlite_errors(path: str | os.PathLike[str] = ":memory:") -> Iterator[None]:
    """Turns any ``sqlite3.Error`` raised in the block into a :class:`StoreError`.

    Args:
        path: the database, named in the message.

    Raises:
        StoreError: with the SQLite error as its ``__cause__``.
    """
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(
            f"The task store {str(path)!r} failed: {type(exc).__name__}: {exc}; check free disk space, "
            "file permissions and that no other program holds the database locked."
        ) from exc


class TaskStore:
    """The SQLite store (WAL mode), safe to share between threads and processes.

    Each thread gets its own connection. Writes run in ``BEGIN IMMEDIATE``
    transactions, so a read-then-write (idempotency check, claim) cannot race
    another writer, in this process or another one.

    Args:
        path: the database file; its folder is created.
        synchronous: ``"FULL"`` (every commit reaches the disk) or ``"NORMAL"``
            (faster; in WAL mode a power loss may drop the last commits, a crash
            of the process does not).
        busy_timeout_s: how long to wait for another writer's lock.
        clock: epoch seconds; replace it in tests to move leases forward.

    Raises:
        StoreError: the database cannot be opened or migrated.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous={synchronous!r} is not FULL or NORMAL; use one of them.")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._write_lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._closed = False
        with map_sqlite_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate(self._conn())

    # --- connections and transactions -------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"The task store {str(self.path)!r} is closed; open a new TaskStore.")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        # A forked child must not reuse its parent's connection (SQLite forbids it).
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """Holds the store's write lock file (``<db>.writelock``) across a write transaction.

        Writers of every process queue on it in the kernel before ``BEGIN IMMEDIATE``, so one
        is woken as soon as the previous one commits. Without it a second serving process that
        finds the database locked sleeps in SQLite's busy handler in 1, 2, 5, 10 ... ms steps,
        however soon the lock is free (measured with ``serve --processes 2``, docs/service.md).
        Threads of one process take turns on a lock of their own first (a ``flock`` is held
        per open file, not per thread). SQLite's own locking still guards every write.
        """
        with self._write_lock:
            if os.name == "nt":  # pragma: no cover - no flock on Windows; SQLite's busy handler alone
                yield
                return
            import fcntl

            fd = self._lock_fd
            if fd is None or self._lock_pid != os.getpid():  # a forked child opens its own
                fd = os.open(f"{self.path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
                self._lock_fd, self._lock_pid = fd, os.getpid()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with map_sqlite_errors(self.path), self._writer():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with map_sqlite_errors(self.path):
            yield self._conn()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            latest = _MIGRATIONS[-1][0]
            if current > latest:
                raise StoreError(
                    f"The task store {str(self.path)!r} has schema version {current}, newer than this "
                    f"atomic-usage knows ({latest}); upgrade atomic-usage or point ATOMIC_DATA_DIR elsewhere."
                )
            for version, statements in _MIGRATIONS:
                if version > current:
                    for sql in statements:
                        conn.execute(sql)
                    conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, self.clock()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._read() as conn:
            return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def close(self) -> None:
        """Closes every connection; later calls raise :class:`StoreError`."""
        with self._lock:
            self._closed = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        with self._write_lock:
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tasks ---------------------------------------------------------------
    _COLUMNS: Final = (
        "task_id, request_id, payload_hash, payload, status, attempts, error, lease_until, owner, "
        "created_at, updated_at"
    )

    @staticmethod
    def _task(row: tuple[Any, ...]) -> Task:
        return Task(row[0], row[1], row[2], json.loads(row[3]), TaskStatus(row[4]), *row[5:])

    def _select(self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Task]:
        rows = conn.execute(f"SELECT {self._COLUMNS} FROM tasks WHERE {where}", args).fetchall()
        return [self._task(r) for r in rows]

    def _one(self, conn: sqlite3.Connection, task_id: str) -> Task:
        found = self._select(conn, "task_id = ?", (task_id,))
        if not found:
            raise TaskNotFound(task_id)
        return found[0]

    @staticmethod
    def _bodies(conn: sqlite3.Connection, task_id: str) -> list[bytes]:
        rows = conn.execute("SELECT body FROM results WHERE task_id = ? ORDER BY record_index", (task_id,)).fetchall()
        return [bytes(r[0]) for r in rows]

    def accept(
        self,
        payload: Any,
        *,
        request_id: str | None = None,
        observations: Iterable[Observation] = (),
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        claim: bool = False,
    ) -> Acceptance:
        """Stores a new task and its observations in one transaction, or finds the earlier one.

        When this returns, the task survives a crash of the process.

        Args:
            payload: the request, JSON-encodable.
            request_id: the caller's idempotency key; one is generated when ``None``.
            observations: ``(machine_id, metric, ts, value)`` rows the payload carries;
                a row for an existing ``(machine_id, metric, ts)`` replaces its value.
            owner: the engine process that will run the task; with it, the task is
                leased for ``lease_s`` so no other process recovers it meanwhile.
            lease_s: the lease, in seconds.
            claim: store a new task already claimed by ``owner`` (running, one attempt), as a
                :meth:`claim` right after would, in the same transaction.

        Returns:
            The task, whether this call created it, and its results if it is done.

        Raises:
            IdempotencyError: ``request_id`` was used before with a different payload.
            StoreError: the database failed; nothing was stored.
        """
        with self._tx() as conn:
            return self._accept(conn, AcceptOp(payload, request_id, list(observations), owner, lease_s, claim))

    def _accept(self, conn: sqlite3.Connection, op: AcceptOp) -> Acceptance:
        if op.claim and op.owner is None:
            raise ValueError("accept(claim=True) needs the owner that runs the task.")
        text = _canonical(op.payload)
        digest = hashlib.sha256(text.encode()).hexdigest()
        rid = op.request_id if op.request_id is not None else _new_id()
        found = self._select(conn, "request_id = ?", (rid,))
        if found:
            task = found[0]
            if task.payload_hash != digest:
                raise IdempotencyError(rid)
            done = task.status is TaskStatus.DONE
            return Acceptance(task, False, self._bodies(conn, task.task_id) if done else None)
        now = self.clock()
        lease = now + op.lease_s if op.owner is not None else None
        status, attempts = (TaskStatus.RUNNING, 1) if op.claim else (TaskStatus.ACCEPTED, 0)
        row = (_new_id(), rid, digest, text, status.value, attempts, None, lease, op.owner, now, now)
        conn.execute(f"INSERT INTO tasks ({self._COLUMNS}) VALUES ({', '.join('?' * 11)})", row)
        _insert_rows(
            conn,
            "INSERT INTO observations VALUES {} "
            "ON CONFLICT (machine_id, metric, ts) DO UPDATE SET value = excluded.value",
            op.observations,
            4,
        )
        if op.log is not None and op.owner is not None:
            conn.execute(
                "INSERT INTO observation_log (owner, created_at, observations) VALUES (?, ?, ?)",
                (op.owner, now, op.log),
            )
        task = Task(row[0], rid, digest, op.payload, status, attempts, None, lease, op.owner, now, now)
        return Acceptance(task, True, None)

    def apply(self, ops: Sequence[StoreOp]) -> list[Any]:
        """Runs many accepts, completions and failures in one transaction (group commit).

        Each operation runs in its own savepoint, so one that fails (an ``IdempotencyError``,
        a missing task, a constraint) leaves no trace while the others still commit. All of
        them are on disk when this returns, for one commit (one ``fsync`` under FULL).

        Args:
            ops: :class:`AcceptOp`, :class:`CompleteOp` and :class:`FailOp` items, run in order
                (a later one sees what an earlier one wrote).

        Returns:
            Per operation, in order: what :meth:`accept`, :meth:`complete` or :meth:`fail`
            returns, or the exception it raised (its writes undone).

        Raises:
            StoreError: the transaction itself failed (begin or commit): none of ``ops`` was stored.
        """
        out: list[Any] = []
        with self._tx() as conn:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    with map_sqlite_errors(self.path):
                        if isinstance(op, AcceptOp):
                            out.append(self._accept(conn, op))
                        elif isinstance(op, CompleteOp):
                            out.append(self._complete(conn, op.task_id, op.bodies))
                        else:
                            out.append(self._fail(conn, op.task_id, op.error))
                except Exception as exc:  # this operation only: its savepoint is undone
                    conn.execute("ROLLBACK TO op")
                    out.append(exc)
                conn.execute("RELEASE op")
        return out

    def claim(self, task_id: str, *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Task | None:
        """Marks a task running under ``owner``'s lease and counts the attempt.

        A task can be claimed when it is accepted and not leased to another
        owner, or running under a lease that has run out.

        Returns:
            The claimed task, or ``None`` when someone else holds it or it is final.

        Raises:
            TaskNotFound: no task has this id.
        """
        with self._tx() as conn:
            now = self.clock()
            cur = conn.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, owner = ?, lease_until = ?, "
                "updated_at = ? WHERE task_id = ? AND ((status = 'accepted' AND (owner IS NULL OR owner = ? "
                "OR lease_until < ?)) OR (status = 'running' AND lease_until < ?))",
                (owner, now + lease_s, now, task_id, owner, now, now),
            )
            task = self._one(conn, task_id)
            return task if cur.rowcount else None

    def renew(self, task_ids: Iterable[str], *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Extends ``owner``'s leases on open tasks; returns how many it still holds."""
        with self._tx() as conn:
            now = self.clock()
            cur = conn.executemany(
                "UPDATE tasks SET lease_until = ? WHERE task_id = ? AND owner = ? "
                "AND status IN ('accepted', 'running')",
                [(now + lease_s, t, owner) for t in task_ids],
            )
            return cur.rowcount

    def complete(self, task_id: str, bodies: Sequence[bytes]) -> list[bytes]:
        """Stores a task's results (one body per record) and marks it done, once.

        Returns:
            The bodies stored for the task. They are the first ones written: when
            the task is already done (recovered work finishing late) ``bodies``
            is dropped and the stored ones come back. A task that already failed
            stays failed and gets no results: the list is then empty.

        Raises:
            TaskNotFound: no task has this id.
        """
        with self._tx() as conn:
            return self._complete(conn, task_id, bodies)

    def _complete(self, conn: sqlite3.Connection, task_id: str, bodies: Sequence[bytes]) -> list[bytes]:
        row = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        status = TaskStatus(row[0])
        if status is TaskStatus.FAILED:
            return []
        if status is TaskStatus.DONE:
            return self._bodies(conn, task_id)
        now = self.clock()
        stored = [bytes(b) for b in bodies]
        # An open task has no result rows (they are written with 'done', in one transaction),
        # so what is inserted here is what is stored: nothing to read back.
        _insert_rows(
            conn,
            "INSERT INTO results VALUES {} ON CONFLICT DO NOTHING",
            [(task_id, i, b, now) for i, b in enumerate(stored)],
            4,
        )
        conn.execute(
            "UPDATE tasks SET status = 'done', error = NULL, owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE task_id = ?",
            (now, task_id),
        )
        return stored

    def fail(self, task_id: str, error: str) -> bool:
        """Marks an open task failed with ``error``; returns ``False`` if it was already final.

        Raises:
            TaskNotFound: no task has this id.
        """
        with self._tx() as conn:
            return self._fail(conn, task_id, error)

    def _fail(self, conn: sqlite3.Connection, task_id: str, error: str) -> bool:
        cur = conn.execute(
            "UPDATE tasks SET status = 'failed', error = ?, owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE task_id = ? AND status IN ('accepted', 'running')",
            (error, self.clock(), task_id),
        )
        if not cur.rowcount:
            self._one(conn, task_id)
        return bool(cur.rowcount)

    def recover(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, force: bool = False) -> RecoveryReport:
        """Hands back, in one transaction, the open tasks whose lease has run out.

        A task with ``max_attempts`` attempts or more is failed instead, so a
        payload that kills the engine every time it runs ends instead of looping.

        Args:
            max_attempts: claims after which a task is failed rather than resumed.
            force: also take tasks whose lease has not run out (only when no other
                engine process uses this database, e.g. ``tasks recover --force``).

        Returns:
            The resumed tasks (now ``accepted``, unowned) and the failed ones.
        """
        with self._tx() as conn:
            now = self.clock()
            where = "status IN ('accepted', 'running')"
            if not force:
                where += " AND (lease_until IS NULL OR lease_until < ?)"
            stale = self._select(conn, where + " ORDER BY created_at, rowid", () if force else (now,))
            report = RecoveryReport([], [])
            for t in stale:
                if t.attempts >= max_attempts:
                    err = _give_up_message(t.attempts)
                    conn.execute(
                        "UPDATE tasks SET status = 'failed', error = ?, owner = NULL, lease_until = NULL, "
                        "updated_at = ? WHERE task_id = ?",
                        (err, now, t.task_id),
                    )
                    report.failed.append(
                        replace(
                            t,
                            status=TaskStatus.FAILED,
                            error=err,
                            owner=None,
                            lease_until=None,
                            updated_at=now,
                        )
                    )
                else:
                    conn.execute(
                        "UPDATE tasks SET status = 'accepted', owner = NULL, lease_until = NULL, "
                        "updated_at = ? WHERE task_id = ?",
                        (now, t.task_id),
                    )
                    report.resumed.append(
                        replace(t, status=TaskStatus.ACCEPTED, owner=None, lease_until=None, updated_at=now)
                    )
            return report

    def get(self, task_id: str) -> Task:
        """The task with this id.

        Raises:
            TaskNotFound: no task has this id.
        """
        with self._read() as conn:
            return self._one(conn, task_id)

    def find(self, request_id: str) -> Task | None:
        """The task accepted under ``request_id``, if any."""
        with self._read() as conn:
            found = self._select(conn, "request_id = ?", (request_id,))
            return found[0] if found else None

    def list_tasks(self, *, status: TaskStatus | None = None, limit: int = 100) -> list[Task]:
        """The newest ``limit`` tasks, newest first, optionally only those with ``status``."""
        with self._read() as conn:
            if status is None:
                return self._select(conn, "1 ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
            return self._select(
                conn,
                "status = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (TaskStatus(status).value, limit),
            )

    def unfinished(self) -> list[Task]:
        """Every accepted or running task, oldest first."""
        with self._read() as conn:
            return self._select(conn, "status IN (?, ?) ORDER BY created_at, rowid", _OPEN)

    def results(self, task_id: str) -> list[bytes]:
        """The stored result bodies of a task, in record order (empty unless it is done).

        Raises:
            TaskNotFound: no task has this id.
        """
        with self._read() as conn:
            self._one(conn, task_id)
            return self._bodies(conn, task_id)

    def counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status is present)."""
        with self._read() as conn:
            rows = dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
        return {s: int(rows.get(s.value, 0)) for s in TaskStatus}

    # --- observations --------------------------------------------------------
    def load_histories(self, limit: int) -> Histories:
        """The last ``limit`` observations of every series, to rebuild in-memory history on start."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT machine_id, metric, ts, value FROM (SELECT *, ROW_NUMBER() OVER "
                "(PARTITION BY machine_id, metric ORDER BY ts DESC) AS rn FROM observations) "
                "WHERE rn <= ? ORDER BY machine_id, metric, ts",
                (limit,),
            ).fetchall()
        out: Histories = {}
        for machine_id, metric, ts, value in rows:
            out.setdefault((machine_id, metric), []).append((ts, value))
        return out

    def history_snapshot(self, limit: int) -> tuple[Histories, int]:
        """:meth:`load_histories` and the observation log's position, read in one snapshot.

        A reader that rebuilds its history from this and then reads the log after the
        position sees every observation exactly once.
        """
        with map_sqlite_errors(self.path):
            conn = self._conn()
            conn.execute("BEGIN")  # one read snapshot (WAL) for both statements
            try:
                position = self._log_position(conn)
                hist = self.load_histories(limit)
            finally:
                conn.execute("COMMIT")
        return hist, position

    @staticmethod
    def _log_position(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'observation_log'").fetchone()
        return int(row[0]) if row else 0

    def read_log(self, after: int) -> LogRead:
        """The observation log's entries after position ``after`` (see :class:`LogRead`)."""
        with map_sqlite_errors(self.path):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                row = conn.execute("SELECT through FROM observation_log_trim WHERE id = 1").fetchone()
                rows = conn.execute(
                    "SELECT seq, owner, observations FROM observation_log WHERE seq > ? ORDER BY seq", (after,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        trimmed = row is not None and int(row[0]) > after
        through = int(rows[-1][0]) if rows else after
        return LogRead(through, trimmed, [(str(o), bytes(b)) for _, o, b in rows])

    def trim_log(self, older_than_s: float) -> int:
        """Deletes observation log entries older than ``older_than_s`` seconds; returns how many went.

        The last deleted position is kept, so a reader that had not read them yet learns
        that it must rebuild (:attr:`LogRead.trimmed`).
        """
        with self._tx() as conn:
            cutoff = self.clock() - older_than_s
            last = conn.execute("SELECT MAX(seq) FROM observation_log WHERE created_at < ?", (cutoff,)).fetchone()[0]
            if last is None:
                return 0
            cur = conn.execute("DELETE FROM observation_log WHERE seq <= ?", (last,))
            conn.execute(
                "INSERT INTO observation_log_trim VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET through = MAX(through, excluded.through)",
                (int(last),),
            )
            return cur.rowcount

    def trim_observations(self, limit: int) -> int:
        """Deletes all but the last ``limit`` observations of each series; returns how many went."""
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM observations WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER "
                "(PARTITION BY machine_id, metric ORDER BY ts DESC) AS rn FROM observations) WHERE rn > ?)",
                (limit,),
            )
            return cur.rowcount

    def trim_tasks(self, older_than_s: float, *, batch: int = 500, most: int | None = None) -> int:
        """Deletes the done and failed tasks finished more than ``older_than_s`` seconds ago,
        with their results; returns how many went. Unfinished tasks are never touched.

        Counted from the finish, not the acceptance: a task that waited long (a long queue, or
        recovered after an outage) keeps its result for its caller as long as any other. A
        finished task's ``updated_at`` is its finish, never before its ``created_at``, so the
        index on ``created_at`` still narrows the search.

        In transactions of at most ``batch`` tasks, so that requests are never held behind one
        long write; freed pages are reused by SQLite (the file stops growing, it does not shrink).
        With ``most``, it stops once about that many went (whole batches), so that a caller with
        other work (renewing leases) gets back to it; a call that returns ``most`` or more may
        have left some.
        """
        cutoff = self.clock() - older_than_s
        n = 0
        while most is None or n < most:
            with self._tx() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT task_id FROM tasks WHERE created_at < ? AND updated_at < ? "
                        "AND status IN ('done', 'failed') ORDER BY created_at LIMIT ?",
                        (cutoff, cutoff, batch),
                    )
                ]
                marks = ",".join("?" * len(ids))
                if ids:
                    conn.execute(f"DELETE FROM results WHERE task_id IN ({marks})", ids)
                    conn.execute(f"DELETE FROM tasks WHERE task_id IN ({marks})", ids)
            n += len(ids)
            if len(ids) < batch:
                break
        return n


def open_store(settings: Settings, *, clock: Callable[[], float] = time.time) -> Store:
    """The store the settings ask for: in memory with ``skip_persistence``, else SQLite.

    The SQLite file is ``settings.data_dir / STORE_FILENAME``, opened with
    ``settings.sqlite_synchronous``.

    Raises:
        StoreError: the database cannot be opened or migrated.
    """
    if settings.skip_persistence:
        from .memory_store import MemoryStore

        return MemoryStore(clock=clock)
    return TaskStore(Path(settings.data_dir) / STORE_FILENAME, synchronous=settings.sqlite_synchronous, clock=clock)
