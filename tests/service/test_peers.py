"""Merging the figures of several serving processes (service/peers.py), the counts of those that
are gone (service/ledger.py) and the peer folder's life (service/peerdir.py)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from atomic_usage.service.ledger import APART_S, CountLedger, add_retired, counts_of
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

    def test_a_long_temporary_folder_falls_back_to_tmp(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A TMPDIR too long for a socket's path in it (108 bytes) puts the folder under /tmp, for
        every process alike; a socket binds there. Before, serve --processes failed to start with
        'AF_UNIX path too long' from every serving process."""
        import tempfile

        long = tmp_path / ("x" * 90)
        long.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(long))
        folder = peer_folder(tmp_path / "data")
        assert folder.parent == Path("/tmp") and folder.name.startswith("atomic-peers-")
        short = tmp_path / "t"
        short.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(short))
        if len(str(short)) < 60:
            assert peer_folder(tmp_path / "data").parent == short


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

    def test_clear_stale_during_the_first_join(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The first process in turns its exclusive lock into a shared one, which is not atomic: another
        server's clear_stale that takes the lock in between removes the folder. The joiner then
        held a removed lock file, its folder gone (its socket could not be made, and a later
        clear_stale could remove the folder it goes on to serve from): it joins again instead."""
        from atomic_usage.service import peerdir

        folder = tmp_path / "atomic-peers-new"
        real = fcntl.flock
        raced: list[list[Path]] = []

        def flock(fd: int, op: int) -> None:
            if op == fcntl.LOCK_SH and not raced:  # the conversion: the exclusive lock is let go first
                real(fd, fcntl.LOCK_UN)
                raced.append(clear_stale(tmp_path, keep=tmp_path / "atomic-peers-other"))
            real(fd, op)

        monkeypatch.setattr(peerdir.fcntl, "flock", flock)
        fd = join(folder)
        assert raced == [[folder]]  # the race happened
        assert folder.is_dir() and os.fstat(fd).st_ino == os.stat(folder / "owners.lock").st_ino
        monkeypatch.setattr(peerdir.fcntl, "flock", real)
        assert clear_stale(tmp_path, keep=tmp_path / "atomic-peers-other") == [] and folder.is_dir()
        assert leave(fd, folder)

    @pytest.mark.parametrize("kind", ["symlink", "other user"])
    def test_join_refuses_a_folder_not_ours(self, tmp_path: Path, kind: str) -> None:
        """The peer folder's name is known to anyone (a hash of the data folder's path): a symbolic
        link put there made the first joiner empty the folder it points to (every file deleted
        but owners.lock), and another user's folder would hold this service's sockets and counts.
        Both are refused, naming the folder, and nothing is touched."""
        from atomic_usage.errors import ConfigError

        target = tmp_path / "precious"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        folder = tmp_path / "atomic-peers-a"
        if kind == "symlink":
            folder.symlink_to(target)
        else:
            if os.getuid() != 0:
                pytest.skip("making another user's folder needs root")
            folder.mkdir()
            (folder / "keep.txt").write_text("theirs")
            os.chown(folder, 65534, 65534)
        found = f"a symbolic link to {target}" if kind == "symlink" else "a folder of uid 65534"
        with pytest.raises(ConfigError, match=r"atomic-peers-a: .*not a folder of this user \(" + re.escape(found)):
            join(folder)
        assert (target / "keep.txt").read_text() == "mine"
        assert folder.is_symlink() if kind == "symlink" else (folder / "keep.txt").exists()

    def test_join_makes_an_open_folder_private(self, tmp_path: Path) -> None:
        """This user's folder left open to others (mode 0777) is made 0700 before it is used."""
        folder = tmp_path / "atomic-peers-a"
        folder.mkdir()
        folder.chmod(0o777)
        fd = join(folder)
        assert folder.stat().st_mode & 0o777 == 0o700
        assert leave(fd, folder)

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


