"""Training sets built on a Dask cluster: the same series as ``dataset build``, as partitioned Parquet.

Each ``--data`` source is read by the workers (a wide file or folder of partition
files in chunks; a GCD or NAB folder whole, by one task), shuffled by hash of id,
and every bucket is regularized, cut (``holdout_last``), split (``holdout_machines``)
and written as ``part-SSS-BBBBB.parquet`` in the training-set format of
:mod:`atomic_usage.data.trainset`. :func:`~atomic_usage.data.trainset.read_trainset`
reads the folder back as one set.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SchemaError
from .partitions import plan_chunks, read_bucket, write_parquet_atomic
from .shuffle import (
    DEFAULT_ROWS_PER_BUCKET,
    bucket_dirs,
    cleared_on_failure,
    finish_output,
    gather,
    map_dask_errors,
    n_buckets_for,
    prepare_output,
    run_split,
)

__all__ = ["TrainsetJob", "build_trainset_distributed", "trainset_bucket"]


@dataclasses.dataclass(frozen=True)
class TrainsetJob:
    """What a distributed ``dataset build`` did.

    Attributes:
        output: the folder of parts.
        n_series: (machine, metric) series written.
        n_holdout: of which held out.
        n_steps: steps written, all series.
        reports: per source, the regularization counts summed over its buckets.
        seconds: wall time of the job.
    """

    output: Path
    n_series: int
    n_holdout: int
    n_steps: int
    reports: list[dict[str, int]]
    seconds: float

    def summary(self) -> str:
        """One line for a console."""
        return (
            f"{self.n_series} series: machine × metric ({self.n_holdout} held out), {self.n_steps} steps "
            f"-> {self.output} in {self.seconds:.2f}s"
        )


def trainset_bucket(directory: str, part: str, n_cut: int, holdout_machines: bool, step: str) -> dict[str, Any]:
    """Pass 2, on a worker: one bucket of one source to a training-set part.

    Args:
        directory: the bucket's scratch folder.
        part: the part file to write (fixed by source and bucket, so a re-run replaces it).
        n_cut: steps cut off the end of every series.
        holdout_machines: whether machines in the holdout share are marked ``holdout``.
        step: the grid step.
    """
    from ..data.regularize import regularize
    from ..data.trainset import is_holdout, trainset_table
    from ..data.windows import SeriesBank

    panel, report = regularize(read_bucket(directory), step)
    if n_cut:
        panel = panel.truncate(np.maximum(panel.lengths - n_cut, 0))
    bank = SeriesBank.from_panel(panel)
    holdout = np.array([holdout_machines and is_holdout(str(i)) for i in bank.ids], dtype=bool)
    if len(bank):
        write_parquet_atomic(trainset_table(bank, holdout), Path(part))
    return {
        "series": len(bank),
        "holdout": int(holdout.sum()),
        "steps": int(bank.lengths.sum()),
        "report": dataclasses.asdict(report),
    }


def _per_source(values: Sequence[Any], n: int, name: str) -> list[Any]:
    if values and len(values) not in (1, n):
        raise SchemaError(f"Give one {name} for all sources or one per source; got {len(values)} for {n} sources.")
    return list(values) * n if len(values) == 1 else list(values)


def build_trainset_distributed(
    client: Any,
    sources: Sequence[str | Path],
    output: str | Path,
    *,
    holdout_last: Sequence[pd.Timedelta | str] = (),
    holdout_machines: Sequence[bool] = (),
    step: pd.Timedelta | str = "5min",
    rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
    scratch: str | Path | None = None,
) -> TrainsetJob:
    """Builds a training set from ``sources`` on the cluster of ``client``.

    Takes the same arguments as :func:`~atomic_usage.data.trainset.build_trainset` and writes
    the same series (row order aside) to ``output/part-*.parquet``, then ``output/_SUCCESS``.

    Raises:
        SchemaError: a source is missing or invalid (the message names the file), holds a value
            that is not a number or a percent far out of range (as ``read_wide`` refuses them, in
            the same words), or an option has neither one value nor one per source.
        ClusterError: the cluster failed in a way a re-run could not absorb.
    """
    t0 = time.perf_counter()
    n = len(sources)
    cuts = _per_source(holdout_last, n, "--holdout-last")
    flags = _per_source(holdout_machines, n, "--holdout-machines")
    step_td = pd.Timedelta(step)
    out_dir = Path(output).resolve()
    label = str(client.scheduler.address)
    with map_dask_errors(label):
        chunks = plan_chunks(sources, rows_per_chunk=rows_per_bucket, sources=True)
        scratch_dir = prepare_output(out_dir, Path(scratch).resolve() if scratch else None, [c.path for c in chunks])
        with cleared_on_failure(out_dir, scratch_dir):
            n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
            per_source = max(1, len(chunks) and n_buckets_for(chunks, n_workers, rows_per_bucket) // n)
            # The range policy of read_wide, which build_trainset reads a wide file with: a percent far
            # out of range (a per-core sum) fails the build, a small overshoot is clipped with a warning.
            rows = run_split(client, chunks, per_source, scratch_dir, out_of_range="reject")
            job = uuid.uuid4().hex[:8]
            keys = bucket_dirs(scratch_dir, rows)
            futures = [
                client.submit(
                    trainset_bucket,
                    str(d),
                    str(out_dir / f"part-{s:03d}-{b:05d}.parquet"),
                    int(pd.Timedelta(cuts[s]) / step_td) if cuts else 0,
                    bool(flags[s]) if flags else True,
                    str(step_td),
                    key=f"atomic-trainset-{job}-{s:03d}-{b:05d}",
                    pure=False,
                )
                for s, b, d in keys
            ]
            results = gather(client, futures)
            reports: list[dict[str, int]] = []
            for k in range(n):
                mine = [r["report"] for (s, _, _), r in zip(keys, results, strict=True) if s == k]
                reports.append({f: sum(r[f] for r in mine) for f in (mine[0] if mine else {})})
            job_result = TrainsetJob(
                output=out_dir,
                n_series=sum(r["series"] for r in results),
                n_holdout=sum(r["holdout"] for r in results),
                n_steps=sum(r["steps"] for r in results),
                reports=reports,
                seconds=time.perf_counter() - t0,
            )
            finish_output(out_dir, scratch_dir, dataclasses.asdict(job_result))
    return job_result
