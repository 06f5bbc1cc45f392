"""UsageBench v1: rolling-origin evaluation of forecasters on the gcd and nab data sets.

Implements ``shared/bench/PROTOCOL.md``: the cutoffs, at most 2,016 steps of history per
window, MASE and SQL scaled by the in-sample naive MAE of the whole history before the
cutoff, and coverage of the p10–p90 interval. Headline figures are means over all
(series, metric, cutoff) windows. As in the protocol, NAB files are taken as regular
5-minute sequences (the row index is the time axis).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS
from ..data.trainset import is_holdout
from ..errors import SchemaError
from .base import Forecaster

__all__ = ["DATASETS", "EvalResult", "Window", "evaluate", "load_dataset", "score"]

MAX_HISTORY = 2016
"""Steps of history a model is given at most (7 days)."""

DAY = 288

DATASETS: dict[str, dict[str, object]] = {
    "gcd": {"horizons": (12,), "cutoffs": "gcd"},
    "nab": {"horizons": (12, 288), "cutoffs": "nab"},
}
"""The UsageBench data sets: their horizons and cutoff rule."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One metric of one machine, as the protocol reads it."""

    id: str
    metric: str
    values: np.ndarray


def load_dataset(name: str, data_dir: str | Path) -> list[Series]:
    """Reads a UsageBench data set folder into series (GCD: cpu and memory per VM; NAB: value).

    Raises:
        SchemaError: unknown data set name, or the folder is missing or empty.
    """
    if name not in DATASETS:
        raise SchemaError(f"Unknown data set {name!r}; choose one of {sorted(DATASETS)}.")
    d = Path(data_dir)
    if not d.is_dir():
        raise SchemaError(f"{d}: the data folder does not exist; pass it with --data-dir.", path=str(d))
    pattern = "vm_*" if name == "gcd" else "*.csv"
    files = sorted(p for p in d.glob(pattern) if p.is_file())
    if not files:
        raise SchemaError(f"{d}: no {pattern} files here; is this the {name} folder?", path=str(d))
    out = []
    for f in files:
        if name == "gcd":
            arr = np.loadtxt(f, ndmin=2)
            out += [Series(f.name, "cpuLoad", arr[:, 0]), Series(f.name, "memoryUsage", arr[:, 1])]
        else:
            df = pd.read_csv(f)
            out.append(Series(f.stem, "value", df["value"].to_numpy(float)))
    return out


def _cutoffs(rule: str, n: int) -> list[int]:
    return [240, 252, 264, 276] if rule == "gcd" else [n - k * DAY for k in (4, 3, 2, 1)]


@dataclasses.dataclass(frozen=True)
class Window:
    """One forecast to score: the history before ``cutoff`` and the ``horizon`` actual values after it."""

    series: Series
    cutoff: int
    horizon: int
    rank: int

    @property
    def history(self) -> np.ndarray:
        """What the model is given: at most MAX_HISTORY steps before the cutoff."""
        return self.series.values[max(0, self.cutoff - MAX_HISTORY) : self.cutoff]

    @property
    def actual(self) -> np.ndarray:
        """The values to forecast."""
        return self.series.values[self.cutoff : self.cutoff + self.horizon]

    @property
    def scale(self) -> float:
        """In-sample naive MAE over the whole history before the cutoff."""
        h = self.series.values[: self.cutoff]
        s = float(np.mean(np.abs(np.diff(h)))) if len(h) > 1 else 0.0
        return s if s > 0 else 1e-8 + float(np.mean(np.abs(h))) * 1e-3


def windows(name: str, series: Sequence[Series], horizon: int) -> list[Window]:
    """Every window of the protocol for one horizon, by cutoff rank."""
    rule = str(DATASETS[name]["cutoffs"])
    out = []
    for rank in range(4):
        for s in series:
            c = _cutoffs(rule, len(s.values))[rank]
            if c >= 2 and c + horizon <= len(s.values):
                out.append(Window(s, c, horizon, rank))
    return out


def score(wins: Sequence[Window], fc: np.ndarray) -> pd.DataFrame:
    """Per-window MASE, SQL and coverage80 for forecasts ``fc`` (n, 3, H)."""
    rows = []
    for w, f in zip(wins, fc, strict=True):
        y, sc = w.actual, w.scale
        pin = [np.mean(np.maximum(q * (y - f[k]), (q - 1) * (y - f[k]))) for k, q in enumerate((0.1, 0.5, 0.9))]
        rows.append(
            {
                "id": w.series.id,
                "metric": w.series.metric,
                "cutoff": w.cutoff,
                "rank": w.rank,
                "mase": float(np.mean(np.abs(y - f[1])) / sc),
                "sql": float(np.mean(pin) * 2 / sc),
                "cov80": float(np.mean((y >= f[0]) & (y <= f[2]))),
                "holdout": is_holdout(w.series.id),
            }
        )
    return pd.DataFrame(rows)


@dataclasses.dataclass
class EvalResult:
    """Scores of one model on one data set and horizon."""

    dataset: str
    model: str
    horizon: int
    mase: float
    sql: float
    cov80: float
    seconds: float
    n_windows: int
    per_window: pd.DataFrame = dataclasses.field(repr=False)

    def row(self) -> dict[str, object]:
        """The headline as a flat mapping (for tables)."""
        return {
            "dataset": self.dataset,
            "horizon": self.horizon,
            "model": self.model,
            "MASE": self.mase,
            "SQL": self.sql,
            "cov80": self.cov80,
            "seconds": self.seconds,
            "windows": self.n_windows,
        }


def evaluate(
    name: str,
    series: Sequence[Series],
    models: dict[str, Forecaster],
    *,
    horizons: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[EvalResult]:
    """Scores each model on every window of the data set, all cutoffs of a rank in one call.

    Returns:
        One result per (model, horizon), in the order given.
    """
    default: tuple[int, ...] = DATASETS[name]["horizons"]  # type: ignore[assignment]
    hs = tuple(horizons) if horizons else default
    results = []
    for H in hs:
        wins = windows(name, series, H)
        hists = [w.history for w in wins]
        bounded = np.array([w.series.metric in BOUNDED_METRICS for w in wins])
        for label, model in models.items():
            if progress:
                progress(f"{name} H={H} {label}")
            t = time.perf_counter()
            fc = np.concatenate(
                [
                    model.forecast_arrays([hists[i] for i in idx], H, bounded[idx])
                    for idx in np.array_split(np.arange(len(wins)), 4)
                    if len(idx)
                ]
            )
            dt = time.perf_counter() - t
            pw = score(wins, fc)
            results.append(
                EvalResult(
                    name,
                    label,
                    H,
                    float(pw["mase"].mean()),
                    float(pw["sql"].mean()),
                    float(pw["cov80"].mean()),
                    dt,
                    len(pw),
                    pw,
                )
            )
    return results
