"""Against a real Prometheus server on loopback: pull over several pages, and the forecast gauges scraped.

Needs Debian's ``prometheus`` package (``prometheus`` and ``promtool``); skips without it.
The server is filled by ``promtool tsdb create-blocks-from openmetrics`` with known
node_exporter samples for two machines, one per minute for 23,000 minutes, so a pull at a
one-minute step needs three pages under the server's 11,000-point limit.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from atomic_usage.data.prometheus import MAX_POINTS, page_ranges, pull

N = 23_000
"""Samples per series: over twice the server's point limit."""
STEP_S = 60
END = pd.Timestamp("2025-01-01T00:00:00Z")
START = END - pd.Timedelta(seconds=STEP_S * (N - 1))
IDLE = {"db-1:9100": 0.75, "web-1:9100": 0.4}
"""Idle CPU fraction per machine: cpuLoad is 25 and 60."""
MEM_TOTAL = {"db-1:9100": 16 * 2**30, "web-1:9100": 8 * 2**30}
FS_SIZE = 500 * 10**9
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _known(machine: str, k: np.ndarray) -> dict[str, np.ndarray]:
    """The raw samples of step k: memory available and file system avail (integers, as exporters give)."""
    j = list(IDLE).index(machine)
    avail = np.round(MEM_TOTAL[machine] * (0.5 + 0.3 * np.sin(k / 97.0 + j))).astype(np.int64)
    fs_avail = (FS_SIZE - 10**9 * (50 + 7 * j) - 2_000_003 * k).astype(np.int64)  # a filling disk
    return {"mem_avail": avail, "fs_avail": fs_avail}


