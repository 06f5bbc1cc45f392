"""Forecasters for the cluster tests, in an importable module so worker processes can unpickle them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from atomic_usage.models.baselines import Naive


class SlowNaive(Naive):
    """The naive forecaster, slowed down so a test can kill a worker while tasks run."""

    name = "naive"

    def __init__(self, delay_s: float = 0.4) -> None:
        self.delay_s = delay_s

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().forecast_arrays(histories, horizon, bounded)
