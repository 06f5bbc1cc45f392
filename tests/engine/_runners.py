"""Runner factories for the pool tests; module level, so process workers can unpickle them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

POISON = -1
HANG = -2


def doubler() -> Any:
    """Doubles every item; a POISON item kills the worker, a HANG item blocks it."""

    def run(items: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        for x in items:
            v = x if not isinstance(x, np.ndarray) else int(x.flat[0])
            if v == POISON:
                if threading.current_thread() is threading.main_thread():
                    os._exit(13)  # a process worker dies as a segfault would
                raise SystemError("the runtime broke")  # a thread worker's run_batch raises
            if v == HANG:
                time.sleep(20)
            out.append(x * 2)
        return out

    return run


def per_record_errors() -> Any:
    """Returns a ValueError instance for negative items, the item otherwise."""
    return lambda items: [ValueError(f"bad {x}") if x < 0 else x for x in items]


def wrong_length() -> Any:
    """Returns one result too few."""
    return lambda items: list(items)[:-1]


def broken_factory() -> Any:
    """Cannot build its runner."""
    raise RuntimeError("model file missing")


def array_sum() -> Any:
    """Returns, per array, a float32 array of its row sums; records which pid ran it."""

    def run(items: Sequence[np.ndarray]) -> list[Any]:
        return [np.asarray(x.sum(axis=-1), dtype=np.float32) for x in items]

    return run


def pid_of_worker() -> Any:
    """Returns the worker's process id for every item."""
    return lambda items: [os.getpid() for _ in items]
