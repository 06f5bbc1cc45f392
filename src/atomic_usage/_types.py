"""Type aliases and constants shared across layers."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BOUNDED_METRICS",
    "DEFAULT_METRICS",
    "QUANTILES",
    "FloatArray",
]

FloatArray = npt.NDArray[np.floating]
"""A float32 or float64 array."""

DEFAULT_METRICS: Final = ("cpuLoad", "memoryUsage", "storageUsage")
"""The metrics of the ``process()`` payload, in percent (0 to 100)."""

BOUNDED_METRICS: Final = frozenset(DEFAULT_METRICS)
"""Metrics whose values and forecasts lie in [0, 100]; every other metric is only ``>= 0``."""

QUANTILES: Final = (0.1, 0.5, 0.9)
"""The quantiles every forecaster returns (p10, p50, p90)."""
