"""Level shifts: where the current regime of a history began.

A network trained on real traces learns that departures revert: a dip is usually a blip, a
plateau above the usual band usually ends. Usually is not always. When a machine is
re-provisioned, drained or given a new workload its usage moves to a new level and stays,
and a forecaster that pulls it back toward the old level is wrong for as long as the new
level lasts (UsageBench's NAB set has several: an autoscaling group that drops from 33 % CPU
to 1 %, a database whose CPU doubles for days). Repeating the last value gets those right and
everything else worse.

So before the network reads a history, the older part is dropped when the recent part is a
new regime. A start ``t`` in the last :data:`LOOK` steps begins a new regime when at least
:data:`SHARE` of the observed values from ``t`` on lie on one side of the band the
:data:`BAND` steps before ``t`` spanned (their 2nd to 98th percentile), by more than
:data:`MARGIN` of the band's width. The earliest such ``t`` wins, so the whole of the new
regime is kept. A daily cycle does not trigger it: the band of two days already holds both
its peak and its trough. The start itself must lie beyond the band, so the regime never
begins with a few values of the old one.

The network then forecasts from the new regime alone; it was trained with histories cut to
every length down to three steps (``train._truncate_history``), so a short regime is in its
range. The band is recomputed every :data:`GRID` steps rather than at every candidate start,
which keeps the detector vectorized and cheap next to the network itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.windows import last_windows

__all__ = ["BAND", "GRID", "LOOK", "MARGIN", "MIN_AFTER", "MIN_BEFORE", "SHARE", "regime_starts"]

LOOK = 288
"""How recent a shift may be, in steps (one day of 5-minute steps)."""

BAND = 576
"""Steps before a candidate start whose band stands for the old regime (two days)."""

MIN_AFTER = 3
"""Observed values a new regime needs (the network's minimum history)."""

MIN_BEFORE = 24
"""Observed values the old regime's band needs (two hours)."""

SHARE = 0.9
"""Share of the new regime's values that must lie beyond the old band, on one side."""

MARGIN = 0.25
"""How far beyond the band, as a share of its width (2nd to 98th percentile)."""

GRID = 12
"""The band is recomputed every this many candidate starts."""

_Q = (0.02, 0.98)
_CHUNK = 512


def _quantiles(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolated 2nd and 98th percentiles of each row of ``blocks`` (..., B), NaN
    ignored, and the count of observed values; rows with none get NaN."""
    s = np.sort(blocks, axis=-1)  # NaN sorts last
    k = np.count_nonzero(~np.isnan(blocks), axis=-1)
    out = []
    for q in _Q:
        pos = q * np.maximum(k - 1, 0)
        i = np.floor(pos).astype(np.int64)
        j = np.minimum(i + 1, np.maximum(k - 1, 0))
        a = np.take_along_axis(s, i[..., None], -1)[..., 0]
        b = np.take_along_axis(s, j[..., None], -1)[..., 0]
        v = a + (b - a) * (pos - i)
        out.append(np.where(k > 0, v, np.nan))
    return out[0], out[1], k


def _from(flags: np.ndarray, g: np.ndarray, col: np.ndarray) -> np.ndarray:
    """For flags (n, G, LOOK): per row and candidate, how many flags of band ``g`` are set from
    column ``col`` on, shape (n, len(col))."""
    before = np.cumsum(flags, axis=-1, dtype=np.int32)  # contiguous, forward
    total = before[:, :, -1]
    head = np.where(col > 0, before[:, g, np.maximum(col - 1, 0)], 0)
    return total[:, g] - head


def _starts_chunk(W: np.ndarray) -> np.ndarray:
    """Window coordinates of the new regime's start per row of ``W`` (n, BAND + LOOK), -1 if none."""
    n, L = W.shape
    first = L - LOOK  # earliest candidate start
    cands = np.arange(max(first, MIN_BEFORE), L - MIN_AFTER + 1)
    grid = first + ((cands - first) // GRID) * GRID  # band end used by each candidate
    ends = np.unique(grid)
    blocks = np.lib.stride_tricks.sliding_window_view(W, BAND, axis=1)[:, ends - BAND]
    lo, hi, k_before = _quantiles(blocks)  # (n, G)
    g = np.searchsorted(ends, grid)
    width = hi - lo
    recent = W[:, first:]  # (n, LOOK)
    seen = ~np.isnan(recent)
    col = cands - first
    with np.errstate(invalid="ignore"):
        above = recent[:, None, :] > (hi + MARGIN * width)[:, :, None]  # (n, G, LOOK)
        below = recent[:, None, :] < (lo - MARGIN * width)[:, :, None]
    # Counts from each step to the end (total minus what came before), so a candidate reads
    # its count in one lookup.
    n_above = _from(above, g, col)
    n_below = _from(below, g, col)
    n_after = _from(seen[:, None, :], np.zeros_like(g), col)
    denom = np.maximum(n_after, 1)
    # The regime's first value is itself beyond the band, on the side the regime is on.
    up = (n_above / denom >= SHARE) & above[:, g, col]
    down = (n_below / denom >= SHARE) & below[:, g, col]
    ok = (n_after >= MIN_AFTER) & (k_before[:, g] >= MIN_BEFORE) & (up | down)
    hit = ok.any(1)
    return np.where(hit, cands[np.argmax(ok, axis=1)], -1)


def regime_starts(histories: Sequence[np.ndarray]) -> np.ndarray:
    """Index into each history where its current regime begins (0 when no shift is found).

    Args:
        histories: 1-D float arrays, NaN = missing, oldest first.

    Returns:
        int64 array (len(histories),): ``history[start:]`` is the current regime.
    """
    n = len(histories)
    out = np.zeros(n, np.int64)
    L = BAND + LOOK
    lens = np.array([len(h) for h in histories], np.int64)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        # Histories too short to hold a band and a regime cannot show a shift.
        idx = np.flatnonzero(lens[a:b] >= MIN_BEFORE + MIN_AFTER) + a
        if not len(idx):
            continue
        W = last_windows([np.asarray(histories[int(i)], np.float32) for i in idx], L)
        t = _starts_chunk(W)
        found = t >= 0
        out[idx[found]] = lens[idx[found]] - L + t[found]
    return out
