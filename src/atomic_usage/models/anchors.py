"""UsageBench's anchors as forecasters: statsforecast AutoETS and AutoTheta, and a LightGBM global model.

These are what a user would reach for instead of ATOMIC, defined as in ``shared/bench/PROTOCOL.md``
("Baselines") and its reference harness ``usagebench.py`` (functions ``_statsforecast``,
``lgbm_forecaster`` and ``lightgbm``), re-implemented here because the harness is not part of
the package:

- AutoETS and AutoTheta are fitted per series at every call, with an 80 % prediction interval
  (p10, p90) and the point forecast as p50. The season is 288 steps (one day) where the
  history holds at least two full seasons, else 1; AutoETS always runs non-seasonal, because
  statsforecast cannot fit a season longer than 24 steps (the harness does the same).
- LightGBM is one global model per call, trained through mlforecast on the histories of that
  call: lags 1..24, rolling means over 12 and 48 steps of lag 1, per-series standard scaling,
  one quantile-objective model per quantile, recursive over the horizon.

Their packages form the ``bench`` extra and are imported when a forecast is first asked for;
without them the forecasters raise :class:`~atomic_usage.errors.ModelError` with the install
hint.

Where we differ from the harness, on purpose:

- Outputs pass through :func:`~atomic_usage.models.base.finalize_quantiles`, like every
  forecaster here: quantiles are sorted, percents clipped to [0, 100] and counts to >= 0, NaN
  becomes 0 and infinite interval bounds become finite (+inf -> float32 max, -inf -> 0). The
  harness scores the raw outputs, so windows where an interval is negative or infinite score
  differently (better or merely finite); elsewhere the scores agree.
- Histories may hold missing values (NaN), which the harness never gives: leading NaN are
  dropped and the rest forward-filled. Histories too short for a model (and series whose fit
  fails) are forecast by the naive baseline; :meth:`fallback_flags` names them.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from .._types import QUANTILES
from ..errors import ModelError
from .base import Forecaster, finalize_quantiles
from .baselines import naive_arrays

__all__ = ["ANCHORS", "AutoETSAnchor", "AutoThetaAnchor", "LightGBMAnchor"]

log = logging.getLogger(__name__)

DAY = 288
"""Steps in a day of 5-minute steps: the season offered to the statistical anchors."""

INSTALL_HINT = "pip install 'atomic-usage[bench]'"
"""How to get the anchors' packages (statsforecast, mlforecast, lightgbm)."""

MIN_STATS_HISTORY = 10
"""Fewest steps statsforecast is given (it refuses "tiny datasets" below 7 for AutoETS); fewer -> naive."""

MIN_LGBM_HISTORY = 49
"""Steps a history needs to yield one training row (lag 24 and a 48-step rolling mean of lag 1)."""


