"""Cluster layer: batch forecasting and training-set building on Dask distributed.

Beside ``engine``: it uses ``data`` and ``models``, and is used by the CLI. Needs the
``cluster`` extra (``pip install 'atomic-usage[cluster]'``).
"""

from __future__ import annotations

from .client import PROTOCOLS, ClusterTarget, connect, parse_target
from .dataset import TrainsetJob, build_trainset_distributed
from .forecast import ForecastJob, forecast_distributed
from .plugin import ModelPlugin

__all__ = [
    "PROTOCOLS",
    "ClusterTarget",
    "ForecastJob",
    "ModelPlugin",
    "TrainsetJob",
    "build_trainset_distributed",
    "connect",
    "forecast_distributed",
    "parse_target",
]
