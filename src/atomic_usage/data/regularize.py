"""Regularization to a fixed step: sort, merge repeated timestamps, fill short gaps, mask long ones.

The result is a :class:`Panel`: every series on its own regular grid, the values of
all series of one metric concatenated in one flat array (``offsets`` marks where each
series starts), so windows can be views into it without copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import SchemaError

__all__ = ["DEFAULT_MAX_FILL", "DEFAULT_STEP", "Panel", "RegularizeReport", "fill_short_gaps", "regularize"]

DEFAULT_STEP = pd.Timedelta(minutes=5)
"""The step of every data set this library was built on (5 minutes)."""

DEFAULT_MAX_FILL = 3
"""Longest gap, in steps, filled by linear interpolation; longer gaps stay missing (masked)."""


@dataclasses.dataclass(frozen=True)
class RegularizeReport:
    """What :func:`regularize` changed.

    Attributes:
        n_series: machines (ids) in the result, each with every metric.
        n_rows_in: rows read.
        duplicates: rows merged into another row of the same id and step (their values averaged).
        unsorted_ids: ids whose rows did not come in time order.
        filled: values filled by interpolation (gaps of at most ``max_fill`` steps), all metrics.
        masked: values left missing inside the span of series that are forecast (longer gaps, missing
            cells), all metrics. A series without any observed value (no data, or masked whole by a
            rejection) is not counted: it is not forecast, and the forecast reports it as such.
    """

    n_series: int
    n_rows_in: int
    duplicates: int
    unsorted_ids: int
    filled: int
    masked: int

    def summary(self) -> str:
        """One line for a log or a console."""
        return (
            f"{self.n_series} machines from {self.n_rows_in} rows: {self.duplicates} repeated timestamps merged "
            f"(mean), {self.unsorted_ids} ids reordered, {self.filled} values interpolated, "
            f"{self.masked} left missing"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Panel:
    """Regular series of several ids and metrics.

    Attributes:
        ids: the series ids, shape (n,).
        start: UTC timestamp of each series' first step, shape (n,) datetime64[ns].
        step: the grid's step.
        offsets: series i occupies ``values[m][offsets[i]:offsets[i + 1]]``; shape (n + 1,).
        values: per metric, the flat float64 array of all series (NaN = missing).
    """

    ids: np.ndarray
    start: np.ndarray
    step: pd.Timedelta
    offsets: np.ndarray
    values: dict[str, np.ndarray]

    @property
    def metrics(self) -> list[str]:
        """The metric names, in column order."""
        return list(self.values)

    @property
    def lengths(self) -> np.ndarray:
        """Steps per series, shape (n,)."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def series(self, i: int, metric: str) -> np.ndarray:
        """Series ``i`` of ``metric`` as a view (no copy) into the flat array."""
        return self.values[metric][self.offsets[i] : self.offsets[i + 1]]

    def end(self) -> np.ndarray:
        """UTC timestamp of each series' last step, shape (n,)."""
        return self.start + (self.lengths - 1) * np.timedelta64(self.step.value, "ns")

    def select(self, index: Sequence[int] | np.ndarray) -> Panel:
        """A panel holding the series at ``index`` (copies the values)."""
        idx = np.asarray(index, dtype=np.int64)
        lens = self.lengths[idx]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        take = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        return Panel(self.ids[idx], self.start[idx], self.step, offsets, {m: v[take] for m, v in self.values.items()})

    def truncate(self, n_steps: np.ndarray) -> Panel:
        """A panel keeping the first ``n_steps[i]`` steps of each series (copies the values)."""
        n_steps = np.minimum(np.asarray(n_steps, dtype=np.int64), self.lengths)
        offsets = np.concatenate([[0], np.cumsum(n_steps)]).astype(np.int64)
        take = (
            np.concatenate([np.arange(o, o + k) for o, k in zip(self.offsets[:-1], n_steps, strict=True)])
            if len(n_steps)
            else np.zeros(0, np.int64)
        )
        return Panel(self.ids, self.start, self.step, offsets, {m: v[take] for m, v in self.values.items()})

    def iter_series(self) -> Iterator[tuple[int, str, np.ndarray]]:
        """Yields ``(i, metric, view)`` for every series and metric."""
        for i in range(len(self)):
            for m in self.values:
                yield i, m, self.series(i, m)

    def to_frame(self, *, id_col: str = "id", time_col: str = "timestamp") -> pd.DataFrame:
        """The panel as a wide frame (one row per id and step)."""
        lens = self.lengths
        step_ns = np.int64(self.step.value)
        within = np.arange(int(lens.sum())) - np.repeat(self.offsets[:-1], lens)
        ts = np.repeat(self.start.astype("datetime64[ns]").astype(np.int64), lens) + within * step_ns
        return pd.DataFrame(
            {
                id_col: np.repeat(self.ids, lens),
                time_col: pd.to_datetime(ts, utc=True),
                **{m: v for m, v in self.values.items()},
            }
        )


