"""Engine benchmark: store throughput (FULL, NORMAL, memory) and pool throughput (threads vs processes).

Run: ``PYTHONPATH=src python benchmarks/bench_engine.py [--quick]``. Prints one
JSON line per measurement. The pool runs a small ONNX model (an MLP from a
3 x 288 float32 window to 3 x 12 x 3 outputs) built here with ``onnx.helper``,
one ONNX Runtime session per worker, one intra-op thread per session.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomic_usage.engine.memory_store import MemoryStore
from atomic_usage.engine.pool import WorkerPool
from atomic_usage.engine.store import Store, TaskStore

CONTEXT, METRICS, HIDDEN, OUT = 288, 3, 256, 3 * 12 * 3


def build_model() -> bytes:
    """A two-layer MLP as ONNX bytes (input ``x``: [batch, 3, 288] float32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((METRICS * CONTEXT, HIDDEN)) * 0.02).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((HIDDEN, OUT)) * 0.02).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([-1, METRICS * CONTEXT], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", METRICS, CONTEXT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT])],
        [w1, b1, w2, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


class OnnxRunner:
    """Picklable runner factory: each worker builds its own session from the model bytes."""

    def __init__(self, model: bytes) -> None:
        self.model = model

    def __call__(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(self.model, opts, providers=["CPUExecutionProvider"])

        def run(items: Sequence[np.ndarray]) -> list[np.ndarray]:
            x = np.stack(items)  # per-record normalisation, as the predictor will do
            mu = x.mean(axis=-1, keepdims=True)
            sd = x.std(axis=-1, keepdims=True) + 1e-6
            y = sess.run(None, {"x": ((x - mu) / sd).astype(np.float32)})[0]
            return list(y)

        return run


def bench_pool(model: bytes, mode: str, batch: int, n_records: int, n_workers: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    items = [rng.random((METRICS, CONTEXT), dtype=np.float32) for _ in range(n_records)]
    with WorkerPool(
        OnnxRunner(model),
        n_workers=n_workers,
        mode=mode,  # type: ignore[arg-type]
        max_batch_size=batch,
        max_wait_s=0.002,
    ) as pool:
        pool.map(items[: batch * n_workers], timeout_s=120)  # warm up: sessions built, pages touched
        t0 = time.perf_counter()
        out = pool.map(items, timeout_s=600)
        dt = time.perf_counter() - t0
        snap = pool.stats()
    assert all(isinstance(o, np.ndarray) for o in out)
    return {
        "bench": "pool",
        "mode": mode,
        "workers": n_workers,
        "max_batch": batch,
        "records": n_records,
        "records_per_s": round(n_records / dt, 1),
        "mean_batch": round(snap["batch_size"]["mean"], 1),
        "p50_latency_ms": round(1000 * snap["latency_s"]["p50"], 2),
        "p99_latency_ms": round(1000 * snap["latency_s"]["p99"], 2),
    }


def bench_store(kind: str, n_tasks: int, n_threads: int) -> dict[str, Any]:
    """Tasks/s through accept -> claim -> complete, from ``n_threads`` callers at once."""
    with tempfile.TemporaryDirectory() as tmp:
        store: Store
        if kind == "memory":
            store = MemoryStore()
        else:
            store = TaskStore(Path(tmp) / "bench.sqlite3", synchronous=kind)
        per = n_tasks // n_threads

        def caller(k: int) -> None:
            for i in range(per):
                payload = {"usageData": [{"id": f"m{k}-{i % 50}", "cpuLoad": 30.0, "memoryUsage": 50.0}]}
                obs = [
                    (f"m{k}-{i % 50}", "cpuLoad", float(i), 30.0),
                    (f"m{k}-{i % 50}", "memoryUsage", float(i), 50.0),
                ]
                acc = store.accept(payload, observations=obs, owner="bench")
                store.claim(acc.task.task_id, owner="bench")
                store.complete(acc.task.task_id, [b"x" * 600])

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(n_threads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        store.close()
    return {
        "bench": "store",
        "persistence": kind,
        "threads": n_threads,
        "tasks": per * n_threads,
        "tasks_per_s": round(per * n_threads / dt, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n_records = 512 if args.quick else 4096
    n_tasks = 200 if args.quick else 1000
    for kind in ("FULL", "NORMAL", "memory"):
        print(json.dumps(bench_store(kind, n_tasks, 4)), flush=True)
    model = build_model()
    for mode in ("thread", "process"):
        for batch in (1, 16, 64, 256):
            n = n_records // 4 if batch == 1 else n_records
            print(json.dumps(bench_pool(model, mode, batch, n, args.workers)), flush=True)


if __name__ == "__main__":
    main()
