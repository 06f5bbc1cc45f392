"""The counters of serving processes that are gone, kept so the merged ``/metrics`` never goes down.

With several serving processes over one store, ``/metrics`` sums the processes' counters
(:mod:`.peers`). Left at that, a process that dies takes its counts out of the sum and the
merged counter drops (``atomic_replays_total`` 4 -> 3): Prometheus reads any drop as a
reset and ``rate()`` spikes. So:

- every time a process's counters leave it (its own ``/metrics``, or its answer to a
  sibling's scrape), it first writes them to ``<pid>.json`` in the peer folder
  (:meth:`CountLedger.publish`), and between scrapes it does so every second
  (``app.PUBLISH_EVERY_S``);
- a scrape folds the last published counts of every process that is gone (its socket takes
  no connection) into ``retired.json`` (:meth:`CountLedger.settle`), and adds them to the
  live processes' figures; a live process that did not answer in time is counted as it
  last published.

A counter a scrape has shown is then never lower in a later one: what a dead process had
shown stays in the sum, and what it counted after its last publication (at most a second's
worth) was never shown.
Counted this way: records, replays, failures, recovered tasks, worker restarts, and the
batch-size and HTTP latency histograms (buckets, sums, counts). Gauges (rates, queue depth,
workers, latency percentiles) of a dead process go with it. The folder, and with it
``retired.json``, lasts as long as one process of the service runs (:mod:`.peerdir`), so a
restart of the whole service starts from zero, as a single process does.

One lock (``counts.lock``) orders publication, folding and reading: a process that took a
dead one's pid never has its counts folded as the dead one's. A folded process stays apart
in ``retired.json`` for :data:`APART_S`, so a scrape that still had its answer, gathered just
before it died, does not count it twice; every token folded is kept, so a fold cut short
between writing ``retired.json`` and removing the dead process's file is not counted again.

The ledger never stops a scrape or a process's start: a ``retired.json`` that cannot be read is
started again empty (its counts are lost, once, with a warning), a published file that cannot be
read is left out (and removed once its process is gone, so it is warned of once), and a write
that fails is logged (a dead process's file then stays, to be folded by a later scrape).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from .peerdir import listening

__all__ = ["APART_S", "COUNTERS", "CountLedger", "add_counts", "add_retired", "counts_of"]

COUNTERS: Final = ("records_total", "replays_total", "failed_total", "recovered_tasks", "worker_restarts")
"""The counters of ``stats()`` that ``/metrics`` exports, kept for processes that are gone."""

APART_S: Final = 60.0
"""Seconds a dead process's counts stay apart in the ledger before they join its total."""

_RETIRED: Final = "retired.json"
_LOCK: Final = "counts.lock"

_log = logging.getLogger("atomic_usage.service")

Counts = dict[str, Any]
"""``{"stats": {counter: n}, "batch": {bound: n}, "batch_sum": s, "http": [[name, labels, value]]}``."""


def counts_of(stats: Mapping[str, Any], http: Iterable[Sequence[Any]]) -> Counts:
    """The counters of one process: those of its ``stats()`` and its HTTP histogram's samples.

    Args:
        stats: the predictor's ``stats()``.
        http: ``(name, labels, value)`` samples of the HTTP latency histogram (``_created`` left out).
    """
    hist = {str(b): int(n) for b, n in stats["batch_size"]["histogram"].items()}
    mean = float(stats["batch_size"].get("mean") or 0.0)
    return {
        "stats": {k: int(stats.get(k, 0)) for k in COUNTERS},
        "batch": hist,
        "batch_sum": mean * sum(hist.values()),
        "http": [[str(n), dict(lab), float(v)] for n, lab, v in http if not str(n).endswith("_created")],
    }


