"""Cluster layer: batch forecasting and training-set building on Dask distributed.

Beside ``engine``: it uses ``data`` and ``models``, and is used by the CLI. The Dask jobs
need the ``cluster`` extra (``pip install 'atomic-usage[cluster]'``). The names load on
first use, so the partition, shuffle and chunked single-process modules import without
Dask installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chunked import ChunkedJob, forecast_chunked
    from .client import PROTOCOLS, ClusterTarget, connect, parse_target
    from .dataset import TrainsetJob, build_trainset_distributed
    from .forecast import ForecastJob, forecast_distributed
    from .plugin import ModelPlugin

__all__ = [
    "PROTOCOLS",
    "ChunkedJob",
    "ClusterTarget",
    "ForecastJob",
    "ModelPlugin",
    "TrainsetJob",
    "build_trainset_distributed",
    "connect",
    "forecast_chunked",
    "forecast_distributed",
    "parse_target",
]

_LAZY = {
    "PROTOCOLS": "client",
    "ChunkedJob": "chunked",
    "ClusterTarget": "client",
    "ForecastJob": "forecast",
    "ModelPlugin": "plugin",
    "TrainsetJob": "dataset",
    "build_trainset_distributed": "dataset",
    "connect": "client",
    "forecast_chunked": "chunked",
    "forecast_distributed": "forecast",
    "parse_target": "client",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'atomic_usage.cluster' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
