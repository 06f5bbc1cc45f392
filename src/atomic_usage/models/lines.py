"""Histories that lie exactly on a line are continued exactly (a constant is the line of slope 0).

A noise-free history carries no uncertainty to learn from, and a network trained on real
traces pulls such a history back toward what it usually saw (a ramp bends toward its mean).
So a history whose observed values, over the model's context, fit a least-squares line with
no residual (up to float rounding, :data:`EXACT_RTOL`) is forecast as that line continued,
with a zero-width interval, computed in float64. The result is clipped to the valid range by
the caller, so a falling line stops at 0 and a filling disk stops at 100. Time is the step
index, so a masked gap stays on the time axis.

This extends the rule the network already followed for constants (a window that never
changes is forecast exactly at its level) to every exact line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.windows import last_windows

__all__ = ["EXACT_RTOL", "MIN_CONSTANT", "MIN_LINE", "exact_lines"]

EXACT_RTOL = 1e-6
"""Largest residual of an exact line, relative to 1 + the mean absolute level (CSV rounding to
six decimals stays well inside it; any measured noise is far outside)."""

MIN_CONSTANT = 3
"""Observed values a constant history needs to be continued exactly (the network's minimum)."""

MIN_LINE = 12
"""Observed values a sloped history needs (one hour of 5-minute steps): three collinear points
are a coincidence, twelve are a trend."""

_BATCH = 4096


def exact_lines(
    histories: Sequence[np.ndarray], horizon: int, context: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finds the histories that are exact lines and continues them.

    Args:
        histories: 1-D float arrays, NaN = missing; only the last ``context`` steps are read.
        horizon: steps to forecast.
        context: steps of history considered.

    Returns:
        ``(index, slope, forecast)``: the positions of the exact-line histories (int, (k,)),
        their slopes per step ((k,)), and their forecasts (k, 3, horizon) with
        p10 = p50 = p90 (not yet clipped to the valid range).

    >>> i, b, fc = exact_lines([np.arange(12.0), np.array([1.0, 5.0, 2.0])], 2, 288)
    >>> i.tolist(), b.tolist(), fc[0, 1].tolist()
    ([0], [1.0], [12.0, 13.0])
    """
    index: list[np.ndarray] = []
    slopes: list[np.ndarray] = []
    fcs: list[np.ndarray] = []
    for a in range(0, len(histories), _BATCH):
        i, b, fc = _batch(histories[a : a + _BATCH], horizon, context)
        index.append(i + a)
        slopes.append(b)
        fcs.append(fc)
    if not index:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3, horizon))
    return np.concatenate(index), np.concatenate(slopes), np.concatenate(fcs)


def _batch(histories: Sequence[np.ndarray], horizon: int, context: int) -> tuple[np.ndarray, ...]:
    y = last_windows(histories, context, np.float64)
    mask = ~np.isnan(y)
    n_obs = mask.sum(1)
    x = np.arange(context, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (mask * x).sum(1) / n_obs
        ym = np.where(mask, y, 0.0).sum(1) / n_obs
        xc = np.where(mask, x - xm[:, None], 0.0)
        yc = np.where(mask, y - ym[:, None], 0.0)
        sxx = (xc**2).sum(1)
        slope = np.where(sxx > 0, (xc * yc).sum(1) / sxx, 0.0)
        resid = np.abs(yc - slope[:, None] * xc).max(1, initial=0.0)
        level = np.where(mask, np.abs(y), 0.0).sum(1) / n_obs
        lo = np.where(mask, y, np.inf).min(1)
        hi = np.where(mask, y, -np.inf).max(1)
    constant = (n_obs >= MIN_CONSTANT) & (lo == hi)
    line = (n_obs >= MIN_LINE) & (resid <= EXACT_RTOL * (1.0 + level))
    ok = np.flatnonzero(constant | line)
    # A constant is continued at its value exactly (no mean or slope rounding).
    b = np.where(constant[ok], 0.0, slope[ok])
    start = np.where(constant[ok], hi[ok], ym[ok] + b * (context - 1 - xm[ok]))
    p50 = start[:, None] + b[:, None] * np.arange(1, horizon + 1)[None, :]
    return ok, b, np.repeat(p50[:, None, :], 3, axis=1)
