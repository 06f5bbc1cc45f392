"""A worker plugin that loads the forecaster once per worker, so tasks never carry the model.

The plugin itself holds only a *reference* (a model folder or a baseline name, or
for tests a small picklable forecaster); each worker opens the ONNX session in
:meth:`ModelPlugin.setup`. Dask re-runs ``setup`` on every worker that joins
later, including one a nanny restarts after a crash, so re-run tasks find the
model there too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import ClusterError, ConfigError
from ..models.baselines import BASELINES

if TYPE_CHECKING:
    from ..models.base import Forecaster

__all__ = ["BASELINE_NAMES", "ModelPlugin", "resolve_model", "worker_model"]

BASELINE_NAMES = tuple(BASELINES)
"""Model references that name a baseline instead of a folder."""


def resolve_model(model: str | Path | Forecaster | None, default_dir: str | Path | None = None) -> Any:
    """Turns a ``--model`` value into what :class:`ModelPlugin` ships: a baseline name, an
    absolute model folder (checked here, on the client, so a typo fails before any task
    runs), or a forecaster object as given.

    Raises:
        ArtifactError: ``model`` names nothing, or the folder's ``model.json`` is unreadable.
    """
    from ..models.artifact import default_model_dir, read_card, refuse_unknown_model
    from ..models.base import Forecaster

    if isinstance(model, Forecaster) or model in BASELINE_NAMES:
        return model
    refuse_unknown_model(model)
    d = Path(model if model is not None else (default_dir or default_model_dir())).resolve()
    read_card(d)
    return str(d)


def _key(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    return f"{type(ref).__name__}-{id(ref)}"


class ModelPlugin(WorkerPlugin):
    """Loads one forecaster on each worker at set-up time.

    Args:
        ref: from :func:`resolve_model`: a baseline name, a model folder, or a forecaster.
        threads: ONNX Runtime intra-op threads per worker (1 matches one Dask thread per worker).

    Attributes:
        name: the plugin's name on the workers; tasks look the model up by it.
    """

    def __init__(self, ref: Any, *, threads: int = 1) -> None:
        self.ref = ref
        self.threads = threads
        self.name = "atomic-model-" + hashlib.sha256(_key(ref).encode()).hexdigest()[:16]
        self.model: Forecaster | None = None

    def setup(self, worker: Any) -> None:
        """Loads the model on ``worker`` (Dask calls this once per worker)."""
        from ..models.artifact import load_forecaster
        from ..models.base import Forecaster

        self.model = self.ref if isinstance(self.ref, Forecaster) else load_forecaster(self.ref, threads=self.threads)
        self.model.warm_up()  # open the ONNX session now, not in the first task

    def teardown(self, worker: Any) -> None:
        """Drops the model (and its ONNX session)."""
        self.model = None


def worker_model(plugin_name: str) -> Forecaster:
    """The model loaded by the plugin ``plugin_name`` on the worker running this task.

    Raises:
        ClusterError: the task runs outside a worker, or the plugin was not registered.
    """
    try:
        worker = get_worker()
    except ValueError:
        raise ConfigError(
            "worker_model() runs inside a Dask task only; register ModelPlugin and submit the task.",
            name="worker_model",
        ) from None
    plugin = worker.plugins.get(plugin_name)
    if not isinstance(plugin, ModelPlugin) or plugin.model is None:
        raise ClusterError(
            f"Worker {worker.address} has no model plugin {plugin_name!r}; register it with "
            "client.register_plugin(ModelPlugin(...)) before submitting forecast tasks.",
            address=worker.address,
        )
    model: Forecaster = plugin.model
    return model
