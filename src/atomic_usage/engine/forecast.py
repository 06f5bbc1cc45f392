"""From quantile forecasts to the per-metric result of ``process()``: steps, trend, peak, thresholds."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..models.base import interval_known

__all__ = ["describe_forecast", "iso"]

_FLAT_PER_HOUR = 0.05
"""A trend slower than this many units (percent points) per hour is flat, however clean."""

_SIGNIFICANCE = 2.0
"""A trend is rising or falling only if its slope exceeds this many standard errors."""

TREND_STEPS = 12
"""Recent steps the trend line is fitted over (1 h of 5-minute steps, as predict_linear)."""


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares slope and its standard error (0 with two points or a perfect line)."""
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return None
    x, y = x[ok], y[ok]
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    b = float((xc * (y - y.mean())).sum() / sxx)
    if len(x) < 3:
        return b, 0.0
    resid = y - y.mean() - b * xc
    return b, float(np.sqrt((resid**2).sum() / (len(x) - 2) / sxx))


@functools.lru_cache(maxsize=65_536)
def _iso_cached(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC string (``2026-01-05T10:00:00Z``).

    Whole seconds are cached: a fleet's forecasts share the same few step times.
    """
    its = int(ts)
    return _iso_cached(its) if its == ts else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crossing(
    path: np.ndarray, level: float, times: np.ndarray, now: float, last_value: float
) -> dict[str, Any] | None:
    """The first step at which ``path`` reaches ``level`` from below, or None.

    Values are compared as reported (rounded to 4 decimals), so a line that shows 100.0 has
    reached 100. A path already at or past the level at the origin (``last_value``) has no
    crossing until it has dropped below it, so the time to a threshold is never 0 or negative,
    and a flat or falling series never gets one.
    """
    above = np.round(path, 4) >= level
    before = np.concatenate([[last_value >= level], above[:-1]])
    hit = np.flatnonzero(above & ~before)
    if not len(hit):
        return None
    t = float(times[hit[0]])
    return {"timestamp": iso(t), "secondsFromNow": t - now}


def _q(v: float, known: bool) -> float | None:
    return round(float(v), 4) if known else None


def describe_forecast(
    fc: np.ndarray,
    *,
    last_ts: float,
    step_s: float,
    last_value: float,
    history_length: int,
    model: str,
    thresholds: Sequence[float],
    recent: np.ndarray | None = None,
) -> dict[str, Any]:
    """The result of one metric of one machine.

    Args:
        fc: array (3, H) of p10, p50, p90.
        last_ts: epoch seconds of the newest observed step (the forecast's origin).
        step_s: seconds per step.
        last_value: the newest observed value (for thresholds already reached).
        history_length: observed steps the forecast was made from.
        model: what produced it.
        thresholds: levels whose crossing is reported.
        recent: the last observed steps (NaN = missing), ending at ``last_ts``; the trend is the
            least-squares slope over its last TREND_STEPS steps (over the forecast when fewer than
            two of them are observed).

    Returns:
        ``{"steps": [...], "historyLength", "model", "trend", "peak", "thresholds"}``.
        A threshold's ``p50``/``p90`` is the first step whose quantile reaches it from below, or
        null when none within the horizon does (a series already at or past it is reported by
        ``alreadyAbove``, not as a crossing at +0). With fewer than MIN_INTERVAL observed values
        p10 and p90 are null everywhere (steps, peak, thresholds), as in the file forecasts.
    """
    H = fc.shape[1]
    times = last_ts + step_s * np.arange(1, H + 1)
    p10, p50, p90 = (fc[k].astype(float) for k in range(3))
    spread = interval_known(history_length)
    fit = None
    if recent is not None and len(recent):
        r = np.asarray(recent, float)[-TREND_STEPS:]
        fit = _slope(np.arange(-len(r) + 1, 1) * step_s / 3600.0, r)
    if fit is None:
        hours = np.concatenate([[0.0], (times - last_ts) / 3600.0])
        fit = _slope(hours, np.concatenate([[last_value], p50])) or (0.0, 0.0)
    slope, se = fit
    flat = abs(slope) < _FLAT_PER_HOUR or abs(slope) <= _SIGNIFICANCE * se
    direction = "flat" if flat else ("rising" if slope > 0 else "falling")
    k = int(np.argmax(p50))
    # Rounded in one numpy call each: per-value round() dominated process() when profiled.
    r10 = np.round(p10, 4).tolist() if spread else [None] * H
    r50 = np.round(p50, 4).tolist()
    r90 = np.round(p90, 4).tolist() if spread else [None] * H
    return {
        "steps": [
            {"timestamp": iso(t), "p10": a, "p50": b, "p90": c}
            for t, a, b, c in zip(times.tolist(), r10, r50, r90, strict=True)
        ],
        "historyLength": int(history_length),
        "model": model,
        "trend": {"direction": direction, "slopePerHour": round(slope, 6)},
        "peak": {
            "timestamp": iso(float(times[k])),
            "p50": round(float(p50[k]), 4),
            "p90": _q(float(p90.max()), spread),
        },
        "thresholds": [
            {
                "level": float(level),
                "alreadyAbove": bool(last_value >= level),
                "p50": _crossing(p50, level, times, last_ts, last_value),
                "p90": _crossing(p90, level, times, last_ts, last_value) if spread else None,
            }
            for level in thresholds
        ],
    }
