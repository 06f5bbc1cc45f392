"""Per-series model selection by backtest: each series is served by the forecaster that did
best on its own recent history.

A global network is right for most series and badly wrong for a few (a quantized staircase,
a series unlike anything in training), and the mean scores that users and UsageBench care
about are dominated by those few. So before forecasting, every candidate forecasts the last
``k`` stretches of each history from the data before them (rolling origins ``L - j * b``,
``b = min(horizon, backtest_max)``), and each series gets the candidate with the lowest mean
absolute error there. The choice uses only the history handed in: nothing is peeked at.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .base import Forecaster, PerThreadCall, finalize_quantiles
from .calibrate import apply_interval_scale

__all__ = ["BacktestSelector"]


class BacktestSelector(PerThreadCall, Forecaster):
    """Serves each series with whichever candidate backtested best on that series.

    Args:
        candidates: the forecasters to choose from; the first one wins ties and serves
            series too short to backtest.
        k: backtest origins per series.
        backtest_max: longest backtest stretch, in steps.
        min_history: observed values a backtest origin needs before it.
        interval_scale: per forecast step, the factor on the p10/p90 distances from p50 of
            the served forecast (``models/calibrate.py``; empty = as the candidates give them).

    The ``model`` column names the candidate that served each series.
    """

    def __init__(
        self,
        candidates: Sequence[Forecaster],
        *,
        k: int = 3,
        backtest_max: int = 288,
        min_history: int = 12,
        interval_scale: Sequence[float] = (),
    ) -> None:
        self.candidates = list(candidates)
        self.k = k
        self.backtest_max = backtest_max
        self.min_history = min_history
        self.interval_scale = np.asarray(interval_scale, np.float64)
        self.name = self.candidates[0].name
        self._local = threading.local()  # which candidate served the last call, per thread

    @property
    def spec(self) -> object:
        """The primary candidate's spec (its context length sizes the engine's history)."""
        return getattr(self.candidates[0], "spec", None)

    @property
    def card(self) -> object:
        """The primary candidate's model card, when it has one."""
        return getattr(self.candidates[0], "card", None)

    def warm_up(self) -> None:
        """Warms every candidate."""
        for model in self.candidates:
            model.warm_up()

    def choose(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """Index of the candidate with the lowest backtest error, per history."""
        n, c = len(histories), len(self.candidates)
        if c == 1:  # nothing to choose between: no backtest
            return np.zeros(n, np.int64)
        err = np.zeros((n, c))
        b = max(1, min(horizon, self.backtest_max))
        for j in range(1, self.k + 1):
            cuts = np.array([len(h) - j * b for h in histories])
            ok = (
                np.array(
                    [
                        cut >= self.min_history and np.count_nonzero(~np.isnan(h[:cut])) >= self.min_history
                        for h, cut in zip(histories, cuts, strict=True)
                    ]
                )
                if n
                else np.zeros(0, bool)
            )
            idx = np.flatnonzero(ok)
            if not len(idx):
                break
            past = [np.asarray(histories[int(i)][: cuts[i]]) for i in idx]
            actual = np.stack([np.asarray(histories[int(i)][cuts[i] : cuts[i] + b], np.float64) for i in idx])
            for m, model in enumerate(self.candidates):
                p50 = model.forecast_arrays(past, b, bounded[idx])[:, 1]
                d = np.abs(p50 - actual)
                seen = ~np.isnan(d)
                # Mean over the observed steps; a stretch with none observed adds nothing.
                err[idx, m] += np.where(seen, d, 0.0).sum(1) / np.maximum(seen.sum(1), 1)
        return np.asarray(np.argmin(err, axis=1))  # all-zero rows (no backtest) pick the first candidate

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        bounded = np.asarray(bounded)
        choice = self.choose(histories, horizon, bounded)
        out = np.empty((len(histories), 3, horizon))
        names = np.empty(len(histories), object)
        for m, model in enumerate(self.candidates):
            idx = np.flatnonzero(choice == m)
            if len(idx):
                sub = [histories[int(i)] for i in idx]
                out[idx] = model.forecast_arrays(sub, horizon, bounded[idx])
                names[idx] = model.fallback_flags(sub)
        self._local.names = names
        return apply_interval_scale(finalize_quantiles(out, bounded), self.interval_scale, bounded)

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Which candidate (or its own fallback) served each history in the last forecast."""
        names = getattr(self._local, "names", None)
        if names is None or len(names) != len(histories):
            return self.candidates[0].fallback_flags(histories)
        return [str(x) for x in names]

    def __repr__(self) -> str:
        return f"BacktestSelector({self.candidates!r}, k={self.k})"
