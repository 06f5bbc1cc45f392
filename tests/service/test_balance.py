"""Connections kept evenly spread over ``serve --processes N`` (:mod:`atomic_usage.service.balance`)."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from atomic_usage.service.balance import ConnectionBalance, shared_counts

from ._server import AUTH, Server, connection_holders, payload


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _balance(counts: list[int], mine: list[int], clock: _Clock, index: int = 0) -> ConnectionBalance:
    return ConnectionBalance(counts, index, lambda: mine[0], cooldown_s=0.2, clock=clock)


class TestShare:
    def test_closes_only_above_the_share(self) -> None:
        """16 connections over 2 processes: 9 is one too many, 8 is the share."""
        clock = _Clock()
        mine = [9]
        b = _balance([0, 7], mine, clock)
        assert b.should_close()
        clock.now += 1
        mine[0] = 8
        assert not b.should_close()
        assert b.closed == 1

    def test_an_odd_total_leaves_the_extra_one_alone(self) -> None:
        """17 over 2: 9/8 is as even as it gets, so nobody closes."""
        assert not _balance([0, 8], [9], _Clock()).should_close()

    def test_one_close_per_cooldown(self) -> None:
        """The count drops only once the client has gone: no second close for the same excess at once."""
        clock = _Clock()
        b = _balance([0, 2], [14], clock)
        assert b.should_close()
        assert not b.should_close()
        clock.now += 0.19
        assert not b.should_close()
        clock.now += 0.02
        assert b.should_close()
        assert b.closed == 2

    def test_writes_its_own_slot_only(self) -> None:
        counts = [5, 6, 7]
        b = _balance(counts, [3], _Clock(), index=1)
        b.publish()
        assert counts == [5, 3, 7]
        b.stop()
        assert counts == [5, 0, 7]

    def test_three_processes(self) -> None:
        """30 over 3: the share is 10; the one with 12 closes, the ones at or under it do not."""
        counts = [12, 10, 8]
        assert _balance(counts, [12], _Clock(), index=0).should_close()
        assert not _balance(counts, [10], _Clock(), index=1).should_close()
        assert not _balance(counts, [8], _Clock(), index=2).should_close()

    def test_slot_outside_the_counters_is_refused(self) -> None:
        with pytest.raises(ValueError, match="slot 2"):
            ConnectionBalance([0, 0], 2, lambda: 0)

    def test_shared_counts_cross_processes(self) -> None:
        """The counters are one block of shared memory: a spawned process's write is seen here."""
        ctx = multiprocessing.get_context("spawn")
        counts = shared_counts(ctx, 2)
        p = ctx.Process(target=_write_seven, args=(counts,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert list(counts) == [0, 7]

    def test_the_tick_keeps_the_slot_current(self) -> None:
        """Each tick of a serving process's event loop writes its sign of life and its count, so
        an idle process's slot is current too; stopping clears it."""
        from types import SimpleNamespace

        from atomic_usage.service.supervisor import _tick

        counts, beats = [0, 0], [0.0, 0.0]
        mine = [4]
        b = ConnectionBalance(counts, 0, lambda: mine[0])
        server = SimpleNamespace(should_exit=False)
        tick = _tick(beats, 0, b, server)
        tick()
        assert counts[0] == 4 and beats[0] > 0
        mine[0] = 2
        tick()
        assert counts[0] == 2 and not server.should_exit  # its parent is still there
        b.stop()
        assert counts[0] == 0


def _write_seven(counts: list[int]) -> None:
    counts[1] = 7


def test_sixteen_keepalive_clients_end_up_eight_and_eight(tmp_path: Path) -> None:
    """A client pool of 16 keep-alive connections, however the kernel first hashed them, ends
    up 8/8 over two processes; every request on the way is answered 200 (by chance alone,
    8/8 comes up one time in five)."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see which process holds a connection")
    from .test_processes import _wait_for_processes

    with Server(tmp_path, args=("--processes", "2"), group=True) as srv:
        _wait_for_processes(srv, 2)
        clients = [srv.client() for _ in range(16)]
        try:
            spread: list[int] = []
            for n in range(40):
                for k, c in enumerate(clients):
                    r = c.post("/v1/predict", json=payload(2, seed=n, prefix=f"c{k}-"), headers=AUTH)
                    assert r.status_code == 200, r.text
                for c in clients:  # every client holds a connection again (reopened after a close)
                    assert c.get("/healthz", headers=AUTH).status_code == 200
                spread = connection_holders(srv.port)
                if spread == [8, 8]:
                    break
                time.sleep(0.25)  # past the cooldown
            assert spread == [8, 8]
        finally:
            for c in clients:
                c.close()
