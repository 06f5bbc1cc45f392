"""The pool's workers: one thread or one process each, owning its runner and sending heartbeats.

A *runner factory* is a picklable callable with no arguments that returns a
``run_batch(items) -> results`` callable: one result, or one exception
instance, per item, in order. Each worker calls the factory once, so each owns
its own runner (later: its own ONNX Runtime session). A ``run_batch`` that
*raises* instead of returning has broken its worker, which is replaced.

Process workers receive a batch of equally shaped numpy arrays through a
shared-memory block that the parent fills with one copy (``np.stack(out=...)``)
and the child reads as row views, and return equally shaped array results the
same way; only the small message naming the block is pickled. Anything else
(mixed shapes, non-array items, per-record exceptions) goes through the pipe.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import multiprocessing.connection as mpc
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

    from .batcher import Pending

__all__ = [
    "Job",
    "Mode",
    "ProcessWorker",
    "RunBatch",
    "RunnerFactory",
    "ThreadWorker",
    "Worker",
    "WorkerEvents",
]

RunBatch = Callable[[Sequence[Any]], Sequence[Any]]
"""``run_batch(items)``: one result or exception instance per item, in order."""

RunnerFactory = Callable[[], RunBatch]
"""Builds one worker's ``run_batch``; must be picklable for process workers."""

Mode = Literal["thread", "process"]

_job_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """A batch on its way through the pool.

    Attributes:
        entries: the records, with their futures.
        crashes: how many workers died or hung running this batch (or its parent batch).
        job_id: unique within the process.
    """

    entries: list[Pending[Any]]
    crashes: int = 0
    job_id: int = field(default_factory=lambda: next(_job_ids))

    @property
    def items(self) -> list[Any]:
        """The submitted items, in order."""
        return [e.item for e in self.entries]


class WorkerEvents(Protocol):
    """What a worker reports to its pool (called from the worker's own thread)."""

    def on_ready(self, worker: Worker) -> None: ...
    def on_done(self, worker: Worker, job: Job, results: Sequence[Any]) -> None: ...
    def on_crash(self, worker: Worker, job: Job | None, reason: str) -> None: ...
    def on_start_failed(self, worker: Worker, reason: str) -> None: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Worker:
    """What the pool and the watchdog see of a worker, thread or process.

    Attributes:
        index: a number unique within the pool, for logs and messages.
        job: the batch it is running, if any (set by the pool).
        job_started: monotonic seconds when ``job`` was handed over.
        retired: set once it is replaced or stopped; it then reports nothing more.
        ready: set by the pool once the worker built its runner.
        started_at: monotonic seconds when :meth:`start` returned, set by the pool; until then
            the worker is neither alive nor dead, and the watchdog leaves it alone.
    """

    mode: Mode

    def __init__(self, index: int, events: WorkerEvents) -> None:
        self.index = index
        self.job: Job | None = None
        self.job_started: float | None = None
        self.retired = False
        self.ready = False
        self.started_at: float | None = None
        self._events = events

    def start(self) -> None:
        """Starts the thread or process; it reports ``on_ready`` once its runner is built."""
        raise NotImplementedError

    def run(self, job: Job) -> None:
        """Hands ``job`` over without waiting; the result comes through ``on_done``/``on_crash``."""
        raise NotImplementedError

    def is_alive(self) -> bool:
        """Whether the thread or process still runs."""
        raise NotImplementedError

    def last_beat(self) -> float:
        """Monotonic seconds of the last heartbeat."""
        raise NotImplementedError

    def stop(self, timeout_s: float = 1.0) -> None:
        """Asks it to finish and exit; forces it when it does not within ``timeout_s``."""
        raise NotImplementedError

    def kill(self) -> None:
        """Stops it now: SIGKILL for a process; a thread is abandoned (threads cannot be killed)."""
        raise NotImplementedError