def _write_openmetrics(path: Path) -> None:
    k = np.arange(N)
    ts = (START.value // 10**9) + STEP_S * k
    lines: list[str] = []

    def family(name: str, kind: str, series: list[tuple[str, np.ndarray]], suffix: str = "") -> None:
        lines.append(f"# TYPE {name} {kind}")
        for labels, values in series:
            lines.extend(
                f"{name}{suffix}{{{labels}}} {v} {t}" for v, t in zip(values.tolist(), ts.tolist(), strict=True)
            )

    base = {m: f'instance="{m}",job="node"' for m in IDLE}
    family(
        "node_cpu_seconds",
        "counter",
        [(f'{base[m]},cpu="0",mode="idle"', IDLE[m] * STEP_S * k.astype(float)) for m in IDLE]
        + [(f'{base[m]},cpu="0",mode="user"', (1 - IDLE[m]) * STEP_S * k.astype(float)) for m in IDLE],
        suffix="_total",
    )
    family("node_memory_MemAvailable_bytes", "gauge", [(base[m], _known(m, k)["mem_avail"]) for m in IDLE])
    family("node_memory_MemTotal_bytes", "gauge", [(base[m], np.full(N, MEM_TOTAL[m])) for m in IDLE])
    fs = {m: f'{base[m]},device="/dev/sda1",fstype="ext4",mountpoint="/"' for m in IDLE}
    boot = {m: f'{base[m]},device="/dev/sda2",fstype="ext4",mountpoint="/boot"' for m in IDLE}
    family(
        "node_filesystem_avail_bytes",
        "gauge",
        [(fs[m], _known(m, k)["fs_avail"]) for m in IDLE] + [(boot[m], np.full(N, 10**6)) for m in IDLE],
    )
    family(
        "node_filesystem_size_bytes",
        "gauge",
        [(fs[m], np.full(N, FS_SIZE)) for m in IDLE] + [(boot[m], np.full(N, 10**9)) for m in IDLE],
    )
    lines.append("# EOF\n")
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[int, object]]:
    """A prometheus_client endpoint on loopback serving the forecast gauges (standing in for the service)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from atomic_usage.service.gauges import ForecastGauges

    registry = prometheus_client.CollectorRegistry()
    gauges = ForecastGauges()
    registry.register(gauges)
    port = _free_port()
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, gauges
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, exporter: tuple[int, object]) -> Iterator[str]:
    """A Prometheus server on 127.0.0.1 holding the known samples and scraping the gauges; yields its URL."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if binary is None or promtool is None:
        pytest.skip("prometheus/promtool are not installed (apt-get install prometheus)")
    d = tmp_path_factory.mktemp("prom")
    om, data = d / "samples.om", d / "data"
    _write_openmetrics(om)
    r = subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            "--max-block-duration=24h",
            str(om),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    om.unlink()
    config = d / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {DEPLOY / 'prometheus-rules.yml'}\n"
        "scrape_configs:\n  - job_name: atomic-usage\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter[0]}']\n"
    )
    port = _free_port()
    log = open(d / "prometheus.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=100y",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready: {(d / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class TestPullFromServer:
    """pull() against the real server returns the samples that were put in."""

    def test_values_and_timestamps_across_pages(self, prom: str) -> None:
        """Three pages; every step of both machines, exact memory and storage, CPU from the idle rate."""
        calls: list[str] = []
        with httpx.Client(timeout=60, event_hooks={"request": [lambda req: calls.append(str(req.url))]}) as c:
            df = pull(prom, range=pd.Timedelta(seconds=STEP_S * (N - 1)), step="1m", end=END, client=c)
        pages = page_ranges(START, END, pd.Timedelta("1min"))
        assert len(pages) == 3 and len(calls) == 3 * len(pages)
        assert list(df.columns) == ["id", "timestamp", "cpuLoad", "memoryUsage", "storageUsage"]
        assert sorted(df["id"].unique()) == sorted(IDLE)
        k = np.arange(N)
        grid = pd.date_range(START, END, freq="1min")
        for m in IDLE:
            got = df[df["id"] == m].reset_index(drop=True)
            assert len(got) == N > MAX_POINTS
            assert (got["timestamp"].to_numpy() == grid.to_numpy()).all()
            known = _known(m, k)
            mem = 100 * (1 - known["mem_avail"] / MEM_TOTAL[m])
            disk = 100 * (1 - known["fs_avail"] / FS_SIZE)
            assert np.array_equal(got["memoryUsage"].to_numpy(), mem)
            assert np.array_equal(got["storageUsage"].to_numpy(), disk)
            cpu = got["cpuLoad"].to_numpy()
            # rate() needs two samples in its 5-minute window: the first steps have none.
            assert np.isnan(cpu[0]) and np.allclose(cpu[5:], 100 * (1 - IDLE[m]), rtol=1e-9)

    def test_bad_query_names_server_error(self, prom: str) -> None:
        """A query the server rejects is a SchemaError carrying the server's message."""
        from atomic_usage.errors import SchemaError

        with pytest.raises(SchemaError, match=r"HTTP 400, bad_data: .*parse error"):
            pull(prom, range="1h", step="1m", end=END, queries={"cpuLoad": "rate(node_cpu_seconds_total[5m]"})


class TestGaugesScraped:
    """The forecast gauges, scraped by the real server, feed the shipped alert rules."""

    def test_gauges_in_scrape_and_rule_pending(self, prom: str, exporter: tuple[int, object]) -> None:
        """A disk full within 24 h at p90 appears as a gauge and puts AtomicDiskFullWithin24h in pending."""
        from atomic_usage.engine.forecast import describe_forecast

        now = time.time()
        p90 = np.linspace(80, 101, 12)
        fc = np.stack([p90 - 20, p90 - 10, p90])
        desc = describe_forecast(
            fc, last_ts=now, step_s=3600, last_value=79.0, history_length=100, model="m", thresholds=(90, 100)
        )
        exporter[1].update({"results": [{"id": "db-1:9100", "timestamp": "", "forecasts": {"storageUsage": desc}}]})
        sel = 'atomic_forecast_seconds_to_threshold{instance="db-1:9100",threshold="100",quantile="0.9"}'
        deadline, value, state = time.monotonic() + 60, None, None
        while time.monotonic() < deadline and state != "pending":
            r = httpx.get(f"{prom}/api/v1/query", params={"query": sel}, timeout=5).json()["data"]["result"]
            if r:
                value = float(r[0]["value"][1])
            rules = httpx.get(f"{prom}/api/v1/rules", params={"type": "alert"}, timeout=5).json()
            for g in rules["data"]["groups"]:
                for rule in g["rules"]:
                    if rule["name"] == "AtomicDiskFullWithin24h":
                        alerts = [a for a in rule["alerts"] if a["labels"].get("instance") == "db-1:9100"]
                        state = alerts[0]["state"] if alerts else None
            time.sleep(0.5)
        assert value is not None and 12 * 3600 - 120 < value <= 12 * 3600
        assert state == "pending"
        r = httpx.get(
            f"{prom}/api/v1/query",
            params={"query": 'atomic_forecast_value{instance="db-1:9100",quantile="0.5",step="12"}'},
            timeout=5,
        ).json()["data"]["result"]
        assert math.isclose(float(r[0]["value"][1]), 91.0)
