"""Batch forecasting on a Dask cluster: input partitions in, partitioned Parquet forecasts out.

The result holds the same rows as the single-machine ``atomic-usage forecast`` (same
regularization, same model, same columns ``id,timestamp,metric,mean,p10,p50,p90,model``),
spread over ``part-XXXXX.parquet`` files, every id whole in one part. A part is one bucket
of hashed ids after the shuffle or, when the Parquet footers show that no id is in two
chunks (:mod:`~atomic_usage.cluster.layout`), one input chunk, forecast where it was read.

Bad values follow the single-machine rule (``read_wide(..., issues=...)``): a cell that is not
a number, or a percent far out of range, rejects its series (id and metric) only. The split
task that finds it masks it and returns its issue; the client joins the issues of all the
chunks (one per series, the file and line named), hands each bucket task those of its ids, and
logs each rejected series and each distinct warning once for the job.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .chunked import first_reasons
from .layout import whole_id_chunks
from .partitions import (
    Chunk,
    bucket_of,
    columns_with_numbers,
    plan_chunks,
    read_bucket,
    read_chunk,
    text_columns,
    write_parquet_atomic,
)
from .plugin import ModelPlugin, resolve_model, worker_model
from .shuffle import (
    DEFAULT_ROWS_PER_BUCKET,
    bucket_dirs,
    check_rows,
    cleared_on_failure,
    finish_output,
    gather,
    map_dask_errors,
    n_buckets_for,
    prepare_output,
    read_mixed_again,
    run_split,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..data.issues import InputWarning, SeriesIssue
    from ..models.base import Forecaster

__all__ = ["ForecastJob", "forecast_bucket", "forecast_chunk", "forecast_distributed"]


@dataclasses.dataclass(frozen=True)
class ForecastJob:
    """What a distributed forecast did.

    Attributes:
        output: the folder of parts.
        n_chunks: input chunks read by split tasks.
        n_parts: parts written (non-empty buckets).
        n_series: machines (ids) forecast.
        n_rows_in: input rows read.
        n_rows_out: forecast rows written.
        fallback: series, i.e. (id, metric) pairs, served by a fallback (see the ``model`` column).
        regularize: the regularization counts summed over buckets (as in ``RegularizeReport``).
        seconds: wall time of the job, connection excluded.
        mode: ``"shuffle"`` (hashed into buckets through the scratch folder) or ``"direct"``
            (every id was in one chunk: each chunk forecast where it was read, one part each).
        n_metric_series: series, i.e. (id, metric) pairs, in the output.
        missing: series not forecast (model ``none`` or ``error``; see the ``reason`` column).
        reasons: the first MAX_REASONS distinct reasons of those, in part order (the CLI prints these).
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
    mode: str = "shuffle"
    n_metric_series: int = 0
    missing: int = 0
    reasons: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for a console: machines are ids, series are (id, metric) pairs."""
        how = ", ids whole in each chunk: not shuffled" if self.mode == "direct" else ""
        return (
            f"{self.n_series} machine{'s' if self.n_series != 1 else ''} "
            f"({self.n_metric_series} series: machine × metric), {self.n_rows_out} rows "
            f"in {self.seconds:.2f}s -> {self.output} ({self.n_parts} parts from {self.n_chunks} input chunks{how})"
        )


def _forecast_whole(
    df: pd.DataFrame, horizon: int, model: Forecaster, issues: Sequence[SeriesIssue] = ()
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Regularizes and forecasts ``df`` (every id in it whole), its rejected series masked;
    the forecast and the counts."""
    from ..data.issues import mask_rejected
    from ..data.regularize import regularize
    from ..models.base import NO_FORECAST, forecast_frame, on_fallback

    # A split task masked a rejected series in its own chunk only; its other chunks' rows are here too.
    df = mask_rejected(df, issues)
    panel, report = regularize(df)
    frame = forecast_frame(model, panel, horizon, issues=issues)
    firsts = frame.iloc[::horizon]  # each (id, metric) is `horizon` consecutive rows
    names = firsts["model"]
    gone = names.isin(NO_FORECAST)
    counts = {
        "series": len(panel),
        "metric_series": len(names),
        "rows_in": len(df),
        "rows_out": len(frame),
        "fallback": int(on_fallback(names, model).sum()),
        "missing": int(gone.sum()),
        "reasons": first_reasons(firsts["reason"][gone.to_numpy()]),
        "report": dataclasses.asdict(report),
    }
    return frame, counts


