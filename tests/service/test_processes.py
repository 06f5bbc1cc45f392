"""Several serving processes over one store: one task per key, any process answers, metrics for all.

Tested against real servers on loopback: ``serve --processes 2`` (uvicorn's supervisor, one
socket, two engines), and two such commands on one data folder (``ATOMIC_PROCESSES=2``, four
processes), each on its own port, so a key is sent to two different processes for sure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._server import AUTH, ROOT, Server, connection_holders, payload
from .test_shutdown import _check_after_restart, _db_tasks, _load

T0 = "2026-01-05T08:{:02d}:00Z"


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def _wait_for_processes(srv: Server, n: int, timeout_s: float = 90) -> None:
    """Waits until /metrics covers ``n`` processes (/readyz answers once the first one is up)."""
    deadline = time.monotonic() + timeout_s
    with srv.client() as c:
        while True:
            if _metric(c.get("/metrics", headers=AUTH).text, "atomic_processes") == n:
                return
            assert time.monotonic() < deadline, f"fewer than {n} processes answered in {timeout_s} s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two serve commands on one data folder (ATOMIC_PROCESSES=2: two processes each), each on its own port."""
    data = tmp_path_factory.mktemp("shared")
    Server(data, env={"ATOMIC_PROCESSES": "2"}).start().stop()  # creates the store and keyring first
    with Server(data, env={"ATOMIC_PROCESSES": "2"}) as a, Server(data, env={"ATOMIC_PROCESSES": "2"}) as b:
        _wait_for_processes(a, 4)
        yield a, b


