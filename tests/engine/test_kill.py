"""Kill -9 of a process mid-task, then restart: no accepted task is lost, none is done twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(db: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.Popen([sys.executable, "-m", "tests.engine._store_loop", str(db), str(log), *args], env=env)


def _lines(log: Path, kind: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [ln.split() for ln in log.read_text().splitlines() if ln.startswith(kind + " ")]


def _serve_and_kill(db: Path, log: Path, n: int, kill_after_completed: int) -> None:
    start = len(_lines(log, "completed"))
    proc = _run(db, log, "serve", str(n))
    deadline = time.monotonic() + 60
    while len(_lines(log, "completed")) < start + kill_after_completed and time.monotonic() < deadline:
        assert proc.poll() is None, "the loop ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def _check(db: Path, log: Path) -> None:
    # The accepted log is written after accept() committed: each of its tasks must be done.
    accepted = {parts[1] for parts in _lines(log, "accepted")}
    conn = sqlite3.connect(db)
    status = dict(conn.execute("SELECT task_id, status FROM tasks").fetchall())
    bodies = {t: b.decode() for t, b in conn.execute("SELECT task_id, body FROM results").fetchall()}
    per_task = conn.execute("SELECT COUNT(*) FROM results GROUP BY task_id HAVING COUNT(*) > 1").fetchall()
    conn.close()
    assert accepted and accepted <= set(status)
    assert {t for t, s in status.items() if s != "done"} == set(), "a task was left unfinished"
    assert per_task == [] and set(bodies) == set(status)
    # Every completion, first or late, was answered with the one stored result.
    for _, task_id, body in _lines(log, "completed"):
        assert bodies[task_id] == body, f"task {task_id} got two different results"


class TestKillNine:
    """A SIGKILLed engine loop loses no accepted task and completes none twice."""

    def test_kill_mid_run_then_recover(self, tmp_path: Path) -> None:
        db, log = tmp_path / "engine.sqlite3", tmp_path / "log"
        _serve_and_kill(db, log, n=200, kill_after_completed=15)
        assert _run(db, log, "recover").wait(60) == 0
        _check(db, log)

    @pytest.mark.slow
    def test_repeated_kills_then_recover(self, tmp_path: Path) -> None:
        db, log = tmp_path / "engine.sqlite3", tmp_path / "log"
        for kill_after in (5, 40, 1, 25, 60):
            _serve_and_kill(db, log, n=300, kill_after_completed=kill_after)
        assert _run(db, log, "recover").wait(120) == 0
        _check(db, log)
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] > 100
        conn.close()
