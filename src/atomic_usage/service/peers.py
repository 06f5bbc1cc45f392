"""Metrics of several serving processes over one store: each answers its siblings' scrapes.

With ``ATOMIC_PROCESSES`` > 1 (``serve --processes N``, or several ``serve`` commands on one
data folder), every process listens on a Unix socket in a folder named after the data folder
(:func:`peer_folder`; one ``<pid>.sock`` each, mode 0700) and answers a connection with a JSON
snapshot of its own figures: the engine's ``stats()``, the samples of its HTTP latency
histogram and the newest result of each machine it served. The process a scrape reaches
gathers its siblings' snapshots (:meth:`PeerBoard.gather`) and merges them with its own
(:func:`merge_stats`, :func:`merge_samples`, :func:`merge_latest`), so ``/metrics`` answers
for the whole service whichever process serves it:

| figure | merged as |
| --- | --- |
| records/s, records, replays, failures, recoveries, restarts, queue depth | sum over the processes |
| workers, batch sizes, the HTTP latency histogram | sum over the processes |
| ``process()`` latency p50/p90/p99 | the highest process's (a percentile cannot be summed) |
| tasks by status, model | the store's and the model's, the same in every process |
| forecast gauges | per machine, the result with the newest observation time |

A process that does not answer within the timeout is left out of that scrape (logged) but
for its counters, counted as it last published them; the socket of one that died is
removed, and its counters stay in the sum as it last published them (:mod:`.ledger`), so a
merged counter never goes down when a process dies and is replaced. ``atomic_processes``
says how many processes the scrape covered. The folder lasts as long as one of its
processes runs, and a starting process removes the folders of dead runs (:mod:`.peerdir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from .ledger import COUNTERS, CountLedger, Counts
from .peerdir import clear_stale, join, leave, peer_folder

__all__ = ["PeerBoard", "merge_latest", "merge_samples", "merge_stats", "peer_folder"]

_log = logging.getLogger("atomic_usage.service")

_SUMMED = (*COUNTERS, "queue_depth", "items_total")
"""The ``stats()`` figures summed over the processes: the counters the ledger keeps for processes
that are gone (one list, so a counter added there is summed here too), and the queue depth and
pool item count, summed over the live processes only."""


def merge_stats(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The stats of several processes as one (see the module's table); the first one's store figures."""
    first = snapshots[0]
    out = dict(first)
    out["tps"] = {w: sum(float(s["tps"].get(w, 0.0)) for s in snapshots) for w in first["tps"]}
    for key in _SUMMED:
        out[key] = sum(int(s.get(key, 0)) for s in snapshots)
    lat: dict[str, Any] = {}
    for q in ("p50", "p90", "p99"):
        vals = [s["latency_s"][q] for s in snapshots if s["latency_s"].get(q) is not None]
        lat[q] = max(vals) if vals else None
    lat["samples"] = sum(int(s["latency_s"].get("samples", 0)) for s in snapshots)
    out["latency_s"] = lat
    bounds = first["batch_size"]["histogram"]
    hist = {b: sum(int(s["batch_size"]["histogram"].get(b, 0)) for s in snapshots) for b in bounds}
    counts = [sum(int(n) for n in s["batch_size"]["histogram"].values()) for s in snapshots]
    total = sum(counts)
    mean = sum(float(s["batch_size"].get("mean") or 0.0) * c for s, c in zip(snapshots, counts, strict=True))
    out["batch_size"] = {"histogram": hist, "mean": mean / total if total else None}
    out["workers"] = {
        **first["workers"],
        **{k: sum(int(s["workers"][k]) for s in snapshots) for k in ("alive", "busy", "configured")},
    }
    out["processes"] = len(snapshots)
    return out


