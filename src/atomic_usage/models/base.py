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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS, QUANTILES
from ..data.regularize import Panel, regularize
from ..errors import NotFittedError, SchemaError

__all__ = ["Forecaster", "finalize_quantiles", "forecast_frame"]


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

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Per history, the name of the path that served it (the model itself by default)."""
        return [self.name] * len(histories)

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
            The long forecast frame: ``id,timestamp,metric,mean,p10,p50,p90,model``.

        Raises:
            NotFittedError: ``fit`` was not called.
        """
        if not hasattr(self, "panel_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(data) before predict(h).")
        return forecast_frame(self, self.panel_, h)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def forecast_frame(model: Forecaster, panel: Panel, horizon: int) -> pd.DataFrame:
    """Forecasts every series of ``panel`` and returns the long forecast frame.

    Series with no observation at all of a metric are left out (nothing to forecast from).

    Returns:
        Columns ``id,timestamp,metric,mean,p10,p50,p90,model``; timestamps are the
        forecast steps (UTC), one row per id, metric and step.
    """
    if horizon < 1:
        raise SchemaError(f"The horizon must be at least 1 step; got {horizon}.")
    hists, ids, metrics, ends = [], [], [], []
    end = panel.end()
    for i, m, s in panel.iter_series():
        if np.isnan(s).all():
            continue
        hists.append(s)
        ids.append(panel.ids[i])
        metrics.append(m)
        ends.append(end[i])
    cols = ["id", "timestamp", "metric", "mean", "p10", "p50", "p90", "model"]
    if not hists:
        return pd.DataFrame({c: [] for c in cols})
    bounded = np.isin(np.asarray(metrics, object), list(BOUNDED_METRICS))
    fc = model.forecast_arrays(hists, horizon, bounded)
    names = model.fallback_flags(hists)
    n = len(hists)
    step = np.int64(panel.step.value)
    ts = (np.asarray(ends, "datetime64[ns]").astype(np.int64)[:, None] + step * np.arange(1, horizon + 1)).ravel()
    q = {f"p{int(round(qq * 100))}": fc[:, k, :].ravel() for k, qq in enumerate(QUANTILES)}
    return (
        pd.DataFrame(
            {
                "id": np.repeat(np.asarray(ids, object), horizon),
                "timestamp": pd.to_datetime(ts, utc=True),
                "metric": np.repeat(np.asarray(metrics, object), horizon),
                "mean": q["p50"],
                **q,
                "model": np.repeat(np.asarray(names, object), horizon),
            }
        )[cols].reset_index(drop=True)
        if n
        else pd.DataFrame({c: [] for c in cols})
    )