def _counts(records: int, *, batches: dict[str, int] | None = None) -> dict[str, Any]:
    stats = _stats(records, 0.1, batches or {"1": 1, "2": 0}, 1.0)
    return counts_of(stats, [("h_count", {"route": "/v1/predict"}, float(records)), ("h_created", {}, 5.0)])


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def folder() -> Iterator[Path]:
    """A peer folder short enough for socket paths (the temporary folder, as the service's)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="atomic-ledger-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _process(folder: Path, pid: int, clock: _Clock | None = None) -> CountLedger:
    """The ledger of another serving process (its pid and token set by hand)."""
    ledger = CountLedger(folder, clock=clock or _Clock())
    ledger.pid, ledger.token = pid, f"{pid}-{id(ledger)}"
    return ledger


class TestCountLedger:
    """What a process that is gone had published stays counted, once."""

    def test_counts_of_leaves_out_gauges_and_created(self) -> None:
        """Only counters and histogram samples are kept; the batch sum is mean x count."""
        c = _counts(5, batches={"1": 2, "4": 2})
        assert c["stats"]["records_total"] == 5 and "queue_depth" not in c["stats"]
        assert c["batch"] == {"1": 2, "4": 2} and c["batch_sum"] == 4.0
        assert c["http"] == [["h_count", {"route": "/v1/predict"}, 5.0]]

    def test_dead_process_is_folded_once(self, folder: Path) -> None:
        """A process with no socket is gone: its counts move to retired.json and every later
        scrape still adds them, once."""
        me, other = CountLedger(folder), _process(folder, 111)
        other.publish(_counts(5))
        for _ in range(3):
            got = me.settle([])
            assert got is not None and got["stats"]["records_total"] == 5 and got["stats"]["replays_total"] == 3
        assert not (folder / "111.json").exists()

    def test_live_silent_process_counts_as_published(self, folder: Path) -> None:
        """A live process that did not answer is counted as it last published, and not folded."""
        other = _process(folder, 112)
        other.publish(_counts(7))
        sock = _listen(folder / "112.sock")
        try:
            got = CountLedger(folder).settle([])
            assert got is not None and got["stats"]["records_total"] == 7
            assert (folder / "112.json").exists()
        finally:
            sock.close()

    def test_answered_process_is_not_counted_twice(self, folder: Path) -> None:
        """A scrape that has a process's answer does not add its published counts, even when a
        concurrent scrape folded them as it died; after APART_S they join the total."""
        clock = _Clock()
        me, other = CountLedger(folder, clock=clock), _process(folder, 113)
        other.publish(_counts(4))
        assert me.settle([(113, other.token)]) is None  # answered: its answer counts it
        assert (folder / "113.json").exists()
        got = CountLedger(folder, clock=clock).settle([])  # it died; another scrape folds it
        assert got is not None and got["stats"]["records_total"] == 4
        assert me.settle([(113, other.token)]) is None  # a scrape that still had its answer
        clock.now += APART_S + 1
        got = me.settle([])
        assert got is not None and got["stats"]["records_total"] == 4

    def test_fold_cut_short_is_not_counted_again(self, folder: Path) -> None:
        """A fold stopped after writing retired.json but before removing the dead file counts it once."""
        me, other = CountLedger(folder), _process(folder, 114)
        other.publish(_counts(6))
        kept = (folder / "114.json").read_bytes()
        me.settle([])
        (folder / "114.json").write_bytes(kept)  # as if the unlink never happened
        got = me.settle([])
        assert got is not None and got["stats"]["records_total"] == 6

    def test_pid_reused_by_a_new_process(self, folder: Path) -> None:
        """A new process with a dead one's pid folds the dead one's counts before it listens, and
        its own counts are counted beside them."""
        _process(folder, 115).publish(_counts(5))
        successor = _process(folder, 115)
        successor.fold_own_pid()
        successor.publish(_counts(2))
        sock = _listen(folder / "115.sock")
        try:
            got = CountLedger(folder).settle([])
            assert got is not None and got["stats"]["records_total"] == 7
        finally:
            sock.close()

    def test_add_retired(self) -> None:
        """Retired counters and batch buckets add to the merged stats; the batch mean is weighted."""
        merged = merge_stats([_stats(10, 0.1, {"1": 2, "2": 0}, 1.0)])
        out = add_retired(merged, _counts(5, batches={"1": 0, "2": 2}))
        assert out["records_total"] == 15 and out["replays_total"] == 6 and out["queue_depth"] == 2
        assert out["batch_size"]["histogram"] == {"1": 2, "2": 2}
        assert out["batch_size"]["mean"] == (1.0 * 2 + 1.0 * 2) / 4
        assert add_retired(merged, None) == merged

    def test_a_write_cut_short_leaves_nothing(self, folder: Path) -> None:
        """A process killed in the middle of publishing leaves ``<pid>.json.tmp``: the next settle
        removes it (every write is made under the lock a settle holds), where it stayed until the
        service stopped; the counts it had published before are still folded."""
        _process(folder, 117).publish(_counts(3))
        (folder / "117.json.tmp").write_bytes(b'{"token": "half')
        (folder / "retired.json.tmp").write_bytes(b"")
        got = CountLedger(folder).settle([])
        assert got is not None and got["stats"]["records_total"] == 3
        assert not list(folder.glob("*.tmp"))

    def test_published_files_are_private(self, folder: Path) -> None:
        """The counts files are this user's only (mode 0600), as the sockets are."""
        me = CountLedger(folder)
        me.publish(_counts(1))
        _process(folder, 116).publish(_counts(1))
        me.settle([])
        for name in (f"{me.pid}.json", "retired.json"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name


class TestLedgerDamage:
    """A damaged or unwritable ledger costs at most the counts it held: it never stops a scrape or a
    process from starting (a garbage retired.json failed every /metrics with a 500, and failed the
    start of the process replacing a dead one, which stopped the whole service)."""

    @pytest.mark.parametrize("garbage", [b"garbage{", b"", b"[]", b'{"total": 3}', b'{"total": null, "recent": 1}'])
    def test_garbage_retired_file(self, folder: Path, garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
        """An unreadable retired.json is replaced by an empty ledger, with a warning naming it."""
        (folder / "retired.json").write_bytes(garbage)
        me = CountLedger(folder)
        me.fold_own_pid()
        _process(folder, 121).publish(_counts(5))
        for _ in range(2):
            got = me.settle([])
            assert got is not None and got["stats"]["records_total"] == 5
        assert any("retired.json" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    @pytest.mark.parametrize(
        "garbage",
        [
            b"[]",
            b"{}",
            b'{"token": "x"}',
            b'{"token": 1, "counts": []}',
            b'{"token": "x", "counts": {"stats": {"records_total": "many"}}}',
        ],
    )
    def test_garbage_published_file(self, folder: Path, garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
        """A published file of the wrong shape is left out of the sum (warned, naming it), the others
        counted; a dead process's is then removed, so later scrapes do not warn of it again."""
        (folder / "122.json").write_bytes(garbage)
        _process(folder, 123).publish(_counts(4))
        got = CountLedger(folder).settle([])
        assert got is not None and got["stats"]["records_total"] == 4
        assert [r for r in caplog.records if "122.json" in r.getMessage() and "unreadable" in r.getMessage()]
        assert not (folder / "122.json").exists()
        caplog.clear()
        got = CountLedger(folder).settle([])
        assert got is not None and got["stats"]["records_total"] == 4
        assert not [r for r in caplog.records if r.levelname == "WARNING"]

    def test_garbage_file_of_a_live_process_stays(self, folder: Path) -> None:
        """A live process's unreadable file is left out but kept: its next publication replaces it."""
        (folder / "125.json").write_bytes(b"garbage{")
        sock = _listen(folder / "125.sock")
        try:
            assert CountLedger(folder).settle([]) is None
            assert (folder / "125.json").exists()
        finally:
            sock.close()

    def test_unwritable_ledger(self, folder: Path) -> None:
        """When retired.json cannot be written, a scrape still adds the dead process's counts (read
        from its file, which is kept until the ledger holds them), and publishing only warns."""
        _process(folder, 124).publish(_counts(6))
        (folder / "retired.json.tmp").mkdir()  # every write of retired.json fails
        me = CountLedger(folder)
        for _ in range(2):
            got = me.settle([])
            assert got is not None and got["stats"]["records_total"] == 6
        assert (folder / "124.json").exists()
        (folder / f"{me.pid}.json.tmp").mkdir()
        me.publish(_counts(1))  # no exception: the scrape that publishes is still answered
        (folder / "retired.json.tmp").rmdir()
        got = me.settle([])
        assert got is not None and got["stats"]["records_total"] == 6
        assert not (folder / "124.json").exists()

    def test_folder_gone(self, folder: Path) -> None:
        """A peer folder removed under a live process (a temporary-files cleaner) fails no scrape."""
        me = CountLedger(folder)
        shutil.rmtree(folder)
        me.publish(_counts(1))
        me.fold_own_pid()
        assert me.settle([]) is None
