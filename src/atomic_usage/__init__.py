"""ATOMIC: forecast the CPU, memory and storage usage of a fleet, with calibrated uncertainty.

The public surface is small and stays light to import; heavy pieces load on first use::

    >>> from atomic_usage import UsagePredictor
    >>> result = UsagePredictor(settings=Settings(skip_persistence=True)).process(
    ...     {"usageData": [{"id": "web-1", "cpuLoad": 30, "memoryUsage": 70, "storageUsage": 20}]})  # doctest: +SKIP
"""

from __future__ import annotations

import typing as _typing

from .config import Settings
from .errors import (
    ArtifactError,
    AtomicError,
    ClusterError,
    ConfigError,
    DataError,
    EngineError,
    GapError,
    IdempotencyError,
    IntegrityError,
    KeyringError,
    ModelError,
    NotFittedError,
    PayloadError,
    QueueFullError,
    RecordError,
    SchemaError,
    SecurityError,
    StoreError,
    TaskNotFound,
    UnknownKeyError,
    WorkerCrashed,
)

if _typing.TYPE_CHECKING:
    from .engine.predictor import UsagePredictor, aprocess, process
    from .models.artifact import load_model

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "AtomicError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "EngineError",
    "GapError",
    "IdempotencyError",
    "IntegrityError",
    "KeyringError",
    "ModelError",
    "NotFittedError",
    "PayloadError",
    "QueueFullError",
    "RecordError",
    "SchemaError",
    "SecurityError",
    "Settings",
    "StoreError",
    "TaskNotFound",
    "UnknownKeyError",
    "UsagePredictor",
    "WorkerCrashed",
    "__version__",
    "aprocess",
    "load_model",
    "process",
]

_LAZY = {
    "UsagePredictor": "engine.predictor",
    "process": "engine.predictor",
    "aprocess": "engine.predictor",
    "load_model": "models.artifact",
}


def __getattr__(name: str) -> _typing.Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'atomic_usage' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
