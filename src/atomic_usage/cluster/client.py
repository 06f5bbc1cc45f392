"""Where a batch job runs: parse ``--cluster local[:N]`` / ``--scheduler ADDRESS`` and connect.

A *target* is either a :class:`distributed.LocalCluster` started here (worker
processes, one thread each: the tasks are NumPy/pandas/ONNX work that holds the
GIL in places) or a running scheduler reached at an address. The transport
(``tcp``, ``tls``, ``ucx``) is passed through to Dask untouched; for ``ucx`` the
``distributed-ucxx`` package must be installed on every machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["PROTOCOLS", "ClusterTarget", "connect", "parse_target", "require_distributed"]

PROTOCOLS = ("tcp", "tls", "ucx")
"""Transports passed through to Dask (tested here: tcp and tls; ucx needs RDMA hardware)."""

_CONNECT_TIMEOUT_S = 30
"""Seconds to wait for a scheduler before giving up."""


def require_distributed() -> Any:
    """Imports :mod:`distributed`, or fails with an install hint."""
    try:
        import distributed
    except ImportError:  # pragma: no cover - the extra is installed in development
        raise ConfigError(
            "Running on a cluster needs Dask distributed; install it with pip install 'atomic-usage[cluster]'.",
            name="--cluster",
        ) from None
    return distributed


@dataclasses.dataclass(frozen=True)
class ClusterTarget:
    """A parsed ``--cluster`` / ``--scheduler`` / ``--protocol`` triple.

    Attributes:
        address: the scheduler address (``tls://10.0.0.5:8786``), or None for a local cluster.
        n_workers: worker processes of a local cluster (None with an address).
        protocol: the transport, one of :data:`PROTOCOLS`.
    """

    address: str | None
    n_workers: int | None
    protocol: str

    @property
    def label(self) -> str:
        """``local:N`` or the scheduler address, for messages."""
        return self.address if self.address is not None else f"local:{self.n_workers}"


def parse_target(cluster: str | None, scheduler: str | None, protocol: str | None = None) -> ClusterTarget:
    """Parses the CLI options into a :class:`ClusterTarget`.

    Args:
        cluster: ``local`` (one worker per core) or ``local:N`` (N workers).
        scheduler: ``HOST:PORT`` or ``PROTOCOL://HOST:PORT`` of a running scheduler.
        protocol: ``tcp``, ``tls`` or ``ucx``; default the address's scheme, else ``tcp``.

    Returns:
        The target.

    Raises:
        ConfigError: both or neither of cluster and scheduler, a malformed value, an unknown
            protocol, or a protocol that contradicts the address's scheme.

    >>> parse_target("local:2", None)
    ClusterTarget(address=None, n_workers=2, protocol='tcp')
    >>> parse_target(None, "tls://10.0.0.5:8786").protocol
    'tls'
    """
    if (cluster is None) == (scheduler is None):
        raise ConfigError(
            "Give exactly one of --cluster local[:N] (start workers here) or --scheduler "
            "tcp://HOST:PORT (use a running cluster).",
            name="--cluster",
        )
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}.", name="--protocol")
    if cluster is not None:
        name, _, count = cluster.partition(":")
        if name != "local" or (count and not (count.isdigit() and int(count) > 0)):
            raise ConfigError(
                f"--cluster must be local or local:N with N a positive number of workers; got {cluster!r}.",
                name="--cluster",
            )
        n = int(count) if count else (os.cpu_count() or 1)
        return ClusterTarget(None, n, protocol or "tcp")
    assert scheduler is not None
    scheme, sep, rest = scheduler.partition("://")
    if not sep:
        scheme, rest = protocol or "tcp", scheduler
    if scheme not in PROTOCOLS:
        raise ConfigError(
            f"--scheduler {scheduler!r} uses the transport {scheme!r}; use one of {', '.join(PROTOCOLS)}.",
            name="--scheduler",
        )
    if protocol is not None and protocol != scheme:
        raise ConfigError(
            f"--protocol {protocol} contradicts the scheduler address {scheduler!r}; "
            f"drop --protocol or write the address as {protocol}://{rest}.",
            name="--protocol",
        )
    if ":" not in rest:
        raise ConfigError(
            f"--scheduler {scheduler!r} has no port; write it as {scheme}://HOST:PORT (Dask's default port is 8786).",
            name="--scheduler",
        )
    return ClusterTarget(f"{scheme}://{rest}", None, scheme)


@contextlib.contextmanager
def connect(target: ClusterTarget, *, security: Any = None) -> Iterator[Client]:
    """Starts or reaches the cluster of ``target`` and yields a connected client.

    A local cluster is closed on exit; a remote one is only disconnected from. A local
    cluster's workers, which write to this process's stderr, do not log the tracebacks of our
    tasks' failures, which the client raises itself (:mod:`.worker_logs`).

    Args:
        target: from :func:`parse_target`.
        security: a :class:`distributed.security.Security`. For a local ``tls`` cluster
            without one, a throw-away certificate (``Security.temporary()``) is made; for
            a remote ``tls`` scheduler without one, Dask's configuration is used
            (``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._CLIENT__CERT``, ``..._CLIENT__KEY``).

    Raises:
        ClusterError: the cluster cannot be started, or the scheduler cannot be reached in time.
    """
    distributed = require_distributed()
    if target.protocol == "ucx":
        try:
            import distributed_ucxx  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--protocol ucx needs the distributed-ucxx package (and UCX-capable hardware) on the "
                "client, scheduler and every worker; install it or use --protocol tcp.",
                name="--protocol",
            ) from None
    if target.address is None:
        if security is None and target.protocol == "tls":
            security = distributed.security.Security.temporary()
        try:
            cluster = distributed.LocalCluster(
                n_workers=target.n_workers,
                threads_per_worker=1,
                processes=True,
                protocol=f"{target.protocol}://",
                security=security,
                # A random port: a fixed 8787 clashes with any other cluster on the machine.
                dashboard_address=":0",
            )
        except Exception as exc:  # Dask raises many types here; say which cluster failed.
            raise ClusterError(
                f"Could not start a local cluster of {target.n_workers} workers over {target.protocol} "
                f"({type(exc).__name__}: {exc}).",
                address=target.label,
            ) from exc
        with cluster, distributed.Client(cluster, security=security) as client:
            from .worker_logs import QuietOwnFailures

            # Its workers write to our stderr: a failed task of ours is the client's one error line,
            # not also the worker's traceback.
            client.register_plugin(QuietOwnFailures())
            yield client
        return
    try:
        client = distributed.Client(target.address, security=security, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"Could not reach the Dask scheduler at {target.address} within {_CONNECT_TIMEOUT_S}s "
            f"({type(exc).__name__}: {exc}); check that it runs, that the port is open, and for tls "
            "that the certificates are configured.",
            address=target.address,
        ) from None
    with client:
        yield client
