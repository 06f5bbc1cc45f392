"""``process(payload)``: observations in, forecasts out, durably, for a whole fleet.

Each record of a payload is an observation of one machine now (or at its ``timestamp``).
A call goes through these steps, and a crash between any two of them loses nothing:

1. The payload is validated as a whole; if any record is bad, nothing is applied.
2. The task and its observations are written to the store in one transaction
   (durably accepted) — or, for a request id seen before, the first call's result
   is returned.
3. The observations join the in-memory history (rebuilt from the store at start).
4. The task (claimed in the same transaction) is forecast by the worker pool in
   micro-batches, and one result per record is written once (sealed at rest). A task
   left accepted or running by a process that died is resumed by the next start's recovery.

Concurrent calls share the work: their writes are committed together by one writer
(:mod:`.commit`, group commit) and their machines forecast and results built together
(:mod:`.tasks`); each call still returns only after its own results are committed.

The result of a record gives, per metric: the forecast steps (p10/p50/p90), the history
used, the model used, the trend, the peak, and when the thresholds are crossed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .._types import DEFAULT_METRICS
from ..config import Settings, validate_horizon
from ..errors import EngineError, PayloadError, RecordError, TaskNotFound
from ..models.base import Forecaster
from .commit import GroupCommitter
from .history import FleetHistory
from .meter import TpsMeter
from .payload import Observation, parse_payload, validate_printable
from .pool import WorkerPool
from .runner import RunnerFactory
from .status import TaskStatus
from .store import DEFAULT_LEASE_S, AcceptOp, Store, open_store
from .tasks import Outcome, TaskJob, TaskRunner, decode_results, settle

__all__ = ["LOG_KEEP_S", "SESSION_THREADS", "EncodedResponse", "UsagePredictor", "aprocess", "process"]

SESSION_THREADS = 1
"""ONNX Runtime intra-op threads of each worker's session when the predictor loads the model.

Each pool worker owns a session and there is one worker per core, so one thread per session
uses the cores; ORT's default (a spinning pool of one thread per core in every session) cost
about 40 % more CPU per request under load for the same throughput (docs/service.md), taken
from the engine's own threads. Forecasts are bitwise the same."""

LOG_KEEP_S = 300.0
"""Seconds the observation log keeps an entry for the other processes sharing the store
(each one reads it before every group and every ``DEFAULT_LEASE_S / 3`` when idle)."""

TRIM_EVERY_S = 600.0
"""Seconds between the maintenance passes that delete stored observations beyond
``Settings.history_limit`` per machine and metric, and tasks finished more than
``Settings.task_keep_s`` ago with their results (the first pass runs at start), so a service
that runs for months keeps a bounded store."""

TRIM_TASKS_PER_PASS = 5000
"""Finished tasks one maintenance pass deletes at most (about a second of work): a store with a
larger backlog (after an upgrade, or a long ``ATOMIC_TASK_KEEP_S`` shortened) is pruned over
passes a lease renewal apart instead of in one that would let the leases of running tasks lapse."""

_INLINE_RECORDS = 1000
"""Payloads up to this many records are validated on the event loop by ``aprocess`` (about
0.1 ms per 10 records); larger ones in a worker thread, so the loop is never held long."""


class EncodedResponse:
    """A ``process()`` response already encoded as JSON (:meth:`UsagePredictor.aprocess_json`).

    Attributes:
        body: the response's JSON text (UTF-8), the same fields as the dict ``process()`` returns.
        plain: each result's JSON text (the parts of ``body`` that ``results`` came from).
        ids: each result's machine id, in order.
        replayed: whether this was an idempotent replay (the request id had made the task
            before): its results are that task's, not new forecasts.
    """

    __slots__ = ("_results", "body", "ids", "plain", "replayed")

    def __init__(
        self,
        body: bytes,
        results: list[dict[str, Any]] | None,
        plain: Sequence[bytes],
        *,
        ids: list[str] | None = None,
        replayed: bool = False,
    ) -> None:
        self.body = body
        self.plain = plain
        self._results = results
        self.ids = ids if ids is not None else [str(r["id"]) for r in self.results]
        self.replayed = replayed

    @property
    def results(self) -> list[dict[str, Any]]:
        """The response's ``results`` as dicts, decoded from ``plain`` when first asked for
        (the service needs only the text and the ids)."""
        if self._results is None:
            self._results = decode_results(self.plain)
        return self._results


