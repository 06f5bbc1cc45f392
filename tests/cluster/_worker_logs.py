"""What the library logs inside the worker processes, in an importable module so workers can unpickle it."""

from __future__ import annotations

import logging
from typing import Any


class _Kept(logging.Handler):
    """Keeps the messages of the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def start_keeping(dask_worker: Any) -> None:
    """From now on keeps this worker's ``atomic_usage`` warnings (for ``client.run``)."""
    logger = logging.getLogger("atomic_usage")
    for h in [h for h in logger.handlers if isinstance(h, _Kept)]:
        logger.removeHandler(h)
    logger.addHandler(_Kept())


def kept(dask_worker: Any) -> list[str]:
    """The warnings this worker logged since :func:`start_keeping`; stops keeping them."""
    logger = logging.getLogger("atomic_usage")
    found = [h for h in logger.handlers if isinstance(h, _Kept)]
    for h in found:
        logger.removeHandler(h)
    return [m for h in found for m in h.messages]
