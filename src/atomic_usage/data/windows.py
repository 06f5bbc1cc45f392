"""Windows over histories without copying them, and the flat store they are cut from.

Training cuts millions of (context + horizon) windows from the same histories. They are
strided views (:func:`numpy.lib.stride_tricks.sliding_window_view`) into one flat array
per :class:`SeriesBank`, which may itself be a zero-copy view of an Arrow buffer; only
the mini-batch that is fed to the network is ever copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import DTypeLike

from .._types import BOUNDED_METRICS
from .regularize import Panel

__all__ = ["SeriesBank", "last_windows", "make_windows"]


def make_windows(values: np.ndarray, length: int) -> np.ndarray:
    """All windows of ``length`` consecutive values, as a read-only view (no copy).

    Args:
        values: a 1-D array.
        length: window length (at most ``len(values)``).

    Returns:
        Array of shape ``(len(values) - length + 1, length)`` sharing memory with ``values``.

    >>> w = make_windows(np.arange(5.0), 3)
    >>> w.tolist(), np.shares_memory(w, w.base)
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], True)
    """
    return sliding_window_view(values, length)


def last_windows(series: Sequence[np.ndarray], context: int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """The last ``context`` values of each series, left-padded with NaN when shorter.

    One scatter for all rows rather than a copy per row: the serving path calls this for every
    batch, where the per-row copies cost more than the network.

    Returns:
        A new array of ``dtype`` (float32 by default), shape ``(len(series), context)``.

    >>> last_windows([np.arange(4.0), np.array([7.0])], 3).tolist()
    [[1.0, 2.0, 3.0], [nan, nan, 7.0]]
    """
    n = len(series)
    out = np.full((n, context), np.nan, dtype=dtype)
    if not n or context <= 0:
        return out
    tails = [np.asarray(s)[-context:] for s in series]
    k = np.fromiter(map(len, tails), np.int64, n)
    total = int(k.sum())
    if total:
        rows = np.repeat(np.arange(n), k)
        # column of each value: its place in its tail, right-aligned to the window's end
        cols = np.arange(total) - np.repeat(np.cumsum(k) - k - (context - k), k)
        out[rows, cols] = np.concatenate(tails)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesBank:
    """Many univariate series in one flat float32 array.

    Attributes:
        values: all series back to back, shape (total,), NaN = missing.
        offsets: series i is ``values[offsets[i]:offsets[i + 1]]``; shape (n + 1,).
        ids: the id of the machine each series belongs to, shape (n,).
        metrics: the metric of each series, shape (n,).
        start: UTC start of each series, datetime64[ns], shape (n,).
        step_s: seconds between steps.
    """

    values: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    metrics: np.ndarray
    start: np.ndarray
    step_s: float

    @classmethod
    def from_panel(cls, panel: Panel) -> SeriesBank:
        """Stacks every metric of a panel (one copy, to float32)."""
        parts, offs, ids, mets, starts = [], [0], [], [], []
        for i, m, s in panel.iter_series():
            parts.append(s)
            offs.append(offs[-1] + len(s))
            ids.append(panel.ids[i])
            mets.append(m)
            starts.append(panel.start[i])
        values = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        return cls(
            values,
            np.asarray(offs, np.int64),
            np.asarray(ids, object),
            np.asarray(mets, object),
            np.asarray(starts, "datetime64[ns]"),
            panel.step.total_seconds(),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Steps per series, shape (n,)."""
        return np.diff(self.offsets)

    @property
    def bounded(self) -> np.ndarray:
        """Whether each series is a percent metric (values in [0, 100]), shape (n,)."""
        return np.isin(self.metrics, list(BOUNDED_METRICS))

    def series(self, i: int) -> np.ndarray:
        """Series ``i`` as a view."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def windows(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of ``length`` steps that lies inside one series.

        Returns:
            ``(view, starts, series_of)``: ``view`` is the strided (no-copy) window view of
            the whole flat array; ``view[starts]`` are the valid windows; ``series_of[k]`` is
            the series that window ``starts[k]`` belongs to.
        """
        if len(self.values) < length:
            return np.zeros((0, length), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        view = make_windows(self.values, length)
        counts = np.maximum(self.lengths - length + 1, 0)
        series_of = np.repeat(np.arange(len(self)), counts)
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = self.offsets[:-1][series_of] + within
        return view, starts.astype(np.int64), series_of
