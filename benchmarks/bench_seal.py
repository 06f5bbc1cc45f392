"""Seals and opens per second for a typical result, against json.dumps of the same result.

A typical result is the forecast of one machine in the long format of DESIGN.md:
3 metrics x 12 steps, each row with timestamp, metric, mean, p10, p50 and p90
(about 4 KB of compact JSON).
Run::

    PYTHONPATH=src python benchmarks/bench_seal.py [--seconds 1.0]

It prints a markdown table. When ``atomic_usage.process`` is importable it also
times ``process()`` of a one-record payload and reports the share of it that
sealing one result costs; otherwise that row says n/a.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import cryptography

from atomic_usage.security import Keyring, open_result, open_sealed, seal

IDS = {"task_id": "9f0c2b1e-task", "record_id": "web-1", "model_version": "neural-2024.05"}


def typical_result() -> dict[str, Any]:
    """One machine's forecast in the long DESIGN format: 3 metrics x 12 steps x (mean, p10, p50, p90)."""
    t0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    rows = []
    for m, metric in enumerate(("cpuLoad", "memoryUsage", "storageUsage")):
        for i in range(12):
            base = 40 + m * 10.123 + i * 0.37 + i * i * 0.00731
            rows.append(
                {
                    "timestamp": (t0 + dt.timedelta(minutes=5 * (i + 1))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "metric": metric,
                    "mean": round(base, 2),
                    "p10": round(base * 0.88, 2),
                    "p50": round(base * 0.99, 2),
                    "p90": round(base * 1.14, 2),
                }
            )
    return {"id": "web-1", "modelVersion": IDS["model_version"], "forecast": rows}


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``: the best of 5 runs of about ``seconds / 5`` each."""
    n = 1
    while True:  # calibrate a batch size that takes >= 10 ms
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= 0.01:
            break
        n *= 2
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        k = 0
        while time.perf_counter() - t < seconds / 5:
            for _ in range(n):
                fn()
            k += n
        best = max(best, k / (time.perf_counter() - t))
    return best


def process_rate(seconds: float) -> float | None:
    """``process()`` calls per second for one record, or None when the engine is not there yet."""
    try:
        from atomic_usage import Settings, process  # noqa: F401  (engine may not exist yet)

        payload = {"usageData": [{"id": "web-1", "cpuLoad": 30, "memoryUsage": 70, "storageUsage": 20}]}
        process(payload)
        return rate(lambda: process(payload), seconds)
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()

    ring = Keyring.generate()
    result = typical_result()
    plain = json.dumps(result, separators=(",", ":"))
    env = seal(result, keyring=ring, **IDS)
    assert open_result(env, keyring=ring, **IDS) == result

    dumps = rate(lambda: json.dumps(result, separators=(",", ":")), args.seconds)
    seals = rate(lambda: seal(result, keyring=ring, **IDS), args.seconds)
    opens = rate(lambda: open_result(env, keyring=ring, **IDS), args.seconds)
    opens_raw = rate(lambda: open_sealed(env, keyring=ring), args.seconds)
    proc = process_rate(args.seconds)

    print(f"Python {platform.python_version()}, cryptography {cryptography.__version__}, {platform.machine()}")
    print(f"result: {len(plain)} bytes of JSON; envelope: {len(env)} bytes\n")
    print("| operation | per second | µs each | × json.dumps time |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in [
        ("json.dumps(result)", dumps),
        ("seal(result)", seals),
        ("open_result(envelope)", opens),
        ("open_sealed(envelope) (bytes, no JSON)", opens_raw),
    ]:
        print(f"| {name} | {r:,.0f} | {1e6 / r:.1f} | {dumps / r:.2f} |")
    if proc is None:
        print("\nshare of process() time spent sealing: n/a (atomic_usage.process is not available yet)")
    else:
        print(f"\nprocess() of one record: {1e6 / proc:.1f} µs; sealing its result adds {proc / seals:.1%}")


if __name__ == "__main__":
    main()
