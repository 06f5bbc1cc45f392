"""Running accepted tasks in groups: forecast together, results built together, committed together.

The predictor accepts each task (payload and observations, already claimed) through the
:class:`~.commit.GroupCommitter` and hands it here. A :class:`TaskRunner` thread takes every
task handed over since it last looked, as one *group*:

1. the group's observations join the in-memory history, and each distinct machine (and
   horizon) of the group is submitted once to the worker pool, which batches them for the
   model: concurrent requests' machines are forecast in the same batches;
2. when the group's forecasts are in, the results of all its records and metrics are built
   in one vectorised pass (:func:`~.forecast.describe_many`), each record's result is
   encoded as JSON once and sealed from that text;
3. the group's completions go to the group committer in one call; each task's future
   resolves after the commit that stored its results, with the results and their JSON
   (so a response can be sent without encoding them again).

While a group waits for the model, the next one gathers and starts, so both cores work.
A task whose forecast or completion fails is marked failed in the store, with its reason,
and its future raises :class:`~atomic_usage.errors.EngineError`; the rest of its group is
not affected. A task still open when the runner closes stays accepted or running in the
store, and recovery resumes it at the next start.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import numpy as np
import orjson

from .._types import DEFAULT_METRICS
from ..errors import EngineError
from ..models.base import no_data_reason, observed_changes
from .commit import settle
from .forecast import TREND_STEPS, encode_many, iso
from .runner import MachineForecast, WorkItem
from .store import CompleteOp, FailOp, Task

if TYPE_CHECKING:
    from .commit import GroupCommitter
    from .history import FleetHistory
    from .payload import Observation
    from .pool import WorkerPool

__all__ = ["Outcome", "ResultTexts", "TaskJob", "TaskRunner", "decode_results", "settle"]

_log = logging.getLogger("atomic_usage.engine")

_METRIC_KEYS = [orjson.dumps(m) + b":" for m in DEFAULT_METRICS]
"""Each metric's key in a result's ``forecasts`` object, in their order."""


class Outcome(NamedTuple):
    """How a task ended, as the caller that submitted it sees it.

    Attributes:
        task: the task (as accepted).
        bodies: the stored result bodies (sealed envelopes; plain JSON without persistence),
            or ``None`` when another caller runs the task and this one has to wait for it.
        results: the results as dicts, when the caller has them (never from the task runner, which
            builds their JSON text only; decode ``plain`` for them).
        plain: each result's JSON text, the bytes that were sealed, when this process built the
            stored results (no need to open them): a :class:`ResultTexts`, built when read.
        ids: each result's machine id, alongside ``plain``.
        replayed: whether the call found the task its request id had made before (an idempotent
            retry, answered with that task's result): its records are not new.
    """

    task: Task
    bodies: list[bytes] | None
    results: list[dict[str, Any]] | None = None
    plain: Sequence[bytes] | None = None
    ids: list[str] | None = None
    replayed: bool = False


class ResultTexts(Sequence[bytes]):
    """Each record's result as JSON text, spliced when read from its own head and its machine's forecasts.

    A record's text is ``orjson.dumps`` of ``{"index", "id", "timestamp", "forecasts", "reasons"}``,
    byte for byte. The records of one machine in a call share the same ``forecasts`` and
    ``reasons`` (the machine's forecast after all of the call's observations joined its history),
    which are most of a text: a backlog of N records per machine at a long horizon would hold N
    copies of each (66 kB each at H=288), so they are kept once per machine and each record's
    text is built only when it is read (to be sealed, sent or decoded).

    Args:
        obs: the task's observations, one per record.
        rows: per record, its machine's row of ``described``.
        described: per machine, the texts of its ``forecasts`` and of its ``reasons``.
    """

    __slots__ = ("_heads", "_rows", "_tails")

    def __init__(
        self, obs: Sequence[Observation], rows: Sequence[int], described: Sequence[tuple[bytes, bytes]]
    ) -> None:
        self._heads = [orjson.dumps({"index": o.index, "id": o.id, "timestamp": iso(o.ts)})[:-1] for o in obs]
        # Only the machines this task's records name, renumbered in their order of appearance.
        used = dict.fromkeys(rows)
        where = {r: k for k, r in enumerate(used)}
        self._rows = [where[r] for r in rows]
        self._tails = [b',"forecasts":' + described[r][0] + b',"reasons":' + described[r][1] + b"}" for r in used]

    def __len__(self) -> int:
        return len(self._heads)

    @overload
    def __getitem__(self, n: int) -> bytes: ...
    @overload
    def __getitem__(self, n: slice) -> list[bytes]: ...
    def __getitem__(self, n: int | slice) -> bytes | list[bytes]:
        if isinstance(n, slice):
            return [self[k] for k in range(*n.indices(len(self)))]
        return self._heads[n] + self._tails[self._rows[n]]

    def decode(self) -> list[dict[str, Any]]:
        """The results as dicts, equal to ``orjson.loads`` of each text.

        Each machine's forecasts are decoded once; each record gets its own dicts and lists
        (a caller may change one result without touching another), which share the strings
        and numbers, immutable, of its machine's.
        """
        shared = [orjson.loads(b"{" + t[1:]) for t in self._tails]
        out = []
        for head, row in zip(self._heads, self._rows, strict=True):
            result: dict[str, Any] = orjson.loads(head + b"}")
            tail = shared[row]
            result["forecasts"] = {m: _own_forecast(f) for m, f in tail["forecasts"].items()}
            result["reasons"] = dict(tail["reasons"])
            out.append(result)
        return out


def _own_forecast(f: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of one metric's result with fresh containers and the same scalars."""
    if f is None:
        return None
    # Each step holds scalars only (forecast.encode_many): one shallow copy each, not a walk.
    return {k: [step.copy() for step in v] if k == "steps" else _own(v) for k, v in f.items()}


def _own(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _own(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_own(x) for x in v]
    return v


def decode_results(plain: Sequence[bytes]) -> list[dict[str, Any]]:
    """Results' JSON texts as dicts (:meth:`ResultTexts.decode` when they are one)."""
    if isinstance(plain, ResultTexts):
        return plain.decode()
    return [orjson.loads(p) for p in plain]


@dataclass(eq=False)
class TaskJob:
    """One claimed task on its way through the runner.

    Attributes:
        task: the stored task.
        obs: its validated observations, one per record.
        horizon: steps to forecast.
        append: whether its observations still have to join the history (not for a task
            recovered after a restart: the history was rebuilt from the store).
        future: resolved with the :class:`Outcome`, or the error.
    """

    task: Task
    obs: list[Observation]
    horizon: int
    append: bool = True
    future: Future[Outcome] = field(default_factory=Future)


class _Group:
    """The tasks started together and their machines' forecasts."""

    def __init__(self, jobs: list[TaskJob], keys: list[tuple[str, int]], ctx: np.ndarray, last: np.ndarray) -> None:
        self.jobs = jobs
        self.keys = keys
        self.ctx = ctx
        self.last = last
        self.futures: list[Future[Any]] = []
        self._left = 0
        self._lock = threading.Lock()

    def watch(self, futures: list[Future[Any]], done: Callable[[_Group], None]) -> None:
        self.futures = futures
        self._left = len(futures)
        for f in futures:
            f.add_done_callback(lambda _f: self._one(done))

    def release(self) -> None:
        """Lets go of the tasks and forecasts once the group is finished.

        The pool's futures keep their callbacks, and so this group, for as long as the pool
        keeps them (a worker holds its last batch): through the tasks' futures that would be
        every result of the group (hundreds of MB after a backlog) until the next batch.
        """
        self.jobs, self.futures = [], []

    def _one(self, done: Callable[[_Group], None]) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            done(self)


class TaskRunner:
    """The thread that forecasts claimed tasks in groups and commits their results.

    Args:
        history: the fleet's history (observations join it here).
        pool: the worker pool that runs the model.
        committer: stores completions and failures.
        context: steps of history the model reads.
        thresholds: levels whose crossing results report.
        encode: ``encode(task_id, record_index, json_text) -> stored body`` (seals at rest).
        on_end: called with a task id once its task is committed done or failed.
        sync: called before each group joins the history (with other processes sharing the
            store: reads what they accepted meanwhile into it); a failure is logged, not fatal.
    """

    def __init__(
        self,
        *,
        history: FleetHistory,
        pool: WorkerPool,
        committer: GroupCommitter,
        context: int,
        thresholds: Sequence[float],
        encode: Callable[[str, int, bytes], bytes],
        on_end: Callable[[str], None] = lambda _task_id: None,
        sync: Callable[[], object] | None = None,
    ) -> None:
        self.history = history
        self.pool = pool
        self.committer = committer
        self.context = context
        self.thresholds = tuple(thresholds)
        self.encode = encode
        self.on_end = on_end
        self.sync = sync
        self._events: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._inflight: dict[str, Future[Outcome]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self.groups = 0
        """Groups started so far."""
        self._thread = threading.Thread(target=self._loop, name="atomic-task-runner", daemon=True)
        self._thread.start()

    # --- handing tasks over ---------------------------------------------------------
    def run(self, jobs: Sequence[TaskJob]) -> None:
        """Queues claimed tasks; each job's future resolves when its task is done or failed."""
        with self._lock:
            if self._closing:
                for job in jobs:
                    settle(job.future, _stopped())
                return
            for job in jobs:
                self._inflight[job.task.task_id] = job.future
        self._events.put(("jobs", list(jobs)))

    def inflight(self, task_id: str) -> Future[Outcome] | None:
        """The future of a task this runner is running, if it is."""
        with self._lock:
            return self._inflight.get(task_id)

    def _end(self, job: TaskJob, value: Outcome | BaseException) -> None:
        with self._lock:
            self._inflight.pop(job.task.task_id, None)
            self._idle.notify_all()
        self.on_end(job.task.task_id)
        settle(job.future, value)

    # --- the loop -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            events = self._take()
            if not events:
                return
            self._round(events)
            # Dropped before waiting for the next round: the events hold the round's groups and,
            # through their futures, every result's body and JSON text (hundreds of MB after a
            # backlog), which would stay alive until another call came.
            del events

    def _take(self) -> list[tuple[str, Any]]:
        """Waits for the next event, then takes every one handed over meanwhile (none: stop)."""
        first = self._events.get()
        if first is None:
            return []
        events = [first]
        while True:  # everything handed over meanwhile joins this round
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if ev is None:
                self._events.put(None)  # stop after this round
                break
            events.append(ev)
        return events

    def _round(self, events: list[tuple[str, Any]]) -> None:
        # A failure here is a bug; the engine keeps serving, and each step settles its own tasks:
        # those it started, or those of the group it was finishing (already settled ones stay).
        jobs = [j for kind, x in events if kind == "jobs" for j in x]
        if jobs:
            try:
                self._start(jobs)  # first, so the model runs while earlier groups finish here
            except Exception as exc:
                _log.exception("task runner: starting %d tasks failed: %s", len(jobs), exc)
                for job in jobs:
                    self._fail(job, exc)
        for kind, g in events:
            if kind != "group":
                continue
            try:
                self._finish(g)
            except Exception as exc:
                _log.exception("task runner: finishing %d tasks failed: %s", len(g.jobs), exc)
                for job in g.jobs:
                    if not job.future.done():
                        self._fail(job, exc)
            finally:
                g.release()

    def _start(self, jobs: list[TaskJob]) -> None:
        if self.sync is not None:
            # After the group's accepts were committed, so what another process accepted
            # before them (and answered) is in the history these forecasts read.
            try:
                self.sync()
            except Exception as exc:  # the next group reads it; serving goes on
                _log.error("reading other processes' observations failed: %s", exc)
        try:
            added = [o for j in jobs if j.append for o in j.obs]
            if added:
                self.history.append(added)
            keys = list(dict.fromkeys((o.id, j.horizon) for j in jobs for o in j.obs))
            machines = [m for m, _ in keys]
            ctx = self.history.contexts(machines, self.context)
            last = self.history.last_step(machines)
            group = _Group(jobs, keys, ctx, last)
            futures = self.pool.submit_many([WorkItem(ctx[i], h) for i, (_, h) in enumerate(keys)])
        except Exception as exc:
            for job in jobs:
                self._fail(job, exc)
            return
        self.groups += 1
        group.watch(futures, lambda g: self._events.put(("group", g)))

    def _finish(self, group: _Group) -> None:
        forecasts: list[MachineForecast | BaseException] = []
        for f in group.futures:
            exc = f.exception()
            forecasts.append(exc if exc is not None else f.result())
        try:
            described = self._describe(group, forecasts)
        except Exception as exc:  # pragma: no cover - a bug in result building fails the group
            for job in group.jobs:
                self._fail(job, exc)
            return
        pos = {key: i for i, key in enumerate(group.keys)}
        ops: list[CompleteOp] = []
        done: list[tuple[TaskJob, ResultTexts, list[bytes]]] = []
        for job in group.jobs:
            idx = [pos[(o.id, job.horizon)] for o in job.obs]
            broken = next((forecasts[i] for i in idx if isinstance(forecasts[i], BaseException)), None)
            if broken is not None:
                self._fail(job, broken)  # type: ignore[arg-type]
                continue
            try:
                plain = ResultTexts(job.obs, idx, described)
                tid = job.task.task_id
                # One record's text at a time: sealed, it is not kept (ResultTexts builds it again).
                bodies = [self.encode(tid, n, plain[n]) for n in range(len(plain))]
            except Exception as exc:
                self._fail(job, exc)
                continue
            ops.append(CompleteOp(tid, bodies))
            done.append((job, plain, bodies))
        if not ops:
            return
        try:
            futures = self.committer.submit_many(ops)
        except EngineError:
            for job, *_ in done:
                self._end(job, _stopped())
            return
        for fut, item in zip(futures, done, strict=True):
            fut.add_done_callback(functools.partial(self._completed, *item))

    def _completed(self, job: TaskJob, plain: ResultTexts, bodies: list[bytes], fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._fail(job, exc)
            return
        stored: list[bytes] = fut.result()
        if bodies and not stored:
            # The store had the task failed already (recovered work that failed first): it stays
            # failed, and this caller is told so, not "done" with no results.
            tid = job.task.task_id
            self._end(
                job,
                EngineError(
                    f"Task {tid} failed where it was run after a restart; its reason is stored: "
                    f"see `atomic-usage tasks show {tid}`."
                ),
            )
            return
        mine = stored == bodies  # else recovered work finished first: its results stand
        ids = [o.id for o in job.obs] if mine else None
        self._end(job, Outcome(job.task, stored, None, plain if mine else None, ids))

    def _describe(self, group: _Group, forecasts: list[MachineForecast | BaseException]) -> list[tuple[bytes, bytes]]:
        """Per key of the group: the JSON texts of its ``forecasts`` (metric -> result or null)
        and of its ``reasons``, as ``orjson.dumps`` of the dicts would write them."""
        texts: list[list[bytes]] = []  # per key, per metric: the result's text ("null" without data)
        reasons: list[bytes] = []
        rows: dict[int, list[tuple[int, int]]] = {}  # horizon -> (key, metric) with a forecast
        for i, mf in enumerate(forecasts):
            why: dict[str, str] = {}
            if not isinstance(mf, BaseException):
                for j, m in enumerate(DEFAULT_METRICS):
                    if mf.models[j] is None:
                        why[m] = no_data_reason(group.keys[i][0], m)
                    else:
                        rows.setdefault(group.keys[i][1], []).append((i, j))
            texts.append([b"null"] * len(DEFAULT_METRICS))
            reasons.append(orjson.dumps(why))
        for _, cells in rows.items():
            ki = np.array([i for i, _ in cells])
            mj = np.array([j for _, j in cells])
            hist = group.ctx[ki, mj]  # (R, steps)
            seen = ~np.isnan(hist)
            last_pos = hist.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
            fc = np.stack([forecasts[i].quantiles[j] for i, j in cells])  # type: ignore[union-attr]
            encoded = encode_many(
                fc,
                last_ts=group.last[ki].astype(float),
                step_s=self.history.step_s,
                last_value=hist[np.arange(len(cells)), last_pos],
                history_length=seen.sum(1),
                changes=observed_changes(hist),
                models=[str(forecasts[i].models[j]) for i, j in cells],  # type: ignore[union-attr]
                thresholds=self.thresholds,
                recent=hist[:, -TREND_STEPS:],
            )
            for (i, j), text in zip(cells, encoded, strict=True):
                texts[i][j] = text
        keys = _METRIC_KEYS
        return [
            (b"{" + b",".join([k + t for k, t in zip(keys, row, strict=True)]) + b"}", why)
            for row, why in zip(texts, reasons, strict=True)
        ]

    def _fail(self, job: TaskJob, exc: BaseException) -> None:
        """Marks the task failed with the reason, then fails its future (after the commit)."""
        tid = job.task.task_id
        reason = f"{type(exc).__name__}: {exc}"
        error = EngineError(
            f"Task {tid} failed ({reason}); the payload was stored and the failure recorded; "
            f"see `atomic-usage tasks show {tid}`."
        )
        error.__cause__ = exc
        with self._lock:
            closing = self._closing
        if closing and isinstance(exc, EngineError):
            # The engine is stopping (the pool failed what it had not run): the task stays open
            # in the store, and recovery resumes it at the next start.
            self._end(job, _stopped())
            return
        try:
            fut = self.committer.submit(FailOp(tid, reason))
        except EngineError:
            self._end(job, _stopped())
            return
        fut.add_done_callback(lambda _f: self._end(job, error))

    # --- life cycle -----------------------------------------------------------------
    def close(self, timeout_s: float = 10.0) -> None:
        """Refuses new tasks and waits up to ``timeout_s`` for those running to end.

        Tasks still running then keep their futures open until the pool and committer close
        under them; they stay open in the store and resume at the next start.
        """
        with self._lock:
            self._closing = True
            self._idle.wait_for(lambda: not self._inflight, timeout=timeout_s)
        self._events.put(None)
        self._thread.join(timeout_s)

    def stop(self) -> None:
        """Fails the futures of tasks still running (after the pool and committer closed)."""
        with self._lock:
            left = list(self._inflight.values())
            self._inflight.clear()
        for fut in left:
            settle(fut, _stopped())


def _stopped() -> EngineError:
    return EngineError(
        "The engine stopped before this task finished; it stays stored and resumes at the next start. "
        "Ask again with the same request id to get its result."
    )
