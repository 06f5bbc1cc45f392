"""What users reach for today, as forecasters: naive, seasonal naive, Prometheus predict_linear.

They follow UsageBench's definitions (``shared/bench/PROTOCOL.md``) so that our scores of
them agree with the harness's, and they also accept missing values (NaN), which the
harness never gives them. Intervals are empirical: the 10 % and 90 % quantiles of the same
rule's h-step errors over the history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .base import Forecaster, finalize_quantiles

__all__ = ["BASELINES", "SHORT_SEASON", "SHORT_WINDOW", "DampedTrend", "Naive", "PredictLinear", "SeasonalNaive"]

_DAY = 288

SHORT_SEASON = "naive(short-season)"
"""``model`` of a series seasonal naive forecast by its last value: shorter than a season and 2 steps."""

SHORT_WINDOW = "naive(short-window)"
"""``model`` of a series predict_linear forecast by its last value: shorter than its window."""


def _history(h: np.ndarray) -> np.ndarray:
    """A history as float64; an empty one as one missing value, so that it is forecast as a
    history without any observed value is (the rules index its last step)."""
    a = np.asarray(h, np.float64)
    return a if len(a) else np.full(1, np.nan)


def _by_length(hists: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Applies a vectorized fn(Y (k, L)) -> (k, 3, H) to groups of equal-length histories."""
    hists = [_history(h) for h in hists]
    lengths = np.array([len(h) for h in hists])
    out: list[np.ndarray | None] = [None] * len(hists)
    for L in np.unique(lengths):
        idx = np.flatnonzero(lengths == L)
        res = fn(np.stack([hists[int(i)] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = res[j]
    return np.stack(out)  # type: ignore[arg-type]


def _nanquantile(a: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Row-wise quantiles ignoring NaN; 0 where a row has no value. Returns (k, len(qs)).

    Rows without NaN take numpy's vectorized quantile; rows with gaps take
    :func:`_nanquantile_rows`, the same numbers as ``np.nanquantile`` (which loops over rows
    in Python: ~20 % of a serving process's CPU once histories grow, docs/service.md).
    """
    k = a.shape[0]
    if not a.shape[1]:
        return np.zeros((k, len(qs)))
    gaps = np.isnan(a).any(axis=1)
    q = np.empty((k, len(qs)))
    if (~gaps).any():
        q[~gaps] = np.quantile(a[~gaps], qs, axis=1).T
    if gaps.any():
        q[gaps] = _nanquantile_rows(a[gaps], qs)
    return np.nan_to_num(q, nan=0.0)


def _nanquantile_rows(a: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """``np.nanquantile(a, qs, axis=1).T`` (method "linear") for all rows at once, bit for bit.

    numpy's steps, vectorised over rows: the row's n values sorted (NaN sort last), the
    virtual index ``(n - 1) * q``, its floor and the next index (both the last value at or
    past ``n - 1``), and numpy's ``_lerp`` (``b - (b - a) * (1 - t)`` when ``t >= 0.5``).
    A row without values gives NaN. Returns (rows, len(qs)).
    """
    s = np.sort(a, axis=1)
    n = (~np.isnan(a)).sum(axis=1)
    rows = np.arange(len(a))[:, None]
    virtual = (n - 1)[:, None] * np.asarray(qs, float)[None, :]  # (rows, q), as numpy's (n - 1) * q
    prev = np.floor(virtual)
    above = virtual >= (n - 1)[:, None]
    prev[above] = -1  # numpy's marker of "the last value"; gamma is taken from it, as there
    gamma = virtual - prev
    last = np.maximum(n - 1, 0)[:, None]
    lo_i = np.where(above, last, prev).astype(np.intp)
    hi_i = np.where(above, last, prev + 1).astype(np.intp)
    lo, hi = s[rows, lo_i], s[rows, hi_i]
    diff = hi - lo
    out: np.ndarray = lo + diff * gamma
    np.subtract(hi, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    out[n == 0] = np.nan
    return out


def _ffill(Y: np.ndarray) -> np.ndarray:
    """Forward-fills NaN along axis 1 (leading NaN stay)."""
    idx = np.where(~np.isnan(Y), np.arange(Y.shape[1]), 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    return Y[np.arange(Y.shape[0])[:, None], idx]


def _interval(p50: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p50 (k, H) and error quantiles q (k, 2, H) -> (k, 3, H), never crossing p50."""
    return np.stack([np.minimum(p50 + q[:, 0], p50), p50, np.maximum(p50 + q[:, 1], p50)], 1)


def _last_valid(Y: np.ndarray) -> np.ndarray:
    last = _ffill(Y)[:, -1]
    return np.asarray(np.nan_to_num(last, nan=0.0))


_BAND_SMOOTH_FROM = 12
"""Steps from which naive's per-step quantiles are averaged with their neighbours'."""

_BAND_SMOOTH_STEPS = 9
"""Width of that centered mean, in steps (45 minutes)."""


def _smooth_steps(q: np.ndarray, first: int, width: int) -> np.ndarray:
    """``q`` (..., H) with each step from ``first`` on replaced by the centered mean of ``width``
    steps around it (the last value repeated past the end)."""
    H = q.shape[-1]
    if H <= first or width < 2:
        return q
    pad = width // 2
    padded = np.concatenate([q, np.repeat(q[..., -1:], pad, axis=-1)], axis=-1)
    c = np.cumsum(padded, axis=-1)
    c = np.concatenate([np.zeros((*c.shape[:-1], 1)), c], axis=-1)
    out = q.copy()
    lo = max(first, pad)  # steps before ``pad`` have too few neighbours before them: kept
    out[..., lo:] = (c[..., lo + pad + 1 : H + pad + 1] - c[..., lo - pad : H - pad]) / (2 * pad + 1)
    return out


def naive_arrays(hists: Sequence[np.ndarray], H: int) -> np.ndarray:
    """Last value repeated; interval from the 10/90 % quantiles of h-step differences.

    Each lag's quantiles are estimated apart, so past the first hour, where one lag's band
    differs from the next by noise more than by anything learnt, they are averaged over 9
    neighbouring lags: a day-ahead band's edge zig-zagged (182 turns in 287 steps on a noisy
    series), with the same scores either way on validation windows (docs/accuracy.md).
    """

    def fn(Y: np.ndarray) -> np.ndarray:
        k, L = Y.shape
        q = np.zeros((k, 2, H))
        for h in range(1, min(H, L - 1) + 1):
            q[:, :, h - 1] = _nanquantile(Y[:, h:] - Y[:, :-h], [0.1, 0.9])
        if 1 <= L - 1 < H:  # too short for long lags: reuse the longest
            q[:, :, L - 1 :] = q[:, :, L - 2 : L - 1]
        q = _smooth_steps(q, _BAND_SMOOTH_FROM, _BAND_SMOOTH_STEPS)
        return _interval(np.repeat(_last_valid(Y)[:, None], H, axis=1), q)

    return _by_length(hists, fn)


class Naive(Forecaster):
    """The last observed value, repeated.

    >>> Naive().forecast_arrays([np.array([1.0, 2.0, 4.0])], 2, np.array([True]))[0, 1].tolist()
    [4.0, 4.0]
    """

    name = "naive"

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        return finalize_quantiles(naive_arrays(histories, horizon), bounded)


class SeasonalNaive(Forecaster):
    """The last season (default one day of 5-minute steps), repeated; naive when shorter.

    Args:
        season: steps per season.
    """

    name = "seasonal_naive"

    def __init__(self, season: int = _DAY) -> None:
        self.season = season

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        s = self.season

        def fn(Y: np.ndarray) -> np.ndarray:
            k, L = Y.shape
            if L < s + 2:
                return naive_arrays(list(Y), horizon)
            Yf = _ffill(Y)
            reps = int(np.ceil(horizon / s))
            p50 = np.nan_to_num(np.tile(Yf[:, -s:], reps)[:, :horizon], nan=0.0)
            q = _nanquantile(Y[:, s:] - Y[:, :-s], [0.1, 0.9])
            return _interval(p50, np.repeat(q[:, :, None], horizon, axis=2))

        return finalize_quantiles(_by_length(histories, fn), bounded)

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """``seasonal_naive``, or ``naive(short-season)`` for a history shorter than a season and 2
        steps, which is forecast by its last value (see :meth:`fallback_reasons`)."""
        return [self.name if len(h) >= self.season + 2 else SHORT_SEASON for h in histories]

    def fallback_reasons(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Why a history got the naive forecast instead of the seasonal one (empty when it did not)."""
        need = self.season + 2
        return [
            ""
            if len(h) >= need
            else (
                f"short season: {{series}} has {len(h)} step(s), fewer than the {need} seasonal naive needs "
                f"(a season of {self.season} steps and 2 more), so the forecast is its last value (naive); "
                "send a longer history for a seasonal forecast."
            )
            for h in histories
        ]

    def __repr__(self) -> str:
        return f"SeasonalNaive(season={self.season})"


def _short_window_flags(histories: Sequence[np.ndarray], window: int, name: str) -> list[str]:
    """Per history, ``name``, or ``naive(short-window)`` where it is shorter than ``window``."""
    return [name if len(h) >= window else SHORT_WINDOW for h in histories]


def _short_window_reasons(histories: Sequence[np.ndarray], window: int, name: str, what: str) -> list[str]:
    """Per history, why a line-fitting baseline gave its last value instead ("" when it did not)."""
    return [
        ""
        if len(h) >= window
        else (
            f"short window: {{series}} has {len(h)} step(s), fewer than the {window} {name} fits its "
            f"line on, so the forecast is its last value (naive); send a longer history for {what}."
        )
        for h in histories
    ]


class PredictLinear(Forecaster):
    """Prometheus ``predict_linear()``: a least-squares line over the last ``window`` steps.

    Missing values inside the window are left out of the fit. Histories shorter than the
    window are forecast naively.

    Args:
        window: steps in the fitted line (12 = the last hour of 5-minute steps).

    >>> fc = PredictLinear(window=3).forecast_arrays([np.array([1.0, 2.0, 3.0])], 2, np.array([False]))
    >>> fc[0, 1].round(6).tolist()
    [4.0, 5.0]
    """

    name = "predict_linear"

    def __init__(self, window: int = 12) -> None:
        self.window = window

    def _coef(self, H: int) -> np.ndarray:
        w = self.window
        x = np.arange(w, dtype=float)
        xc = x - x.mean()
        slope = xc / np.sum(xc**2)
        return np.stack([1.0 / w + slope * (w - 1 + h - x.mean()) for h in range(1, H + 1)])  # (H, w)

    def _masked_fit(self, Y: np.ndarray, H: int) -> np.ndarray:
        """Line fits over windows with missing values: (k, w) -> (k, H)."""
        w = self.window
        x = np.arange(w, dtype=float)
        m = ~np.isnan(Y)
        n = m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            xm = (m * x).sum(1) / n
            ym = np.where(m, Y, 0).sum(1) / n
            dx = np.where(m, x - xm[:, None], 0)
            sxx = (dx**2).sum(1)
            slope = np.where(sxx > 0, (dx * np.where(m, Y - ym[:, None], 0)).sum(1) / sxx, 0.0)
        ym = np.where(n > 0, ym, np.nan)
        xm = np.where(n > 0, xm, 0)
        return ym[:, None] + slope[:, None] * (w - 1 + np.arange(1, H + 1)[None, :] - xm[:, None])

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        w, H = self.window, horizon
        coef = self._coef(H)

        def fn(Y: np.ndarray) -> np.ndarray:
            k, L = Y.shape
            if L < w:
                return naive_arrays(list(Y), H)
            last = Y[:, -w:]
            p50 = last @ coef.T
            bad = np.isnan(p50).any(1)
            if bad.any():
                p50[bad] = self._masked_fit(last[bad], H)
                still = np.isnan(p50).any(1)
                p50[still] = _last_valid(Y[still])[:, None]
            q = np.zeros((k, 2, H))
            if L > w:
                win = np.lib.stride_tricks.sliding_window_view(Y[:, : L - 1], w, axis=1)
                preds = win @ coef.T  # (k, origins, H); origin o uses Y[o:o+w]
                for h in range(1, H + 1):
                    n = L - w - h + 1
                    if n > 0:
                        err = Y[:, w - 1 + h : w - 1 + h + n] - preds[:, :n, h - 1]
                        q[:, :, h - 1] = _nanquantile(err, [0.1, 0.9])
                    else:
                        q[:, :, h - 1] = q[:, :, h - 2]
            return _interval(p50, q)

        return finalize_quantiles(_by_length(histories, fn), bounded)

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """``predict_linear``, or ``naive(short-window)`` for a history shorter than the window,
        which is forecast by its last value (see :meth:`fallback_reasons`)."""
        return _short_window_flags(histories, self.window, self.name)

    def fallback_reasons(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Why a history got the naive forecast instead of a line (empty when it did not)."""
        return _short_window_reasons(histories, self.window, self.name, "a line")

    def __repr__(self) -> str:
        return f"PredictLinear(window={self.window})"


def _robust_slope(Y: np.ndarray) -> np.ndarray:
    """Per row of ``Y`` (k, w), the median of its changes over half the window, per step (0 where
    no such change is observed)."""
    w = Y.shape[1]
    k = w // 2
    changes = (Y[:, k:] - Y[:, : w - k]) / k
    return np.where(~np.isnan(changes).all(1), _nanquantile(changes, [0.5])[:, 0], 0.0)


class DampedTrend(Forecaster):
    """A damped trend: a line fitted robustly to the last ``window`` steps, its slope damped by
    ``phi`` per step ahead (Gardner and McKenzie's damped trend), inside naive's band.

    The line's slope is the median of the changes over half the window (each divided by its
    length), and its level at the last step the median of the values less the slope's share
    (as Theil and Sen fit a line): a burst, a spike or a few bad steps near the end neither tilt
    it nor lift its start, where a least-squares line over the same steps did both (a 30-minute
    burst that had ended an hour before lifted the forecast 14 points above the last value and
    carried it to 84 % within the day). Where the history holds ``long_window`` steps (a day),
    the slope is also fitted over them, and only a slope both agree on is carried on, the
    smaller of the two: a disk filling all day keeps its slope, while the rise or fall of a
    daily cycle, which a day-long fit sees level out, is not carried towards 0 or 100 as if it
    went on all day. Step h ahead is the level plus ``slope * (phi + phi**2 + ... + phi**h)``:
    a steady climb is carried on for a few hours and then levels off, where
    :class:`PredictLinear` would extrapolate it without end. The p10/p90 are naive's distances
    from its p50 (the spread of the series' own h-step changes), so the band widens with the
    horizon. The bundled model offers it, beside naive, to the per-series choice made after the
    first hour (``docs/accuracy.md``). Histories shorter than the window are forecast as naive
    forecasts them.

    Args:
        window: steps in the fitted line (72 = the last 6 hours of 5-minute steps).
        phi: the damping per step (0.99: the slope's reach is at most 100 steps).
        long_window: steps of the second fit the slope must agree with (288 = a day); 0 for none.

    >>> fc = DampedTrend(window=3, phi=0.5).forecast_arrays([np.array([1.0, 2.0, 3.0])], 2, np.array([False]))
    >>> fc[0, 1].round(6).tolist()
    [3.5, 3.75]
    """

    name = "damped_trend"

    def __init__(self, window: int = 72, phi: float = 0.99, long_window: int = _DAY) -> None:
        if not 0.0 <= phi <= 1.0:
            raise ValueError(f"phi must be in [0, 1], not {phi!r}")
        if window < 2:
            raise ValueError(f"window must be at least 2 steps, not {window!r}")
        if long_window and long_window < window:
            raise ValueError(f"long_window must be 0 or at least window ({window}), not {long_window!r}")
        self.window = window
        self.phi = phi
        self.long_window = long_window

    def line(self, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The robust line of each history's last ``window`` steps: ``(slope per step, level at the
        last step)``; a history shorter than the window (or without a value in it) gets slope 0
        at its last value.

        >>> DampedTrend(window=6).line([np.array([1.0, 2.0, 3.0, 40.0, 5.0, 6.0])])
        (array([1.]), array([6.]))
        """
        n, w = len(histories), self.window
        slope = np.zeros(n)
        level = np.array([_last_valid(_history(h)[None, :])[0] for h in histories])
        fits = np.flatnonzero([len(h) >= w for h in histories])
        if not len(fits):
            return slope, level
        Y = np.stack([np.asarray(histories[int(i)], np.float64)[-w:] for i in fits])
        s = _robust_slope(Y)
        # The level at the last step is the window's own line's: where the series is now. A slope
        # the day does not confirm is not carried on, but the level is not moved back for it.
        rest = Y - s[:, None] * (np.arange(w) - (w - 1))[None, :]
        seen = ~np.isnan(rest).all(1)
        level[fits] = np.where(seen, _nanquantile(rest, [0.5])[:, 0], level[fits])
        if self.long_window:
            day = np.flatnonzero([len(histories[int(i)]) >= self.long_window for i in fits])
            if len(day):
                long = _robust_slope(
                    np.stack([np.asarray(histories[int(fits[j])], np.float64)[-self.long_window :] for j in day])
                )
                short = s[day]
                s[day] = np.where(
                    np.sign(short) == np.sign(long), np.sign(short) * np.minimum(abs(short), abs(long)), 0.0
                )
        slope[fits] = np.where(seen, s, 0.0)
        return slope, level

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        slope, level = self.line(histories)
        reach = np.cumsum(self.phi ** np.arange(1, horizon + 1, dtype=np.float64))
        p50 = level[:, None] + slope[:, None] * reach[None, :]
        nv = naive_arrays(histories, horizon).astype(np.float64)
        out = p50[:, None, :] + (nv - nv[:, 1:2])
        return finalize_quantiles(out, np.asarray(bounded))

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """``damped_trend``, or ``naive(short-window)`` as :class:`PredictLinear` says it."""
        return _short_window_flags(histories, self.window, self.name)

    def fallback_reasons(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Why a history got the naive forecast instead of a trend (empty when it did not)."""
        return _short_window_reasons(histories, self.window, self.name, "a trend")

    def __repr__(self) -> str:
        return f"DampedTrend(window={self.window}, phi={self.phi}, long_window={self.long_window})"


BASELINES: dict[str, type[Forecaster]] = {
    "naive": Naive,
    "seasonal_naive": SeasonalNaive,
    "predict_linear": PredictLinear,
    "damped_trend": DampedTrend,
}
"""The baselines by the names the CLI and UsageBench use."""
