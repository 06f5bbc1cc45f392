"""From quantile forecasts to the per-metric result of ``process()``: steps, trend, peak, thresholds."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from ..models.base import SHORT_HISTORY, interval_known

__all__ = ["describe_forecast", "describe_many", "encode_many", "iso"]

_FLAT_PER_HOUR = 0.05
"""A trend slower than this many units (percent points) per hour is flat, however clean."""

_SIGNIFICANCE = 2.0
"""A trend is rising or falling only if its slope exceeds this many standard errors."""

TREND_STEPS = 12
"""Recent steps the trend line is fitted over (1 h of 5-minute steps, as predict_linear)."""


def _slopes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slopes of each row of ``y`` (R, T) against ``x`` (T,) or (R, T) over its
    finite values, their standard errors (0 with two points) and the counts of those values.
    Rows with fewer than two finite values get NaN slopes."""
    ok = np.isfinite(y)
    n = ok.sum(1)
    x = np.broadcast_to(x, y.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = np.where(ok, x, 0.0).sum(1) / n
        ybar = np.where(ok, y, 0.0).sum(1) / n
        xc = np.where(ok, x - xbar[:, None], 0.0)
        yc = np.where(ok, y - ybar[:, None], 0.0)
        sxx = (xc**2).sum(1)
        b = (xc * yc).sum(1) / sxx
        resid = np.where(ok, yc - b[:, None] * xc, 0.0)
        se = np.where(n >= 3, np.sqrt((resid**2).sum(1) / np.maximum(n - 2, 1) / sxx), 0.0)
    return b, se, n


@functools.lru_cache(maxsize=65_536)
def _iso_cached(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC string (``2026-01-05T10:00:00Z``).

    Whole seconds are cached: a fleet's forecasts share the same few step times.
    """
    its = int(ts)
    return _iso_cached(its) if its == ts else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crossings(paths: np.ndarray, level: float, last_value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``paths`` (R, H, rounded as reported): whether it reaches ``level`` from
    below within the horizon, and the first step that does.

    Values are compared as reported (rounded to 4 decimals), so a line that shows 100.0 has
    reached 100. A path already at or past the level at the origin (``last_value``) has no
    crossing until it has dropped below it, so the time to a threshold is never 0 or negative,
    and a flat or falling series never gets one.
    """
    above = paths >= level
    before = np.concatenate([(last_value >= level)[:, None], above[:, :-1]], axis=1)
    hit = above & ~before
    return hit.any(1), hit.argmax(1)


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
        ``{"steps": [...], "historyLength", "model", "trend", "peak", "thresholds"}``. The
        ``peak`` is the first step with the highest p50: its ``timestamp``, ``p50`` and ``p90``.
        A threshold's ``p50``/``p90`` is the first step whose quantile reaches it from below, or
        null when none within the horizon does (a series already at or past it is reported by
        ``alreadyAbove``, not as a crossing at +0). With fewer than MIN_INTERVAL observed values
        p10 and p90 are null everywhere (steps, peak, thresholds), as in the file forecasts.
        :func:`describe_many` builds the same for many series at once.
    """
    rec = None if recent is None or not len(recent) else np.asarray(recent, float)[None, :]
    return describe_many(
        np.asarray(fc)[None],
        last_ts=np.array([last_ts], float),
        step_s=step_s,
        last_value=np.array([last_value], float),
        history_length=np.array([history_length]),
        models=[model],
        thresholds=thresholds,
        recent=rec,
    )[0]


def describe_many(
    fc: np.ndarray,
    *,
    last_ts: np.ndarray,
    step_s: float,
    last_value: np.ndarray,
    history_length: np.ndarray,
    models: Sequence[str],
    thresholds: Sequence[float],
    recent: np.ndarray | None = None,
    changes: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """:func:`describe_forecast` of R series at once: rounding, trends, peaks and threshold
    crossings are computed in one numpy pass over all of them, and each step time is
    formatted once per distinct origin, so only the assembly of the dicts is per series.

    Args:
        fc: array (R, 3, H) of p10, p50, p90.
        last_ts: (R,) epoch seconds of each series' origin.
        step_s: seconds per step.
        last_value: (R,) newest observed values.
        history_length: (R,) observed steps each forecast was made from.
        models: R names of what produced each forecast.
        thresholds: levels whose crossing is reported.
        recent: (R, T) last observed steps (NaN = missing), or None (trend from the forecast).
        changes: (R,) pairs of consecutive observed steps each forecast was made from, or None
            (not counted): with fewer than MIN_CHANGES the interval is unknown, as with fewer than
            MIN_INTERVAL values.

    Returns:
        R dicts, each as :func:`describe_forecast` returns.
    """
    prep = _Prepared(fc, last_ts, step_s, last_value, history_length, models, thresholds, recent, changes)
    if not prep.R:
        return []
    out = []
    nulls = [None] * prep.H
    r10, r50, r90 = (prep.rounded[:, k].tolist() for k in range(3))
    for i in range(prep.R):
        ts = prep.stamps[prep.which[i]]
        known = prep.known[i]
        lo, hi = (r10[i], r90[i]) if known else (nulls, nulls)
        out.append(
            {
                "steps": [
                    {"timestamp": t, "p10": a, "p50": b, "p90": c}
                    for t, a, b, c in zip(ts, lo, r50[i], hi, strict=True)
                ],
                **prep.tail(i),
            }
        )
    return out


def encode_many(
    fc: np.ndarray,
    *,
    last_ts: np.ndarray,
    step_s: float,
    last_value: np.ndarray,
    history_length: np.ndarray,
    models: Sequence[str],
    thresholds: Sequence[float],
    recent: np.ndarray | None = None,
    changes: np.ndarray | None = None,
) -> list[bytes]:
    """:func:`describe_many` as JSON text: ``orjson.dumps`` of each of its dicts, byte for byte.

    The steps, most of a result, are never built as dicts: every value of every series is
    formatted by one ``orjson.dumps`` of a flat list, and each series' steps are spliced from
    those numbers and its origin's step prefixes (formatted once per distinct origin) with
    list slice assignments and one join. Only the small rest of each result (history length,
    model, trend, peak, thresholds) is a dict. Args as :func:`describe_many`.

    Returns:
        R JSON texts (UTF-8).
    """
    prep = _Prepared(fc, last_ts, step_s, last_value, history_length, models, thresholds, recent, changes)
    R, H = prep.R, prep.H
    if not R:
        return []

    # orjson writes a float64 array's numbers as it writes Python floats (the tests compare the
    # bytes), without a Python float per value.
    t10, t50, t90 = (
        orjson.dumps(np.ascontiguousarray(prep.rounded[:, k]).reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY)[
            1:-1
        ].split(b",")
        for k in range(3)
    )
    nulls = [b"null"] * H
    pre = [[b'{"timestamp":"' + t.encode() + b'","p10":' for t in row] for row in prep.stamps]
    p50_key, p90_key, close = [b',"p50":'] * H, [b',"p90":'] * H, [b"},"] * H
    parts: list[bytes] = [b""] * (7 * H)
    parts[2::7], parts[4::7], parts[6::7] = p50_key, p90_key, close
    out = []
    for i in range(R):
        a, b = i * H, (i + 1) * H
        known = prep.known[i]
        parts[0::7] = pre[prep.which[i]]
        parts[1::7] = t10[a:b] if known else nulls
        parts[3::7] = t50[a:b]
        parts[5::7] = t90[a:b] if known else nulls
        out.append(b'{"steps":[' + b"".join(parts)[:-1] + b"]," + orjson.dumps(prep.tail(i))[1:])
    return out


class _Prepared:
    """What :func:`describe_many` and :func:`encode_many` share: every vectorised figure of R series."""

    def __init__(
        self,
        fc: np.ndarray,
        last_ts: np.ndarray,
        step_s: float,
        last_value: np.ndarray,
        history_length: np.ndarray,
        models: Sequence[str],
        thresholds: Sequence[float],
        recent: np.ndarray | None,
        changes: np.ndarray | None = None,
    ) -> None:
        fc = np.asarray(fc, float)
        R, _, H = fc.shape
        self.R, self.H, self.step_s, self.models = R, H, step_s, models
        if not R:
            return
        last_ts = np.asarray(last_ts, float)
        last_value = np.asarray(last_value, float)
        hours = step_s * np.arange(1, H + 1) / 3600.0
        spread = interval_known(history_length, changes)
        if not spread.all():
            # As in the file forecasts (forecast_frame): too few values for any model, the last one,
            # named for what served it.
            short = ~spread
            fc = fc.copy()
            fc[short] = last_value[short, None, None]
            self.models = [SHORT_HISTORY if s else m for m, s in zip(models, short.tolist(), strict=True)]
        # Trend: over the recent observed steps, else (fewer than two) over the forecast from the origin.
        slope = np.full(R, np.nan)
        se = np.zeros(R)
        if recent is not None and recent.shape[1]:
            r = np.asarray(recent, float)[:, -TREND_STEPS:]
            slope, se, _ = _slopes(np.arange(-r.shape[1] + 1, 1) * step_s / 3600.0, r)
        todo = np.flatnonzero(np.isnan(slope))
        if len(todo):
            y = np.concatenate([last_value[todo, None], fc[todo, 1]], axis=1)
            b, e, _ = _slopes(np.concatenate([[0.0], hours]), y)
            slope[todo], se[todo] = np.nan_to_num(b), np.nan_to_num(e)
        flat = (np.abs(slope) < _FLAT_PER_HOUR) | (np.abs(slope) <= _SIGNIFICANCE * se)
        self.direction = np.where(flat, "flat", np.where(slope > 0, "rising", "falling")).tolist()
        self.slopes = slope.tolist()
        # Rounded in one numpy call: per-value round() dominated process() when profiled.
        rounded = np.round(fc, 4)
        self.rounded = rounded
        # The peak is one step, the first with the highest median: its time, median and p90 (the
        # p90 of that step, not the highest p90 of the horizon, which may belong to another step).
        peak_a = np.argmax(fc[:, 1], axis=1)
        self.peak = peak_a.tolist()
        self.peak50 = fc[np.arange(R), 1, peak_a].tolist()
        self.peak90 = fc[np.arange(R), 2, peak_a].tolist()
        # Each distinct origin's step times, formatted once.
        origins, which = np.unique(last_ts, return_inverse=True)
        self.stamps = [[iso(t) for t in (o + step_s * np.arange(1, H + 1)).tolist()] for o in origins.tolist()]
        self.levels = [float(level) for level in thresholds]
        self.cross = []
        # The origin is compared as reported too: a value that shows as 100.0 is already at 100.
        last_r = np.round(last_value, 4)
        for level in self.levels:
            hit50, at50 = _crossings(rounded[:, 1], level, last_r)
            hit90, at90 = _crossings(rounded[:, 2], level, last_r)
            self.cross.append(
                (hit50.tolist(), at50.tolist(), hit90.tolist(), at90.tolist(), (last_r >= level).tolist())
            )
        self.origin = last_ts.tolist()
        self.which = which.reshape(-1).tolist()
        self.known = spread.tolist()
        self.n_hist = np.asarray(history_length).astype(np.int64).tolist()

    def tail(self, i: int) -> dict[str, Any]:
        """Series ``i``'s result after its steps: history length, model, trend, peak, thresholds."""
        ts = self.stamps[self.which[i]]
        o = self.origin[i]
        known = self.known[i]
        step_s = self.step_s
        th = []
        for level, (h50, a50, h90, a90, already) in zip(self.levels, self.cross, strict=True):
            th.append(
                {
                    "level": level,
                    "alreadyAbove": already[i],
                    # (o + step_s * k) - o: the step's time minus the origin, as floats, like numpy's.
                    "p50": {"timestamp": ts[a50[i]], "secondsFromNow": (o + step_s * (a50[i] + 1)) - o}
                    if h50[i]
                    else None,
                    "p90": {"timestamp": ts[a90[i]], "secondsFromNow": (o + step_s * (a90[i] + 1)) - o}
                    if known and h90[i]
                    else None,
                }
            )
        k = self.peak[i]
        return {
            "historyLength": self.n_hist[i],
            "model": self.models[i],
            "trend": {"direction": self.direction[i], "slopePerHour": round(self.slopes[i], 6)},
            "peak": {"timestamp": ts[k], "p50": round(self.peak50[i], 4), "p90": _q(self.peak90[i], known)},
            "thresholds": th,
        }
