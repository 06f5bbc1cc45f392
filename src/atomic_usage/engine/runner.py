"""What a worker runs: the model over a batch of machines' contexts.

The pool builds one :class:`ForecastRunner` per worker from a picklable
:class:`RunnerFactory`, so each worker owns its own ONNX Runtime session.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..models.base import Forecaster

__all__ = ["MachineForecast", "RunnerFactory", "WorkItem"]


class WorkItem(NamedTuple):
    """One machine to forecast: its contexts (metrics, steps; NaN = missing) and the horizon."""

    context: np.ndarray
    horizon: int


class MachineForecast(NamedTuple):
    """A machine's forecast: (metrics, 3, H) with NaN rows for metrics without data, and per
    metric the model that served it (None where there was no data)."""

    quantiles: np.ndarray
    models: list[str | None]


class ForecastRunner:
    """Forecasts a batch of work items in one call of the model per horizon."""

    def __init__(self, model: Forecaster) -> None:
        self.model = model

    def __call__(self, items: Sequence[WorkItem]) -> list[MachineForecast]:
        out: list[MachineForecast | None] = [None] * len(items)
        for H in sorted({it.horizon for it in items}):
            idx = [i for i, it in enumerate(items) if it.horizon == H]
            hists, where = [], []
            # Where each series' observations start, for all items of this horizon at once
            # (items share one shape when they come from one history; else one by one).
            shapes = {items[i].context.shape for i in idx}
            groups = [idx] if len(shapes) == 1 else [[i] for i in idx]
            for group in groups:
                ctx = np.stack([items[i].context for i in group])  # (k, metrics, steps)
                observed = ~np.isnan(ctx)
                has = observed.any(axis=2).tolist()
                first = np.argmax(observed, axis=2).tolist()
                for a, i in enumerate(group):
                    for j, seen in enumerate(has[a]):
                        if seen:
                            hists.append(items[i].context[j, first[a][j] :])
                            where.append((i, j))
            fc = self.model.forecast_arrays(hists, H, np.ones(len(hists), bool)) if hists else None
            names = self.model.fallback_flags(hists) if hists else []
            res: dict[int, tuple[np.ndarray, list[str | None]]] = {}
            for i in idx:
                n_metrics = items[i].context.shape[0]
                res[i] = (np.full((n_metrics, 3, H), np.nan), [None] * n_metrics)
            for n, (i, j) in enumerate(where):
                assert fc is not None
                res[i][0][j] = fc[n]
                res[i][1][j] = names[n]
            for i in idx:
                out[i] = MachineForecast(*res[i])
        return out  # type: ignore[return-value]


class RunnerFactory:
    """Picklable recipe for a worker's runner: a fresh copy of the model per worker."""

    def __init__(self, model: Forecaster) -> None:
        self._blob = pickle.dumps(model)

    def __call__(self) -> ForecastRunner:
        model: Any = pickle.loads(self._blob)  # noqa: S301 - our own model, pickled in this process
        return ForecastRunner(model)
