"""Per-request cost of each stage of a predict request, single-threaded, in-process.

Runs the engine's stages by hand on groups of --group 10-record payloads (the benchmark's
fleet of 1,000 machines): validation, the accept transaction, history append and contexts,
the model, result building, record assembly, JSON, sealing and the completion transaction.
No threads, no HTTP: what each stage costs, not how they overlap (see docs/service.md).

    PYTHONPATH=src python benchmarks/bench_service_stages.py --model naive --sync NORMAL
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from atomic_usage._types import DEFAULT_METRICS
from atomic_usage.engine.forecast import TREND_STEPS, describe_many
from atomic_usage.engine.history import FleetHistory
from atomic_usage.engine.payload import parse_payload
from atomic_usage.engine.runner import ForecastRunner, WorkItem
from atomic_usage.engine.store import AcceptOp, CompleteOp, TaskStore
from atomic_usage.models.artifact import load_forecaster
from atomic_usage.security import Keyring, seal_json


def _payload(k: int, records: int, machines: int) -> dict[str, Any]:
    return {
        "usageData": [
            {"id": f"vm{(k * records + j) % machines}", "cpuLoad": (k + j) % 100, "memoryUsage": 40.0 + j}
            | {"storageUsage": 20}
            for j in range(records)
        ]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="naive", help="a baseline name or a model folder (default naive)")
    ap.add_argument("--sync", default="NORMAL", choices=["FULL", "NORMAL"])
    ap.add_argument("--group", type=int, default=32, help="requests handled together")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    store = TaskStore(Path(tempfile.mkdtemp()) / "stages.sqlite3", synchronous=args.sync)
    history = FleetHistory(288)
    runner = ForecastRunner(load_forecaster(args.model, threads=1))
    ring = Keyring.generate()
    spent: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    for rnd in range(args.rounds):
        pays = [_payload(rnd * args.group + i, 10, 1000) for i in range(args.group)]
        t = time.perf_counter()
        obs = [parse_payload(p) for p in pays]
        timed("validation", t)
        t = time.perf_counter()
        ops = [
            AcceptOp(
                {"usageData": p["usageData"], "horizon": 12},
                f"r{rnd}-{i}",
                [(o.id, m, o.ts, v) for o in ob for m, v in o.values.items()],
                "me",
                claim=True,
            )
            for i, (p, ob) in enumerate(zip(pays, obs, strict=True))
        ]
        accs = store.apply(ops)
        timed("accept transaction", t)
        t = time.perf_counter()
        history.append([o for ob in obs for o in ob])
        timed("history append", t)
        t = time.perf_counter()
        machines = list(dict.fromkeys(o.id for ob in obs for o in ob))
        ctx = history.contexts(machines, 288)
        last = history.last_step(machines)
        timed("contexts", t)
        t = time.perf_counter()
        fcs = runner([WorkItem(ctx[i], 12) for i in range(len(machines))])
        timed("model", t)
        t = time.perf_counter()
        cells = [(i, j) for i in range(len(machines)) for j in range(len(DEFAULT_METRICS))]
        ki, mj = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
        hist = ctx[ki, mj]
        seen = ~np.isnan(hist)
        pos = hist.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        described = describe_many(
            np.stack([fcs[i].quantiles[j] for i, j in cells]),
            last_ts=last[ki].astype(float),
            step_s=300.0,
            last_value=hist[np.arange(len(cells)), pos],
            history_length=seen.sum(1),
            models=[str(fcs[i].models[j]) for i, j in cells],
            thresholds=(90.0, 100.0),
            recent=hist[:, -TREND_STEPS:],
        )
        timed("result building", t)
        t = time.perf_counter()
        per: dict[int, dict[str, Any]] = {}
        for (i, j), d in zip(cells, described, strict=True):
            per.setdefault(i, {})[DEFAULT_METRICS[j]] = d
        at = {m: i for i, m in enumerate(machines)}
        results = [
            [{"index": o.index, "id": o.id, "forecasts": per[at[o.id]], "reasons": {}} for o in ob] for ob in obs
        ]
        timed("record assembly", t)
        t = time.perf_counter()
        plain = [[orjson.dumps(r) for r in rs] for rs in results]
        timed("JSON", t)
        t = time.perf_counter()
        bodies = [
            [
                seal_json(p, keyring=ring, task_id=a.task.task_id, record_id=str(n), model_version="v").encode()
                for n, p in enumerate(ps)
            ]
            for a, ps in zip(accs, plain, strict=True)
        ]
        timed("sealing", t)
        t = time.perf_counter()
        store.apply([CompleteOp(a.task.task_id, b) for a, b in zip(accs, bodies, strict=True)])
        timed("completion transaction", t)
    n = args.rounds * args.group
    print(f"model={args.model} sync={args.sync} group={args.group}: microseconds per 10-record request")
    for name, s in spent.items():
        print(f"  {name:24s} {s / n * 1e6:8.1f}")
    print(f"  {'total':24s} {sum(spent.values()) / n * 1e6:8.1f}")
    store.close()


if __name__ == "__main__":
    main()