def add_counts(*parts: Counts | None) -> Counts | None:
    """The sum of several processes' counts (None where there are none)."""
    given = [p for p in parts if p]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    http: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    batch: dict[str, int] = {}
    for p in given:
        for name, labels, value in p["http"]:
            key = (name, tuple(sorted(labels.items())))
            http[key] = http.get(key, 0.0) + float(value)
        for bound, n in p["batch"].items():
            batch[bound] = batch.get(bound, 0) + int(n)
    return {
        "stats": {k: sum(int(p["stats"].get(k, 0)) for p in given) for k in COUNTERS},
        "batch": batch,
        "batch_sum": sum(float(p["batch_sum"]) for p in given),
        "http": [[name, dict(labels), value] for (name, labels), value in http.items()],
    }


def add_retired(stats: Mapping[str, Any], retired: Counts | None) -> dict[str, Any]:
    """Merged ``stats()`` (:func:`~.peers.merge_stats`) plus the counts of processes that are gone."""
    out = dict(stats)
    if not retired:
        return out
    for k in COUNTERS:
        out[k] = int(out.get(k, 0)) + int(retired["stats"].get(k, 0))
    hist = dict(stats["batch_size"]["histogram"])
    before = sum(int(n) for n in hist.values())
    for bound, n in retired["batch"].items():
        hist[bound] = int(hist.get(bound, 0)) + int(n)
    total = sum(int(n) for n in hist.values())
    summed = float(stats["batch_size"].get("mean") or 0.0) * before + float(retired["batch_sum"])
    out["batch_size"] = {**stats["batch_size"], "histogram": hist, "mean": summed / total if total else None}
    return out


def _is_counts(c: object) -> bool:
    """Whether ``c`` has the shape of :data:`Counts` (a damaged file's content may be anything)."""
    return (
        isinstance(c, dict)
        and isinstance(c.get("stats"), dict)
        and all(isinstance(v, int | float) for v in c["stats"].values())
        and isinstance(c.get("batch"), dict)
        and all(isinstance(v, int | float) for v in c["batch"].values())
        and isinstance(c.get("batch_sum"), int | float)
        and isinstance(c.get("http"), list)
        and all(isinstance(h, list) and len(h) == 3 and isinstance(h[1], dict) for h in c["http"])
    )


def _is_ledger(x: object) -> bool:
    """Whether ``x`` has the shape of ``retired.json``: ``{"total", "recent", "folded"}``."""
    return (
        isinstance(x, dict)
        and (x.get("total") is None or _is_counts(x.get("total")))
        and isinstance(x.get("recent"), list)
        and all(
            isinstance(r, dict)
            and isinstance(r.get("token"), str)
            and isinstance(r.get("at"), int | float)
            and _is_counts(r.get("counts"))
            for r in x["recent"]
        )
        and isinstance(x.get("folded"), list)
        and all(isinstance(t, str) for t in x["folded"])
    )


def _read_published(file: Path, pid: int) -> dict[str, Any] | None:
    """What serving process ``pid`` published (``{"token", "counts"}``), or None (warned) when the
    file cannot be read or holds something else."""
    try:
        published = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        why = str(exc)
    else:
        if (
            isinstance(published, dict)
            and isinstance(published.get("token"), str)
            and _is_counts(published.get("counts"))
        ):
            return dict(published)
        why = "not counts"
    _log.warning("the counts serving process %s published in %s are unreadable (%s); left out", pid, file, why)
    return None


