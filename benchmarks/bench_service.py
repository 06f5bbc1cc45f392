"""Load benchmark of the HTTP service: an async httpx client against a real server on loopback.

Starts ``atomic-usage serve`` (bundled model, persistence on) in a subprocess, then sends
10-record payloads (unique Idempotency-Keys, a fleet of --machines machines) from
--concurrency concurrent connections for --duration seconds, and prints requests/s and
p50/p90/p99 latency as seen by the client, plus the server's own /metrics figures.

    PYTHONPATH=src python benchmarks/bench_service.py --sync FULL --duration 20
    PYTHONPATH=src python benchmarks/bench_service.py --sync NORMAL --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000 if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"], help="ATOMIC_SQLITE_SYNCHRONOUS")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load (bounded run)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--records", type=int, default=10, help="records per payload")
    ap.add_argument("--machines", type=int, default=1000, help="distinct machine ids")
    ap.add_argument("--workers", type=int, default=2, help="engine worker threads")
    ap.add_argument("--model", default=None, help="--model of serve (default: the bundled model)")
    args = ap.parse_args()
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
            warm = argparse.Namespace(**{**vars(args), "duration": 3.0, "run": args.run + "w"})
            asyncio.run(_load(url, warm))
            lat, errors, wall = asyncio.run(_load(url, args))
            metrics = httpx.get(f"{url}/metrics", headers=HEADERS).text
        finally:
            proc.terminate()
            proc.wait(60)
    batch = [ln for ln in metrics.splitlines() if ln.startswith(("atomic_batch_size_sum", "atomic_batch_size_count"))]
    print(
        f"sync={args.sync} concurrency={args.concurrency} records/payload={args.records} "
        f"model={args.model or 'bundled'} duration={wall:.1f}s"
    )
    print(
        f"  requests ok {len(lat)}, errors {errors}: {len(lat) / wall:.1f} req/s "
        f"({len(lat) * args.records / wall:.0f} records/s)"
    )
    print(f"  latency ms p50 {_pct(lat, 50):.1f}  p90 {_pct(lat, 90):.1f}  p99 {_pct(lat, 99):.1f}")
    print("  " + "  ".join(batch))


if __name__ == "__main__":
    main()
