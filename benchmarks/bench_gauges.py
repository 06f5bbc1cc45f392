"""Size and build time of one /metrics scrape of the forecast gauges, for a large fleet.

Run: ``PYTHONPATH=src python benchmarks/bench_gauges.py [--machines 10000]``. Every machine
holds a 1-hour forecast of cpu, memory and storage with the default thresholds (90, 100);
the scrape is built by prometheus_client's ``generate_latest``, in process. One line per
``ATOMIC_GAUGE_STEPS`` value: the default steps, the first hour only, and ``none``, with the
size and time as ratios to the default's.
"""

from __future__ import annotations

import argparse
import time

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from atomic_usage.config import DEFAULT_GAUGE_STEPS
from atomic_usage.service.gauges import ForecastGauges


def _result(i: int) -> dict[str, object]:
    steps = [
        {"timestamp": f"2026-12-04T{12 + k * 5 // 60:02d}:{k * 5 % 60:02d}:00Z", "p10": 40.0, "p50": 50.0, "p90": 60.0}
        for k in range(1, 13)
    ]
    fc = {"steps": steps, "thresholds": [{"level": v, "p50": None, "p90": None} for v in (90.0, 100.0)]}
    return {
        "id": f"vm-{i:05d}",
        "timestamp": "2026-12-04T12:00:00Z",
        "forecasts": dict.fromkeys(("cpuLoad", "memoryUsage", "storageUsage"), fc),
    }


def main() -> None:
    """Prints one line per gauge-steps setting."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=10_000)
    a = ap.parse_args()
    base = None
    for label, steps in (("default", DEFAULT_GAUGE_STEPS), ("1,12", (1, 12)), ("none", ())):
        gauges = ForecastGauges(steps=steps)
        reg = CollectorRegistry()
        reg.register(gauges)
        gauges.update_encoded((f"vm-{i:05d}", orjson.dumps(_result(i))) for i in range(a.machines))
        t = time.perf_counter()
        body = generate_latest(reg)
        dt = time.perf_counter() - t
        base = base or (len(body), dt)
        print(
            f"{a.machines} machines, steps {label}: {len(body) / 1e6:.1f} MB ({len(body) / base[0]:.2f}x), "
            f"{dt:.2f} s ({dt / base[1]:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