class CountLedger:
    """This process's published counts, and the counts of the processes of the folder that are gone.

    Args:
        folder: the peer folder (:func:`~.peerdir.peer_folder`).
        clock: Unix seconds (tests pass their own).
    """

    def __init__(self, folder: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.pid = os.getpid()
        self.token = f"{self.pid}-{time.time_ns()}"
        """Names this process's counts apart from those of an earlier process with its pid."""
        self._clock = clock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, path: Path, data: Mapping[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # as the sockets
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data))
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one

    def publish(self, counts: Counts) -> None:
        """Writes this process's counts, before they leave it in a scrape.

        A write that fails (a full disk, a folder removed) is logged, and the scrape goes on: should
        this process die before a later write works, the counts it last published stand for it.
        """
        try:
            with self._locked():
                self._write(self.folder / f"{self.pid}.json", {"token": self.token, "counts": counts})
        except OSError as exc:
            _log.warning("could not publish this process's counts in %s: %s", self.folder, exc)

    def fold_own_pid(self) -> None:
        """Folds the counts an earlier process with this pid left (call before this one listens).
        A ledger that cannot be used is logged: it never keeps a process from serving."""
        try:
            with self._locked():
                self._settle(answered=(), only=self.pid)
        except OSError as exc:
            _log.warning("could not fold the counts of an earlier process in %s: %s", self.folder, exc)

    def settle(self, answered: Iterable[tuple[int, str]]) -> Counts | None:
        """Folds the counts of the processes that are gone, and returns what the scrape adds.

        Args:
            answered: ``(pid, token)`` of the siblings whose figures this scrape has.

        Returns:
            The counts to add to this process's and the answers': every process gone (but one
            already in the answers), and every live one that did not answer, as last published.
        """
        try:
            with self._locked():
                return self._settle(answered=answered)
        except OSError as exc:  # the folder is gone or unusable: the live figures alone
            _log.warning("could not read the counts of the processes that are gone in %s: %s", self.folder, exc)
            return None

    def _read_ledger(self, path: Path) -> tuple[dict[str, Any], bool]:
        """``retired.json``, and whether it was damaged (then an empty ledger, to be written over it)."""
        try:
            ledger = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {"total": None, "recent": [], "folded": []}, False
        except (OSError, orjson.JSONDecodeError) as exc:
            ledger, why = None, str(exc)
        else:
            why = "not a ledger"
        if _is_ledger(ledger):
            return ledger, False
        # A damaged ledger must not stop every scrape (nor the start of a replacing process): its
        # counts are lost, once, and the merged counters may go down that one time.
        _log.warning("%s is unreadable (%s); starting it again empty, so its counts are lost", path, why)
        return {"total": None, "recent": [], "folded": []}, True

    def _settle(self, answered: Iterable[tuple[int, str]], only: int | None = None) -> Counts | None:
        # Every write happens under the lock this holds, so a temporary file now is what a process
        # killed in the middle of one left: garbage, or it would stay until the service stops.
        for tmp in self.folder.glob("*.json.tmp"):
            with contextlib.suppress(OSError):
                if tmp.is_file():
                    tmp.unlink()
        answered = list(answered)
        pids = {pid for pid, _ in answered} | {self.pid}
        tokens = {token for _, token in answered}
        path = self.folder / _RETIRED
        ledger, damaged = self._read_ledger(path)
        folded = set(ledger["folded"])
        silent: list[Counts] = []
        dead: list[Path] = []
        for file in sorted(self.folder.glob("*.json")):
            if not file.stem.isdigit():
                continue
            pid = int(file.stem)
            if (only is None and pid in pids) or (only is not None and pid != only):
                continue
            published = _read_published(file, pid)
            alive = only is None and listening(self.folder / f"{pid}.sock")
            if published is None:
                # Left out of the sum. A live process writes over it at its next publication; a dead
                # one's is removed with the others folded here, or it would be warned of at every scrape.
                if not alive:
                    dead.append(file)
                continue
            if alive:
                silent.append(published["counts"])
                continue
            dead.append(file)
            if published["token"] not in folded:
                entry = {"token": published["token"], "at": self._clock(), "counts": published["counts"]}
                ledger["recent"].append(entry)
                ledger["folded"].append(published["token"])
        now = self._clock()
        old = [r for r in ledger["recent"] if now - r["at"] > APART_S]
        if dead or old or damaged:
            ledger["total"] = add_counts(ledger["total"], *(r["counts"] for r in old))
            ledger["recent"] = [r for r in ledger["recent"] if now - r["at"] <= APART_S]
            try:
                self._write(path, ledger)
            except OSError as exc:
                # The counts are still added below; the dead processes' files stay until a write
                # works, so the next scrape folds them again (nothing is lost or counted twice).
                _log.warning("could not write %s: %s", path, exc)
                dead = []
            for file in dead:  # after the ledger holds them: a fold cut short counts none twice
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
        recent = [r["counts"] for r in ledger["recent"] if r["token"] not in tokens]
        return add_counts(ledger["total"], *recent, *silent)
