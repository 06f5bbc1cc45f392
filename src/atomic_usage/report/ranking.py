"""Time until each machine exhausts a resource: threshold crossings of a long forecast frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS
from ..errors import SchemaError

__all__ = ["crossings", "rank_machines"]

_FORECAST_COLS = ("id", "timestamp", "metric", "p10", "p50", "p90")


def _last_observed(history: pd.DataFrame) -> pd.DataFrame:
    """Per id and metric, the newest non-missing value and its timestamp (columns id, metric, now, now_ts)."""
    metrics = [c for c in history.columns if c not in ("id", "timestamp")]
    long = history.melt(id_vars=["id", "timestamp"], value_vars=metrics, var_name="metric", value_name="now")
    long = long.dropna(subset=["now"]).sort_values("timestamp")
    last = long.groupby(["id", "metric"], sort=False).tail(1)
    return last.rename(columns={"timestamp": "now_ts"})[["id", "metric", "now", "now_ts"]]


def crossings(forecast: pd.DataFrame, history: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """When each percent metric of each machine first reaches each threshold, at p50 and at p90.

    Only bounded (percent) metrics are considered; thresholds are percents.

    Args:
        forecast: the long forecast frame (``id,timestamp,metric,p10,p50,p90``...).
        history: the wide frame the forecast was made from (gives the newest value).
        thresholds: percent levels, e.g. ``(90, 100)``.

    Returns:
        One row per id, metric and threshold with a forecast (a null p50 has none): ``id, metric,
        threshold, now, origin,
        horizon_s, peak_p90, p50_s, p90_s``. ``peak_p90`` is the highest p90 of the horizon
        (shown as "max p90"; not ``process()``'s ``peak.p90``, the p90 at the median's peak
        step). ``origin`` is the forecast's origin (the
        step before its first); ``p50_s``/``p90_s`` are seconds from the origin to the
        first step whose quantile reaches the threshold, 0 when the newest value already
        has, and +inf when no step of the horizon does.

    Raises:
        SchemaError: the forecast frame lacks a column.
    """
    missing = [c for c in _FORECAST_COLS if c not in forecast.columns]
    if missing:
        raise SchemaError(f"The forecast frame lacks the columns {missing}; pass the output of forecast_frame.")
    # A series without a forecast (rejected, no data: null values) has no time to a threshold; the
    # report lists it apart with its reason (html.not_forecast).
    fc = forecast[forecast["metric"].isin(list(BOUNDED_METRICS)) & forecast["p50"].notna()]
    fc = fc.sort_values(["id", "metric", "timestamp"])
    cols = ["id", "metric", "threshold", "now", "origin", "horizon_s", "peak_p90", "p50_s", "p90_s"]
    if fc.empty or not len(thresholds):
        return pd.DataFrame({c: [] for c in cols})
    fc = fc.assign(_dt=fc.groupby(["id", "metric"], sort=False)["timestamp"].diff())
    g = fc.groupby(["id", "metric"], sort=False)
    base = g.agg(first=("timestamp", "min"), last=("timestamp", "max"), peak_p90=("p90", "max"), step=("_dt", "min"))
    base = base.reset_index().merge(_last_observed(history), on=["id", "metric"], how="left")
    # The origin is one step before the first forecast step; a one-step forecast falls back
    # on the newest observation's time.
    base["origin"] = (base["first"] - base["step"]).fillna(base["now_ts"]).fillna(base["first"])
    base["horizon_s"] = (base["last"] - base["origin"]).dt.total_seconds()
    rows = []
    for level in thresholds:
        part = base.copy().reset_index(drop=True)
        part["threshold"] = float(level)
        for q in ("p50", "p90"):
            first_hit = fc[fc[q] >= level].groupby(["id", "metric"], sort=False)["timestamp"].min()
            hit = part[["id", "metric"]].merge(first_hit.rename("hit").reset_index(), how="left")["hit"]
            secs = (hit - part["origin"].reset_index(drop=True)).dt.total_seconds().to_numpy(float)
            secs = np.where(np.isnan(secs), np.inf, secs)
            part[f"{q}_s"] = np.where(part["now"].to_numpy(float) >= level, 0.0, secs)
        rows.append(part)
    return pd.concat(rows, ignore_index=True)[cols]


def rank_machines(forecast: pd.DataFrame, history: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """Machines ordered by how soon they exhaust a resource (time to the lowest threshold at p90).

    Args:
        forecast: the long forecast frame.
        history: the wide frame it was made from.
        thresholds: percent levels; the lowest one ranks, the others are reported.

    Returns:
        One row per machine, soonest first: ``id, metric`` (its resource closest to the
        lowest threshold), ``now, peak_p90, horizon_s, p50_s, p90_s`` for that metric and
        threshold, and ``p90_s@<level>`` for every threshold. Ties (e.g. no crossing within
        the horizon) are broken by p50 time, then by the highest p90 peak.
    """
    cross = crossings(forecast, history, thresholds)
    out_cols = ["id", "metric", "now", "peak_p90", "horizon_s", "p50_s", "p90_s"]
    if cross.empty:
        return pd.DataFrame({c: [] for c in out_cols})
    low = min(float(t) for t in thresholds)
    wide_p90 = cross.pivot_table(index=["id", "metric"], columns="threshold", values="p90_s", aggfunc="min")
    wide_p90.columns = [f"p90_s@{t:g}" for t in wide_p90.columns]
    first = cross[cross["threshold"] == low].merge(wide_p90.reset_index(), on=["id", "metric"])
    first = first.sort_values(["p90_s", "p50_s", "peak_p90"], ascending=[True, True, False], kind="stable")
    best = first.groupby("id", sort=False).head(1).reset_index(drop=True)
    return best[out_cols + list(wide_p90.columns)]