def _require(module: str, model: str) -> ModuleType:
    """Imports an optional package, or raises ModelError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"The {model} anchor needs the package {module.split('.')[0]!r}, which is not installed; "
            f"install the benchmark extra: `{INSTALL_HINT}`."
        ) from exc


def _clean(h: np.ndarray) -> np.ndarray:
    """Drops leading NaN and forward-fills the rest (the harness never hands over NaN)."""
    y = np.asarray(h, np.float64)
    ok = ~np.isnan(y)
    if not ok.any():
        return y[:0]
    y = y[int(np.argmax(ok)) :]
    idx = np.where(~np.isnan(y), np.arange(len(y)), 0)
    np.maximum.accumulate(idx, out=idx)
    return y[idx]


def _long_frame(hists: Sequence[np.ndarray]) -> pd.DataFrame:
    """Nixtla long frame (unique_id, ds, y) with integer ds, every series ending at ds=0 (as the harness)."""
    return pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(len(hists)), [len(h) for h in hists]),
            "ds": np.concatenate([np.arange(-len(h) + 1, 1) for h in hists]),
            "y": np.concatenate(hists).astype(float),
        }
    )


class _StatsAnchor(Forecaster):
    """A statsforecast model fitted per series, with its 80 % interval as p10/p90."""

    _model_class = ""

    def __init__(self, *, season: int = DAY, n_jobs: int = -1) -> None:
        self.season = season
        self.n_jobs = n_jobs

    def _season_for(self, length: int) -> int:
        """The harness's rule: the season where two full seasons fit in the history, else 1."""
        return self.season if self.season > 1 and length >= 2 * self.season else 1

    def _fit_forecast(self, hists: list[np.ndarray], horizon: int, season: int, n_jobs: int) -> np.ndarray:
        """One statsforecast call on histories sharing a season -> (k, 3, H) (lo-80, point, hi-80)."""
        sf_core = _require("statsforecast", self.name)
        cls = getattr(_require("statsforecast.models", self.name), self._model_class)
        sf = sf_core.StatsForecast(models=[cls(season_length=season)], freq=1, n_jobs=n_jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = sf.forecast(df=_long_frame(hists), h=horizon, level=[80]).reset_index()
        fc = fc.sort_values(["unique_id", "ds"])
        col = self._model_class
        arr = np.stack([fc[f"{col}-lo-80"], fc[col], fc[f"{col}-hi-80"]]).reshape(3, len(hists), horizon)
        return np.moveaxis(arr, 0, 1)

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`; fits every series afresh."""
        hists = [_clean(h) for h in histories]
        out = np.zeros((len(hists), 3, horizon))
        groups: dict[int, list[int]] = {}
        short = []
        for i, h in enumerate(hists):
            if len(h) >= MIN_STATS_HISTORY:
                groups.setdefault(self._season_for(len(h)), []).append(i)
            else:
                short.append(i)
        if short:
            out[short] = naive_arrays([histories[i] for i in short], horizon)
        for season, idx in groups.items():
            try:
                out[idx] = self._fit_forecast([hists[i] for i in idx], horizon, season, self.n_jobs)
            except ModelError:
                raise
            except Exception as exc:  # one bad series fails the whole call: refit one by one
                log.warning("%s: batch fit failed (%s); fitting the %d series one by one", self.name, exc, len(idx))
                for i in idx:
                    try:
                        out[i] = self._fit_forecast([hists[i]], horizon, season, 1)[0]
                    except Exception as one:  # noqa: BLE001 - any failure of one series: naive for it
                        log.warning("%s: series %d falls back to naive (%s)", self.name, i, one)
                        out[i] = naive_arrays([histories[i]], horizon)[0]
        return finalize_quantiles(out, np.asarray(bounded, bool))

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """``naive`` for histories too short to fit (fit failures are only logged)."""
        return [self.name if len(_clean(h)) >= MIN_STATS_HISTORY else "naive" for h in histories]

    def warm_up(self) -> None:
        """One tiny call, so that imports and first-call set-up are not timed (as the harness does)."""
        rng = np.random.default_rng(0)
        self.forecast_arrays([rng.normal(size=700) + 10 for _ in range(3)], 4, np.zeros(3, bool))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(season={self.season}, n_jobs={self.n_jobs})"


class AutoETSAnchor(_StatsAnchor):
    """statsforecast ``AutoETS`` per series, non-seasonal, with its 80 % interval.

    statsforecast cannot use a season longer than 24 steps: it would fit the seasonal
    candidates anyway and keep a non-seasonal model, so a longer ``season`` runs as 1, exactly
    like the harness. ETS intervals can be infinite; they become finite here (see the module
    docstring), where the harness scores them as infinite.

    Args:
        season: seasonal period in steps (used only if at most 24 and two seasons fit).
        n_jobs: processes statsforecast uses (-1: all cores, as the harness).
    """

    name = "autoets"
    _model_class = "AutoETS"

    def _season_for(self, length: int) -> int:
        return 1 if self.season > 24 else super()._season_for(length)


class AutoThetaAnchor(_StatsAnchor):
    """statsforecast ``AutoTheta`` per series, season 288 where the history allows, with its 80 % interval.

    Args:
        season: seasonal period in steps, used where the history holds two full seasons.
        n_jobs: processes statsforecast uses (-1: all cores, as the harness).
    """

    name = "autotheta"
    _model_class = "AutoTheta"


class LightGBMAnchor(Forecaster):
    """A LightGBM global model through mlforecast, trained on the histories of each call.

    Features are lags 1..24 and rolling means over 12 and 48 steps of lag 1, after per-series
    standard scaling; one LightGBM model per quantile (objective ``quantile``), 200 trees,
    learning rate 0.05, 31 leaves; forecasts are recursive over the horizon. Being global and
    trained per call, a series' forecast depends on the other histories of the call (the
    harness trains it per cutoff on every series of that cutoff; ``evaluate`` calls it per
    cutoff rank too). Crossed quantiles are sorted, as in the harness.

    Args:
        n_estimators: trees per quantile model.
        threads: LightGBM and mlforecast threads (None: every core, as the harness).
    """

    name = "lightgbm"

    def __init__(self, *, n_estimators: int = 200, threads: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.threads = threads

    def _forecaster(self) -> Any:
        """The harness's ``lgbm_forecaster``: an unfitted MLForecast with three quantile models."""
        lgb = _require("lightgbm", self.name)
        mlforecast = _require("mlforecast", self.name)
        lag_transforms = _require("mlforecast.lag_transforms", self.name)
        target_transforms = _require("mlforecast.target_transforms", self.name)
        threads = self.threads or os.cpu_count() or 1
        models = {
            f"q{int(q * 100)}": lgb.LGBMRegressor(
                objective="quantile",
                alpha=q,
                n_estimators=self.n_estimators,
                learning_rate=0.05,
                num_leaves=31,
                min_child_samples=20,
                verbosity=-1,
                n_jobs=threads,
            )
            for q in QUANTILES
        }
        return mlforecast.MLForecast(
            models=models,
            freq=1,
            lags=range(1, 25),
            lag_transforms={
                1: [lag_transforms.RollingMean(window_size=12), lag_transforms.RollingMean(window_size=48)]
            },
            target_transforms=[target_transforms.LocalStandardScaler()],
            num_threads=threads,
        )

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`; trains on ``histories`` first."""
        hists = [_clean(h) for h in histories]
        out = np.zeros((len(hists), 3, horizon))
        # The model needs one history long enough to give a training row; series with no value
        # at all, or every series when none is that long, are forecast naively.
        idx = [i for i, h in enumerate(hists) if len(h)]
        if not idx or max(len(hists[i]) for i in idx) < MIN_LGBM_HISTORY:
            idx = []
        rest = sorted(set(range(len(hists))) - set(idx))
        if rest:
            out[rest] = naive_arrays([histories[i] for i in rest], horizon)
        if idx:
            mlf = self._forecaster()
            with warnings.catch_warnings():
                # mlforecast warns about short series left out of training and NaN features.
                warnings.simplefilter("ignore")
                mlf.fit(_long_frame([hists[i] for i in idx]), static_features=[])
                fc = mlf.predict(horizon).sort_values(["unique_id", "ds"])
            arr = np.stack([fc[f"q{int(q * 100)}"].to_numpy() for q in QUANTILES])
            out[idx] = np.moveaxis(arr.reshape(3, len(idx), horizon), 0, 1)
        return finalize_quantiles(out, np.asarray(bounded, bool))

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """``naive`` for every history when none is long enough to train on, or for empty ones."""
        lengths = [len(_clean(h)) for h in histories]
        trained = bool(lengths) and max(lengths) >= MIN_LGBM_HISTORY
        return [self.name if trained and n else "naive" for n in lengths]

    def warm_up(self) -> None:
        """One tiny call, so that imports and first-call set-up are not timed (as the harness does)."""
        rng = np.random.default_rng(0)
        self.forecast_arrays([rng.normal(size=700) + 10 for _ in range(3)], 4, np.zeros(3, bool))

    def __repr__(self) -> str:
        return f"LightGBMAnchor(n_estimators={self.n_estimators}, threads={self.threads})"


ANCHORS: dict[str, type[Forecaster]] = {
    "autoets": AutoETSAnchor,
    "autotheta": AutoThetaAnchor,
    "lightgbm": LightGBMAnchor,
}
"""The anchors by the names the CLI and UsageBench use."""
