"""The life cycle of an engine task: accepted, running, then done or failed."""

from __future__ import annotations

from enum import Enum

__all__ = ["TaskStatus"]


class TaskStatus(str, Enum):  # noqa: UP042 - house style (rq JobStatus); values compare as str
    """Where a task is in its life cycle.

    ``accepted -> running -> done | failed``; a running task whose lease runs
    out (its process died) goes back to ``accepted`` when it is recovered.
    ``done`` and ``failed`` are final: nothing moves a task out of them.
    """

    ACCEPTED = "accepted"
    """Durably stored; not yet picked up by a worker (or given back by recovery)."""

    RUNNING = "running"
    """Claimed under a lease by one engine process."""

    DONE = "done"
    """Finished; its results are stored and never change."""

    FAILED = "failed"
    """Finished with an error; it has no results."""

    @property
    def is_final(self) -> bool:
        """Whether the task has finished (``done`` or ``failed``)."""
        return self in (TaskStatus.DONE, TaskStatus.FAILED)

    def __str__(self) -> str:
        return self.value
