"""A real ``atomic-usage serve`` subprocess on loopback, for the service tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bind to 0, then release it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connection_holders(port: int) -> list[int]:
    """How many established connections each server process holds on ``port`` (sorted; Linux ``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    per: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        per[pid] = per.get(pid, 0) + 1
    return sorted(per.values())


def payload(n: int, *, seed: int = 0, prefix: str = "m") -> dict[str, Any]:
    """A valid payload of ``n`` records (distinct machines)."""
    return {
        "usageData": [
            {"id": f"{prefix}{i}", "cpuLoad": (seed * 7 + i) % 100, "memoryUsage": 50.5, "storageUsage": 20}
            for i in range(n)
        ]
    }


class Server:
    """``python -m atomic_usage.cli serve`` in a subprocess, with its own data folder and port.

    Args:
        data_dir: ATOMIC_DATA_DIR (reuse it to restart on the same store).
        model: ``--model`` (default the fast naive baseline; None serves the bundled model).
        env: extra environment variables.
        args: extra command-line arguments.
        tls: ``(cert, key, ca)`` paths to serve HTTPS.
        group: start it in a session of its own, so :meth:`kill_group` can SIGKILL it with every
            process it started (``serve --processes N``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        model: str | None = "naive",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
        group: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.model = model
        self.env = env or {}
        self.args = args
        self.tls = tls
        self.group = group
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client for this server (trusting the test CA under TLS)."""
        if self.tls:
            kw.setdefault("verify", ssl.create_default_context(cafile=str(self.tls[2])))
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)

    def start(self, timeout_s: float = 60) -> Server:
        """Starts the server and waits until /readyz answers 200 (kills it on any failure)."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.kill()
            raise

    def _start(self, timeout_s: float) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT / "src"),
            ATOMIC_DATA_DIR=str(self.data_dir),
            ATOMIC_API_TOKENS=TOKEN,
            ATOMIC_WORKERS="1",
            LOG_LEVEL="WARNING",
        )
        env.update(self.env)  # the test's own values win
        cmd = [
            sys.executable,
            "-m",
            "atomic_usage.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        if self.model:
            cmd += ["--model", self.model]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.group
            )
        deadline = time.monotonic() + timeout_s
        with self.client(timeout=2) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
                try:
                    if c.get("/readyz", headers=AUTH).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the server did not get ready:\n{self.log.read_text()}")
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Sends ``sig`` and waits for the exit; returns the exit code (killed if it hangs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def kill_group(self) -> None:
        """SIGKILL of the server and every process it started (needs ``group=True``)."""
        assert self.proc is not None and self.group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.group:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its processes too, whatever state it is in
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop(timeout_s=30)
        finally:
            self.kill()