class TestTwoServers:
    """Two servers (four processes) on one store behave as one service."""

    def test_same_key_sent_to_both_at_once_is_one_task(self, pair: tuple[Server, Server]) -> None:
        """Both answer 200 with the same body; the store holds one task for the key, run once."""
        a, b = pair
        for n in range(4):
            key, body = f"both-{n}", payload(5, seed=n, prefix=f"both{n}-")
            answers: dict[str, httpx.Response] = {}

            def send(
                name: str, srv: Server, key: str = key, body: dict[str, Any] = body, answers: dict[str, Any] = answers
            ) -> None:
                with srv.client() as c:
                    answers[name] = c.post("/v1/predict", json=body, headers={**AUTH, "Idempotency-Key": key})

            threads = [threading.Thread(target=send, args=(name, srv)) for name, srv in (("a", a), ("b", b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert answers["a"].status_code == answers["b"].status_code == 200
            assert answers["a"].json() == answers["b"].json()
            assert _db_tasks(a.data_dir)[key] == ("done", 1)

    def test_task_read_from_the_other_process(self, pair: tuple[Server, Server]) -> None:
        """A task one process ran is read, done and with its results, from the other."""
        a, b = pair
        with a.client() as ca, b.client() as cb:
            r = ca.post("/v1/predict", json=payload(3, prefix="look-"), headers=AUTH).json()
            t = cb.get(f"/v1/tasks/{r['taskId']}", headers=AUTH).json()
            assert t["status"] == "done" and t["results"] == r["results"]
            found = cb.get("/v1/tasks", params={"request_id": r["requestId"]}, headers=AUTH).json()
            assert found["task_id"] == r["taskId"]

    def test_history_is_shared(self, pair: tuple[Server, Server]) -> None:
        """Observations sent to the two processes in turn make one history for the machine."""
        a, b = pair
        with a.client() as ca, b.client() as cb:
            for k in range(6):
                rec = {"id": "hist-1", "timestamp": T0.format(5 * k), "cpuLoad": 10.0 + k}
                r = (ca, cb)[k % 2].post("/v1/predict", json={"usageData": [rec]}, headers=AUTH)
                assert r.status_code == 200
                assert r.json()["results"][0]["forecasts"]["cpuLoad"]["historyLength"] == k + 1

    def test_metrics_cover_both(self, pair: tuple[Server, Server]) -> None:
        """Either server's /metrics counts the records all four processes served, and says it covers four."""
        a, b = pair
        with a.client() as ca, b.client() as cb:
            before = _metric(ca.get("/metrics", headers=AUTH).text, "atomic_records_total")
            for k in range(3):
                assert ca.post("/v1/predict", json=payload(4, seed=k, prefix="met-"), headers=AUTH).status_code == 200
            for k in range(2):
                assert cb.post("/v1/predict", json=payload(2, seed=k, prefix="met-"), headers=AUTH).status_code == 200
            texts = [ca.get("/metrics", headers=AUTH).text, cb.get("/metrics", headers=AUTH).text]
        for text in texts:
            assert _metric(text, "atomic_records_total") == before + 3 * 4 + 2 * 2
            assert _metric(text, "atomic_processes") == 4
            assert _metric(text, "atomic_up") == 1
            assert 'atomic_forecast_value{instance="met-0"' in text  # gauges merged too
        served = [
            _metric(t, 'atomic_http_request_duration_seconds_count{method="POST",route="/v1/predict",status="200"}')
            for t in texts
        ]
        assert served[0] == served[1]


class TestServeProcesses:
    """``serve --processes 2``: one socket, two engines, and a SIGKILL of them all loses no 200."""

    def test_requests_spread_and_metrics_add_up(self, tmp_path: Path) -> None:
        """Requests on fresh connections are all answered; /metrics covers both processes."""
        with Server(tmp_path, args=("--processes", "2"), group=True) as srv:
            _wait_for_processes(srv, 2)
            for n in range(16):
                with srv.client() as c:  # a connection each, so both processes get some
                    r = c.post("/v1/predict", json=payload(3, seed=n), headers={**AUTH, "Idempotency-Key": f"k{n}"})
                    assert r.status_code == 200
            with srv.client() as c:
                text = c.get("/metrics", headers=AUTH).text
            assert _metric(text, "atomic_processes") == 2
            assert _metric(text, "atomic_records_total") == 16 * 3

    def test_https(self, tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
        """--tls-cert/--tls-key apply to every process: predict and metrics over HTTPS."""
        with Server(tmp_path, args=("--processes", "2"), tls=tls_files, group=True) as srv:
            _wait_for_processes(srv, 2)
            with srv.client() as c:
                assert c.post("/v1/predict", json=payload(2), headers=AUTH).status_code == 200

    def test_refused_without_persistence(self, tmp_path: Path) -> None:
        """In-memory stores cannot be shared: serve says so and does not start."""
        srv = Server(tmp_path, args=("--processes", "2"), env={"SKIP_PERSISTENCE": "1"})
        with pytest.raises(RuntimeError, match="SKIP_PERSISTENCE"):
            srv.start(timeout_s=30)

    def test_a_process_that_cannot_start_stops_the_supervisor(self, tmp_path: Path) -> None:
        """A model folder damaged after serve checked it (the supervisor is started here without
        serve's checks): the serving processes cannot load it, each says why in one line (each
        printed a traceback), and the supervisor exits 3 instead of restarting them. (serve refuses
        a damaged folder, a --model that names nothing or a missing token before any process
        starts: test_a_damaged_model_folder_is_one_line, test_a_bad_model_or_no_token_is_one_line.)"""
        broken = tmp_path / "broken-model"
        broken.mkdir()
        (broken / "model.json").write_text("{not json")
        (broken / "model.onnx").write_bytes(b"")
        script = (
            "import sys\n"
            "from atomic_usage.config import Settings\n"
            "from atomic_usage.service.supervisor import serve_processes\n"
            "settings = Settings.from_env().replace(processes=2)\n"
            f"sys.exit(serve_processes(settings, {str(broken)!r}, {{'host': '127.0.0.1', 'port': 0}}))\n"
        )
        env = {**os.environ, "ATOMIC_DATA_DIR": str(tmp_path / "data"), "ATOMIC_API_TOKENS": AUTH["Authorization"][7:]}
        res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 3, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
        assert f"a serving process could not start: {broken}/model.json: model.json is malformed" in res.stderr

    def test_connections_spread_over_the_processes(self, tmp_path: Path) -> None:
        """Each process has its own SO_REUSEPORT socket: 16 connections opened at once land on both
        (all on one: probability 2 ** -15)."""
        if shutil.which("ss") is None:
            pytest.skip("needs ss (iproute2) to see which process holds a connection")
        with Server(tmp_path, args=("--processes", "2"), group=True) as srv:
            _wait_for_processes(srv, 2)
            clients = [srv.client() for _ in range(16)]
            try:
                for c in clients:
                    assert c.get("/healthz", headers=AUTH).status_code == 200
                spread = connection_holders(srv.port)
                assert len(spread) == 2, spread
            finally:
                for c in clients:
                    c.close()

    def _kill_and_restart(self, tmp_path: Path, clients: int, min_ok: int, retry_s: float, retry_all: bool) -> None:
        srv = Server(tmp_path, args=("--processes", "2"), group=True).start()
        try:
            _wait_for_processes(srv, 2)
            threads = _load(srv, clients, min_ok)
            srv.kill_group()  # the supervisor and both serving processes at once
            for t in threads:
                t.stop.set()
                t.join(30)
            assert not [s for t in threads for s in t.statuses if s >= 500], "a 5xx before the kill"
            srv.start()
            _check_after_restart(srv, threads, retry_s, retry_all=retry_all)
            _wait_for_processes(srv, 2)  # and never more: the dead processes' sockets were cleared
            with srv.client() as c:
                for _ in range(5):
                    assert _metric(c.get("/metrics", headers=AUTH).text, "atomic_processes") == 2
        finally:
            srv.kill()

    def test_sigkill_of_the_group_and_restart(self, tmp_path: Path) -> None:
        """Every 200 is done at /v1/tasks after the restart, retries get the same body, nothing ran twice."""
        self._kill_and_restart(tmp_path, clients=2, min_ok=10, retry_s=60, retry_all=False)

    @pytest.mark.slow
    def test_sigkill_under_load_resumes_cut_off_tasks_once(self, tmp_path: Path) -> None:
        """Four clients: tasks cut off mid-run resume after their lease (~30 s), each once."""
        self._kill_and_restart(tmp_path, clients=4, min_ok=40, retry_s=120, retry_all=True)
        recovered = {k: v for k, v in _db_tasks(tmp_path).items() if v[1] > 1}
        assert all(v == ("done", 2) for v in recovered.values()), recovered


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    """SIGTERM to the supervisor stops both serving processes cleanly; no task is left open."""
    srv = Server(tmp_path, args=("--processes", "2"), group=True).start()
    try:
        threads = _load(srv, 2, min_ok=6)
        assert srv.stop(signal.SIGTERM, timeout_s=60) == 0
        assert "on shutdown" not in srv.log.read_text()  # every serving process exited 0 too
        for t in threads:
            t.stop.set()
            t.join(30)
        tasks = _db_tasks(tmp_path)
        assert all(status == "done" for status, _ in tasks.values()), "a task was left open"
    finally:
        srv.kill()


def _children(pid: int) -> set[int]:
    """The living processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(d.name))
    return out


def _serving(pid: int) -> set[int]:
    """The serving processes of the supervisor ``pid`` (spawned; not its resource tracker)."""
    out = set()
    for p in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.add(p)
        except OSError:
            continue
    return out


@contextlib.contextmanager
def _supervised(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Server, set[int]]]:
    """``serve --processes 2`` in a group of its own, with both serving processes up: the server
    and their pids (from /proc; skipped without it). Killed with every process at the end."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads /proc to find the serving processes")
    srv = Server(tmp_path, args=("--processes", "2"), env=env, group=True).start()
    try:
        _wait_for_processes(srv, 2)
        assert srv.proc is not None
        serving = _serving(srv.proc.pid)
        assert len(serving) == 2, serving
        yield srv, serving
    finally:
        srv.kill()


def test_a_stopped_process_is_replaced(tmp_path: Path) -> None:
    """A serving process frozen by SIGSTOP keeps its socket, so connections hashed to it would
    hang: the supervisor sees its event loop stop ticking, kills it and starts another, and
    then requests on fresh connections are all answered again."""
    frozen = None
    with _supervised(tmp_path, {"ATOMIC_PROCESS_STALL_S": "2"}) as (srv, serving):
        assert srv.proc is not None
        try:
            frozen = min(serving)
            os.kill(frozen, signal.SIGSTOP)
            deadline = time.monotonic() + 60
            while frozen in _children(srv.proc.pid) or len(_serving(srv.proc.pid)) < 2:
                assert time.monotonic() < deadline, "the stopped process was not replaced"
                time.sleep(0.2)
            frozen = None
            _wait_for_processes(srv, 2)
            for n in range(16):
                with srv.client(timeout=20) as c:  # a connection each: both sockets are reached
                    headers = {**AUTH, "Idempotency-Key": f"after-{n}"}
                    assert c.post("/v1/predict", json=payload(2, seed=n), headers=headers).status_code == 200
            assert "has not run for" in srv.log.read_text()
        finally:
            if frozen is not None:
                os.kill(frozen, signal.SIGKILL)


def test_serving_processes_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the supervisor alone: its serving processes notice (their parent changed) and
    shut down gracefully, freeing the port, instead of serving on unsupervised."""
    with _supervised(tmp_path) as (srv, serving):
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in serving):
            assert time.monotonic() < deadline, "a serving process outlived its supervisor"
            time.sleep(0.2)
        assert srv.log.read_text().count("is gone: this serving process shuts down") == 2
        with pytest.raises(httpx.TransportError), srv.client(timeout=5) as c:
            c.get("/healthz", headers=AUTH)


def _state(pid: int) -> str:
    """A process's state letter (Z for a zombie), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_sigterm_while_a_process_is_still_starting(tmp_path: Path) -> None:
    """SIGTERM to the supervisor while its processes are still starting (importing, loading the
    model): every one exits 0, not by the signal, and so does the supervisor."""
    srv = Server(tmp_path, args=("--processes", "2"), group=True)
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    env.update(ATOMIC_DATA_DIR=str(tmp_path), ATOMIC_API_TOKENS="t" * 32, LOG_LEVEL="WARNING")
    with open(srv.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atomic_usage.cli", "serve", "--port", "0", "--processes", "2", "--model", "naive"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while len(_serving(proc.pid)) < 2:
            assert proc.poll() is None, srv.log.read_text()
            assert time.monotonic() < deadline, "the serving processes were never started"
            time.sleep(0.02)
        starting = _serving(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "on shutdown" not in srv.log.read_text(), srv.log.read_text()
        assert not [p for p in starting if Path(f"/proc/{p}").exists()], "a serving process outlived the supervisor"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _counter_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram sample of an exposition (not ``_created``), by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class _CounterWatch:
    """Scrapes /metrics and fails when a counter or histogram sample is lower than in an earlier scrape."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def scrape(self) -> str:
        with self.srv.client() as c:
            text = c.get("/metrics", headers=AUTH).text
        now = _counter_samples(text)
        dropped = {k: (v, now.get(k)) for k, v in self.seen.items() if now.get(k, float("-inf")) < v}
        assert not dropped, f"counters went down (before, after): {dropped}"
        self.seen = now
        return text


def _kill_all_and_rescrape(srv: Server, victims: set[int], scrape: Callable[[], str]) -> str:
    """SIGKILLs every serving process in ``victims``, waits until two others serve and /metrics
    counts both, and returns that scrape."""
    assert srv.proc is not None
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        serving = _serving(srv.proc.pid)
        if len(serving) == 2 and not serving & victims:
            with contextlib.suppress(httpx.HTTPError):
                text = scrape()
                if _metric(text, "atomic_processes") == 2:
                    return text
        assert time.monotonic() < deadline, "the killed processes were not replaced"
        time.sleep(0.2)


def test_counters_never_drop_when_a_process_is_replaced(tmp_path: Path) -> None:
    """SIGKILL of a serving process, three times in one slot: in every scrape, before, while and
    after the supervisor replaces it, no counter or histogram sample is lower than before, and
    the totals still count what the dead processes had served."""
    with _supervised(tmp_path) as (srv, serving):
        assert srv.proc is not None
        watch = _CounterWatch(srv)
        victim = min(serving)
        for rnd in range(3):
            for n in range(8):
                with srv.client() as c:  # a connection each, so both processes serve some
                    for _ in range(2):  # the second one is a replay
                        headers = {**AUTH, "Idempotency-Key": f"slot-{rnd}-{n}"}
                        assert c.post("/v1/predict", json=payload(3, seed=n), headers=headers).status_code == 200
            text = watch.scrape()
            assert _metric(text, "atomic_processes") == 2
            assert _metric(text, "atomic_records_total") == (rnd + 1) * 8 * 3
            assert _metric(text, "atomic_replays_total") == (rnd + 1) * 8
            before = _serving(srv.proc.pid)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while True:
                # A connection the kernel gave the dying process's socket is reset: a client retries it.
                with contextlib.suppress(httpx.TransportError):
                    text = watch.scrape()
                    serving = _serving(srv.proc.pid)
                    if victim not in serving and len(serving) == 2 and _metric(text, "atomic_processes") == 2:
                        break
                assert time.monotonic() < deadline, "the killed process was not replaced"
                time.sleep(0.2)
            [victim] = serving - before  # the same slot's next process: killed in the next round
            text = watch.scrape()
            assert _metric(text, "atomic_records_total") == (rnd + 1) * 8 * 3
            assert _metric(text, "atomic_replays_total") == (rnd + 1) * 8


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "reuseport"])
def test_a_taken_port_is_one_line_and_exit_3(tmp_path: Path, reuseport: bool, processes: str) -> None:
    """serve on a port another socket holds: one error line naming the address, exit 3, and no
    store opened in the data folder (--processes 2 gave a traceback from the supervisor's bind,
    exit 1; one process said "service ready" and opened the store before uvicorn's bind failed).
    Also when that socket has SO_REUSEPORT, as another serve --processes of this user's does: the
    kernel let both bind, and the second service took a share of the first one's connections."""
    import socket

    with socket.socket() as taken:
        if reuseport:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "ATOMIC_DATA_DIR": str(tmp_path), "ATOMIC_API_TOKENS": AUTH["Authorization"][7:]}
        res = subprocess.run(
            [sys.executable, "-m", "atomic_usage.cli", "serve", "--port", str(port), "--processes", processes],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and "service ready" not in res.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in res.stderr
    assert not (tmp_path / "engine.sqlite3").exists()


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["--model", "NAIVE"], {}, 3, "did you mean 'naive'?"),
        ([], {"ATOMIC_API_TOKENS": ""}, 2, "No API token is configured"),
    ],
    ids=["model", "token"],
)
def test_a_bad_model_or_no_token_is_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    """serve --processes with a --model that names nothing, or no API token, fails as one process
    does: one message and its exit status, before any serving process starts (each started one
    printed the same traceback, and the supervisor exited 3)."""
    env = {
        **os.environ,
        "ATOMIC_DATA_DIR": str(tmp_path),
        "ATOMIC_API_TOKENS": AUTH["Authorization"][7:],
        "ATOMIC_API_TOKENS_FILE": "",
        **env,
    }
    res = subprocess.run(
        [sys.executable, "-m", "atomic_usage.cli", "serve", "--port", "0", "--processes", "2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == status, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count(message) == 1, res.stderr


@pytest.mark.parametrize(
    ("damage", "how", "processes"),
    [
        ("truncated model.json", "--model", "2"),
        ("no model.onnx", "--model", "2"),
        ("truncated model.json", "ATOMIC_MODEL_DIR", "2"),
        ("truncated model.json", "ATOMIC_MODEL_DIR", "1"),
        ("empty model.onnx", "--model", "1"),
        ("empty model.onnx", "--model", "2"),
        ("swapped networks", "--model", "1"),
    ],
)
def test_a_damaged_model_folder_is_one_line(tmp_path: Path, damage: str, how: str, processes: str) -> None:
    """serve with a damaged model folder, as --model or ATOMIC_MODEL_DIR: one error line naming the
    file, exit 3, and no store made, with one process or several (--processes 2 printed a traceback
    from every serving process and made the store first; one process given the folder by
    ATOMIC_MODEL_DIR printed uvicorn's start-up traceback; an empty network file was found only
    at the first request, after "service ready")."""
    folder = tmp_path / "model"
    shutil.copytree(ROOT / "src" / "atomic_usage" / "models" / "_default", folder)
    if damage == "no model.onnx":
        (folder / "model.onnx").unlink()
        message = f"{folder}: model.onnx is missing"
    elif damage == "empty model.onnx":  # the card is sound: only opening the network finds it
        (folder / "model.onnx").write_bytes(b"")
        message = f"{folder / 'model.onnx'}: ONNX Runtime cannot load the network"
    elif damage == "swapped networks":  # both load: only their shapes against the card find it
        near, far = (folder / "near.onnx").read_bytes(), (folder / "model.onnx").read_bytes()
        (folder / "near.onnx").write_bytes(far)
        (folder / "model.onnx").write_bytes(near)
        message = f"{folder / 'near.onnx'}: the network"
    else:
        card = folder / "model.json"
        card.write_text(card.read_text()[:40])
        message = f"{card}: model.json is malformed"
    env = {**os.environ, "ATOMIC_DATA_DIR": str(tmp_path / "data"), "ATOMIC_API_TOKENS": AUTH["Authorization"][7:]}
    args = ["--port", "0", "--processes", processes]
    if how == "--model":
        args += ["--model", str(folder)]
    else:
        env["ATOMIC_MODEL_DIR"] = str(folder)
    res = subprocess.run(
        [sys.executable, "-m", "atomic_usage.cli", "serve", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 3, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), res.stderr
    assert not (tmp_path / "data" / "engine.sqlite3").exists()


def test_counts_of_a_process_killed_between_scrapes_stay(tmp_path: Path) -> None:
    """A serving process publishes its counters every second, not only when scraped: one killed
    before any scrape still has every record it served in the merged counters."""
    with _supervised(tmp_path) as (srv, serving):
        assert srv.proc is not None
        for n in range(8):
            with srv.client() as c:  # a connection each, so both processes serve some
                assert c.post("/v1/predict", json=payload(3, seed=n), headers=AUTH).status_code == 200
        time.sleep(2.5)  # two publications
        text = _kill_all_and_rescrape(srv, serving, _CounterWatch(srv).scrape)
        assert _metric(text, "atomic_records_total") == 8 * 3


def test_counters_never_drop_when_every_process_is_replaced(tmp_path: Path) -> None:
    """SIGKILL of both serving processes at once: their replacements joined a peer folder nobody
    held, took it for a dead run's and emptied it, so the merged counters fell to 0 (420 -> 0).
    The supervisor holds the folder too, so the ledger outlives its processes."""
    with _supervised(tmp_path) as (srv, serving):
        assert srv.proc is not None
        watch = _CounterWatch(srv)
        for n in range(6):
            with srv.client() as c:
                assert c.post("/v1/predict", json=payload(2, seed=n), headers=AUTH).status_code == 200
        assert _metric(watch.scrape(), "atomic_records_total") == 12
        _kill_all_and_rescrape(srv, serving, watch.scrape)
        assert _metric(watch.scrape(), "atomic_records_total") == 12


def test_a_new_run_removes_the_peer_folders_of_dead_runs(tmp_path: Path) -> None:
    """A SIGKILLed server leaves its peer folder behind; the next server to start (on another
    store) removes it, and leaves the folder of a server that still runs alone."""
    from atomic_usage.service.peers import peer_folder

    args = ("--processes", "2")
    dead = Server(tmp_path / "dead", args=args, group=True).start()
    try:
        _wait_for_processes(dead, 2)
    finally:
        dead.kill_group()  # SIGKILL of the supervisor and its processes: none of them cleans up
    left = peer_folder(tmp_path / "dead")
    assert list(left.glob("*.sock")), "the killed server left no socket: nothing to test"
    with Server(tmp_path / "live", args=args, group=True) as live:
        _wait_for_processes(live, 2)
        with Server(tmp_path / "new", args=args, group=True) as new:
            _wait_for_processes(new, 2)
            assert not left.exists(), "the dead run's peer folder was left behind"
            assert peer_folder(tmp_path / "live").exists()
            assert peer_folder(tmp_path / "new").exists()
        assert peer_folder(tmp_path / "live").exists()
        _wait_for_processes(live, 2, timeout_s=5)  # both of its processes still answer each other
    assert not peer_folder(tmp_path / "live").exists()  # the last one out removes its folder


def _holding_pids(port: int) -> set[int]:
    """The processes holding an established connection on ``port`` (Linux ``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


@pytest.mark.slow
def test_retry_after_a_reset_gets_the_same_result(tmp_path: Path) -> None:
    """A serving process SIGKILLed while clients send: their connections to it are reset mid-request.
    Retrying every request with its Idempotency-Key (the supervisor has replaced the process) gets
    a 200 with the first answer where there was one, one task per key, answered tasks run once
    and cut-off ones resumed at most once (after their lease)."""
    if shutil.which("ss") is None or not Path("/proc/self/stat").exists():
        pytest.skip("needs ss (iproute2) and /proc to find the process holding a connection")
    srv = Server(tmp_path, args=("--processes", "2"), group=True).start()
    try:
        _wait_for_processes(srv, 2)
        assert srv.proc is not None
        threads = _load(srv, 4, min_ok=20)
        victims = _holding_pids(srv.port) & _serving(srv.proc.pid)
        assert victims, "no serving process holds a client's connection"
        os.kill(min(victims), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while all(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, "no client's connection was reset"
            time.sleep(0.05)
        cut = [t for t in threads if not t.is_alive()]
        for t in threads:
            t.stop.set()
            t.join(30)
        assert not [s for t in threads for s in t.statuses if s >= 500], "a 5xx before the kill"
        cut_keys = {list(t.sent)[-1] for t in cut}  # the request each cut-off client was sending
        assert all(k not in t.ok for t in cut for k in cut_keys & set(t.sent))
        _check_after_restart(srv, threads, retry_s=120, retry_all=True)
        tasks = _db_tasks(tmp_path)
        assert all(status == "done" and attempts <= 2 for status, attempts in tasks.values()), tasks
    finally:
        srv.kill()


@pytest.mark.parametrize("how", ["--model", "ATOMIC_MODEL_DIR"])
def test_each_serving_process_opens_its_own_model_before_it_is_ready(tmp_path: Path, how: str) -> None:
    """A serving process loads its own copy of the model; a network damaged after serve checked
    the folder is refused as the process starts (an ArtifactError: one line, exit 3), not at its
    first request after "service ready"."""
    from atomic_usage import Settings
    from atomic_usage.errors import ArtifactError
    from atomic_usage.service.app import worker_app

    folder = tmp_path / "model"
    shutil.copytree(ROOT / "src" / "atomic_usage" / "models" / "_default", folder)
    (folder / "near.onnx").write_bytes(b"")  # the card still reads: only opening the network finds it
    settings = Settings(data_dir=tmp_path / "data", processes=2)
    model = str(folder)
    if how == "ATOMIC_MODEL_DIR":
        settings, model = settings.replace(model_dir=folder), None  # type: ignore[assignment]
    with pytest.raises(ArtifactError, match="near.onnx: ONNX Runtime cannot load the network"):
        worker_app(settings, model)
    assert not (tmp_path / "data" / "engine.sqlite3").exists()