def merge_samples(groups: Iterable[Iterable[Sequence[Any]]]) -> list[tuple[str, dict[str, str], float]]:
    """Samples ``(name, labels, value)`` of one counter or histogram family from several processes,
    summed per name and labels (``_created`` timestamps: the earliest)."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for samples in groups:
        for name, labels, value in samples:
            key = (str(name), tuple(sorted((str(k), str(v)) for k, v in labels.items())))
            if key not in merged:
                merged[key] = float(value)
            elif key[0].endswith("_created"):
                merged[key] = min(merged[key], float(value))
            else:
                merged[key] += float(value)
    return [(name, dict(labels), value) for (name, labels), value in merged.items()]


def _when(result: Mapping[str, Any]) -> float:
    ts = result.get("timestamp")
    if not ts:
        return float("-inf")
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


def merge_latest(groups: Iterable[Iterable[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
    """Per machine, the result with the newest observation time (on a tie, the earlier group's)."""
    best: dict[str, tuple[float, Mapping[str, Any]]] = {}
    for results in groups:
        for r in results:
            machine, when = str(r["id"]), _when(r)
            if machine not in best or when > best[machine][0]:
                best[machine] = (when, r)
    return [r for _, r in best.values()]


class PeerBoard:
    """This process's peer socket, and the gathering of its siblings' snapshots.

    Args:
        folder: the shared folder (:func:`peer_folder`).
        snapshot: builds this process's snapshot (JSON bytes); run in a worker thread.
        timeout_s: how long a sibling gets to answer one scrape.
    """

    def __init__(self, folder: Path, snapshot: Callable[[], bytes], *, timeout_s: float = 2.0) -> None:
        self.folder = Path(folder)
        self.snapshot = snapshot
        self.timeout_s = timeout_s
        self.path = self.folder / f"{os.getpid()}.sock"
        self.ledger = CountLedger(self.folder)
        """This process's published counters and those of the folder's processes that are gone."""
        self._server: asyncio.AbstractServer | None = None
        self._hold: int | None = None

    async def start(self) -> None:
        """Joins the folder, listens on this process's socket (a stale one of the same pid is
        replaced), then removes the folders dead runs left (:func:`~.peerdir.clear_stale`)."""
        self._hold = await asyncio.to_thread(join, self.folder)
        await asyncio.to_thread(self.ledger.fold_own_pid)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        os.chmod(self.path, 0o600)
        try:
            removed = await asyncio.to_thread(clear_stale, self.folder.parent, keep=self.folder)
        except OSError as exc:  # housekeeping: never a reason not to serve
            _log.warning("could not look for stale peer folders in %s: %s", self.folder.parent, exc)
        else:
            for folder in removed:
                _log.info("removed the peer folder %s of a run that is gone", folder)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await asyncio.to_thread(self.snapshot)
            writer.write(body)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the asker left without reading: a sibling checking that this process lives
        except Exception as exc:  # a sibling's scrape must never break this process
            _log.warning("answering a sibling's metrics request failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _ask(self, path: Path) -> dict[str, Any] | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), self.timeout_s)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # its process is gone
            return None
        except (OSError, TimeoutError) as exc:
            _log.warning("serving process %s did not answer for metrics: %s", path.stem, exc)
            return None
        try:
            data = await asyncio.wait_for(reader.read(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            _log.warning("serving process %s did not answer for metrics: %s", path.stem, exc)
            return None
        finally:
            writer.close()
        try:
            return dict(orjson.loads(data))
        except orjson.JSONDecodeError:
            _log.warning("serving process %s sent unreadable metrics", path.stem)
            return None

    async def gather(self) -> list[dict[str, Any]]:
        """The snapshots of the siblings that answered (not this process's own)."""
        paths = sorted(p for p in self.folder.glob("*.sock") if p != self.path)
        answers = await asyncio.gather(*(self._ask(p) for p in paths))
        return [a for a in answers if a is not None]

    async def scrape(self) -> tuple[list[dict[str, Any]], Counts | None]:
        """The siblings' snapshots, and the counts a scrape adds to them (:meth:`.CountLedger.settle`):
        those of the processes that are gone and of live ones that did not answer.

        A sibling that answered without figures (stopping) is counted as it last published.
        """
        siblings = await self.gather()
        answered = [(int(s["pid"]), str(s["token"])) for s in siblings if s.get("stats") is not None and s.get("token")]
        return siblings, await asyncio.to_thread(self.ledger.settle, answered)

    async def close(self) -> None:
        """Stops listening and removes this process's socket (and the folder, if it is the last one out)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._hold is not None:
            hold, self._hold = self._hold, None
            await asyncio.to_thread(leave, hold, self.folder)
