"""Group commit: one writer thread runs the store writes of many concurrent callers in one transaction.

Under ``synchronous=FULL`` every SQLite commit waits for an ``fsync`` (about 4 ms on the
measured disk), so a commit per write caps the engine at a few hundred writes per second
whatever the CPU does. The :class:`GroupCommitter` queues writes (:class:`~.store.AcceptOp`,
:class:`~.store.CompleteOp`, :class:`~.store.FailOp`) from any thread; its writer takes
everything queued when it is free and hands it to :meth:`~.store.Store.apply`, which runs the
whole group in one transaction with one savepoint per write. While a commit waits on the
disk the next group gathers, so groups grow with the load, with no wait added when idle.

Durability is unchanged: a write's future resolves only after the transaction that holds
it has committed, and a write that fails (an ``IdempotencyError``, a missing task) fails
alone, its savepoint undone, while the rest of its group commits. When the transaction
itself fails, every write of the group gets that ``StoreError``, and none of them was stored.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Final

from ..errors import EngineError
from .store import Store, StoreOp

__all__ = ["DEFAULT_MAX_GROUP", "GroupCommitter"]

DEFAULT_MAX_GROUP: Final = 512
"""Writes one transaction takes at most (a bound on its size and on how long it holds the lock)."""

_log = logging.getLogger(__name__)


def settle(fut: Future[Any], value: Any) -> None:
    """Resolves ``fut`` with a result or an exception, unless it was already resolved or cancelled."""
    if fut.done():
        return
    try:
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)
    except Exception:  # InvalidStateError: cancelled or resolved meanwhile
        pass


class GroupCommitter:
    """A writer thread that commits the queued writes of many callers together.

    Args:
        store: the store whose :meth:`~.store.Store.apply` runs each group.
        max_group: writes per transaction at most.

    >>> from atomic_usage.engine.memory_store import MemoryStore
    >>> from atomic_usage.engine.store import AcceptOp
    >>> with GroupCommitter(MemoryStore()) as gc:
    ...     acc = gc.submit(AcceptOp({"usageData": []}, request_id="r-1")).result()
    >>> acc.created, acc.task.request_id
    (True, 'r-1')
    """

    def __init__(self, store: Store, *, max_group: int = DEFAULT_MAX_GROUP) -> None:
        if max_group < 1:
            raise EngineError(f"max_group={max_group} must be at least 1.")
        self.store = store
        self.max_group = max_group
        self._queue: deque[tuple[StoreOp, Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.groups = 0
        """Transactions committed (or attempted) so far."""
        self.writes = 0
        """Writes handed to the store so far."""
        self._thread = threading.Thread(target=self._run, name="atomic-group-commit", daemon=True)
        self._thread.start()

    def submit(self, op: StoreOp) -> Future[Any]:
        """Queues one write; the future resolves once it is committed (see :meth:`submit_many`)."""
        return self.submit_many([op])[0]

    def submit_many(self, ops: Sequence[StoreOp]) -> list[Future[Any]]:
        """Queues writes, in order; each future resolves after the commit of the transaction holding it.

        A future's result is what :meth:`~.store.Store.apply` gives for its write: the
        ``Acceptance``, the stored bodies, the ``fail`` flag; or it raises that write's error,
        or the ``StoreError`` of its whole transaction. Callbacks added to the futures run in
        the writer thread, after the commit: keep them short.

        Raises:
            EngineError: the committer is closed.
        """
        futures: list[Future[Any]] = [Future() for _ in ops]
        with self._cond:
            if self._closed:
                raise EngineError("The engine is shut down and stores nothing more; start a new one.")
            self._queue.extend(zip(ops, futures, strict=True))
            self._cond.notify()
        return futures

    def depth(self) -> int:
        """Writes waiting for the writer."""
        return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and drained
                    return
                group = [self._queue.popleft() for _ in range(min(self.max_group, len(self._queue)))]
            self._commit(group)
            # Dropped before waiting for the next writes: the ops hold every result body.
            del group

    def _commit(self, group: list[tuple[StoreOp, Future[Any]]]) -> None:
        ops = [op for op, _ in group]
        try:
            results = self.store.apply(ops)
        except BaseException as exc:  # the transaction failed: none of the group was stored
            _log.error("group commit of %d writes failed: %s", len(ops), exc)
            results = [exc] * len(ops)
        self.groups += 1
        self.writes += len(ops)
        for (_, fut), res in zip(group, results, strict=True):
            settle(fut, res)

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuses new writes, commits the queued ones (for up to ``timeout_s``), then stops.

        Writes still queued at the deadline fail with :class:`EngineError` (not stored).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for _, fut in left:
            settle(fut, EngineError("The engine stopped before this write was stored; send the request again."))

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
