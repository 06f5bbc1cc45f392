"""What a local cluster's workers log: not the tracebacks of failures the client reports itself.

The workers of a local cluster (``--cluster local:N``) write to the command's own stderr. When
one of our tasks fails (a :class:`~atomic_usage.errors.SchemaError` naming a file's line), Dask's
worker logs "Compute Failed" with the task's ``Traceback:``, and when our model plugin cannot
load the model (an :class:`~atomic_usage.errors.ArtifactError`) it logs "failed to setup" with
one; the client raises the same error, and the CLI prints it as one line. :class:`QuietOwnFailures`
drops those two records for our tasks and plugins (keys and names starting with
:data:`OWN_PREFIX`) and keeps everything else. A remote cluster's workers are left alone: their
logs are their operator's, not the command's output.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["OWN_PREFIX", "QuietOwnFailures"]

OWN_PREFIX: Final = "atomic-"
"""How the keys of our tasks and the names of our worker plugins begin."""

_FAILURES: Final = ("Compute Failed", "Worker plugin %s failed to setup")
"""How the worker's records of a failed task and of a plugin that could not set up begin."""

_WORKER_LOGGER: Final = "distributed.worker"


class _DropOwnFailures(logging.Filter):
    """Drops the worker's failure records whose task key or plugin name is ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        ours = isinstance(args, tuple) and bool(args) and str(args[0]).startswith(OWN_PREFIX)
        return not (ours and isinstance(record.msg, str) and record.msg.startswith(_FAILURES))


class QuietOwnFailures(WorkerPlugin):
    """Installs the filter on each worker, those that join later included (a restarted one)."""

    name = OWN_PREFIX + "quiet-own-failures"

    def setup(self, worker: Any) -> None:
        """Adds the filter to the worker's logger (once)."""
        logger = logging.getLogger(_WORKER_LOGGER)
        if not any(isinstance(f, _DropOwnFailures) for f in logger.filters):
            logger.addFilter(_DropOwnFailures())

    def teardown(self, worker: Any) -> None:
        """Removes the filter."""
        logger = logging.getLogger(_WORKER_LOGGER)
        for f in [f for f in logger.filters if isinstance(f, _DropOwnFailures)]:
            logger.removeFilter(f)
