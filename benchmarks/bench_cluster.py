"""Cluster benchmark: a generated fleet forecast by the single-process path and by a local Dask cluster.

Run: ``PYTHONPATH=src python benchmarks/bench_cluster.py --n-series 100000 [--workers 2] [--model naive]``.
Writes one Parquet file of ``n_series`` machines x 288 five-minute steps x 3 metrics
(row groups of 10,000 machines; sorted by id only with ``--sorted-ids``), then measures, each
in a fresh process or cluster:

* ``single``: ``atomic-usage forecast`` without cluster options, one output file: wall time
  and peak RSS of the process. A file of more than ``--rows-per-bucket`` rows (default
  1,000,000, i.e. more than about 3,500 machines here) is forecast in chunks of whole
  machines: shuffled by id range through a scratch folder, or streamed with ``--sorted-ids``
  (see ``src/atomic_usage/cluster/chunked.py``). The JSON line holds the command's summary,
  which says which.
* ``cluster-K`` for K = 1 and ``--workers``: ``forecast_distributed`` on a LocalCluster of K
  worker processes (one thread each): job wall time (cluster start-up shown apart) and
  peak RSS (VmHWM) and CPU time of each worker. ``--skip-cluster`` leaves these out,
  ``--skip-one-worker`` the 1-worker run. The file's row groups hold whole machines, so the
  cluster forecasts each chunk where it reads it (``"mode": "direct"``); ``--shuffle always``
  measures the hash shuffle instead.

``--workdir DIR --reuse-input`` keeps ``DIR/fleet.parquet`` from an earlier run when its footer
holds ``n_series`` x 288 rows, instead of generating it again.

Every measurement also gives ``load_1min``: the lowest and highest 1-minute load average,
sampled every 5 s while it ran (other jobs on the machine show up there).

Scaling efficiency is ``T(single) / (K * T(cluster-K))`` and, apart from the shuffle's
cost, ``T(cluster-1) / (K * T(cluster-K))``. ``cpu_cluster_over_single`` is the workers' CPU
time over the single process's: the extra work of the cluster path, whatever the load.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Peak memory is the process's own VmHWM (Linux). ``ru_maxrss`` is not usable here: across
# fork + exec the kernel carries the parent's high-water mark into the child's ``ru_maxrss``,
# so every worker (and the CLI child) reported at least the benchmark process's own peak.
_CLI_WRAPPER = """
import atexit, os, runpy, sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(os.environ["BENCH_HWM_FILE"], "w") as f:
                f.write(line.split()[1])
atexit.register(_hwm)
sys.argv = ["atomic-usage", *sys.argv[1:]]
runpy.run_module("atomic_usage.cli", run_name="__main__", alter_sys=True)
"""


def vmhwm_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def load_sampler(every_s: float = 5.0) -> Iterator[list[float]]:
    """Samples the 1-minute load average every ``every_s`` seconds while the block runs (first sample at once)."""
    samples: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while True:
            samples.append(os.getloadavg()[0])
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(os.getloadavg()[0])


def measured(run: Callable[[], dict[str, object]]) -> dict[str, object]:
    """``run()``'s row plus ``load_1min``: the lowest and highest 1-minute load average seen while it ran."""
    with load_sampler() as load:
        row = run()
    return {**row, "load_1min": [round(min(load), 2), round(max(load), 2)]}


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far, all threads."""
    t = os.times()
    return t.user + t.system


def generate(path: Path, n_series: int, n_steps: int = 288, batch: int = 10_000, *, sorted_ids: bool = False) -> float:
    """Writes the fleet to one Parquet file, a row group per ``batch`` machines; returns seconds.

    Each machine's rows are together, machines in generation order. The ids are ``m0000-0``
    to ``m0000-9999`` (row group 0), ``m0001-0``...: in string order ``m0000-10`` comes before
    ``m0000-9``, so the file is not sorted by id. With ``sorted_ids`` they are zero-padded
    (``m0000-00009``), and it is.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from atomic_usage.data import generate_series

    t = time.perf_counter()
    writer = None
    for k, a in enumerate(range(0, n_series, batch)):
        prefix = f"m{k:04d}-"
        df = generate_series(min(batch, n_series - a), n_steps=n_steps, seed=k, id_prefix=prefix)
        if sorted_ids:
            df["id"] = prefix + df["id"].str.slice(len(prefix)).str.zfill(5)
        table = pa.Table.from_pandas(df, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=len(df))
    assert writer is not None
    writer.close()
    return time.perf_counter() - t


