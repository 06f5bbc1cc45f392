"""The FastAPI application: ``create_app(settings)`` builds it; its lifespan owns the predictor.

Start-up builds the :class:`~atomic_usage.engine.predictor.UsagePredictor` (which resumes
tasks a previous process left unfinished). Shutdown comes after uvicorn has stopped
accepting connections and let in-flight requests end; the predictor is then closed, so a
task still open at that point stays in the store and is resumed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from anyio import to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..config import Settings
from .auth import TokenVerifier
from .balance import ConnectionBalance
from .errors import install_handlers
from .fastpath import PredictFastPath
from .gauges import ForecastGauges
from .ledger import Counts, add_retired, counts_of
from .metrics import EngineCollector, make_registry
from .peers import PeerBoard, merge_latest, merge_samples, merge_stats, peer_folder
from .routes import router
from .schemas import PredictRequest

__all__ = ["PUBLISH_EVERY_S", "ServiceState", "create_app", "worker_app"]

PUBLISH_EVERY_S = 1.0
"""With several serving processes, seconds between two publications of this process's counters
to the peer folder besides those of every scrape (:mod:`.ledger`): a process killed between
scrapes keeps in the merged counters all but its last second."""

_log = logging.getLogger("atomic_usage.service")


class ServiceState:
    """What the endpoints share: settings, the token verifier, the predictor and the metrics.

    Attributes:
        settings: the service's settings.
        verifier: checks bearer tokens.
        predictor: the engine; ``None`` until start-up has built it.
        stopping: set when shutdown begins (``/readyz`` then answers 503).
        peers: with ``settings.processes`` > 1, this process's peer socket (:mod:`.peers`),
            through which ``/metrics`` covers every serving process; else ``None``.
        balance: with ``serve --processes N``, what tells this process to close a connection
            so that the processes hold even shares of them (:mod:`.balance`); else ``None``.
    """

    def __init__(self, settings: Settings, verifier: TokenVerifier, predictor: Any) -> None:
        self.settings = settings
        self.verifier = verifier
        self.predictor = predictor
        self.stopping = False
        self.registry, self.http_latency = make_registry(self._stats)
        # The latest forecast of every machine, as gauges alert rules can use (deploy/).
        self.gauges = ForecastGauges(steps=settings.gauge_steps)
        self.registry.register(self.gauges)
        self.peers: PeerBoard | None = None
        self.balance: ConnectionBalance | None = None

    def _stats(self) -> dict[str, Any] | None:
        return None if self.predictor is None or self.stopping else self.predictor.stats()

    def _http_samples(self) -> list[tuple[str, dict[str, str], float]]:
        return [(x.name, dict(x.labels), x.value) for fam in self.http_latency.collect() for x in fam.samples]

    def _publish(self, stats: dict[str, Any] | None, http: list[tuple[str, dict[str, str], float]]) -> None:
        """Writes this process's counters to the peer folder before they leave it (:mod:`.ledger`)."""
        if self.peers is not None and stats is not None:
            self.peers.ledger.publish(counts_of(stats, http))

    def publish_now(self) -> None:
        """Publishes this process's counters now (every :data:`PUBLISH_EVERY_S` while it serves)."""
        try:
            self._publish(self._stats(), self._http_samples())
        except Exception as exc:  # the next one tries again; the counters last published stay
            _log.debug("could not publish the counters: %s", exc)

    def publish_final(self) -> None:
        """Publishes this process's counters once more as it stops, so its siblings keep them all."""
        if self.peers is None or self.predictor is None:
            return
        try:
            self._publish(self.predictor.stats(), self._http_samples())
        except Exception as exc:  # stopping goes on; the counters last published stay
            _log.warning("could not publish the final counters: %s", exc)

    def snapshot(self) -> bytes:
        """This process's figures for a sibling's scrape: ``{"pid", "token", "stats", "http", "latest"}``
        as JSON (the counters published first)."""
        stats, http = self._stats(), self._http_samples()
        self._publish(stats, http)
        token = self.peers.ledger.token if self.peers is not None else None
        head = orjson.dumps({"pid": os.getpid(), "token": token, "stats": stats, "http": http})
        return head[:-1] + b',"latest":[' + b",".join(self.gauges.encoded()) + b"]}"

    def render_metrics(self, siblings: list[dict[str, Any]], retired: Counts | None = None) -> bytes:
        """The Prometheus text of this process merged with its siblings' snapshots.

        Args:
            siblings: what :meth:`.PeerBoard.gather` returned.
            retired: the counters of processes that are gone, or that did not answer with
                figures (:meth:`.PeerBoard.scrape`), added to the merged counters.
        """
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import Metric
        from prometheus_client.registry import Collector

        own, own_http = self._stats(), self._http_samples()
        self._publish(own, own_http)
        counted = [s for s in siblings if s.get("stats") is not None]
        stats = [own] + [s["stats"] for s in counted] if own is not None else []
        merged = add_retired(merge_stats(stats), retired) if stats else None
        samples = merge_samples(
            [own_http] + [s.get("http", []) for s in counted] + ([retired["http"]] if retired else [])
        )
        latest = merge_latest(
            [[orjson.loads(t) for t in self.gauges.encoded()]] + [s.get("latest", []) for s in siblings]
        )
        gauges = self.gauges

        class _Merged(Collector):
            def describe(self) -> list[Any]:
                return []

            def collect(self) -> Iterator[Any]:
                http = Metric("atomic_http_request_duration_seconds", "HTTP request latency", "histogram")
                for name, labels, value in samples:
                    http.add_sample(name, labels, value)
                yield http
                yield from gauges.families(latest)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineCollector(lambda: merged))
        registry.register(_Merged())
        return generate_latest(registry)


