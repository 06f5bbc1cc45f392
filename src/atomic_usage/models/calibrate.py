"""Intervals calibrated on what is served: conformal factors for the p10–p90 band.

The network's own interval is calibrated in training (``train_neural``), on the network
alone. What a user gets is something else: per-series backtest selection hands some series
to the naive baseline, and histories that shifted level are read from their new regime only
(:mod:`~atomic_usage.models.shifts`), with less data behind the band. So after training the
whole served forecaster is run on windows cut from the training data's own ends, and one
factor per forecast step scales the p10 and p90 distances from p50 so that 80 % of those
held-back outcomes fall inside (split-conformal in spirit: fit on windows the forecasts did
not see, applied to new ones).

The windows come from the training series as the training run cut them (``--holdout-last``
already removed the evaluation period; held-out machines are not used), at origins ``k * 12``
and ``k * horizon`` steps before each series' end, so short and long horizons both have
outcomes. Only origins inside the end that training kept for validation (:func:`val_steps`)
are used: the network never took a gradient step on those outcomes, so its errors there are
the errors of new data, not of data it fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._types import BOUNDED_METRICS
from ..data.windows import SeriesBank
from .base import Forecaster, finalize_quantiles

__all__ = ["MAX_HISTORY", "apply_interval_scale", "calibrate_intervals", "served_interval_scale", "val_steps"]

MAX_HISTORY = 2016
"""Steps of history each calibration window gives the forecaster (7 days)."""

_SHORT = 12


def val_steps(lengths: np.ndarray, val_frac: float) -> np.ndarray:
    """Steps at the end of each training series kept out of training for validation: ``val_frac``
    of its length, at least 12, and none for a series shorter than twice that."""
    n_val = np.maximum((np.asarray(lengths) * val_frac).astype(np.int64), _SHORT)
    return np.where(lengths > 2 * n_val, n_val, 0)


def calibrate_intervals(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, target: float = 0.8) -> np.ndarray:
    """Per forecast step, the factor on the p10/p90 distances from p50 that covers ``target``
    of the outcomes (searched on a log grid from 0.2 to 5, smoothed over 5 neighbouring steps).

    Args:
        pred: forecasts (n, 3, H): p10, p50, p90.
        y: outcomes (n, H).
        mask: (n, H), nonzero where the outcome is observed. Steps with fewer than 50 outcomes
            take the previous step's factor.
    """
    H = pred.shape[2]
    f = np.ones(H)
    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 161))
    for h in range(H):
        m = mask[:, h] > 0
        if m.sum() < 50:
            f[h] = f[h - 1] if h else 1.0
            continue
        mid, lo, hi, yy = pred[m, 1, h], pred[m, 0, h], pred[m, 2, h], y[m, h]
        cov = [np.mean((yy >= mid + g * (lo - mid)) & (yy <= mid + g * (hi - mid))) for g in grid]
        f[h] = grid[int(np.argmin(np.abs(np.asarray(cov) - target)))]
    # Smooth across steps: neighbouring horizons share most of their uncertainty.
    k = np.ones(5) / 5
    padded = np.concatenate([np.repeat(f[:1], 2), f, np.repeat(f[-1:], 2)])
    return np.convolve(padded, k, mode="valid")


def apply_interval_scale(fc: np.ndarray, scale: np.ndarray, bounded: np.ndarray) -> np.ndarray:
    """Scales the p10/p90 distances from p50 of forecasts (n, 3, H) by ``scale`` per step (the
    last factor holds for steps beyond it), then clips to the valid range."""
    if not len(scale):
        return fc
    H = fc.shape[2]
    f = np.asarray(scale, np.float64)
    f = np.concatenate([f, np.repeat(f[-1:], max(0, H - len(f)))])[:H]
    mid = fc[:, 1:2, :]
    return finalize_quantiles(mid + (fc - mid) * f[None, None, :], bounded)


def _windows(
    bank: SeriesBank, use: np.ndarray, horizon: int, origins: int, val_frac: float
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    hists, ys, bounded = [], [], []
    held = val_steps(bank.lengths, val_frac)
    for i in np.flatnonzero(use):
        s = bank.series(int(i))
        n = len(s)
        cuts = {n - j * _SHORT for j in range(1, origins + 1)} | {n - j * horizon for j in range(1, origins + 1)}
        for c in sorted(cuts):
            if c < n - held[i] or c < 2 * _SHORT or np.count_nonzero(~np.isnan(s[:c])) < _SHORT:
                continue
            y = np.full(horizon, np.nan)
            tail = s[c : c + horizon]
            y[: len(tail)] = tail
            hists.append(np.asarray(s[max(0, c - MAX_HISTORY) : c], np.float64))
            ys.append(y)
            bounded.append(str(bank.metrics[i]) in BOUNDED_METRICS)
    return hists, np.asarray(ys).reshape(-1, horizon), np.asarray(bounded, bool)


def served_interval_scale(
    model: Forecaster,
    bank: SeriesBank,
    holdout: np.ndarray,
    horizon: int,
    *,
    origins: int = 4,
    max_series: int = 3000,
    seed: int = 0,
    val_frac: float = 0.1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Conformal factors for ``model``'s served interval, fit on the ends of the training series.

    Args:
        model: the served forecaster (selection and all), with no served scale applied yet.
        bank: the training series, already cut by ``--holdout-last``.
        holdout: True for machines held out of training; they are not used here either.
        horizon: steps to calibrate (the network's horizon).
        origins: forecast origins per series and horizon.
        max_series: at most this many series are used (a seeded sample).
        val_frac: the share of each series' end that training kept for validation
            (``TrainConfig.val_frac``); origins come from there only.

    Returns:
        ``(factors, report)``: one factor per step, and coverage of the 80 % band before and
        after at steps 1–12 and over all steps, with the window count.
    """
    use = ~np.asarray(holdout, bool)
    idx = np.flatnonzero(use)
    if len(idx) > max_series:
        keep = np.random.default_rng(seed).choice(idx, max_series, replace=False)
        use = np.zeros(len(bank), bool)
        use[keep] = True
    hists, y, bounded = _windows(bank, use, horizon, origins, val_frac)
    if not hists:
        return np.ones(0), {"windows": 0}
    fc = model.forecast_arrays(hists, horizon, bounded)
    mask = ~np.isnan(y)
    f = calibrate_intervals(fc, np.nan_to_num(y), mask.astype(np.float32))
    after = apply_interval_scale(fc.copy(), f, bounded)

    def cov(p: np.ndarray, steps: slice) -> float:
        m = mask[:, steps]
        inside = (y[:, steps] >= p[:, 0, steps]) & (y[:, steps] <= p[:, 2, steps])
        return round(float(inside[m].mean()), 4) if m.any() else float("nan")

    report = {
        "windows": len(hists),
        "series": int(use.sum()),
        "cov80_before": {"1-12": cov(fc, slice(0, _SHORT)), "all": cov(fc, slice(None))},
        "cov80_after": {"1-12": cov(after, slice(0, _SHORT)), "all": cov(after, slice(None))},
    }
    return f, report
