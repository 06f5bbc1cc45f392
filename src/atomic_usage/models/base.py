"""The forecaster contract every model follows (baselines, the neural network, its ONNX form).

A forecaster is built with hyperparameters only, ``fit`` on a wide frame or panel (for the
pretrained global model that means: take these histories as context), then asked for
``predict(h)``. Underneath, every forecaster implements one array function::

    forecast_arrays(histories, horizon, bounded) -> array (n, 3, horizon)

``histories`` is a list of 1-D float arrays (NaN = missing), ``bounded[i]`` says whether
series i is a percent (forecasts clipped to [0, 100]) or a count (clipped to >= 0), and
the result holds p10, p50, p90 along axis 1, in order and within range.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS, QUANTILES
from ..config import validate_horizon
from ..data.regularize import Panel, regularize
from ..data.validation import SeriesIssue
from ..errors import NotFittedError, SchemaError

__all__ = [
    "FRAME_COLUMNS",
    "MIN_CHANGES",
    "MIN_INTERVAL",
    "NO_FORECAST",
    "SHORT_HISTORY",
    "SWANSON_WEIGHTS",
    "Forecaster",
    "PerThreadCall",
    "finalize_quantiles",
    "forecast_frame",
    "interval_known",
    "mean_from_quantiles",
    "no_data_reason",
    "observed_changes",
    "on_fallback",
]


def finalize_quantiles(fc: np.ndarray, bounded: np.ndarray) -> np.ndarray:
    """Makes raw quantile forecasts safe: finite, in order, within range.

    Args:
        fc: array (n, 3, H) of p10, p50, p90 (modified in place and returned).
        bounded: bool (n,): True clips to [0, 100], False to [0, inf).
    """
    fc = np.asarray(np.nan_to_num(fc, nan=0.0, posinf=float(np.finfo(np.float32).max), neginf=0.0))
    fc.sort(axis=1)
    hi = np.where(bounded, 100.0, np.finfo(np.float32).max)[:, None, None]
    np.clip(fc, 0.0, hi, out=fc)
    return fc


class PerThreadCall:
    """A forecaster that remembers what its last call served, per thread (``self._local``, for
    ``fallback_flags`` after ``forecast_arrays``): pickled without it, given a fresh one when
    unpickled (a worker's copy starts with no call)."""

    _local: threading.local

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class Forecaster(abc.ABC):
    """Base of every forecaster: sklearn-style ``fit``/``predict`` over :meth:`forecast_arrays`.

    Attributes (after fit):
        panel_: the regular histories given to ``fit``.
    """

    name: str = "forecaster"
    """What the ``model`` column of a forecast says."""

    @abc.abstractmethod
    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """Forecasts p10/p50/p90 for each history; returns an array (n, 3, horizon)."""

    def warm_up(self) -> None:
        """Loads what the first forecast would otherwise load (a session, a file); nothing by default."""
        return None

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Per history, the name of the path that served it (the model itself by default)."""
        return [self.name] * len(histories)

    def fallback_reasons(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Per history, why a fallback served it, or ``""`` (the model itself served it; the default).

        A reason starts with its kind (``short season: ...``) and writes ``{series}`` where the
        series belongs; :func:`forecast_frame` puts ``cpuLoad of id 'vm-1'`` there.
        """
        return [""] * len(histories)

    def fit(self, data: pd.DataFrame | Panel, **kwargs: Any) -> Forecaster:
        """Takes the histories to forecast from.

        Args:
            data: a wide frame (regularized here to 5-minute steps) or a Panel.

        Returns:
            self.
        """
        self.panel_ = data if isinstance(data, Panel) else regularize(data, **kwargs)[0]
        return self

    def predict(self, h: int) -> pd.DataFrame:
        """Forecasts ``h`` steps after the end of every fitted series.

        Returns:
            The long forecast frame (:func:`forecast_frame`): ``id,timestamp,metric,mean,p10,p50,p90,
            model,reason``.

        Raises:
            NotFittedError: ``fit`` was not called.
        """
        if not hasattr(self, "panel_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(data) before predict(h).")
        return forecast_frame(self, self.panel_, h)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


MIN_INTERVAL = 3
"""Observed values a history needs for an interval: with fewer there is at most one change to
learn a spread from, so p10 and p90 are null (the point is the last value, flagged)."""

MIN_CHANGES = MIN_INTERVAL - 1
"""Changes between consecutive observed steps a history needs for an interval, whatever its
count of values: three values with a long gap between two of them (a collector outage) hold one
change, whose spread is zero or one number, and the forecasters' bands read it as certainty."""

FRAME_COLUMNS = ("id", "timestamp", "metric", "mean", "p10", "p50", "p90", "model", "reason")
"""The columns of the long forecast frame (``mean``: see :func:`mean_from_quantiles`)."""

SWANSON_WEIGHTS = (0.3, 0.4, 0.3)
"""Weights of p10, p50 and p90 in the ``mean`` column (Swanson's rule)."""


def mean_from_quantiles(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> np.ndarray:
    """The forecast's expected value, estimated from its quantiles by Swanson's rule.

    The networks give quantiles, not a mean: ``0.3 p10 + 0.4 p50 + 0.3 p90`` is exact for a
    symmetric distribution and follows the skew of an asymmetric one (a band that reaches
    further up than down gives a mean above the median). It is kept within [p10, p90], so
    it is in the metric's valid range whenever the quantiles are. Where the interval is
    unknown (p10/p90 NaN: a short history) the mean is the median; where p50 is NaN, NaN.

    Args:
        p10, p50, p90: arrays of one shape.

    Returns:
        The mean, same shape.

    >>> mean_from_quantiles(np.array([10.0]), np.array([20.0]), np.array([50.0])).tolist()
    [26.0]
    """
    w10, w50, w90 = SWANSON_WEIGHTS
    mean = np.clip(w10 * p10 + w50 * p50 + w90 * p90, p10, p90)
    return np.where(np.isnan(p10) | np.isnan(p90), p50, mean)


NO_FORECAST = ("none", "error")
"""``model`` values of rows without a forecast: ``none`` for a metric with no data while the id
has others, ``error`` for an id or series that cannot be forecast; ``reason`` says why."""


def on_fallback(names: pd.Series, model: object) -> np.ndarray:
    """Which forecast ``model`` values name a fallback: neither a row without a forecast nor
    ``model`` itself as designed (its name alone, or its name then what served the later steps,
    ``atomic+naive``)."""
    name = str(getattr(model, "name", ""))
    own = (names == name) | names.astype(str).str.startswith(name + "+")
    return np.asarray(~names.isin(NO_FORECAST) & ~own)


def interval_known(n_observed: Any, n_changes: Any = None) -> Any:
    """Whether a history with ``n_observed`` observed values and ``n_changes`` changes between
    consecutive observed steps (not counted when None) gets p10/p90 (MIN_INTERVAL, MIN_CHANGES);
    element-wise for arrays of counts.

    >>> interval_known(np.array([2, 3, 3]), np.array([1, 1, 2])).tolist()
    [False, False, True]
    """
    known = np.asarray(n_observed) >= MIN_INTERVAL
    if n_changes is not None:
        known &= np.asarray(n_changes) >= MIN_CHANGES
    return known


def observed_changes(histories: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per history, how many pairs of consecutive steps are both observed (a 2-D array of
    histories of one length is counted in one pass).

    >>> observed_changes([np.array([5.0, np.nan, np.nan, 6.0, 6.0]), np.array([1.0, 2.0, 3.0])]).tolist()
    [1, 2]
    """
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        seen = ~np.isnan(histories)
        return np.asarray((seen[:, 1:] & seen[:, :-1]).sum(1), np.int64)
    return np.array(
        [int(np.count_nonzero(~np.isnan(h[1:]) & ~np.isnan(h[:-1]))) for h in map(np.asarray, histories)], np.int64
    )


def _no_observations(sid: str, steps: int) -> str:
    return (
        f"no observations: id {sid!r} has {steps} step(s) but no value in any metric, so it is not "
        "forecast; send at least one value."
    )


def no_data_reason(sid: str, metric: str) -> str:
    """The reason given for a metric of an id that has no observation (files and ``process()``)."""
    return (
        f"no data: {metric} of id {sid!r} has no observation, so it is not forecast (null, not 0); "
        "send its values to get one."
    )


SHORT_HISTORY = "naive(short-history)"
"""``model`` of a series with fewer than MIN_INTERVAL observed values, whatever the model: its last
value, with p10/p90 null (``docs/data-rules.md``)."""


def _short_history(sid: str, metric: str, k: int, changes: int) -> str:
    what = (
        f"{k} observed value(s), fewer than the {MIN_INTERVAL} an interval needs"
        if k < MIN_INTERVAL
        else f"{k} observed values but {changes} change(s) between consecutive steps (gaps hold the others), "
        f"fewer than the {MIN_CHANGES} an interval needs"
    )
    return (
        f"short history: {metric} of id {sid!r} has {what}, so the forecast is its last value (naive) and "
        "p10 and p90 are null; send more history for a model forecast with an interval."
    )


def forecast_frame(
    model: Forecaster, panel: Panel, horizon: int, *, issues: Sequence[SeriesIssue] = ()
) -> pd.DataFrame:
    """Forecasts every series of ``panel`` and returns the long forecast frame.

    Every id and metric of the panel gets ``horizon`` rows, so one bad series never hides or
    aborts another. Rows without a forecast have null values, ``model`` ``none`` or ``error``
    and a ``reason`` that starts with its kind:

    - ``no data``: the metric has no observation while the id has others (null, not 0);
    - ``no observations``: the id has rows but no value at all (an error for the id);
    - ``rejected``: validation rejected the series (``issues``, e.g. per-core sums);
    - ``short history``: fewer than MIN_INTERVAL observed values; whatever the model, p50 is the
      last value and p10/p90 are null, and ``model`` says so: SHORT_HISTORY (``naive(short-history)``);
    - any other reason on a row with values: the model served it by a fallback, named in ``model``
      (:meth:`Forecaster.fallback_reasons`, e.g. ``short season`` for seasonal naive).

    Args:
        model: the forecaster.
        panel: the regular histories.
        horizon: steps to forecast (at least 1).
        issues: series rejected by validation (masked in ``panel``), from ``read_wide(issues=...)``.

    Returns:
        Columns FRAME_COLUMNS; timestamps are the forecast steps (UTC) after the id's last step,
        one row per id, metric and step. ``reason`` is empty for an ordinary forecast.

    Raises:
        SchemaError: ``horizon`` is not from 1 to MAX_HORIZON (``atomic_usage.config``).
    """
    problem = validate_horizon(horizon)
    if problem is not None:
        raise SchemaError(f"The horizon {problem}.")
    rejected = {(i.id, i.metric): i.message for i in issues}
    hists, where, n_obs = [], [], []
    kind: list[tuple[str, str]] = []  # per (id, metric): (model or NO_FORECAST value, reason)
    for i in range(len(panel)):
        sid = str(panel.ids[i])
        observed = {m: int(np.count_nonzero(~np.isnan(panel.series(i, m)))) for m in panel.metrics}
        id_empty = not any(observed.values()) and not any((sid, m) in rejected for m in panel.metrics)
        for m in panel.metrics:
            if (sid, m) in rejected:
                kind.append(("error", "rejected: " + rejected[(sid, m)]))
            elif id_empty:
                kind.append(("error", _no_observations(sid, int(panel.lengths[i]))))
            elif not observed[m]:
                kind.append(("none", no_data_reason(sid, m)))
            else:
                where.append(len(kind))
                hists.append(panel.series(i, m))
                n_obs.append(observed[m])
                kind.append(("", ""))
    n = len(kind)
    fc = np.full((n, 3, horizon), np.nan)
    names = np.asarray([k for k, _ in kind], object)
    reasons = np.asarray([r for _, r in kind], object)
    if hists:
        bounded = np.isin(
            np.asarray([panel.metrics[w % len(panel.metrics)] for w in where], object), list(BOUNDED_METRICS)
        )
        fc[where] = model.forecast_arrays(hists, horizon, bounded)
        names[where] = model.fallback_flags(hists)
        n_m = len(panel.metrics)
        for w, why in zip(where, model.fallback_reasons(hists), strict=True):
            if why:
                reasons[w] = why.format(series=f"{panel.metrics[w % n_m]} of id {str(panel.ids[w // n_m])!r}")
        for w, h, k, c in zip(where, hists, n_obs, observed_changes(hists).tolist(), strict=True):
            if not interval_known(k, c):
                # Too few values for any model (a line through 2 points is not a trend), or too few
                # changes to learn a spread from: the last one.
                fc[w, :] = h[~np.isnan(h)][-1]
                fc[w, [0, 2]] = np.nan
                names[w] = SHORT_HISTORY
                reasons[w] = _short_history(str(panel.ids[w // n_m]), panel.metrics[w % n_m], k, c)
    step = np.int64(panel.step.value)
    ends = np.repeat(panel.end().astype("datetime64[ns]").astype(np.int64), len(panel.metrics))
    ts = (ends[:, None] + step * np.arange(1, horizon + 1)).ravel()
    q = {f"p{int(round(qq * 100))}": fc[:, k, :].ravel() for k, qq in enumerate(QUANTILES)}
    return pd.DataFrame(
        {
            "id": np.repeat(np.repeat(panel.ids.astype(object), len(panel.metrics)), horizon),
            "timestamp": pd.to_datetime(ts, utc=True),
            "metric": np.repeat(np.tile(np.asarray(panel.metrics, object), len(panel)), horizon),
            "mean": mean_from_quantiles(q["p10"], q["p50"], q["p90"]),
            **q,
            "model": np.repeat(names, horizon),
            "reason": np.repeat(reasons, horizon),
        },
        columns=list(FRAME_COLUMNS),
    )