def reusable(path: Path, n_series: int, n_steps: int = 288) -> bool:
    """Whether ``path`` is a fleet file of ``n_series`` machines (its footer's row count; data is not read).

    ``--sorted-ids`` is not recorded in the file: reuse a file generated with the same flag.
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        return int(pq.ParquetFile(path).metadata.num_rows) == n_series * n_steps
    except Exception:  # not Parquet (e.g. a half-written file): generate it again
        return False


def run_single(inp: Path, out: Path, horizon: int, model: str) -> dict[str, object]:
    """The CLI without cluster options, in a child process; wall time, the child's peak RSS and its summary."""
    hwm_file = out.with_suffix(".hwm")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), LOG_LEVEL="WARNING", BENCH_HWM_FILE=str(hwm_file))
    cmd = [sys.executable, "-c", _CLI_WRAPPER, "forecast", "-i", str(inp), "-H", str(horizon)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run([*cmd, "-o", str(out), "-m", model], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak_kb = int(hwm_file.read_text())
    lines = done.stderr.strip().splitlines()
    summary = lines[-1] if lines else ""
    return {"seconds": round(wall, 2), "cpu_s": round(cpu, 1), "peak_rss_mb": round(peak_kb / 1024, 1), "cli": summary}


def run_cluster(inp: Path, out: Path, horizon: int, model: str, workers: int, shuffle: str) -> dict[str, object]:
    """``forecast_distributed`` on a fresh LocalCluster of ``workers`` processes.

    ``cpu_s_per_worker`` is each worker process's CPU time during the job; ``cpu_s_client`` is
    this process's (the scheduler and the client: LocalCluster runs its scheduler here).
    """
    import logging

    from atomic_usage.cluster import connect, forecast_distributed, parse_target

    logging.getLogger("distributed").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with connect(parse_target(f"local:{workers}", None)) as client:
        startup = time.perf_counter() - t0
        cpu0, own0 = client.run(cpu_s), cpu_s()
        job = forecast_distributed(client, inp, horizon, out, model=model, shuffle=shuffle)  # type: ignore[arg-type]
        cpu1, own1 = client.run(cpu_s), cpu_s()
        peaks = client.run(vmhwm_mb)
    return {
        "seconds": round(job.seconds, 2),
        "startup_s": round(startup, 2),
        "peak_rss_mb_per_worker": [round(v, 1) for v in peaks.values()],
        "cpu_s_per_worker": [round(cpu1[w] - cpu0[w], 1) for w in cpu1],
        "cpu_s_client": round(own1 - own0, 1),
        "mode": job.mode,
        "parts": job.n_parts,
        "rows_out": job.n_rows_out,
    }


def main() -> None:
    """Runs the benchmark and prints JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-series", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--model", default="naive", help="naive | predict_linear | a model folder")
    ap.add_argument("--skip-single", action="store_true", help="Only the cluster runs.")
    ap.add_argument("--skip-cluster", action="store_true", help="Only the single-process run.")
    ap.add_argument(
        "--skip-one-worker", action="store_true", help="No 1-worker cluster run (large sizes: it is the longest)."
    )
    ap.add_argument(
        "--sorted-ids", action="store_true", help="Zero-padded ids: the file is sorted by id, the single path streams."
    )
    ap.add_argument(
        "--shuffle",
        choices=["auto", "always"],
        default="auto",
        help="Cluster runs: auto skips the shuffle when the footers show every id in one chunk (they do here).",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--reuse-input",
        action="store_true",
        help="Keep WORKDIR/fleet.parquet if it holds N machines x 288 rows (checked from its footer); else generate.",
    )
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    inp = work / "fleet.parquet"
    base = {
        "n_series": args.n_series,
        "steps": 288,
        "metrics": 3,
        "horizon": args.horizon,
        "model": args.model,
        "sorted_ids": args.sorted_ids,
    }
    if args.reuse_input and reusable(inp, args.n_series):
        what, gen_s = "reuse", 0.0
    else:
        what, gen_s = "generate", generate(inp, args.n_series, sorted_ids=args.sorted_ids)
    size_mb = inp.stat().st_size / 2**20
    print(
        json.dumps(
            {
                **base,
                "what": what,
                "seconds": round(gen_s, 1),
                "file_mb": round(size_mb, 1),
                "bench_process_peak_mb": round(vmhwm_mb(), 1),
            }
        ),
        flush=True,
    )
    rows: dict[str, dict[str, object]] = {}
    if not args.skip_single:
        rows["single"] = measured(lambda: run_single(inp, work / "single.parquet", args.horizon, args.model))
        print(json.dumps({**base, "what": "single", **rows["single"]}), flush=True)
    sizes = sorted({args.workers} if args.skip_one_worker else {1, args.workers})
    for k in [] if args.skip_cluster else sizes:
        out = work / f"parts-{k}"
        rows[f"cluster-{k}"] = measured(lambda: run_cluster(inp, out, args.horizon, args.model, k, args.shuffle))  # noqa: B023
        print(json.dumps({**base, "what": f"cluster-{k}", **rows[f"cluster-{k}"]}), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    k = args.workers
    if f"cluster-{k}" in rows:
        tk = float(rows[f"cluster-{k}"]["seconds"])  # type: ignore[arg-type]
        eff = {"what": "scaling", "workers": k}
        if "single" in rows:
            eff["efficiency_vs_single"] = round(float(rows["single"]["seconds"]) / (k * tk), 3)  # type: ignore[arg-type]
            cpu_k = sum(rows[f"cluster-{k}"]["cpu_s_per_worker"])  # type: ignore[call-overload]
            eff["cpu_cluster_over_single"] = round(cpu_k / float(rows["single"]["cpu_s"]), 3)  # type: ignore[arg-type]
        if "cluster-1" in rows and k != 1:
            eff["efficiency_vs_cluster_1"] = round(float(rows["cluster-1"]["seconds"]) / (k * tk), 3)  # type: ignore[arg-type]
        print(json.dumps({**base, **eff}))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