def fill_short_gaps(v: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray, max_fill: int) -> int:
    """Interpolates in place NaN runs of at most ``max_fill`` inside a segment; returns how many."""
    n = len(v)
    if n == 0:
        return 0
    idx = np.arange(n)
    valid = ~np.isnan(v)
    prev = np.maximum.accumulate(np.where(valid, idx, -1))
    nxt = np.minimum.accumulate(np.where(valid, idx, n)[::-1])[::-1]
    gap = ~valid & (prev >= seg_start) & (nxt <= seg_end) & (nxt - prev - 1 <= max_fill)
    if gap.any():
        p, q = prev[gap], nxt[gap]
        w = (idx[gap] - p) / (q - p)
        v[gap] = v[p] * (1 - w) + v[q] * w
    return int(gap.sum())


def _masked_in_observed(v: np.ndarray, offsets: np.ndarray) -> int:
    """Missing values of ``v`` (segments ``offsets[k]:offsets[k + 1]``) in segments with any observed value."""
    if not len(v):
        return 0
    gaps = np.isnan(v)
    starts = offsets[:-1]
    n_gaps = np.add.reduceat(gaps.astype(np.int64), starts)
    lengths = np.diff(offsets)
    return int(n_gaps[n_gaps < lengths].sum())


def regularize(
    df: pd.DataFrame,
    step: pd.Timedelta | str = DEFAULT_STEP,
    *,
    max_fill: int = DEFAULT_MAX_FILL,
    id_col: str = "id",
    time_col: str = "timestamp",
) -> tuple[Panel, RegularizeReport]:
    """Puts every series of a wide frame on a regular grid of ``step``.

    Each timestamp is floored to the grid (anchored at the Unix epoch, so 14:27 joins the
    14:25 step); rows of one id that land on the same step are merged by their mean, which
    does not depend on row order. Gaps of at most ``max_fill`` steps are filled by linear
    interpolation; longer gaps, and values missing at a series' start or end, stay NaN.
    Nothing is invented beyond a series' first and last observed step.

    Args:
        df: the wide frame (``id``, ``timestamp`` as UTC datetimes, numeric metric columns).
        step: the grid's step, e.g. ``"5min"``.
        max_fill: the longest gap filled, in steps (0 fills nothing).

    Returns:
        The panel (ids in sorted order) and a report of what was changed.

    Raises:
        SchemaError: ``step`` is not positive.

    >>> df = pd.DataFrame({"id": ["a"] * 3, "timestamp": pd.to_datetime(
    ...     ["2024-01-01 00:10", "2024-01-01 00:00", "2024-01-01 00:00"], utc=True), "cpuLoad": [30.0, 10.0, 20.0]})
    >>> panel, report = regularize(df)
    >>> panel.series(0, "cpuLoad").tolist(), report.duplicates
    ([15.0, 22.5, 30.0], 1)
    """
    step = pd.Timedelta(step)
    if step <= pd.Timedelta(0):
        raise SchemaError(f"The step must be positive; got {step}. Use e.g. step='5min'.")
    metrics = [c for c in df.columns if c not in (id_col, time_col)]
    n_in = len(df)
    step_ns = np.int64(step.value)
    ts = df[time_col].to_numpy(dtype="datetime64[ns]").astype(np.int64) if n_in else np.zeros(0, np.int64)
    bucket = (ts // step_ns) * step_ns
    ids_raw = df[id_col].astype(str).to_numpy()

    # Unsorted ids: any row whose timestamp is earlier than the previous row of the same id.
    order_in = pd.DataFrame({"i": ids_raw, "t": ts})
    unsorted = (
        int((order_in.groupby("i", sort=False)["t"].diff() < 0).groupby(order_in["i"]).any().sum()) if n_in else 0
    )

    work = pd.DataFrame({"id": ids_raw, "b": bucket, **{m: df[m].to_numpy(np.float64) for m in metrics}})
    merged = work.groupby(["id", "b"], sort=True).mean() if n_in else work.set_index(["id", "b"])
    duplicates = n_in - len(merged)

    id_index = merged.index.get_level_values(0).to_numpy()
    b = merged.index.get_level_values(1).to_numpy(np.int64)
    ids, first_pos, counts = np.unique(id_index, return_index=True, return_counts=True)
    first_b = b[first_pos]
    last_b = b[first_pos + counts - 1]
    lengths = (last_b - first_b) // step_ns + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    grid_pos = offsets[:-1][np.repeat(np.arange(len(ids)), counts)] + (b - np.repeat(first_b, counts)) // step_ns

    seg_start = np.repeat(offsets[:-1], lengths)
    seg_end = np.repeat(offsets[1:] - 1, lengths)
    values: dict[str, np.ndarray] = {}
    filled = masked = 0
    for m in metrics:
        v = np.full(int(offsets[-1]), np.nan)
        v[grid_pos] = merged[m].to_numpy(np.float64)
        filled += fill_short_gaps(v, seg_start, seg_end, max_fill)
        masked += _masked_in_observed(v, offsets)
        values[m] = v
    panel = Panel(ids.astype(object), first_b.astype("datetime64[ns]"), step, offsets, values)
    report = RegularizeReport(len(ids), n_in, int(duplicates), unsorted, filled, masked)
    return panel, report
