"""``serve --processes N``: N serving processes over one store, each on its own listening socket.

Each process binds the address with ``SO_REUSEPORT``, so the kernel spreads new connections
over the processes by a hash of each connection's addresses. One socket shared by all of them
(uvicorn's own ``--workers``) leaves the spread to whichever event loop wakes first, and it
takes every connection waiting: with wrk's 16 keep-alive connections, two processes got 16/0
in two runs of three and 7/9 in the third, and the process with all of them served alone
(docs/service.md). Where ``SO_REUSEPORT`` is missing, uvicorn's supervisor and one shared
socket are used instead.

The supervisor migrates the store and creates the keyring before any process starts, holds
the port (bound, not listening) so a restarted process gets it back, holds the peer folder
(:mod:`.peerdir`) so the merged counters outlive every process dying at once, restarts a process that
dies after it started (and kills and replaces one whose event loop has not ticked for
``ATOMIC_PROCESS_STALL_S``: stopped or hung), stops everything when one cannot start, shares one open-connection
counter per process so that they keep the connections evenly spread (:mod:`.balance`), and on SIGTERM, SIGINT or
SIGHUP sends SIGTERM to every process, each of which finishes its in-flight requests.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, MutableSequence
    from multiprocessing.synchronize import Event

    from ..config import Settings
    from .balance import ConnectionBalance

__all__ = ["STARTUP_FAILURE", "address_problem", "check_address", "serve_processes"]

STARTUP_FAILURE: Final = 3
"""Exit status of a serving process that could not start (uvicorn's), and of the supervisor then."""

_BACKLOG: Final = 2048
"""Pending connections each process's socket queues (uvicorn's default)."""

_log = logging.getLogger("atomic_usage.service")


def check_address(host: str, port: int) -> None:
    """Raises the ``OSError`` a server would meet listening on ``(host, port)``: a name that does not
    resolve, an address not of this machine, or a port a socket is bound to already, one with
    ``SO_REUSEPORT`` too (the kernel lets every socket of this user's that sets it bind, so another
    ``serve --processes`` there would share its connections). A socket without ``SO_REUSEPORT``
    (but ``SO_REUSEADDR``, so connections of a stopped run do not count) is bound and closed;
    port 0 (any free port) is always free."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    if port:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)


def address_problem(host: str, port: int) -> str | None:
    """Why a server cannot listen on ``(host, port)`` (:func:`check_address`), as one line, or None."""
    try:
        check_address(host, port)
    except OSError as exc:  # in use, a name that does not resolve, an address not of this machine
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (not listening yet)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return sock


def _serve_one(
    settings: Settings,
    model: str | None,
    options: dict[str, Any],
    ready: Event,
    counts: MutableSequence[int],
    beats: MutableSequence[float],
    slot: int,
) -> None:
    """One serving process: its own socket on the shared port, its own app and engine.

    ``counts`` and ``beats``: every process's open connections (:mod:`.balance`) and last sign
    of life, in shared memory; this one writes both at ``slot`` on every tick of its event loop.
    """
    import uvicorn

    from ..errors import AtomicError
    from .app import worker_app
    from .balance import ConnectionBalance
    from .server import Server

    sock = _bind(options["host"], options["port"])
    sock.listen(_BACKLOG)
    try:
        app = worker_app(settings, model)
        server = Server(uvicorn.Config(app, **options))
    except AtomicError as exc:  # the model folder changed since serve checked it: one line, no traceback
        _log.error("a serving process could not start: %s", exc)
        sys.exit(STARTUP_FAILURE)
    except Exception:
        _log.exception("a serving process could not start")
        sys.exit(STARTUP_FAILURE)
    balance = ConnectionBalance(counts, slot, lambda: len(server.server_state.connections))
    app.state.atomic.balance = balance
    server.beat = _tick(beats, slot, balance, server)

    def tell() -> None:  # the supervisor restarts only processes that had started
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready.set()

    threading.Thread(target=tell, daemon=True).start()
    server.run(sockets=[sock])
    balance.stop()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _tick(beats: MutableSequence[float], slot: int, balance: ConnectionBalance, server: Any) -> Callable[[], None]:
    """What a serving process does on every tick of its event loop (ten a second): writes the
    time (monotonic, the same clock in every process) to ``beats[slot]``, its sign of life, and
    its open connections, so that an idle process's count stays current too; and shuts down
    gracefully once its supervisor is gone (SIGKILLed, say), since nothing would restart it,
    stop it or merge its metrics, and it would hold the port against the next ``serve``."""
    parent = os.getppid()

    def tick() -> None:
        beats[slot] = time.monotonic()
        balance.publish()
        if os.getppid() != parent and not server.should_exit:
            _log.warning("the supervisor (pid %d) is gone: this serving process shuts down", parent)
            server.should_exit = True

    return tick


def serve_processes(settings: Settings, model: str | None, options: dict[str, Any]) -> int:
    """Runs ``settings.processes`` serving processes until a signal stops them.

    Args:
        settings: the service's settings (``processes`` > 1, persistence on).
        model: ``--model`` of serve, or None.
        options: ``uvicorn.Config`` keyword arguments (host, port, TLS, logging, shutdown).

    Returns:
        The exit status: 0 after a signal, :data:`STARTUP_FAILURE` when a process could not start.
    """
    from ..engine.store import open_store
    from ..security import load_or_create_keyring
    from .balance import shared_counts
    from .peerdir import join, leave, peer_folder

    problem = address_problem(options["host"], options["port"])
    if problem is not None:  # before the store and the keyring are made: a service that cannot listen leaves nothing
        _log.error("%s", problem)
        return STARTUP_FAILURE
    open_store(settings).close()
    load_or_create_keyring(settings, path=settings.keyring_path)
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - not on Linux
        return _serve_shared_socket(settings, model, options)
    import multiprocessing

    try:
        holder = _bind(options["host"], options["port"])  # holds the port; never listens, so gets no connection
    except OSError as exc:  # taken in the moment since the check
        _log.error("cannot listen on %s:%s: %s", options["host"], options["port"], exc.strerror or exc)
        return STARTUP_FAILURE
    options = {**options, "port": holder.getsockname()[1]}
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no threads or sessions forked
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    counts = shared_counts(ctx, settings.processes)
    beats: MutableSequence[float] = ctx.Array("d", settings.processes, lock=False)

    def start(slot: int) -> tuple[Any, Event]:
        counts[slot] = 0  # a process that died held no connection any more
        beats[slot] = 0.0  # nor is it judged before its successor's first tick
        ready = ctx.Event()
        p = ctx.Process(
            target=_serve_one, args=(settings, model, options, ready, counts, beats, slot), name="atomic-serve"
        )
        p.start()
        return p, ready

    def stalled(slot: int) -> float | None:
        """Seconds since a process last ticked, if that is longer than allowed (one that has not
        ticked yet, still loading its model, is not judged)."""
        quiet = time.monotonic() - beats[slot]
        return quiet if beats[slot] and quiet > settings.process_stall_s else None

    # The supervisor is one of the peer folder's owners for as long as it runs: with every serving
    # process dead at once (SIGKILLed, out of memory), their successors would otherwise find a
    # folder nobody holds, take it for a dead run's and empty it, and the merged counters would
    # fall to 0. Its lock goes with it (SIGKILL too), and its processes then shut down.
    folder = peer_folder(settings.data_dir)
    hold = join(folder)
    procs: list[tuple[Any, Event]] = []
    status = 0
    try:
        procs.extend(start(i) for i in range(settings.processes))
        scheme = "https" if options.get("ssl_certfile") else "http"
        _log.info(
            "serving on %s://%s:%d with %d processes", scheme, options["host"], options["port"], settings.processes
        )
        while not stop.wait(0.2):
            for i, (p, ready) in enumerate(procs):
                quiet = stalled(i) if p.is_alive() else None
                if quiet is not None:
                    # Stopped (SIGSTOP) or hung: it would keep its share of new connections and
                    # never answer them. What it had accepted is in the store; recovery resumes it.
                    _log.error("serving process %s has not run for %.0f s (stopped or hung); killing it", p.pid, quiet)
                    p.kill()
                    p.join(5)
                    procs[i] = start(i)
                    continue
                if p.is_alive():
                    continue
                if not ready.is_set():
                    _log.error("serving process %s could not start (exit %s); stopping", p.pid, p.exitcode)
                    status = STARTUP_FAILURE
                    stop.set()
                    break
                _log.warning("serving process %s died (exit %s); starting another", p.pid, p.exitcode)
                procs[i] = start(i)
    finally:
        for p, _ in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        grace = float(options.get("timeout_graceful_shutdown") or 30) + 15
        for p, ready in procs:
            p.join(grace)
            if p.is_alive():
                p.kill()
                p.join(5)
            # Each shuts down cleanly on SIGTERM and exits 0 (service/server.py); one still
            # starting (spawning, importing) may end by the signal itself, with nothing to finish.
            if p.exitcode and not (p.exitcode == -signal.SIGTERM and not ready.is_set()):
                _log.warning("serving process %s exited with status %s on shutdown", p.pid, p.exitcode)
        holder.close()
        leave(hold, folder)
    return status


def _serve_shared_socket(
    settings: Settings, model: str | None, options: dict[str, Any]
) -> int:  # pragma: no cover - not on Linux
    """uvicorn's supervisor and one socket shared by the processes (where SO_REUSEPORT is missing)."""
    import functools
    import inspect

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .app import worker_app

    config = uvicorn.Config(
        functools.partial(worker_app, settings, model), factory=True, workers=settings.processes, **options
    )
    sock = config.bind_socket()
    try:
        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.31
            Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()  # type: ignore[call-arg]
        else:
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0
