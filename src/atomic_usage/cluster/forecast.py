"""Batch forecasting on a Dask cluster: input partitions in, partitioned Parquet forecasts out.

The result holds the same rows as the single-machine ``atomic-usage forecast`` (same
regularization, same model, same columns ``id,timestamp,metric,mean,p10,p50,p90,model``),
spread over ``part-XXXXX.parquet`` files: one per bucket of ids, every id whole in one part.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .partitions import plan_chunks, read_bucket, write_parquet_atomic
from .plugin import ModelPlugin, resolve_model, worker_model
from .shuffle import (
    DEFAULT_ROWS_PER_BUCKET,
    bucket_dirs,
    finish_output,
    gather,
    map_dask_errors,
    n_buckets_for,
    prepare_output,
    run_split,
)

if TYPE_CHECKING:
    from ..models.base import Forecaster

__all__ = ["ForecastJob", "forecast_bucket", "forecast_distributed"]


@dataclasses.dataclass(frozen=True)
class ForecastJob:
    """What a distributed forecast did.

    Attributes:
        output: the folder of parts.
        n_chunks: input chunks read by split tasks.
        n_parts: parts written (non-empty buckets).
        n_series: machines forecast.
        n_rows_in: input rows read.
        n_rows_out: forecast rows written.
        fallback: (id, metric) pairs served by a fallback (see the ``model`` column).
        regularize: the regularization counts summed over buckets (as in ``RegularizeReport``).
        seconds: wall time of the job, connection excluded.
    """

    output: Path
    n_chunks: int
    n_parts: int
    n_series: int
    n_rows_in: int
    n_rows_out: int
    fallback: int
    regularize: dict[str, int]
    seconds: float

    def summary(self) -> str:
        """One line for a console."""
        return (
            f"{self.n_series} series, {self.n_rows_out} rows in {self.seconds:.2f}s -> {self.output} "
            f"({self.n_parts} parts from {self.n_chunks} input chunks)"
        )


def forecast_bucket(directory: str, part: str, horizon: int, plugin_name: str) -> dict[str, Any]:
    """Pass 2, on a worker: regularize and forecast one bucket, then write its part.

    Args:
        directory: the bucket's scratch folder.
        part: the part file to write (its name is fixed by the bucket, so a re-run replaces it).
        horizon: steps to forecast.
        plugin_name: the :class:`~atomic_usage.cluster.plugin.ModelPlugin` holding the model.

    Returns:
        Counts for the job's summary.
    """
    from ..data.regularize import regularize
    from ..models.base import forecast_frame

    model = worker_model(plugin_name)
    panel, report = regularize(read_bucket(directory))
    frame = forecast_frame(model, panel, horizon)
    if len(frame):
        write_parquet_atomic(frame, Path(part))
    pairs = frame.loc[frame["model"] != getattr(model, "name", ""), ["id", "metric"]].drop_duplicates()
    return {
        "series": len(panel),
        "rows_out": len(frame),
        "fallback": len(pairs),
        "report": dataclasses.asdict(report),
    }


def forecast_distributed(
    client: Any,
    inputs: str | Path | Sequence[str | Path],
    horizon: int,
    output: str | Path,
    *,
    model: str | Path | Forecaster | None = None,
    default_model_dir: str | Path | None = None,
    rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
    scratch: str | Path | None = None,
    keep_scratch: bool = False,
) -> ForecastJob:
    """Forecasts every series of the inputs on the cluster of ``client``.

    The model is loaded once per worker by a :class:`ModelPlugin`; the inputs are read by
    the workers, shuffled by hash of id through ``scratch``, and each bucket is
    regularized, forecast and written as ``output/part-XXXXX.parquet``. ``output/_SUCCESS``
    (a JSON summary) is written last.

    Args:
        client: a connected :class:`distributed.Client` (see :func:`~atomic_usage.cluster.client.connect`).
        inputs: wide CSV/Parquet files or folders of partition files, ``id,timestamp,<metric>...``.
        horizon: steps to forecast.
        output: the output folder (made if missing; parts of an earlier run are replaced).
        model: a model folder, a baseline name (``naive``...), a forecaster object, or None
            for ``default_model_dir`` / the bundled model.
        default_model_dir: the model folder used when ``model`` is None (``ATOMIC_MODEL_DIR``).
        rows_per_bucket: input rows per forecast task, which bounds a worker's memory.
        scratch: the shuffle folder, on storage every worker sees (default ``output/_scratch``).
        keep_scratch: keep the shuffle folder after the job (for debugging).

    Returns:
        The job's summary.

    Raises:
        SchemaError: an input file is missing, unreadable or invalid (the message names it),
            or the horizon is below 1.
        ArtifactError: the model folder is missing or malformed.
        ClusterError: the cluster failed in a way a re-run could not absorb.
    """
    from ..errors import SchemaError

    if horizon < 1:
        raise SchemaError(f"The horizon must be at least 1 step; got {horizon}.")
    t0 = time.perf_counter()
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out_dir = Path(output).resolve()
    label = str(client.scheduler.address)
    with map_dask_errors(label):
        ref = resolve_model(model, default_model_dir)
        chunks = plan_chunks(paths, rows_per_chunk=rows_per_bucket)
        plugin = ModelPlugin(ref)
        client.register_plugin(plugin)
        scratch_dir = prepare_output(out_dir, Path(scratch).resolve() if scratch else None)
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        n_buckets = n_buckets_for(chunks, n_workers, rows_per_bucket)
        rows = run_split(client, chunks, n_buckets, scratch_dir)
        job = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                forecast_bucket,
                str(d),
                str(out_dir / f"part-{b:05d}.parquet"),
                horizon,
                plugin.name,
                key=f"atomic-forecast-{job}-{b:05d}",
                pure=False,
            )
            for _, b, d in bucket_dirs(scratch_dir, rows)
        ]
        results = gather(client, futures)
        report = {k: sum(r["report"][k] for r in results) for k in (results[0]["report"] if results else {})}
        result = ForecastJob(
            output=out_dir,
            n_chunks=len(chunks),
            n_parts=sum(1 for r in results if r["rows_out"]),
            n_series=sum(r["series"] for r in results),
            n_rows_in=sum(rows.values()),
            n_rows_out=sum(r["rows_out"] for r in results),
            fallback=sum(r["fallback"] for r in results),
            regularize=report,
            seconds=time.perf_counter() - t0,
        )
        finish_output(out_dir, scratch_dir, dataclasses.asdict(result), keep_scratch=keep_scratch)
    return result