def forecast_bucket(
    directory: str, part: str, horizon: int, plugin_name: str, issues: Sequence[SeriesIssue] = ()
) -> dict[str, Any]:
    """Pass 2, on a worker: regularize and forecast one bucket, then write its part.

    Args:
        directory: the bucket's scratch folder.
        part: the part file to write (its name is fixed by the bucket, so a re-run replaces it).
        horizon: steps to forecast.
        plugin_name: the :class:`~atomic_usage.cluster.plugin.ModelPlugin` holding the model.
        issues: the series of this bucket's ids rejected by the split (masked here in every row,
            then given model ``error`` and their reason).

    Returns:
        Counts for the job's summary: ``series`` (machines), ``metric_series``, ``rows_in``,
        ``rows_out``, ``fallback``, ``missing`` (series), ``reasons`` (the first MAX_REASONS distinct ones of those
        not forecast), ``report``.
    """
    frame, counts = _forecast_whole(read_bucket(directory), horizon, worker_model(plugin_name), issues)
    if len(frame):
        write_parquet_atomic(frame, Path(part))
    return counts


def _issues_by_bucket(issues: Sequence[SeriesIssue], n_buckets: int) -> dict[int, list[SeriesIssue]]:
    """The rejected series of each bucket, by the hash that put their ids there."""
    if not issues:
        return {}
    buckets = bucket_of(np.array([i.id for i in issues], dtype=object), n_buckets)
    out: dict[int, list[SeriesIssue]] = {}
    for b, issue in zip(buckets.tolist(), issues, strict=True):
        out.setdefault(b, []).append(issue)
    return out