class ThreadWorker(Worker):
    """A worker thread of this process.

    A busy thread cannot send heartbeats (it is the one running the batch), so
    while it runs a batch :meth:`last_beat` reports "now" and only the batch
    timeout can find it hung. A hung thread cannot be killed either: it is
    abandoned, and whatever it returns later is only used for records no other
    worker has finished meanwhile.
    """

    mode: Mode = "thread"

    def __init__(
        self, index: int, factory: RunnerFactory, events: WorkerEvents, *, heartbeat_interval_s: float
    ) -> None:
        super().__init__(index, events)
        self._factory = factory
        self._interval = heartbeat_interval_s
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._beat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=f"atomic-worker-{index}", daemon=True)

    def _main(self) -> None:
        try:
            run_batch = self._factory()
        except BaseException as exc:
            self._events.on_start_failed(self, f"the runner factory raised {_describe(exc)}")
            return
        # Beat now: the next beat is a heartbeat interval away, and the last one was when this
        # worker was created, so a runner slower to build than the heartbeat timeout would read
        # as silent the moment the worker is ready and have it replaced (again and again).
        self._beat = time.monotonic()
        self._events.on_ready(self)
        while not self.retired:
            try:
                job = self._inbox.get(timeout=self._interval)
            except queue.Empty:
                self._beat = time.monotonic()
                continue
            if job is None:
                return
            try:
                results = list(run_batch(job.items))
            except BaseException as exc:
                self._events.on_crash(self, job, f"run_batch raised {_describe(exc)}")
                return
            self._beat = time.monotonic()
            self._events.on_done(self, job, results)

    def start(self) -> None:
        """See :meth:`Worker.start`."""
        self._thread.start()

    def run(self, job: Job) -> None:
        """See :meth:`Worker.run`."""
        self._inbox.put(job)

    def is_alive(self) -> bool:
        """See :meth:`Worker.is_alive`."""
        return self._thread.is_alive()

    def last_beat(self) -> float:
        """See :meth:`Worker.last_beat`; "now" while a batch runs (its thread is the one that
        would beat): only the batch timeout finds it hung then. (Before it is ready the watchdog
        judges it by that timeout alone.)"""
        return time.monotonic() if self.job is not None else self._beat

    def stop(self, timeout_s: float = 1.0) -> None:
        """See :meth:`Worker.stop`; a thread that does not exit in time is abandoned."""
        self.retired = True
        self._inbox.put(None)
        if self._thread.ident is not None:  # close() may race a worker spawned but not yet started
            self._thread.join(timeout_s)

    def kill(self) -> None:
        """See :meth:`Worker.kill`."""
        self.retired = True
        self._inbox.put(None)


def _pack(items: Sequence[Any]) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """Shape and dtype of ``np.stack(items)`` when every item is an array of one shape and dtype."""
    if not items or not all(isinstance(x, np.ndarray) for x in items):
        return None
    first = items[0]
    if any(x.shape != first.shape or x.dtype != first.dtype for x in items) or first.dtype.hasobject:
        return None
    return (len(items), *first.shape), first.dtype


def _to_shm(arrays: Sequence[Any], shape: tuple[int, ...], dtype: np.dtype[Any], shm: SharedMemory) -> None:
    view: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
    np.stack(arrays, out=view)
    del view  # an exported buffer would keep the block from closing


def _encode_results(results: list[Any]) -> tuple[Any, ...]:
    """The ``done`` message body: arrays through a new shared-memory block, the rest pickled."""
    arrays = [r for r in results if not isinstance(r, BaseException)]
    packed = _pack(arrays)
    if packed is None or not arrays:
        return ("obj", results)
    shape, dtype = packed
    shm = SharedMemory(create=True, size=max(1, int(np.prod(shape)) * dtype.itemsize))
    _to_shm(arrays, shape, dtype, shm)
    errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    shm.close()
    return ("shm", shm.name, shape, dtype.str, errors)


def _decode_results(body: tuple[Any, ...]) -> list[Any]:
    if body[0] == "obj":
        return list(body[1])
    _, name, shape, dtype, errors = body
    shm = SharedMemory(name=name)
    try:
        # One copy out of the block, so the block can go at once; no pickling.
        arrays = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()
    out: list[Any] = []
    rows = iter(arrays)
    for i in range(len(arrays) + len(errors)):
        out.append(errors[i] if i in errors else next(rows))
    return out


def _send(conn: mpc.Connection, msg: tuple[Any, ...]) -> None:
    try:
        conn.send(msg)
    except Exception:  # an exception that cannot be pickled: send its text instead
        kind, job_id, body = msg
        results = [RuntimeError(_describe(r)) if isinstance(r, BaseException) else r for r in body[1]]
        conn.send((kind, job_id, ("obj", results)))


def _child_main(factory: RunnerFactory, conn: mpc.Connection, beat: Any, interval_s: float) -> None:
    """The body of a worker process: build the runner, then run batches until told to stop."""

    def beat_loop() -> None:
        # A separate thread, so a batch that runs long (GIL released) still beats,
        # while a process that is frozen or spins holding the GIL goes silent.
        while True:
            beat.value = time.monotonic()
            time.sleep(interval_s)

    threading.Thread(target=beat_loop, daemon=True).start()
    try:
        run_batch = factory()
    except BaseException as exc:
        conn.send(("start_failed", 0, _describe(exc)))
        return
    conn.send(("ready", 0, None))
    shm: SharedMemory | None = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        kind, job_id, *rest = msg
        if kind == "shm":
            name, shape, dtype = rest
            if shm is None or shm.name != name:
                shm = SharedMemory(name=name)
            items: Any = list(np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf))
        else:
            items = rest[0]
        try:
            results = list(run_batch(items))
        except BaseException as exc:
            conn.send(("crash", job_id, f"run_batch raised {_describe(exc)}"))
            return
        del items
        _send(conn, ("done", job_id, _encode_results(results)))


