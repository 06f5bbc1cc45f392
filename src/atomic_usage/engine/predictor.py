"""``process(payload)``: observations in, forecasts out, for a whole fleet.

Each record of a payload is an observation of one machine now (or at its ``timestamp``).
The payload is validated as a whole first (nothing is applied if any record is bad), its
observations join each machine's history, and every record gets the forecast of its
machine per metric: the steps with p10/p50/p90, the history used, the model used, the
trend, the peak and when the thresholds are crossed.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._types import DEFAULT_METRICS
from ..config import Settings
from ..models.base import Forecaster
from .forecast import describe_forecast, iso
from .history import FleetHistory
from .payload import Observation, parse_payload

__all__ = ["UsagePredictor", "aprocess", "process"]


class UsagePredictor:
    """Forecasts machines' usage from the observations it is given.

    Args:
        settings: run-time settings (default: from the environment).
        model: the forecaster to serve (default: ``settings.model_dir`` or the bundled model).

    >>> p = UsagePredictor(Settings(skip_persistence=True))
    >>> r = p.process({"usageData": [{"id": "1", "cpuLoad": 30, "memoryUsage": 70, "storageUsage": 20}]})
    >>> r["results"][0]["id"], len(r["results"][0]["forecasts"]["cpuLoad"]["steps"])
    ('1', 12)
    """

    def __init__(self, settings: Settings | None = None, *, model: Forecaster | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        if model is None:
            from ..models.artifact import load_model

            model = load_model(self.settings.model_dir)
        self.model = model
        context = int(getattr(getattr(model, "spec", None), "context", 288))
        self.context = context
        self.history = FleetHistory(max(context, 12, min(self.settings.history_limit, context)))
        self._lock = threading.Lock()
        self._processed = 0
        self._started = time.monotonic()

    @property
    def model_version(self) -> str:
        """The served model's version (``model.json``), or its class name for baselines."""
        card = getattr(self.model, "card", None)
        return str(card.version) if card is not None else type(self.model).__name__

    def process(
        self, payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None
    ) -> dict[str, Any]:
        """Adds the payload's observations to the history and forecasts each record's machine.

        Args:
            payload: ``{"usageData": [{"id", "cpuLoad", "memoryUsage", "storageUsage", "timestamp"?}, ...]}``.
            request_id: identifies the request (generated when absent) and is returned.
            horizon: steps to forecast (default ``settings.horizon``).

        Returns:
            ``{"requestId", "model": {"name", "version"}, "results": [{"index", "id", "timestamp",
            "forecasts": {metric: ...}}]}``; see :func:`~atomic_usage.engine.forecast.describe_forecast`.

        Raises:
            PayloadError: a record is bad; every bad field is listed and nothing was applied.
        """
        obs = parse_payload(payload)
        self.history.append(obs)
        results = self.forecast_observations(obs, horizon or self.settings.horizon)
        with self._lock:
            self._processed += len(obs)
        return {
            "requestId": request_id or uuid.uuid4().hex,
            "model": {"name": self.model.name, "version": self.model_version},
            "results": results,
        }

    def observe(self, frame: Any, *, id_col: str = "id", time_col: str = "timestamp") -> int:
        """Loads past observations (a wide frame) into the history without forecasting.

        Use it to warm a predictor from a file or a store before live records arrive.

        Returns:
            The number of observations added.
        """
        import pandas as pd

        df = frame
        ts = pd.to_datetime(df[time_col], utc=True).to_numpy("datetime64[ns]").astype(np.int64) / 1e9
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
        vals = {m: df[m].to_numpy(float) for m in metrics}
        ids = df[id_col].astype(str).to_numpy()
        obs = []
        for r in range(len(df)):
            v = {m: float(vals[m][r]) for m in metrics if vals[m][r] == vals[m][r]}
            if v:
                obs.append(Observation(r, ids[r], float(ts[r]), v, True))
        self.history.append(obs)
        return len(obs)

    async def aprocess(
        self, payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None
    ) -> dict[str, Any]:
        """The same as :meth:`process`, for asyncio callers (runs in a worker thread)."""
        return await asyncio.to_thread(self.process, payload, request_id=request_id, horizon=horizon)

    def forecast_observations(self, obs: list[Observation], horizon: int) -> list[dict[str, Any]]:
        """Forecasts the machines of ``obs`` from their current history; one result per observation."""
        machines = list(dict.fromkeys(o.id for o in obs))
        ctx = self.history.contexts(machines, self.context)  # (k, M, C)
        last_ts = self.history.last_step(machines)
        k, M, C = ctx.shape
        hists, where = [], []
        for i in range(k):
            for j in range(M):
                observed = ~np.isnan(ctx[i, j])
                if observed.any():
                    first = int(np.argmax(observed))
                    hists.append(ctx[i, j, first:])
                    where.append((i, j))
        per_machine: list[dict[str, Any]] = [{} for _ in machines]
        if hists:
            bounded = np.ones(len(hists), bool)  # every payload metric is a percent
            fc = self.model.forecast_arrays(hists, horizon, bounded)
            names = self.model.fallback_flags(hists)
            for n, (i, j) in enumerate(where):
                h = hists[n]
                last_value = float(h[~np.isnan(h)][-1])
                per_machine[i][DEFAULT_METRICS[j]] = describe_forecast(
                    fc[n],
                    last_ts=float(last_ts[i]),
                    step_s=self.history.step_s,
                    last_value=last_value,
                    history_length=int(np.count_nonzero(~np.isnan(h))),
                    model=names[n],
                    thresholds=self.settings.thresholds,
                )
        for i in range(k):
            for m in DEFAULT_METRICS:
                per_machine[i].setdefault(m, None)
        pos = {m: i for i, m in enumerate(machines)}
        return [
            {"index": o.index, "id": o.id, "timestamp": iso(o.ts), "forecasts": per_machine[pos[o.id]]}
            for o in obs
        ]

    def stats(self) -> dict[str, Any]:
        """Records processed, machines held and the mean rate since start."""
        with self._lock:
            n = self._processed
        up = time.monotonic() - self._started
        return {
            "processed": n,
            "uptime_s": up,
            "tps_mean": n / up if up > 0 else 0.0,
            **self.history.snapshot(),
        }

    def close(self) -> None:
        """Releases resources (nothing to release while the history is in memory)."""

    def __enter__(self) -> UsagePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: UsagePredictor | None = None
_default_lock = threading.Lock()


def _get_default() -> UsagePredictor:
    global _default
    with _default_lock:
        if _default is None:
            _default = UsagePredictor()
        return _default


def process(
    payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None
) -> dict[str, Any]:
    """:meth:`UsagePredictor.process` on a process-wide predictor built from the environment."""
    return _get_default().process(payload, request_id=request_id, horizon=horizon)


async def aprocess(
    payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None
) -> dict[str, Any]:
    """:meth:`UsagePredictor.aprocess` on the process-wide predictor."""
    return await _get_default().aprocess(payload, request_id=request_id, horizon=horizon)
