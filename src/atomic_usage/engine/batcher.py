"""The micro-batcher: gathers records submitted from many threads into batches by size and wait."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from ..config import DEFAULT_BATCH_MAX_SIZE, DEFAULT_BATCH_MAX_WAIT_S
from ..errors import EngineError, QueueFullError

if TYPE_CHECKING:
    from .meter import TpsMeter

__all__ = ["DEFAULT_MAX_QUEUE", "Batcher", "Pending"]

DEFAULT_MAX_QUEUE: Final = 100_000
"""Records that may wait for a worker before ``submit`` raises :class:`QueueFullError`."""

T = TypeVar("T")


@dataclass(eq=False)
class Pending(Generic[T]):
    """One submitted record on its way through the engine.

    Attributes:
        item: what was submitted.
        future: resolved with the record's result or exception.
        enqueued_at: monotonic seconds of submission (for latency).
    """

    item: T
    future: Future[Any] = field(default_factory=Future)
    enqueued_at: float = 0.0


class Batcher(Generic[T]):
    """A queue that hands out batches of up to ``max_size`` records.

    A batch is handed out when it is full, or ``max_wait_s`` after its oldest
    record arrived, whichever comes first: a lone record waits at most
    ``max_wait_s``, and under load batches fill up without waiting.

    Args:
        max_size: records per batch at most (``ATOMIC_BATCH_MAX_SIZE``).
        max_wait_s: seconds a batch waits to fill (``ATOMIC_BATCH_MAX_WAIT_S``).
        max_queue: records that may wait at once; more raise :class:`QueueFullError`.
        meter: kept informed of the queue depth.
        clock: monotonic seconds.

    >>> b = Batcher[int](max_size=2, max_wait_s=0.0)
    >>> futures = b.submit_many([1, 2, 3])
    >>> [p.item for p in b.next_batch(timeout_s=0)]
    [1, 2]
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_BATCH_MAX_SIZE,
        max_wait_s: float = DEFAULT_BATCH_MAX_WAIT_S,
        max_queue: int = DEFAULT_MAX_QUEUE,
        meter: TpsMeter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise EngineError(f"max_size={max_size} must be at least 1.")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._meter = meter
        self._clock = clock
        self._queue: deque[Pending[T]] = deque()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def depth(self) -> int:
        """Records waiting to be handed out."""
        return len(self._queue)

    def _gauge(self) -> None:
        if self._meter is not None:
            self._meter.set_queue_depth(len(self._queue))

    def submit(self, item: T) -> Future[Any]:
        """Queues one record; its future resolves with the record's result.

        Raises:
            QueueFullError: ``max_queue`` records are already waiting.
            EngineError: the batcher is closed.
        """
        return self.submit_many([item])[0]

    def submit_many(self, items: Iterable[T]) -> list[Future[Any]]:
        """Queues records together (all or none), so they tend to share a batch.

        Raises:
            QueueFullError: the records do not fit in the queue; none was queued.
            EngineError: the batcher is closed.
        """
        now = self._clock()
        pending = [Pending(item, Future(), now) for item in items]
        with self._cond:
            if self._closed:
                raise EngineError("The engine is shut down and takes no more records; start a new one.")
            if len(self._queue) + len(pending) > self.max_queue:
                raise QueueFullError(
                    f"The engine queue holds {len(self._queue)} records and takes at most {self.max_queue}; "
                    f"{len(pending)} more do not fit. Retry later or add workers (ATOMIC_WORKERS)."
                )
            self._queue.extend(pending)
            self._gauge()
            self._cond.notify_all()
        return [p.future for p in pending]

    async def asubmit(self, item: T) -> Any:
        """Queues one record and awaits its result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(item))

    def next_batch(self, timeout_s: float | None = None) -> list[Pending[T]] | None:
        """Waits for a batch and takes it out of the queue.

        Each record's future is marked running; records whose caller already
        cancelled the future are dropped.

        Args:
            timeout_s: how long to wait for a first record; ``None`` waits until one
                arrives or the batcher is closed.

        Returns:
            Between 1 and ``max_size`` records, oldest first; ``None`` when no record
            came within ``timeout_s``, or the batcher is closed and empty.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    left = None if deadline is None else deadline - self._clock()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                fill_by = self._queue[0].enqueued_at + self.max_wait_s
                while len(self._queue) < self.max_size and not self._closed:
                    left = fill_by - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch: list[Pending[T]] = []
                while self._queue and len(batch) < self.max_size:
                    p = self._queue.popleft()
                    if p.future.set_running_or_notify_cancel():
                        batch.append(p)
                self._gauge()
                if batch:
                    return batch

    def close(self, *, drain: bool = True) -> list[Pending[T]]:
        """Refuses new records and wakes waiting consumers.

        Args:
            drain: leave queued records for consumers to take (they get ``None``
                once the queue is empty); with ``False`` they are taken out here.

        Returns:
            The records taken out (empty when draining); the caller fails them.
        """
        with self._cond:
            self._closed = True
            left: list[Pending[T]] = []
            if not drain:
                left = list(self._queue)
                self._queue.clear()
                self._gauge()
            self._cond.notify_all()
        return left
