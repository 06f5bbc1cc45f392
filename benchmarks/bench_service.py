"""Load benchmark of the HTTP service: wrk (or an async httpx client) against a real server on loopback.

Starts ``atomic-usage serve`` (bundled model, persistence on, sealing at rest on) in a
subprocess, then sends 10-record payloads (unique Idempotency-Keys, a fleet of --machines
machines) from --concurrency connections for --duration seconds, after a 3 s warm-up that
gives every machine a first observation. Prints requests/s, p50/p90/p99 latency as the
client saw them, non-200 answers and socket errors, the 1-minute load average at the end
of the run, the server's CPU time per request (all its processes, from /proc), how many of
the connections each serving process holds (``ss``), and the server's own batch and
group-commit figures from /metrics. ``--processes N`` serves from N processes.

The client is ``wrk`` (``apt-get install wrk``; ``benchmarks/bench_service.lua`` builds the
payloads) when it is installed: written in C, it leaves the cores to the server. ``--client
httpx`` uses the Python client instead, which burns about as much CPU as the server.

    PYTHONPATH=src python benchmarks/bench_service.py --sync FULL --duration 20
    PYTHONPATH=src python benchmarks/bench_service.py --sync NORMAL --duration 20 --model naive
    PYTHONPATH=src python benchmarks/bench_service.py --json   # one JSON line per run, for tables
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "b" * 24
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _payload(n: int, records: int, machines: int) -> bytes:
    return json.dumps(
        {
            "usageData": [
                {
                    "id": f"vm{(n * records + j) % machines}",
                    "cpuLoad": (n + j) % 100,
                    "memoryUsage": 40.0 + j,
                    "storageUsage": 20,
                }
                for j in range(records)
            ]
        }
    ).encode()


async def _load(url: str, args: argparse.Namespace) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + args.duration
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                n = next(counter)
                body = _payload(n, args.records, args.machines)
                t0 = time.perf_counter()
                r = await c.post(
                    "/v1/predict",
                    content=body,
                    headers={
                        **HEADERS,
                        "Idempotency-Key": f"bench-{args.run}-{n}",
                        "Content-Type": "application/json",
                    },
                )
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return latencies, errors, time.perf_counter() - t


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its living descendants (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(d.name)] = int(fields[1])
        times[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parents.items() if pp == p and c not in tree]
    return sum(times.get(p, 0.0) for p in tree)


def _connections_by_process(port: int) -> list[int]:
    """How many established connections each server process holds on ``port`` (sorted; Linux ``ss``)."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values())


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000 if xs else float("nan")


def _httpx_run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    lat, errors, wall = asyncio.run(_load(url, args))
    return {
        "requests": len(lat) + errors,
        "duration_s": wall,
        "non200": errors,
        "errors": {},
        "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99)},
    }


