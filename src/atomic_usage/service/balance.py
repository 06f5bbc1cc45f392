"""Keeping the connections of ``serve --processes N`` spread evenly over the processes.

Each serving process listens on its own ``SO_REUSEPORT`` socket, and the kernel picks one for
each new connection by a hash of its addresses. A client that keeps a few connections open
(a collector's pool of 16, say) can land most of them on one process: two processes held
2/14 and 4/12 of wrk's 16 connections in some runs, and the busy one then served alone while
the other idled (docs/service.md).

The supervisor shares one counter per process (:func:`shared_counts`). Each process writes
its own number of open connections there, on every response and every tick of its event
loop, and when it holds more than its share (``ceil(total / N)``), it answers one request
with ``Connection: close``. The client opens a
new connection, which the kernel hashes again, so the spread converges on an even one. A
process closes at most one connection per ``cooldown_s``: its own count only drops once the
client has gone, and without the pause it would close several for one excess. Nothing else
changes for the client: HTTP/1.1 clients reconnect after ``Connection: close``, and the
request it came with was answered in full.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableSequence
from typing import Any, Final

__all__ = ["DEFAULT_COOLDOWN_S", "ConnectionBalance", "shared_counts"]

DEFAULT_COOLDOWN_S: Final = 0.2
"""Seconds a process waits after asking a client to reconnect before it asks another."""


def shared_counts(ctx: Any, processes: int) -> MutableSequence[int]:
    """One open-connections counter per serving process, in memory the processes share.

    Args:
        ctx: the ``multiprocessing`` context the processes are started from.
        processes: how many serving processes there are.
    """
    counts: MutableSequence[int] = ctx.Array("q", processes, lock=False)
    return counts


class ConnectionBalance:
    """Tells one serving process when to close a connection so that they spread evenly.

    Args:
        counts: every process's open connections (:func:`shared_counts`); this one writes ``counts[index]``.
        index: this process's slot.
        open_connections: how many connections this process holds now.
        cooldown_s: the least time between two closes.
        clock: monotonic seconds (tests pass their own).

    >>> counts = [0, 3]
    >>> mine = [13]
    >>> b = ConnectionBalance(counts, 0, lambda: mine[0], clock=lambda: 10.0)
    >>> b.should_close()  # 13 of 16 here, the share is 8
    True
    >>> b.should_close()  # within the cooldown
    False
    >>> mine[0] = 8
    >>> b.should_close()
    False
    """

    def __init__(
        self,
        counts: MutableSequence[int],
        index: int,
        open_connections: Callable[[], int],
        *,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= index < len(counts):
            raise ValueError(f"process slot {index} is outside the {len(counts)} shared counters.")
        self._counts = counts
        self._index = index
        self._open = open_connections
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._last_close = float("-inf")
        self._lock = threading.Lock()
        self.closed = 0
        """Connections this process has asked its clients to reopen."""

    def publish(self) -> int:
        """Writes this process's count of open connections to its slot, and returns it."""
        mine = int(self._open())
        self._counts[self._index] = mine
        return mine

    def should_close(self) -> bool:
        """Whether the response being sent should carry ``Connection: close``."""
        mine = self.publish()
        total = sum(self._counts)
        share = -(-total // len(self._counts))
        if mine <= share:
            return False
        with self._lock:
            now = self._clock()
            if now - self._last_close < self.cooldown_s:
                return False
            self._last_close = now
            self.closed += 1
        return True

    def stop(self) -> None:
        """Clears this process's slot: it holds no connection any more."""
        self._counts[self._index] = 0
