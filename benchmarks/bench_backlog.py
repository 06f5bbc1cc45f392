"""Peak memory of ``process()`` given a backlog: many records per machine in one payload.

A backlog of M machines x N records each (5-minute steps) goes through one ``process()`` call
at horizon H with the bundled model; the same forecasts are then asked for with the latest
record of each machine only (its earlier steps loaded with ``observe()``), which returns N
times fewer results. Every result holds its machine's full forecast (the contract: one result
per record), so the backlog's response is about N times larger; what the benchmark checks is
how the call's peak compares to what it returns. Each case runs in its own process, once for
peak resident memory (ru_maxrss, untraced) and once under tracemalloc (peak over the call,
and what stays allocated with and without the response), and the ratios are against figures
of the same run:

    PYTHONPATH=src python benchmarks/bench_backlog.py [--machines 40] [--records 100] [--horizon 288]
        [--persist | --memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import gc, json, resource, sys, tempfile, time, tracemalloc
import orjson
import pandas as pd
from atomic_usage.config import Settings
from atomic_usage.engine.predictor import UsagePredictor
M, N, H, case, meter, persist = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                  sys.argv[5], sys.argv[6] == "persist")
t0 = 1_767_000_000
rows = [{"id": f"m{m}", "timestamp": t0 + 300 * k, "cpuLoad": 30.0 + (7 * k + m) % 40,
         "memoryUsage": 50.0 + (k + m) % 20, "storageUsage": 20.0 + 0.1 * k}
        for k in range(N) for m in range(M)]
settings = Settings(skip_persistence=not persist, data_dir=tempfile.mkdtemp(), log_level="ERROR")
p = UsagePredictor(settings, recover=False)
if case == "latest":  # the earlier steps join the history without results; one record per machine
    p.observe(pd.DataFrame(rows[:-M]).assign(timestamp=lambda f: pd.to_datetime(f.timestamp, unit="s")))
    rows = rows[-M:]
payload = {"usageData": rows}
gc.collect()
if meter == "tracemalloc":
    tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = p.process(payload, horizon=H)
dt = time.perf_counter() - t
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gc.collect()
cur, peak = tracemalloc.get_traced_memory()
json_mb = len(orjson.dumps(out)) / 2**20 if meter == "rss" else None
del out
gc.collect()
idle = tracemalloc.get_traced_memory()[0]
mb = lambda b: round(b / 2**20, 1)
print(json.dumps({"case": case, "meter": meter, "records": len(rows), "seconds": round(dt, 2),
                  "rss_peak_mb": mb(1024 * (rss1 - rss0)), "json_mb": json_mb and round(json_mb, 1),
                  "traced_peak_mb": mb(peak - base), "response_mb": mb(cur - idle),
                  "kept_after_mb": mb(idle - base)}))
p.close()
"""


def run(case: str, meter: str, a: argparse.Namespace) -> dict[str, float]:
    mode = "persist" if a.persist else "memory"
    argv = [str(a.machines), str(a.records), str(a.horizon), case, meter, mode]
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=40)
    ap.add_argument("--records", type=int, default=100, help="records per machine in the backlog")
    ap.add_argument("--horizon", type=int, default=288)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--persist", action="store_true", default=True, help="a SQLite store, sealed (default)")
    mode.add_argument("--memory", dest="persist", action="store_false", help="SKIP_PERSISTENCE")
    a = ap.parse_args()
    res = {}
    for case in ("latest", "backlog"):
        rss, traced = run(case, "rss", a), run(case, "tracemalloc", a)
        res[case] = {**traced, **{k: rss[k] for k in ("seconds", "rss_peak_mb", "json_mb")}}
        print(json.dumps(res[case]), file=sys.stderr, flush=True)
    store = "SQLite, sealed" if a.persist else "in memory"
    print(f"\n{a.machines} machines x {a.records} records, horizon {a.horizon}, store {store}\n")
    print(
        "| payload | results | seconds | peak RSS MB | traced peak MB | response MB | response JSON MB "
        "| peak / JSON | kept after MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, r in res.items():
        name = "backlog, one call" if case == "backlog" else "latest record per machine"
        print(
            f"| {name} | {r['records']} | {r['seconds']} | {r['rss_peak_mb']} | {r['traced_peak_mb']} "
            f"| {r['response_mb']} | {r['json_mb']} | {r['traced_peak_mb'] / max(r['json_mb'], 0.1):.2f} "
            f"| {r['kept_after_mb']} |"
        )
    ratio = res["backlog"]["traced_peak_mb"] / max(res["latest"]["traced_peak_mb"], 0.1)
    n = res["backlog"]["records"] / res["latest"]["records"]
    print(f"\nbacklog traced peak / latest traced peak: {ratio:.1f} (results: {n:.0f}x)")


if __name__ == "__main__":
    main()
