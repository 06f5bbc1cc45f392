"""A task store kept in memory only, for ``SKIP_PERSISTENCE=1`` and tests."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import IdempotencyError, TaskNotFound
from .status import TaskStatus
from .store import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    Acceptance,
    AcceptOp,
    CompleteOp,
    Histories,
    LogRead,
    Observation,
    RecoveryReport,
    StoreOp,
    Task,
    _canonical,
    _give_up_message,
    _new_id,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A store kept in memory only (``SKIP_PERSISTENCE=1``); same behaviour as :class:`TaskStore`.

    Args:
        clock: epoch seconds; replace it in tests to move leases forward.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._by_request: dict[str, str] = {}
        self._results: dict[str, list[bytes]] = {}
        self._obs: dict[tuple[str, str], dict[float, float]] = {}

    def _one(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    def _set(self, task: Task, **changes: Any) -> Task:
        new = replace(task, updated_at=self.clock(), **changes)
        self._tasks[task.task_id] = new
        return new

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
        """See :meth:`TaskStore.accept`."""
        if claim and owner is None:
            raise ValueError("accept(claim=True) needs the owner that runs the task.")
        text = _canonical(payload)
        digest = hashlib.sha256(text.encode()).hexdigest()
        rid = request_id if request_id is not None else _new_id()
        rows = list(observations)
        with self._lock:
            if rid in self._by_request:
                task = self._tasks[self._by_request[rid]]
                if task.payload_hash != digest:
                    raise IdempotencyError(rid)
                done = task.status is TaskStatus.DONE
                return Acceptance(task, False, list(self._results[task.task_id]) if done else None)
            now = self.clock()
            lease = now + lease_s if owner is not None else None
            status, attempts = (TaskStatus.RUNNING, 1) if claim else (TaskStatus.ACCEPTED, 0)
            # A JSON round trip gives the caller the same detached copy SQLite would.
            task = Task(_new_id(), rid, digest, json.loads(text), status, attempts, None, lease, owner, now, now)
            self._tasks[task.task_id] = task
            self._by_request[rid] = task.task_id
            for machine_id, metric, ts, value in rows:
                self._obs.setdefault((machine_id, metric), {})[float(ts)] = float(value)
            return Acceptance(task, True, None)

    def apply(self, ops: Sequence[StoreOp]) -> list[Any]:
        """See :meth:`TaskStore.apply`; each operation is all or nothing, as there."""
        out: list[Any] = []
        with self._lock:
            for op in ops:
                try:
                    if isinstance(op, AcceptOp):
                        out.append(
                            self.accept(
                                op.payload,
                                request_id=op.request_id,
                                observations=op.observations,
                                owner=op.owner,
                                lease_s=op.lease_s,
                                claim=op.claim,
                            )
                        )
                    elif isinstance(op, CompleteOp):
                        out.append(self.complete(op.task_id, op.bodies))
                    else:
                        out.append(self.fail(op.task_id, op.error))
                except Exception as exc:  # each method checks before it changes anything
                    out.append(exc)
        return out

    def claim(self, task_id: str, *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Task | None:
        """See :meth:`TaskStore.claim`."""
        with self._lock:
            t = self._one(task_id)
            now = self.clock()
            expired = t.lease_until is not None and t.lease_until < now
            free = t.owner is None or t.owner == owner or expired
            if (t.status is TaskStatus.ACCEPTED and free) or (t.status is TaskStatus.RUNNING and expired):
                return self._set(
                    t,
                    status=TaskStatus.RUNNING,
                    attempts=t.attempts + 1,
                    owner=owner,
                    lease_until=now + lease_s,
                )
            return None

    def renew(self, task_ids: Iterable[str], *, owner: str, lease_s: float = DEFAULT_LEASE_S) -> int:
        """See :meth:`TaskStore.renew`."""
        n = 0
        with self._lock:
            for tid in task_ids:
                t = self._tasks.get(tid)
                if t is not None and t.owner == owner and not t.status.is_final:
                    self._set(t, lease_until=self.clock() + lease_s)
                    n += 1
        return n

    def complete(self, task_id: str, bodies: Sequence[bytes]) -> list[bytes]:
        """See :meth:`TaskStore.complete`."""
        with self._lock:
            t = self._one(task_id)
            if t.status is TaskStatus.FAILED:
                return []
            if t.status is not TaskStatus.DONE:
                self._results[task_id] = [bytes(b) for b in bodies]
                self._set(t, status=TaskStatus.DONE, error=None, owner=None, lease_until=None)
            return list(self._results[task_id])

    def fail(self, task_id: str, error: str) -> bool:
        """See :meth:`TaskStore.fail`."""
        with self._lock:
            t = self._one(task_id)
            if t.status.is_final:
                return False
            self._set(t, status=TaskStatus.FAILED, error=error, owner=None, lease_until=None)
            return True

    def recover(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, force: bool = False) -> RecoveryReport:
        """See :meth:`TaskStore.recover`."""
        report = RecoveryReport([], [])
        with self._lock:
            now = self.clock()
            for t in sorted(self._tasks.values(), key=lambda t: t.created_at):
                stale = force or t.lease_until is None or t.lease_until < now
                if t.status.is_final or not stale:
                    continue
                if t.attempts >= max_attempts:
                    report.failed.append(
                        self._set(
                            t,
                            status=TaskStatus.FAILED,
                            error=_give_up_message(t.attempts),
                            owner=None,
                            lease_until=None,
                        )
                    )
                else:
                    report.resumed.append(self._set(t, status=TaskStatus.ACCEPTED, owner=None, lease_until=None))
        return report

    def get(self, task_id: str) -> Task:
        """See :meth:`TaskStore.get`."""
        with self._lock:
            return self._one(task_id)

    def find(self, request_id: str) -> Task | None:
        """See :meth:`TaskStore.find`."""
        with self._lock:
            tid = self._by_request.get(request_id)
            return None if tid is None else self._tasks[tid]

    def list_tasks(self, *, status: TaskStatus | None = None, limit: int = 100) -> list[Task]:
        """See :meth:`TaskStore.list_tasks`."""
        with self._lock:
            tasks = [t for t in reversed(self._tasks.values()) if status is None or t.status is TaskStatus(status)]
        return sorted(tasks, key=lambda t: -t.created_at)[:limit]

    def unfinished(self) -> list[Task]:
        """See :meth:`TaskStore.unfinished`."""
        with self._lock:
            return [t for t in self._tasks.values() if not t.status.is_final]

    def results(self, task_id: str) -> list[bytes]:
        """See :meth:`TaskStore.results`."""
        with self._lock:
            self._one(task_id)
            return list(self._results.get(task_id, []))

    def counts(self) -> dict[TaskStatus, int]:
        """See :meth:`TaskStore.counts`."""
        with self._lock:
            out = dict.fromkeys(TaskStatus, 0)
            for t in self._tasks.values():
                out[t.status] += 1
            return out

    def load_histories(self, limit: int) -> Histories:
        """See :meth:`TaskStore.load_histories`."""
        with self._lock:
            out: Histories = {}
            for key, series in sorted(self._obs.items()):
                points = sorted(series.items())[max(0, len(series) - limit) :]
                if points:
                    out[key] = points
            return out

    def history_snapshot(self, limit: int) -> tuple[Histories, int]:
        """See :meth:`TaskStore.history_snapshot`; nothing else shares a store in memory (position 0)."""
        return self.load_histories(limit), 0

    def read_log(self, after: int) -> LogRead:
        """See :meth:`TaskStore.read_log`: always empty (no other process shares this store)."""
        return LogRead(after, False, [])

    def trim_log(self, older_than_s: float) -> int:
        """See :meth:`TaskStore.trim_log`: nothing to trim."""
        return 0

    def trim_observations(self, limit: int) -> int:
        """See :meth:`TaskStore.trim_observations`."""
        n = 0
        with self._lock:
            for series in self._obs.values():
                drop = sorted(series)[:-limit] if limit else sorted(series)
                for ts in drop:
                    del series[ts]
                n += len(drop)
        return n

    def trim_tasks(self, older_than_s: float, *, most: int | None = None) -> int:
        """See :meth:`TaskStore.trim_tasks`."""
        cutoff = self.clock() - older_than_s
        with self._lock:
            gone = [t for t in self._tasks.values() if t.updated_at < cutoff and t.status.is_final][:most]
            for t in gone:
                del self._tasks[t.task_id]
                self._by_request.pop(t.request_id, None)
                self._results.pop(t.task_id, None)
        return len(gone)

    def close(self) -> None:
        """Nothing to release; present for interface parity."""