_log = logging.getLogger("atomic_usage.engine")


class UsagePredictor:
    """Forecasts machines' usage from the observations it is given.

    Args:
        settings: run-time settings (default: from the environment).
        model: the forecaster to serve, or what ``--model`` takes (a baseline's name such as
            ``"naive"``, or a model folder); default: ``settings.model_dir`` or the bundled
            model, with :data:`SESSION_THREADS` ONNX Runtime threads per worker.
        pool_mode: ``"thread"`` (measured faster here, see docs/engine.md) or ``"process"``.
        recover: resume tasks left unfinished by a previous run, in the background.

    >>> p = UsagePredictor(Settings(skip_persistence=True))
    >>> r = p.process({"usageData": [{"id": "1", "cpuLoad": 30, "memoryUsage": 70, "storageUsage": 20}]})
    >>> r["results"][0]["id"], len(r["results"][0]["forecasts"]["cpuLoad"]["steps"])
    ('1', 12)
    >>> p.close()
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        model: Forecaster | str | os.PathLike[str] | None = None,
        pool_mode: str = "thread",
        recover: bool = True,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        if isinstance(model, os.PathLike):
            model = Path(model)
        if model is None or isinstance(model, (str, Path)):
            from ..models.artifact import load_forecaster

            model = load_forecaster(self.settings.model_dir if model is None else model, threads=SESSION_THREADS)
        elif not isinstance(model, Forecaster):
            raise TypeError(
                f"model={model!r} is not a Forecaster, a baseline's name or a model folder "
                "(it is what --model takes, or an atomic_usage.models Forecaster)"
            )
        self.model = model
        self.context = int(getattr(getattr(model, "spec", None), "context", 288))
        self.history = FleetHistory(max(self.context, 12))
        self.store: Store = open_store(self.settings)
        self.keyring, self.keyring_created = self._keyring()
        self.meter = TpsMeter()
        """Records and request latency, as callers see them."""
        self._pool_meter = TpsMeter()
        """Work items (machines), batch sizes, queue depth and worker restarts, as the pool sees them."""
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._open: set[str] = set()
        self._open_lock = threading.Lock()
        self._closed = threading.Event()
        self.shared = self.settings.processes > 1 and not self.settings.skip_persistence
        """Whether other engine processes share the store (their observations join the history)."""
        self._log_pos = 0
        self._sync_lock = threading.Lock()
        self._rebuild_history()
        self.pool = WorkerPool.from_settings(
            RunnerFactory(model), self.settings, meter=self._pool_meter, mode=pool_mode
        ).start()
        self.committer = GroupCommitter(self.store)
        self.runner = TaskRunner(
            history=self.history,
            pool=self.pool,
            committer=self.committer,
            context=self.context,
            thresholds=self.settings.thresholds,
            encode=self._encode,
            on_end=self._untrack,
            sync=self.sync_history if self.shared else None,
        )
        self._maintenance = threading.Thread(
            target=self._maintain, args=(recover,), daemon=True, name="atomic-maintenance"
        )
        self._maintenance.start()

    # --- set-up -----------------------------------------------------------------------
    def _keyring(self) -> tuple[Any, bool]:
        from ..security import Keyring, load_or_create_keyring

        if self.settings.skip_persistence and not self.settings.key:
            return Keyring.generate(), False  # nothing is at rest; envelopes on request only
        return load_or_create_keyring(self.settings, path=self.settings.keyring_path)

    def _rebuild_history(self) -> None:
        """Loads the stored observations into the in-memory history (and the log's position)."""
        hist, self._log_pos = self.store.history_snapshot(self.history.length)
        obs = [
            Observation(0, mid, ts, {metric: v}, True)
            for (mid, metric), rows in hist.items()
            if metric in DEFAULT_METRICS
            for ts, v in rows
        ]
        obs.sort(key=lambda o: o.ts)
        self.history.append(obs)
        if obs:
            _log.info("history rebuilt from the store: %d observations of %d machines", len(obs), len(self.history))

    def sync_history(self) -> int:
        """Reads the observations other processes accepted since the last call into the history.

        Only with :attr:`shared` (``ATOMIC_PROCESSES`` > 1); the task runner calls it before each
        group, the maintenance thread every few seconds. When the log was trimmed past this
        process's position (it did not look for :data:`LOG_KEEP_S`), the history is rebuilt.

        Returns:
            The number of observations added.
        """
        with self._sync_lock:
            read = self.store.read_log(self._log_pos)
            if read.trimmed:
                _log.warning("the observation log was trimmed past this process's position; rebuilding history")
                self.history.reset()
                self._rebuild_history()
                return 0
            obs = [
                Observation(0, mid, ts, values, True)
                for owner, blob in read.entries
                if owner != self.owner
                for mid, ts, values in orjson.loads(blob)
            ]
            if obs:
                self.history.append(obs)
            self._log_pos = read.through
            return len(obs)

    @property
    def model_version(self) -> str:
        """The served model's version (``model.json``), or its class name for baselines."""
        card = getattr(self.model, "card", None)
        return str(card.version) if card is not None else type(self.model).__name__

    # --- the entry points -------------------------------------------------------------
    def process(
        self,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        horizon: int | None = None,
        sealed: bool = False,
    ) -> dict[str, Any]:
        """Adds the payload's observations to the history and forecasts each record's machine.

        Args:
            payload: ``{"usageData": [{"id", "cpuLoad", "memoryUsage", "storageUsage", "timestamp"?}, ...]}``.
            request_id: an idempotency key: the same id returns the first call's result; reused
                with a different payload it is an error. Generated when absent, and returned.
            horizon: steps to forecast (default ``settings.horizon``).
            sealed: also return each record's result sealed (AES-256-GCM envelopes, ``sealed``).

        Returns:
            ``{"requestId", "taskId", "model": {"name", "version"}, "results": [{"index", "id",
            "timestamp", "forecasts": {metric: ... | None}, "reasons": {metric: str}}],
            "sealed"?: [envelope, ...]}``; see :func:`~atomic_usage.engine.forecast.describe_forecast`
            for a metric's fields. A metric is None when the machine has no observation of it, and
            ``reasons`` then says so ("no data: ...").

        Raises:
            PayloadError: a record is bad; every bad field is listed and nothing was applied.
            PayloadTooLarge: the payload holds more than ``settings.max_records`` records.
            IdempotencyError: ``request_id`` was used before with a different payload.
            EngineError: the task failed (the message says why) or did not finish in time.
        """
        t0 = time.monotonic()
        H = _check_call(request_id, horizon, self.settings.horizon)
        obs = parse_payload(payload, max_records=self.settings.max_records)
        fut = self._submit(payload, obs, request_id, H)
        try:
            outcome = fut.result(timeout=self.settings.wait_s)
        except FutureTimeout:
            raise self._still_running() from None
        del fut  # it holds the outcome too, whose stored bodies _lean lets go of
        if outcome.bodies is None:
            outcome = outcome._replace(bodies=self._wait(outcome.task.task_id))
        outcome = _lean(outcome, sealed=sealed)
        out = self._response(outcome, sealed=sealed)
        self._count(outcome, len(obs), t0)
        return out

    async def aprocess(
        self,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        horizon: int | None = None,
        sealed: bool = False,
    ) -> dict[str, Any]:
        """The same as :meth:`process`, for asyncio callers: it waits without holding a thread."""
        t0 = time.monotonic()
        outcome, n = await self._aoutcome(payload, request_id, horizon)
        outcome = _lean(outcome, sealed=sealed)
        out = self._response(outcome, sealed=sealed)
        self._count(outcome, n, t0)
        return out

    async def aprocess_json(
        self,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        horizon: int | None = None,
        sealed: bool = False,
    ) -> EncodedResponse:
        """:meth:`aprocess`, with the response already encoded as JSON (for the HTTP service).

        The results' JSON is the text that was sealed at rest, so nothing is encoded twice.
        Args, Raises: as :meth:`process`.
        """
        t0 = time.monotonic()
        outcome, n = await self._aoutcome(payload, request_id, horizon)
        outcome = _lean(outcome, sealed=sealed)
        out = self._encoded(outcome, sealed=sealed)
        self._count(outcome, n, t0)
        return out

    def _count(self, outcome: Outcome, n: int, t0: float) -> None:
        """Meters a call that returned: its ``n`` records, or one replay when its request id had
        made the task before (the records were counted by the call that made it)."""
        latency = [time.monotonic() - t0]
        if outcome.replayed:
            self.meter.record_replay(latencies_s=latency)
        else:
            self.meter.record(n, latencies_s=latency)

    async def _aoutcome(
        self, payload: Mapping[str, Any], request_id: str | None, horizon: int | None
    ) -> tuple[Outcome, int]:
        H = _check_call(request_id, horizon, self.settings.horizon)
        data = payload.get("usageData") if isinstance(payload, Mapping) else None
        if isinstance(data, list) and len(data) > _INLINE_RECORDS:
            obs = await asyncio.to_thread(parse_payload, payload, max_records=self.settings.max_records)
        else:
            obs = parse_payload(payload, max_records=self.settings.max_records)
        fut = self._submit(payload, obs, request_id, H)
        wrapped = asyncio.wrap_future(fut)
        # asyncio.wait, not wait_for: a timeout must not cancel the engine's future.
        done, _ = await asyncio.wait([wrapped], timeout=self.settings.wait_s)
        if not done:
            raise self._still_running()
        outcome = wrapped.result()
        if outcome.bodies is None:
            outcome = outcome._replace(bodies=await asyncio.to_thread(self._wait, outcome.task.task_id))
        return outcome, len(obs)

    def observe(self, frame: Any, *, id_col: str = "id", time_col: str = "timestamp") -> int:
        """Loads past observations (a wide frame) into the in-memory history without forecasting.

        Use it to warm a predictor from a file before live records arrive. The observations are
        not written to the store.

        Returns:
            The number of observations added.
        """
        import pandas as pd

        ts = pd.to_datetime(frame[time_col], utc=True).to_numpy("datetime64[ns]").astype(np.int64) / 1e9
        metrics = [m for m in DEFAULT_METRICS if m in frame.columns]
        vals = {m: frame[m].to_numpy(float) for m in metrics}
        ids = frame[id_col].astype(str).to_numpy()
        obs = []
        for r in range(len(frame)):
            v = {m: float(vals[m][r]) for m in metrics if np.isfinite(vals[m][r])}
            if v:
                obs.append(Observation(r, ids[r], float(ts[r]), v, True))
        self.history.append(obs)
        return len(obs)

    def task(self, task_id: str) -> dict[str, Any]:
        """A task's state, and its results once done (opened).

        Raises:
            TaskNotFound: no task has this id.
        """
        task = self.store.get(task_id)
        info = task.as_dict()
        if task.status is TaskStatus.DONE:
            info["results"] = [self._decode(task.task_id, b) for b in self.store.results(task_id)]
        return info

    def find_task(self, request_id: str) -> dict[str, Any]:
        """:meth:`task` of the task made for ``request_id``.

        Raises:
            TaskNotFound: no task was made for this request id.
        """
        task = self.store.find(request_id)
        if task is None:
            raise TaskNotFound(request_id=request_id)
        return self.task(task.task_id)

    # --- running tasks ----------------------------------------------------------------
    def _submit(
        self, payload: Mapping[str, Any], obs: list[Observation], request_id: str | None, horizon: int
    ) -> Future[Outcome]:
        """Accepts (and claims) the task through the group committer; the future resolves
        with its outcome once its results are committed."""
        request = {"usageData": list(payload["usageData"]), "horizon": horizon}
        rows = [(o.id, m, o.ts, v) for o in obs for m, v in o.values.items()]
        out: Future[Outcome] = Future()
        log = orjson.dumps([[o.id, o.ts, o.values] for o in obs]) if self.shared else None
        op = AcceptOp(request, request_id, rows, self.owner, DEFAULT_LEASE_S, claim=True, log=log)
        self.committer.submit(op).add_done_callback(lambda f: self._accepted(f, obs, horizon, out))
        return out

    def _accepted(self, fut: Future[Any], obs: list[Observation], horizon: int, out: Future[Outcome]) -> None:
        """Runs in the committer's thread once the accept is committed: hands the task on."""
        exc = fut.exception()
        if exc is not None:
            settle(out, exc)
            return
        acc = fut.result()
        task = acc.task
        if acc.created:
            with self._open_lock:
                self._open.add(task.task_id)
            self.runner.run([TaskJob(task, obs, horizon, True, out)])
        # Not created: the request id named a task already (a retry), done or still running.
        elif task.status is TaskStatus.DONE and acc.results is not None:
            settle(out, Outcome(task, list(acc.results), replayed=True))
        else:
            running = self.runner.inflight(task.task_id)
            if running is None:  # run elsewhere (recovery, another process): wait for the store
                settle(out, Outcome(task, None, replayed=True))
            else:
                running.add_done_callback(
                    lambda r: settle(out, r.exception() or Outcome(task, r.result().bodies, replayed=True))
                )

    def _untrack(self, task_id: str) -> None:
        with self._open_lock:
            self._open.discard(task_id)

    def _still_running(self) -> EngineError:
        return EngineError(
            f"The task is still running after {self.settings.wait_s:.0f} s; "
            "ask again with the same request id to get its result when it ends."
        )

    def _wait(self, task_id: str) -> list[bytes]:
        """Waits for a task another caller (or recovery) is running; returns its results."""
        deadline = time.monotonic() + self.settings.wait_s
        delay = 0.005
        while True:
            task = self.store.get(task_id)
            if task.status is TaskStatus.DONE:
                return self.store.results(task_id)
            if task.status is TaskStatus.FAILED:
                raise EngineError(f"Task {task_id} failed: {task.error}")
            if time.monotonic() > deadline:
                raise EngineError(
                    f"Task {task_id} is still {task.status.value} after {self.settings.wait_s:.0f} s; "
                    "ask again with the same request id to get its result when it ends."
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _encode(self, task_id: str, index: int, text: bytes) -> bytes:
        """The stored body of a result from its JSON text: sealed at rest, or as is in memory."""
        if self.settings.skip_persistence:
            return text
        from ..security import seal_json

        return seal_json(
            text, keyring=self.keyring, task_id=task_id, record_id=str(index), model_version=self.model_version
        ).encode()

    def _decode(self, task_id: str, body: bytes) -> dict[str, Any]:
        if self.settings.skip_persistence:
            return json.loads(body)  # type: ignore[no-any-return]
        from ..security import open_result

        return open_result(body, keyring=self.keyring, task_id=task_id)

    def _sealed(self, outcome: Outcome, plain: Sequence[bytes]) -> list[str]:
        """The ``sealed`` field: the stored envelopes, or (in memory) results sealed now."""
        task_id = outcome.task.task_id
        if not self.settings.skip_persistence:
            return [b.decode() for b in outcome.bodies or []]
        from ..security import seal_json

        return [
            seal_json(p, keyring=self.keyring, task_id=task_id, record_id=str(i), model_version=self.model_version)
            for i, p in enumerate(plain)
        ]

    def _opened(self, outcome: Outcome) -> tuple[list[dict[str, Any]] | None, Sequence[bytes]]:
        """The results (None: decode ``plain`` when needed) and their JSON text, opened from the
        stored bodies unless this call built them."""
        if outcome.plain is not None:
            return outcome.results, outcome.plain
        results = [self._decode(outcome.task.task_id, b) for b in outcome.bodies or []]
        return results, [orjson.dumps(r) for r in results]

    def _response(self, outcome: Outcome, *, sealed: bool) -> dict[str, Any]:
        task = outcome.task
        results = outcome.results
        plain = outcome.plain
        if results is None:
            if plain is not None:
                results = decode_results(plain)
            else:
                results = [self._decode(task.task_id, b) for b in outcome.bodies or []]
        out: dict[str, Any] = {
            "requestId": task.request_id,
            "taskId": task.task_id,
            "model": {"name": self.model.name, "version": self.model_version},
            "results": results,
        }
        if sealed:
            out["sealed"] = self._sealed(outcome, plain or [orjson.dumps(r) for r in results])
        return out

    def _encoded(self, outcome: Outcome, *, sealed: bool) -> EncodedResponse:
        results, plain = self._opened(outcome)
        task = outcome.task
        head = orjson.dumps(
            {
                "requestId": task.request_id,
                "taskId": task.task_id,
                "model": {"name": self.model.name, "version": self.model_version},
            }
        )
        parts = [head[:-1], b',"results":[', b",".join(plain), b"]"]
        if sealed:
            parts += [b',"sealed":', orjson.dumps(self._sealed(outcome, plain))]
        parts.append(b"}")
        return EncodedResponse(b"".join(parts), results, plain, ids=outcome.ids, replayed=outcome.replayed)

    # --- recovery and leases ----------------------------------------------------------
    def recover(self, *, force: bool = False) -> dict[str, int]:
        """Resumes tasks left accepted or running by a process that died (or, with ``force``,
        every unfinished task); each ends done or failed.

        Returns:
            ``{"resumed": n, "failed": n}``.
        """
        report = self.store.recover(force=force)
        jobs: list[TaskJob] = []
        for task in report.resumed:
            try:
                request = task.payload
                obs = parse_payload({"usageData": request["usageData"]}, now=task.created_at)
                claimed = self.store.claim(task.task_id, owner=self.owner)
                if claimed is None:  # another caller or process took it meanwhile
                    continue
                with self._open_lock:
                    self._open.add(task.task_id)
                # The history was rebuilt from the store, so the observations are in it already.
                jobs.append(TaskJob(claimed, obs, int(request.get("horizon", self.settings.horizon)), append=False))
            except PayloadError as exc:
                # Accepted under looser rules (an id with a control character, before they were
                # refused): it can never run, so it ends failed instead of coming back every pass.
                self._fail_unrunnable(task.task_id, exc)
            except Exception as exc:  # one bad task must not stop the others
                _log.error("recovery of task %s failed: %s", task.task_id, exc)
        # Counted once claimed: with several processes, each may hand the same task back, one claims it.
        if jobs:
            self.meter.tasks_recovered(len(jobs))
        self.runner.run(jobs)
        for job in jobs:
            try:
                job.future.result(timeout=self.settings.wait_s)
                _log.info("recovered task %s", job.task.task_id)
            except Exception as exc:
                _log.error("recovery of task %s failed: %s", job.task.task_id, exc)
        for task in report.failed:
            _log.warning("task %s was failed during recovery: %s", task.task_id, task.error)
        return {"resumed": len(report.resumed), "failed": len(report.failed)}

    def _fail_unrunnable(self, task_id: str, exc: PayloadError) -> None:
        """Marks a stored task whose payload no longer validates failed, with the reason."""
        _log.error("task %s cannot be resumed, its payload is refused now: %s", task_id, exc)
        try:
            self.store.fail(task_id, f"{type(exc).__name__}: {exc}")
        except Exception as err:  # logged; the next pass tries again
            _log.error("recording the failure of task %s failed: %s", task_id, err)

    def trim_history(self) -> int:
        """Deletes stored observations beyond ``history_limit`` per machine and metric (the
        newest are kept: what a restart reads back); returns how many went."""
        n = self.store.trim_observations(self.settings.history_limit)
        if n:
            _log.info("trimmed %d stored observations beyond %d per series", n, self.settings.history_limit)
        return n

    def trim_tasks(self, most: int | None = None) -> int:
        """Deletes the done and failed tasks finished more than ``task_keep_s`` ago with their
        results (so the store stops growing; their keys are forgotten), about ``most`` at most;
        returns how many went."""
        n = self.store.trim_tasks(self.settings.task_keep_s, most=most)
        if n:
            _log.info("deleted %d tasks finished more than %g s ago with their results", n, self.settings.task_keep_s)
        return n

    def _maintain(self, recover: bool) -> None:
        if recover:
            try:
                self.recover()
            except Exception as exc:  # pragma: no cover - logged, the engine keeps serving
                _log.error("recovery at start failed: %s", exc)
        last_trim = last_prune = -float("inf")
        while True:
            if time.monotonic() - last_trim >= TRIM_EVERY_S:
                last_trim = time.monotonic()
                try:
                    self.trim_history()
                except Exception as exc:  # pragma: no cover - logged, retried next pass
                    _log.error("trimming the stored observations failed: %s", exc)
            if time.monotonic() - last_prune >= TRIM_EVERY_S:
                last_prune = time.monotonic()
                try:  # a backlog goes over several passes, so leases are renewed in between
                    if self.trim_tasks(most=TRIM_TASKS_PER_PASS) >= TRIM_TASKS_PER_PASS:
                        last_prune = -float("inf")
                except Exception as exc:  # pragma: no cover - logged, retried next pass
                    _log.error("deleting old finished tasks failed: %s", exc)
            if self._closed.wait(DEFAULT_LEASE_S / 3):
                break
            with self._open_lock:
                open_ids = list(self._open)
            try:
                if open_ids:
                    self.store.renew(open_ids, owner=self.owner)
                if self.shared:
                    self.sync_history()  # an idle process keeps up with the log too
                    self.store.trim_log(LOG_KEEP_S)
                if recover:
                    self.recover()
            except Exception as exc:  # pragma: no cover - logged, retried next round
                _log.error("lease maintenance failed: %s", exc)

    # --- monitoring and life cycle ----------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The TPS meter (1/60/300 s), queue depth, batch sizes, latency percentiles, worker
        restarts, recovered tasks, tasks by status, machines held."""
        mine = self.meter.snapshot()
        pool = self.pool.stats()
        return {
            **pool,
            **{
                k: mine[k]
                for k in (
                    "tps",
                    "records_total",
                    "replays_total",
                    "failed_total",
                    "latency_s",
                    "recovered_tasks",
                    "uptime_s",
                )
            },
            "items_total": pool["records_total"],
            "tasks": {k.value: v for k, v in self.store.counts().items()},
            "history": self.history.snapshot(),
            "model": {"name": self.model.name, "version": self.model_version},
            "commit": {
                "groups": self.committer.groups,
                "writes": self.committer.writes,
                "queued": self.committer.depth(),
            },
        }

    def close(self) -> None:
        """Stops the workers and closes the store (unfinished tasks resume at the next start)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.runner.close()  # lets running tasks finish, refuses new ones
        self.pool.close()
        self.committer.close()
        self.runner.stop()
        self._maintenance.join(timeout=5)
        self.store.close()

    def __enter__(self) -> UsagePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lean(outcome: Outcome, *, sealed: bool) -> Outcome:
    """The outcome without its stored bodies when the response is built from its texts alone.

    Sealed at rest, the bodies are larger than the texts (a backlog's: 356 MB for 4,000 results
    at H=288), and the response needs them only for ``sealed``; let go of, they are not held
    while the results are decoded.
    """
    if sealed or outcome.plain is None:
        return outcome
    return outcome._replace(bodies=None)


def _check_call(request_id: Any, horizon: Any, default_horizon: int) -> int:
    """Validates process()'s own arguments; returns the horizon to use."""
    errors = []
    if request_id is not None and not (isinstance(request_id, str) and 1 <= len(request_id) <= 200):
        errors.append(RecordError(-1, "request_id", "must be a string of 1 to 200 characters"))
    elif isinstance(request_id, str) and (control := validate_printable(request_id, what="the request id")):
        errors.append(RecordError(-1, "request_id", control))
    problem = None if horizon is None else validate_horizon(horizon)
    if problem is not None:
        errors.append(RecordError(-1, "horizon", problem))
    if errors:
        raise PayloadError(errors)
    return int(horizon if horizon is not None else default_horizon)


_default: UsagePredictor | None = None
_default_lock = threading.Lock()


def _get_default() -> UsagePredictor:
    global _default
    with _default_lock:
        if _default is None:
            _default = UsagePredictor()
        return _default


def process(
    payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None, sealed: bool = False
) -> dict[str, Any]:
    """:meth:`UsagePredictor.process` on a process-wide predictor built from the environment."""
    return _get_default().process(payload, request_id=request_id, horizon=horizon, sealed=sealed)


async def aprocess(
    payload: Mapping[str, Any], *, request_id: str | None = None, horizon: int | None = None, sealed: bool = False
) -> dict[str, Any]:
    """:meth:`UsagePredictor.aprocess` on the process-wide predictor."""
    return await _get_default().aprocess(payload, request_id=request_id, horizon=horizon, sealed=sealed)