def _wrk_run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One bounded wrk run; its Lua ``done`` prints the figures as one JSON line."""
    script = Path(__file__).with_name("bench_service.lua")
    cmd = [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.concurrency}",
        f"-d{args.duration:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"{url}/v1/predict",
        "--",
        TOKEN,
        f"bench-{args.run}",
        str(args.records),
        str(args.machines),
        str(args.wrk_threads),
        *([str(args.base_ts)] if args.history else []),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120, check=True).stdout
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    return dict(json.loads(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"], help="ATOMIC_SQLITE_SYNCHRONOUS")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load (bounded run)")
    ap.add_argument("--concurrency", type=int, default=16, help="connections")
    ap.add_argument("--records", type=int, default=10, help="records per payload")
    ap.add_argument("--machines", type=int, default=1000, help="distinct machine ids")
    ap.add_argument("--workers", type=int, default=2, help="engine worker threads")
    ap.add_argument("--processes", type=int, default=1, help="serve --processes (serving processes over one store)")
    ap.add_argument("--model", default=None, help="--model of serve (default: the bundled model)")
    ap.add_argument("--client", default="auto", choices=["auto", "wrk", "httpx"], help="auto: wrk if installed")
    ap.add_argument(
        "--history",
        action="store_true",
        help="wrk: records carry timestamps 5 min apart per machine visit, so histories grow and the networks run",
    )
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each one uses up to a core)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = ap.parse_args()
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if args.history and client != "wrk":
        raise SystemExit("--history needs the wrk client (apt-get install wrk)")
    run = _wrk_run if client == "wrk" else _httpx_run
    args.run = f"{os.getpid()}"
    port = _port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT / "src"),
            ATOMIC_DATA_DIR=data,
            ATOMIC_API_TOKENS=TOKEN,
            ATOMIC_SQLITE_SYNCHRONOUS=args.sync,
            LOG_LEVEL="WARNING",
        )
        cmd = [
            sys.executable,
            "-m",
            "atomic_usage.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ] + (["--model", args.model] if args.model else [])
        if args.processes != 1:
            cmd += ["--processes", str(args.processes)]
        proc = subprocess.Popen(cmd, env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", headers=HEADERS, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            # Warm-up: every machine gets a first observation, so the timed run sees steady state.
            # With --history the warm-up's steps start two days back and the timed run's one day
            # back, so the timed run only ever adds later steps.
            day = 86_400
            now = int(time.time()) // 300 * 300
            warm = {"duration": 3.0, "run": args.run + "w", "base_ts": now - 2 * day}
            run(url, argparse.Namespace(**{**vars(args), **warm}))
            cpu0 = _tree_cpu_s(proc.pid)
            split: list[int] = []
            # With several processes the kernel hands each connection to one of them: how many each got.
            probe = threading.Timer(2.0, lambda: split.extend(_connections_by_process(port)))
            probe.start()
            res = run(url, argparse.Namespace(**{**vars(args), "base_ts": now - day}))
            cpu_s = _tree_cpu_s(proc.pid) - cpu0
            probe.join()
            load1 = float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else None
            metrics = httpx.get(f"{url}/metrics", headers=HEADERS).text
        finally:
            proc.terminate()
            proc.wait(60)
    batch = {
        ln.split()[0]: float(ln.split()[1])
        for ln in metrics.splitlines()
        if ln.startswith(("atomic_batch_size_sum", "atomic_batch_size_count"))
    }
    ok = res["requests"] - res["non200"]
    row = {
        "client": client,
        "model": args.model or "bundled",
        "sync": args.sync,
        "concurrency": args.concurrency,
        "records": args.records,
        "duration_s": round(res["duration_s"], 2),
        "ok": ok,
        "non200": res["non200"],
        "socket_errors": res["errors"],
        "req_s": round(ok / res["duration_s"], 1),
        "records_s": round(ok * args.records / res["duration_s"]),
        "latency_ms": {k: round(v, 1) for k, v in res["latency_ms"].items()},
        "server_cpu_ms_per_req": round(1000 * cpu_s / max(ok, 1), 2),
        "processes": args.processes,
        "connections_per_process": split,
        "load1": load1,
        "history": args.history,
        "batch": batch,
    }
    if args.json:
        print(json.dumps(row))
        return
    lat = row["latency_ms"]
    print(
        f"client={client} sync={args.sync} concurrency={args.concurrency} records/payload={args.records} "
        f"model={row['model']} processes={args.processes} duration={row['duration_s']}s load1={load1}"
    )
    print(
        f"  requests ok {ok}, non-200 {res['non200']}, socket errors {res['errors']}: {row['req_s']} req/s "
        f"({row['records_s']} records/s)"
    )
    print(f"  latency ms p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}")
    print(f"  server CPU {row['server_cpu_ms_per_req']} ms per request (all its processes)")
    print(f"  connections per serving process: {split}")
    print("  " + "  ".join(f"{k} {v:g}" for k, v in batch.items()))


if __name__ == "__main__":
    main()
