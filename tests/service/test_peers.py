"""Merging the figures of several serving processes (service/peers.py) and the peer folder's life
(service/peerdir.py)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import orjson

from atomic_usage.service.peerdir import clear_stale, join, leave
from atomic_usage.service.peers import PeerBoard, merge_latest, merge_samples, merge_stats, peer_folder


def _stats(records: int, p99: float | None, batches: dict[str, int], mean: float | None) -> dict[str, Any]:
    return {
        "tps": {"1s": records / 10, "60s": 1.0, "300s": 0.5},
        "records_total": records,
        "replays_total": 3,
        "failed_total": 1,
        "recovered_tasks": 0,
        "worker_restarts": 0,
        "queue_depth": 2,
        "items_total": records,
        "latency_s": {"p50": 0.01, "p90": 0.02, "p99": p99, "samples": 5},
        "batch_size": {"histogram": batches, "mean": mean},
        "workers": {"alive": 1, "busy": 0, "configured": 1, "mode": "thread"},
        "tasks": {"done": 7},
        "model": {"name": "naive", "version": "Naive"},
    }


class TestMerge:
    """Counters and rates add up, percentiles take the worst, the store's figures are taken once."""

    def test_stats(self) -> None:
        """Sums, the highest p99, a weighted batch mean, and how many processes answered."""
        a = _stats(100, 0.2, {"1": 2, "2": 2}, 1.5)
        b = _stats(50, None, {"1": 0, "2": 4}, 2.0)
        m = merge_stats([a, b])
        assert m["records_total"] == 150 and m["failed_total"] == 2 and m["queue_depth"] == 4
        assert m["replays_total"] == 6
        assert m["tps"]["1s"] == 15.0
        assert m["latency_s"]["p99"] == 0.2 and m["latency_s"]["samples"] == 10
        assert m["batch_size"]["histogram"] == {"1": 2, "2": 6}
        assert m["batch_size"]["mean"] == (1.5 * 4 + 2.0 * 4) / 8
        assert m["workers"]["alive"] == 2 and m["tasks"] == {"done": 7} and m["processes"] == 2

    def test_samples(self) -> None:
        """Histogram samples add up per name and labels; creation times keep the earliest."""
        lab = {"route": "/v1/predict"}
        a = [("h_count", lab, 3.0), ("h_created", lab, 100.0)]
        b = [("h_count", lab, 2.0), ("h_created", lab, 90.0), ("h_count", {"route": "/metrics"}, 1.0)]
        assert sorted(merge_samples([a, b]), key=str) == sorted(
            [("h_count", lab, 5.0), ("h_created", lab, 90.0), ("h_count", {"route": "/metrics"}, 1.0)], key=str
        )

    def test_latest(self) -> None:
        """Per machine the result with the newest observation time wins; a tie keeps the first group's."""
        old = {"id": "m1", "timestamp": "2026-01-05T08:00:00Z", "n": 1}
        new = {"id": "m1", "timestamp": "2026-01-05T08:05:00Z", "n": 2}
        tie = {"id": "m2", "timestamp": "2026-01-05T08:00:00Z", "n": 3}
        tie2 = {"id": "m2", "timestamp": "2026-01-05T08:00:00Z", "n": 4}
        got = {r["id"]: r["n"] for r in merge_latest([[new, tie], [old, tie2]])}
        assert got == {"m1": 2, "m2": 3}


class TestPeerBoard:
    """Sockets answer snapshots; a dead sibling's socket is removed."""

    def test_gather_and_stale_socket(self, tmp_path: Path) -> None:
        """One live sibling answers its snapshot; a socket nobody listens on is skipped and removed."""
        import socket

        folder = tmp_path / "peers"
        stale = folder / "999999.sock"

        async def run() -> list[dict[str, Any]]:
            me = PeerBoard(folder, lambda: b"{}")
            other = PeerBoard(folder, lambda: orjson.dumps({"stats": None, "who": "other"}))
            other.path = folder / "1.sock"
            await me.start()
            await other.start()
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(stale))  # bound, never listening: as a crashed process leaves it
            s.close()
            try:
                return await me.gather()
            finally:
                await other.close()
                await me.close()

        got = asyncio.run(run())
        assert got == [{"stats": None, "who": "other"}]
        assert not stale.exists() and not folder.exists()  # the last one out removes the folder

    def test_folder_is_per_store(self, tmp_path: Path) -> None:
        """The same data folder gives the same peer folder, another one another."""
        assert peer_folder(tmp_path / "a") == peer_folder(tmp_path / "a" / ".." / "a")
        assert peer_folder(tmp_path / "a") != peer_folder(tmp_path / "b")


def _listen(path: Path) -> socket.socket:
    """A Unix socket listening at ``path``, as a live process's (close it to end it)."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    return s


class TestPeerFolder:
    """The first process in clears a dead run's leftovers, the last one out removes the folder, and
    only folders no live process holds are removed as stale."""

    def test_first_in_clears_last_out_removes(self, tmp_path: Path) -> None:
        """Leftovers of a dead run go when the first process joins; a second joiner keeps what the
        first made; the folder goes with the last one out."""
        folder = tmp_path / "atomic-peers-a"
        folder.mkdir()
        for name in ("77.sock", "77.json", "retired.json"):
            (folder / name).write_text("left")
        first = join(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["owners.lock"]
        (folder / "1.sock").write_text("mine")
        second = join(folder)
        assert (folder / "1.sock").exists()
        assert leave(first, folder) is False and folder.exists()
        assert leave(second, folder) is True and not folder.exists()

    def test_join_waits_out_a_removal(self, tmp_path: Path) -> None:
        """A process joining while another removes the folder joins the new folder, not the
        removed one's lock file."""
        folder = tmp_path / "atomic-peers-a"
        folder.mkdir()
        remover = os.open(folder / "owners.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(remover, fcntl.LOCK_EX)
        got: list[int] = []
        joiner = threading.Thread(target=lambda: got.append(join(folder)))
        joiner.start()
        joiner.join(0.3)
        assert joiner.is_alive()  # waiting for the lock
        shutil.rmtree(folder)
        os.close(remover)
        joiner.join(10)
        assert os.fstat(got[0]).st_ino == os.stat(folder / "owners.lock").st_ino
        assert leave(got[0], folder) and not folder.exists()

    def test_clear_stale_removes_only_unheld_folders(self, tmp_path: Path) -> None:
        """Removed: a folder nobody holds, with a dead socket. Kept: this process's folder, one a
        live process holds, one without a lock whose socket accepts connections, and non-folders."""
        mine, held, dead, unlocked = (tmp_path / f"atomic-peers-{n}" for n in ("mine", "held", "dead", "old"))
        for f in (mine, dead, unlocked):
            f.mkdir()
        hold = join(held)
        gone = socket.socket(socket.AF_UNIX)
        gone.bind(str(dead / "9.sock"))  # bound, never listening: as a killed process leaves it
        gone.close()
        live = _listen(unlocked / "8.sock")
        (tmp_path / "atomic-peers-file").write_text("not a folder")
        try:
            assert clear_stale(tmp_path, keep=mine) == [dead]
            assert mine.exists() and held.exists() and unlocked.exists() and not dead.exists()
            assert (tmp_path / "atomic-peers-file").exists()
        finally:
            live.close()
            leave(hold, held)
