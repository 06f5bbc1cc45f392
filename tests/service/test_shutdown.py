"""SIGKILL and SIGTERM of a serving process while clients send: no 200 is lost, no work is done twice."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._server import AUTH, Server, payload


class _Client(threading.Thread):
    """Sends payloads with keys ``{tag}-{n}`` one after another, recording each outcome."""

    def __init__(self, srv: Server, tag: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.tag = srv, tag
        self.ok: dict[str, dict[str, Any]] = {}
        self.sent: dict[str, dict[str, Any]] = {}
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with self.srv.client(timeout=30) as c:
            n = 0
            while not self.stop.is_set():
                key, body = f"{self.tag}-{n}", payload(5, seed=n, prefix=f"{self.tag}m")
                self.sent[key] = body
                try:
                    r = c.post("/v1/predict", json=body, headers={**AUTH, "Idempotency-Key": key})
                except httpx.TransportError:
                    return  # the server went away
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.ok[key] = r.json()
                n += 1


def _load(srv: Server, clients: int, min_ok: int) -> list[_Client]:
    threads = [_Client(srv, f"c{i}") for i in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(t.ok) for t in threads) < min_ok and time.monotonic() < deadline:
        time.sleep(0.02)
    return threads


def _db_tasks(data_dir: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(data_dir / "engine.sqlite3")
    try:
        return {r: (s, a) for r, s, a in conn.execute("SELECT request_id, status, attempts FROM tasks")}
    finally:
        conn.close()


def _check_after_restart(srv: Server, threads: list[_Client], retry_s: float, *, retry_all: bool) -> None:
    ok = {k: v for t in threads for k, v in t.ok.items()}
    sent = {k: v for t in threads for k, v in t.sent.items()}
    assert ok, "no request succeeded before the stop"
    with srv.client() as c:
        for key, first in ok.items():
            task = c.get(f"/v1/tasks/{first['taskId']}", headers=AUTH).json()
            assert task["status"] == "done" and task["results"] == first["results"], key
        # Every key retried (with retry_all, also those cut off, which resume once their
        # lease runs out): a 200 with the first result, never new work.
        for key, body in (sent if retry_all else {k: sent[k] for k in ok}).items():
            deadline = time.monotonic() + retry_s
            while True:
                r = c.post("/v1/predict", json=body, headers={**AUTH, "Idempotency-Key": key})
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # a task cut off mid-run resumes once its lease runs out
            assert r.status_code == 200, (key, r.status_code, r.text)
            if key in ok:
                assert r.json() == ok[key], f"{key} got a different result on retry"
    tasks = _db_tasks(srv.data_dir)
    assert set(tasks) <= set(sent) and set(ok) <= set(tasks)
    for key in ok:
        assert tasks[key] == ("done", 1), f"{key} was run again: {tasks[key]}"


class TestKill:
    """SIGKILL while clients send; after a restart every 200 is at /v1/tasks and retries are idempotent."""

    def _run(self, tmp_path: Path, clients: int, min_ok: int, retry_s: float, retry_all: bool) -> None:
        srv = Server(tmp_path).start()
        try:
            threads = _load(srv, clients, min_ok)
            assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
            for t in threads:
                t.stop.set()
                t.join(30)
            srv.start()
            _check_after_restart(srv, threads, retry_s, retry_all=retry_all)
        finally:
            srv.kill()

    def test_kill_one_client(self, tmp_path: Path) -> None:
        """One client killed mid-stream; the answered keys are checked (the short version)."""
        self._run(tmp_path, clients=1, min_ok=5, retry_s=60, retry_all=False)

    @pytest.mark.slow
    def test_kill_under_concurrent_load(self, tmp_path: Path) -> None:
        """Four clients in parallel, so tasks are cut off mid-run and resume after their lease (~30 s)."""
        self._run(tmp_path, clients=4, min_ok=40, retry_s=120, retry_all=True)


class TestGracefulShutdown:
    """SIGTERM mid-load: in-flight requests finish, every 200 is done, then the process exits 0."""

    def test_sigterm_mid_load(self, tmp_path: Path) -> None:
        """After SIGTERM every answered request has its task done, and none is left open."""
        srv = Server(tmp_path).start()
        try:
            threads = _load(srv, 3, min_ok=10)
            # A clean shutdown exits 0: uvicorn re-raised the SIGTERM it handled (143, a failure to a supervisor).
            assert srv.stop(signal.SIGTERM, timeout_s=60) == 0
            for t in threads:
                t.stop.set()
                t.join(30)
            ok = {k for t in threads for k in t.ok}
            tasks = _db_tasks(tmp_path)
            assert ok and all(tasks[k][0] == "done" for k in ok)
            assert all(status == "done" for status, _ in tasks.values()), "a task was left open"
        finally:
            srv.kill()
