"""The fleet's recent history in memory: one ring of 5-minute buckets per machine and metric.

Observations are averaged into the bucket of their time (so many samples per step, and
repeated samples, become one mean), a machine's ring moves forward with its newest
observation, and a sample older than the ring is dropped and counted. All machines live
in one array, so the contexts of a whole batch are gathered with one fancy index.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np

from .._types import DEFAULT_METRICS
from ..data.regularize import DEFAULT_MAX_FILL, fill_short_gaps
from .payload import Observation

__all__ = ["FleetHistory"]


class FleetHistory:
    """Rings of per-step means for many machines (thread-safe).

    Args:
        length: steps kept per machine and metric.
        step_s: seconds per step.
        metrics: metric names, in ring order.
    """

    def __init__(self, length: int, *, step_s: float = 300.0, metrics: Sequence[str] = DEFAULT_METRICS) -> None:
        self.length = int(length)
        self.step_s = float(step_s)
        self.metrics = tuple(metrics)
        self._m = {m: k for k, m in enumerate(self.metrics)}
        self._index: dict[str, int] = {}
        cap = 16
        self._sums = np.zeros((cap, len(self.metrics), self.length))
        self._counts = np.zeros((cap, len(self.metrics), self.length), np.uint32)
        self._last = np.full(cap, np.iinfo(np.int64).min, np.int64)
        self._lock = threading.Lock()
        self.dropped = 0
        """Observations older than a machine's ring, not kept."""

    def reset(self) -> None:
        """Forgets every machine (before a rebuild from the store)."""
        with self._lock:
            self._index.clear()
            self._sums[:] = 0
            self._counts[:] = 0
            self._last[:] = np.iinfo(np.int64).min

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, machine_id: object) -> bool:
        return machine_id in self._index

    def _slot(self, machine_id: str) -> int:
        i = self._index.get(machine_id)
        if i is None:
            i = len(self._index)
            if i == len(self._last):
                grow = len(self._last)
                self._sums = np.concatenate([self._sums, np.zeros((grow, *self._sums.shape[1:]))])
                self._counts = np.concatenate([self._counts, np.zeros((grow, *self._counts.shape[1:]), np.uint32)])
                self._last = np.concatenate([self._last, np.full(grow, np.iinfo(np.int64).min, np.int64)])
            self._index[machine_id] = i
        return i

    def append(self, observations: Iterable[Observation]) -> int:
        """Adds observations; returns how many were dropped as older than the ring."""
        dropped = 0
        L = self.length
        never = np.iinfo(np.int64).min
        with self._lock:
            sums, counts, lasts, index = self._sums, self._counts, self._last, self._m
            for ob in observations:
                i = self._slot(ob.id)
                if sums is not self._sums:  # the arrays grew for a new machine
                    sums, counts, lasts = self._sums, self._counts, self._last
                b = int(ob.ts // self.step_s)
                last = int(lasts[i])
                if b > last:
                    if last == never or b - last >= L:
                        sums[i] = 0
                        counts[i] = 0
                    elif b - last == 1:  # the usual case (a machine's next step): one column, no index array
                        sums[i, :, b % L] = 0
                        counts[i, :, b % L] = 0
                    else:
                        pos = np.arange(last + 1, b + 1) % L
                        sums[i][:, pos] = 0
                        counts[i][:, pos] = 0
                    lasts[i] = b
                elif b <= last - L:
                    dropped += 1
                    continue
                p = b % L
                for m, v in ob.values.items():
                    k = index[m]
                    sums[i, k, p] += v
                    counts[i, k, p] += 1
            self.dropped += dropped
        return dropped

    def last_step(self, machine_ids: Sequence[str]) -> np.ndarray:
        """Epoch seconds of each machine's newest step."""
        with self._lock:
            idx = np.array([self._index[m] for m in machine_ids], np.int64)
            return self._last[idx] * self.step_s

    def contexts(self, machine_ids: Sequence[str], steps: int, *, max_fill: int = DEFAULT_MAX_FILL) -> np.ndarray:
        """The last ``steps`` step means of each machine and metric, ending at its newest step.

        Gaps of at most ``max_fill`` steps are interpolated; longer gaps and steps before
        the first observation are NaN.

        Returns:
            float64 array (len(machine_ids), len(metrics), steps).

        Raises:
            KeyError: an id has no history.
        """
        steps = min(steps, self.length)
        M, L = len(self.metrics), self.length
        with self._lock:
            idx = np.array([self._index[m] for m in machine_ids], np.int64)
            pos = (self._last[idx][:, None] - steps + 1 + np.arange(steps)[None, :]) % L
            # Flat positions in (machine, metric, step) order: one take per array reads each
            # ring along its steps (a fancy index over (machine, :, step) read across them).
            flat = (idx[:, None, None] * M + np.arange(M)[None, :, None]) * L + pos[:, None, :]
            sums = np.take(self._sums.reshape(-1), flat)  # (k, M, steps)
            counts = np.take(self._counts.reshape(-1), flat)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        # Only rows with a gap between their first and last observed step have anything to
        # fill; the others (most of a live fleet's) skip the interpolation's passes.
        rows = out.reshape(-1, steps)
        seen = ~np.isnan(rows)
        n_seen = seen.sum(1)
        first = np.argmax(seen, axis=1)
        last = steps - 1 - np.argmax(seen[:, ::-1], axis=1)
        gappy = np.flatnonzero((n_seen > 0) & (last - first + 1 > n_seen))
        if len(gappy):
            sub = rows[gappy].reshape(-1)
            seg_start = np.repeat(np.arange(len(gappy)) * steps, steps)
            fill_short_gaps(sub, seg_start, seg_start + steps - 1, max_fill)
            rows[gappy] = sub.reshape(-1, steps)
        return out

    def snapshot(self) -> dict[str, int]:
        """Machines held and observations dropped."""
        return {"machines": len(self), "dropped": self.dropped}