class _LatencyMiddleware:
    """Observes each HTTP request's latency by method, route template and status (pure ASGI, cheap)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.state.http_latency.labels(scope["method"], path, str(status[0])).observe(time.perf_counter() - t0)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus the request payload's schema (the body is read raw)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["PredictRequest"] = schema
        app.openapi_schema = doc
    return app.openapi_schema


def worker_app(settings: Settings, model: str | None = None) -> FastAPI:
    """The app of one serving process of ``atomic-usage serve --processes N``.

    Called in each serving process (:mod:`.supervisor`), so every process loads its own model
    and builds its own engine over the shared store.

    Args:
        settings: the service's settings (``processes`` > 1).
        model: ``--model`` of serve (a folder or a baseline's name); None serves the settings' model.
    """
    # A fresh interpreter: log as the single-process command does (LOG_LEVEL, to stderr).
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    from ..engine.predictor import SESSION_THREADS
    from ..models.artifact import load_forecaster

    # Loaded and its sessions opened here, before the process says it is ready: a folder damaged
    # since serve checked it is refused now (one line, exit 3), not at this process's first request.
    forecaster = load_forecaster(model if model is not None else settings.model_dir, threads=SESSION_THREADS)
    forecaster.warm_up()
    return create_app(settings, model=forecaster)


async def _keep_publishing(state: ServiceState) -> None:
    """Publishes the process's counters every :data:`PUBLISH_EVERY_S` until cancelled."""
    while True:
        await asyncio.sleep(PUBLISH_EVERY_S)
        await to_thread.run_sync(state.publish_now)


def create_app(
    settings: Settings | None = None, predictor: Any = None, *, model: Any = None, fast_path: bool = True
) -> FastAPI:
    """Builds the service.

    Args:
        settings: run-time settings (default: from the environment).
        predictor: a running ``UsagePredictor`` to serve; the caller keeps owning it.
            When ``None``, start-up builds one and shutdown closes it.
        model: the forecaster for the predictor built at start-up (default: the settings' model).
        fast_path: serve plain predict requests without FastAPI's per-request layers
            (:mod:`.fastpath`; the answers are the same, the route still serves the rest).

    Returns:
        The FastAPI app; serve it with uvicorn (``atomic-usage serve`` does).

    Raises:
        ConfigError: no API token is configured, or the token file is malformed.
    """
    settings = settings if settings is not None else Settings.from_env()
    state = ServiceState(settings, TokenVerifier.from_settings(settings), predictor)
    owned = predictor is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            from ..engine.predictor import UsagePredictor

            state.predictor = await to_thread.run_sync(lambda: UsagePredictor(settings, model=model))
        _log.info("service ready: model %s, %d token(s)", state.predictor.model_version, len(state.verifier))
        # What start-up built (modules, the app, the model, the rebuilt history) lives as long as
        # the process: moved out of the cyclic GC's generations, it is not rescanned by every
        # full collection, which results' many short-lived containers trigger. Measured under
        # wrk (naive, NORMAL): 245-291 -> 312-321 req/s, p99 227/174 -> 107/106 ms.
        gc.collect()
        gc.freeze()
        if settings.processes > 1 and not settings.skip_persistence:
            state.peers = PeerBoard(peer_folder(settings.data_dir), state.snapshot)
            await state.peers.start()
        publisher = asyncio.create_task(_keep_publishing(state)) if state.peers is not None else None
        try:
            yield
        finally:
            state.stopping = True
            if publisher is not None:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            if state.peers is not None:
                await to_thread.run_sync(state.publish_final)
                await state.peers.close()
            if owned and state.predictor is not None:
                await to_thread.run_sync(state.predictor.close)
                _log.info("engine closed; unfinished tasks resume at the next start")

    app = FastAPI(
        title="ATOMIC usage prediction",
        version=__version__,
        description="Forecasts CPU, memory and storage usage of a fleet. Every endpoint takes a bearer "
        "token (ATOMIC_API_TOKENS); /metrics, /healthz and /readyz can be left open (ATOMIC_OPEN_METRICS). "
        "Every error has the body ErrorBody.",
        lifespan=lifespan,
    )
    app.state.atomic = state
    app.include_router(router)
    install_handlers(app)
    if fast_path:
        app.add_middleware(PredictFastPath, state=state)  # inside the latency middleware: it is measured
    app.add_middleware(_LatencyMiddleware, state=state)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