class ProcessWorker(Worker):
    """A worker process with its own runner, heartbeat and shared-memory input block.

    Args:
        index: a number unique within the pool.
        factory: picklable; called once in the child.
        events: the pool.
        heartbeat_interval_s: how often the child's heartbeat thread beats.
        start_method: ``"spawn"`` (default; safe with threads and ONNX Runtime) or ``"forkserver"``.
    """

    mode: Mode = "process"

    def __init__(
        self,
        index: int,
        factory: RunnerFactory,
        events: WorkerEvents,
        *,
        heartbeat_interval_s: float,
        start_method: str = "spawn",
    ) -> None:
        super().__init__(index, events)
        ctx = mp.get_context(start_method)
        self._conn, child_conn = ctx.Pipe()
        self._beat: Synchronized[float] = ctx.Value("d", time.monotonic(), lock=False)
        self._proc: mp.process.BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(factory, child_conn, self._beat, heartbeat_interval_s),
            name=f"atomic-worker-{index}",
            daemon=True,
        )
        self._child_conn = child_conn
        self._shm: SharedMemory | None = None
        self._shm_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name=f"atomic-worker-{index}-reader", daemon=True)

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        pid: int | None = self._proc.pid
        return pid

    def start(self) -> None:
        """See :meth:`Worker.start`."""
        self._proc.start()
        self._child_conn.close()
        self._reader.start()

    def _input_block(self, nbytes: int) -> SharedMemory:
        if self._shm is None or self._shm.size < nbytes:
            self._release_block()
            self._shm = SharedMemory(create=True, size=max(nbytes, 1 << 16))
        return self._shm

    def _release_block(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def run(self, job: Job) -> None:
        """See :meth:`Worker.run`."""
        items = job.items
        packed = _pack(items)
        msg: tuple[Any, ...]
        with self._shm_lock:
            if packed is not None and not self.retired:
                shape, dtype = packed
                shm = self._input_block(int(np.prod(shape)) * dtype.itemsize)
                _to_shm(items, shape, dtype, shm)
                msg = ("shm", job.job_id, shm.name, shape, dtype.str)
            else:
                msg = ("obj", job.job_id, items)
        try:
            self._conn.send(msg)
        except (OSError, ValueError):
            pass  # the process is gone; the reader thread reports the crash

    def _read_loop(self) -> None:
        while True:
            ready = mpc.wait([self._conn, self._proc.sentinel])
            if self._conn in ready:
                try:
                    kind, job_id, body = self._conn.recv()
                except (EOFError, OSError):
                    kind = "eof"
                else:
                    if kind == "ready":
                        self._events.on_ready(self)
                    elif kind == "start_failed":
                        self.retired = True
                        self._events.on_start_failed(self, f"the runner factory raised {body}")
                    elif kind == "crash":
                        self._events.on_crash(self, self.job, body)
                    else:
                        results = _decode_results(body)  # always, so an output block is freed
                        job = self.job
                        if job is not None and job.job_id == job_id:
                            self._events.on_done(self, job, results)
                    continue
            self._proc.join(1.0)
            if not self.retired:
                code = self._proc.exitcode
                self._events.on_crash(self, self.job, f"the worker process {self.pid} exited with code {code}")
            with self._shm_lock:
                self._release_block()
            return

    def is_alive(self) -> bool:
        """See :meth:`Worker.is_alive`."""
        return bool(self._proc.is_alive())

    def last_beat(self) -> float:
        """See :meth:`Worker.last_beat`."""
        return float(self._beat.value)

    def stop(self, timeout_s: float = 1.0) -> None:
        """See :meth:`Worker.stop`."""
        self.retired = True
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        if self._proc.pid is None:  # spawned but never started: nothing to wait for
            return
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self.kill()
        if self._reader.ident is not None:
            self._reader.join(timeout_s)

    def kill(self) -> None:
        """See :meth:`Worker.kill`."""
        self.retired = True
        if self._proc.pid is None:  # spawned but never started: there is no process to kill
            return
        self._proc.kill()