def _id_batches(ids: np.ndarray, rows: int) -> np.ndarray:
    """The batch of each row: whole ids, in order of first appearance, about ``rows`` rows a batch.

    >>> _id_batches(np.array(["a", "b", "a", "c", "c", "d"], object), 3).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    import pandas as pd

    codes, _ = pd.factorize(ids)
    n = np.bincount(codes)
    batch: np.ndarray = ((np.cumsum(n) - n) // max(rows, 1))[codes]
    return batch


def forecast_chunk(
    chunk: Chunk,
    part: str,
    horizon: int,
    plugin_name: str,
    rows_per_bucket: int,
    numeric_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """The direct pass, on a worker: read one chunk whose ids are in no other chunk, forecast it, write its part.

    The chunk is regularized and forecast in batches of whole ids of about ``rows_per_bucket``
    rows, so beyond the chunk itself a worker holds what a bucket task holds.

    Args:
        chunk: the input chunk (see :func:`~atomic_usage.cluster.layout.whole_id_chunks`).
        part: the part file to write (its name is fixed by the chunk, so a re-run replaces it).
        horizon: steps to forecast.
        plugin_name: the :class:`~atomic_usage.cluster.plugin.ModelPlugin` holding the model.
        rows_per_bucket: input rows per forecast call.
        numeric_columns: columns to read as metrics even if the chunk holds only text in them
            (see :func:`~atomic_usage.cluster.shuffle.mixed_columns`).

    Returns:
        Counts for the job's summary, as :func:`forecast_bucket` gives them, and the chunk's
        ``issues`` (its rejected series, whole since the chunk holds all their rows) and
        ``warnings``, for the client to report once; ``metrics`` and ``text_columns``, the
        columns that held a number and those ignored as text.

    Raises:
        SchemaError: the chunk cannot be read or is not valid wide data (the message names the file).
    """
    import pandas as pd

    model = worker_model(plugin_name)
    issues: list[SeriesIssue] = []
    warnings: list[InputWarning] = []
    df = read_chunk(chunk, out_of_range="reject", issues=issues, warnings=warnings, numeric_columns=numeric_columns)
    batch = _id_batches(df["id"].to_numpy(), rows_per_bucket)
    # Each batch is taken out of the chunk only while it is forecast; the forecasts are small.
    done = [_forecast_whole(df[batch == k], horizon, model, issues) for k in np.unique(batch)]
    done = done or [_forecast_whole(df, horizon, model)]  # an empty chunk still gives the counts' keys
    counts = [c for _, c in done]
    total: dict[str, Any] = {k: sum(c[k] for c in counts) for k in counts[0] if k not in ("report", "reasons")}
    total["report"] = {f: sum(c["report"][f] for c in counts) for f in counts[0]["report"]}
    total["reasons"] = first_reasons(r for c in counts for r in c["reasons"])
    total["issues"], total["warnings"] = issues, warnings
    total["metrics"] = columns_with_numbers(df, issues, skip=("id", "timestamp"))
    total["text_columns"] = text_columns(warnings)
    out = pd.concat([f for f, _ in done], ignore_index=True) if len(done) > 1 else done[0][0]
    if len(out):
        write_parquet_atomic(out, Path(part))
    return total


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
    shuffle: Literal["auto", "always"] = "auto",
) -> ForecastJob:
    """Forecasts every series of the inputs on the cluster of ``client``.

    The model is loaded once per worker by a :class:`ModelPlugin`; the inputs are read by
    the workers, shuffled by hash of id through ``scratch``, and each bucket is
    regularized, forecast and written as ``output/part-XXXXX.parquet``. ``output/_SUCCESS``
    (a JSON summary) is written last. When the Parquet footers show that every id lies in
    one chunk (:func:`~atomic_usage.cluster.layout.whole_id_chunks`), and there are at least
    as many chunks as workers, there is no shuffle: each chunk is forecast by the task that
    reads it, one part per chunk.

    A cell that is not a number, or a percent far out of range, rejects its series only (model
    ``error``, a ``reason`` naming the file, the line or row, the id and the column), as on the
    single-machine path; every other series is forecast. Each rejected series and each
    distinct warning (a text column ignored, a misspelled metric, values clipped) is logged
    once for the job, by the client.

    Args:
        client: a connected :class:`distributed.Client` (see :func:`~atomic_usage.cluster.client.connect`).
        inputs: wide CSV/Parquet files or folders of partition files, ``id,timestamp,<metric>...``,
            taken together as one fleet, as one folder holding all the files would be (an id may
            have rows in several of them).
        horizon: steps to forecast.
        output: the output folder (made if missing; parts of an earlier run are replaced).
        model: a model folder, a baseline name (``naive``...), a forecaster object, or None
            for ``default_model_dir`` / the bundled model.
        default_model_dir: the model folder used when ``model`` is None (``ATOMIC_MODEL_DIR``).
        rows_per_bucket: input rows per forecast task, which bounds a worker's memory.
        scratch: the shuffle folder, on storage every worker sees (default ``output/_scratch``).
        keep_scratch: keep the shuffle folder after the job (for debugging).
        shuffle: ``"auto"`` skips the shuffle when the footers allow it; ``"always"`` shuffles
            (to measure it, or to get hashed buckets whatever the input).

    Returns:
        The job's summary.

    Raises:
        SchemaError: an input file is missing, unreadable or invalid (a missing column, an
            unparsable timestamp, a row without id; the message names it), or the horizon is
            not from 1 to MAX_HORIZON (``atomic_usage.config``).
        ArtifactError: the model folder is missing or malformed.
        ClusterError: the cluster failed in a way a re-run could not absorb.
    """
    from ..config import validate_horizon
    from ..data.issues import report_warnings
    from ..errors import SchemaError

    problem = validate_horizon(horizon)
    if problem is not None:
        raise SchemaError(f"The horizon {problem}.")
    if shuffle not in ("auto", "always"):
        raise ValueError(f"shuffle must be 'auto' or 'always'; got {shuffle!r}.")
    t0 = time.perf_counter()
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out_dir = Path(output).resolve()
    label = str(client.scheduler.address)
    with map_dask_errors(label):
        ref = resolve_model(model, default_model_dir)
        chunks = plan_chunks(paths, rows_per_chunk=rows_per_bucket)
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        direct = whole_id_chunks(chunks, rows_per_chunk=rows_per_bucket) if shuffle == "auto" else None
        if direct is not None and len(direct) < n_workers:
            direct = None  # fewer chunks than workers: the shuffle's buckets keep every worker busy
        plugin = ModelPlugin(ref)
        client.register_plugin(plugin)
        scratch_dir = prepare_output(out_dir, Path(scratch).resolve() if scratch else None, [c.path for c in chunks])
        with cleared_on_failure(out_dir, scratch_dir, keep_scratch=keep_scratch):
            job = uuid.uuid4().hex[:8]
            if direct is not None:
                chunks = direct

                def forecast_one(i: int, numeric_columns: Sequence[str] = (), attempt: str = "") -> Any:
                    return client.submit(
                        forecast_chunk,
                        chunks[i],
                        str(out_dir / f"part-{i:05d}.parquet"),
                        horizon,
                        plugin.name,
                        rows_per_bucket,
                        numeric_columns,
                        key=f"atomic-forecast-{job}-{i:05d}{attempt}",
                        pure=False,
                    )

                results = gather(client, [forecast_one(i) for i in range(len(chunks))])
                # A chunk that ignored as text a column another chunk of its file holds numbers in
                # is forecast again with that column a metric (its part is rewritten), as in run_split.
                read_mixed_again(client, chunks, results, forecast_one)
                check_rows(chunks, [r["rows_in"] for r in results])
                n_rows_in = sum(r["rows_in"] for r in results)
                # Every id is in one chunk, so each chunk's issues are already those of whole series.
                report_warnings([w for r in results for w in r["warnings"]], [i for r in results for i in r["issues"]])
            else:
                n_buckets = n_buckets_for(chunks, n_workers, rows_per_bucket)
                issues: list[SeriesIssue] = []
                warnings: list[InputWarning] = []
                rows = run_split(
                    client, chunks, n_buckets, scratch_dir, out_of_range="reject", issues=issues, warnings=warnings
                )
                report_warnings(warnings, issues)
                by_bucket = _issues_by_bucket(issues, n_buckets)
                futures = [
                    client.submit(
                        forecast_bucket,
                        str(d),
                        str(out_dir / f"part-{b:05d}.parquet"),
                        horizon,
                        plugin.name,
                        by_bucket.get(b, []),
                        key=f"atomic-forecast-{job}-{b:05d}",
                        pure=False,
                    )
                    for _, b, d in bucket_dirs(scratch_dir, rows)
                ]
                results = gather(client, futures)
                n_rows_in = sum(rows.values())
            report = {k: sum(r["report"][k] for r in results) for k in (results[0]["report"] if results else {})}
            result = ForecastJob(
                output=out_dir,
                n_chunks=len(chunks),
                n_parts=sum(1 for r in results if r["rows_out"]),
                n_series=sum(r["series"] for r in results),
                n_rows_in=n_rows_in,
                n_rows_out=sum(r["rows_out"] for r in results),
                fallback=sum(r["fallback"] for r in results),
                regularize=report,
                seconds=time.perf_counter() - t0,
                mode="shuffle" if direct is None else "direct",
                n_metric_series=sum(r["metric_series"] for r in results),
                missing=sum(r["missing"] for r in results),
                reasons=tuple(first_reasons(x for r in results for x in r["reasons"])),
            )
            finish_output(out_dir, scratch_dir, dataclasses.asdict(result), keep_scratch=keep_scratch)
    return result
