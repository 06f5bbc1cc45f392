"""Throughput of the ONNX-served model: forecasts per second for many series, and peak memory.

Each measurement runs in its own process so its peak resident memory (ru_maxrss) is its own.
Reported beside one numpy pass over the same array (the memory-read floor) and the naive
baseline, measured in the same run:

    python benchmarks/bench_throughput.py [--n-series 100000] [--steps 288] [--horizon 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from atomic_usage.models.artifact import load_model
from atomic_usage.models.baselines import Naive
n, steps, H, what = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = load_model() if what == "onnx" else Naive()
rng = np.random.default_rng(0)
day = np.sin(2 * np.pi * np.arange(steps) / 288)
X = (50 + 20 * day + rng.normal(0, 3, (n, steps))).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bounded = np.ones(n, bool)
if what == "numpy":
    t = time.perf_counter(); s = float(X.sum()); dt = time.perf_counter() - t
else:
    model.forecast_arrays(list(X[:64]), H, bounded[:64])  # warm-up: session creation is not timed
    t = time.perf_counter(); fc = model.forecast_arrays(list(X), H, bounded); dt = time.perf_counter() - t
    assert fc.shape == (n, 3, H) and np.isfinite(fc).all()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"what": what, "seconds": dt, "input_mb": X.nbytes / 2**20,
                  "extra_peak_mb": (peak - base) / 1024}))
"""


def run(what: str, n: int, steps: int, horizon: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(steps), str(horizon), what],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-series", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=288)
    ap.add_argument("--horizon", type=int, default=12)
    a = ap.parse_args()
    rows = [run(w, a.n_series, a.steps, a.horizon) for w in ("numpy", "naive", "onnx")]
    ref = rows[0]["seconds"]
    print(f"{a.n_series} series x {a.steps} steps (float32, {rows[0]['input_mb']:.0f} MB), horizon {a.horizon}\n")
    print("| path | seconds | series/s | x numpy pass | extra peak memory MB | x input size |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['what']} | {r['seconds']:.3f} | {a.n_series / r['seconds']:,.0f} | {r['seconds'] / ref:,.0f} "
            f"| {r['extra_peak_mb']:.0f} | {r['extra_peak_mb'] / r['input_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
