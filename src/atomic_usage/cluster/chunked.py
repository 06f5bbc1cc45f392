"""A large wide file forecast in one process, in chunks of whole machines: memory follows the chunk, not the file.

``atomic-usage forecast --input FILE`` reads a file of at most ``--rows-per-bucket`` rows
whole, as it always did. A larger file goes through :func:`forecast_chunked`, which holds
about one chunk of input rows at a time, in one of two ways:

- **stream**, when the file is sorted by id: chunks of ``rows_per_chunk`` rows are read in
  file order. The rows of a chunk's largest id are carried into the next chunk (that machine
  may go on there); the others are regularized, forecast and appended to the output. A
  Parquet file's row-group statistics tell, before any data is read, whether its ids are in
  order; a CSV file is simply tried.
- **shuffle**, otherwise: a first pass reads the id column only and counts every id's rows,
  and the sorted ids are cut into ranges of about ``rows_per_chunk`` rows. A second pass
  writes each chunk's rows to a scratch folder by range, as the cluster's piece files
  (:func:`~atomic_usage.cluster.partitions.write_pieces`). Each range is then read back
  (:func:`~atomic_usage.cluster.partitions.read_bucket`), with every id whole and its rows in
  file order, and regularized, forecast and appended.

The shuffle cuts ranges of sorted ids where the cluster hashes ids: that way both ways go
through the ids in sorted order, which is the order of the in-memory path, so the output file
has the same rows in the same order. If a file that looked sorted is not (an id smaller than
one already forecast comes up), the stream drops what it wrote and the shuffle runs instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data.issues import InputWarning, SeriesIssue, combine_issues, mask_rejected, report_warnings
from ..data.readers import is_parquet, map_read_errors, no_rows_error
from ..data.regularize import DEFAULT_STEP, RegularizeReport, regularize
from ..data.validation import validate_wide
from ..errors import SchemaError
from ..models.base import NO_FORECAST, forecast_frame, on_fallback
from .partitions import (
    bucket_dir,
    columns_with_numbers,
    estimate_rows,
    read_bucket,
    read_header,
    text_columns,
    write_pieces,
)
from .shuffle import DEFAULT_ROWS_PER_BUCKET, make_scratch
from .writer import FrameWriter

if TYPE_CHECKING:
    from ..models.base import Forecaster

__all__ = ["MAX_REASONS", "ChunkedJob", "Progress", "first_reasons", "forecast_chunked"]

Progress = Callable[[str, int, "int | None"], None]
"""Called as ``progress(stage, rows_done, rows_total)`` after every chunk; the total is None
when not known (a CSV file before its ids are counted). Stages: ``counting ids``,
``splitting``, ``forecasting``."""

MAX_REASONS = 20
"""Not-forecast reasons kept in :attr:`ChunkedJob.reasons` (the CLI prints these)."""


def first_reasons(reasons: Iterable[str]) -> list[str]:
    """The first :data:`MAX_REASONS` distinct reasons, in order: an id with no value has the same
    reason for every metric, and the whole read prints each reason once."""
    return list(dict.fromkeys(reasons))[:MAX_REASONS]


@dataclasses.dataclass(frozen=True)
class ChunkedJob:
    """What a chunked forecast did.

    Attributes:
        output: the file written.
        mode: ``"stream"`` (the file was sorted by id) or ``"shuffle"``.
        n_chunks: forecast calls, one per chunk of whole machines.
        n_series: machines (ids) forecast.
        n_rows_in: input rows read.
        n_rows_out: forecast rows written.
        max_rows_per_chunk: the most input rows in one chunk: at most ``rows_per_chunk`` plus
            the rows of one machine. Memory follows this, not the file.
        fallback: (id, metric) series served by a fallback (see the ``model`` column).
        missing: (id, metric) series not forecast (model ``none`` or ``error``).
        reasons: the first MAX_REASONS distinct reasons of those, in output order.
        regularize: the regularization counts summed over chunks.
        seconds: wall time.
        n_metric_series: series, i.e. (id, metric) pairs, in the output.
    """

    output: Path
    mode: str
    n_chunks: int
    n_series: int
    n_rows_in: int
    n_rows_out: int
    max_rows_per_chunk: int
    fallback: int
    missing: int
    reasons: tuple[str, ...]
    regularize: RegularizeReport
    seconds: float
    n_metric_series: int = 0

    def summary(self) -> str:
        """One line for a console: machines are ids, series are (id, metric) pairs."""
        how = "sorted by id, streamed" if self.mode == "stream" else "shuffled by id range"
        return (
            f"{self.n_series} machine{'s' if self.n_series != 1 else ''} "
            f"({self.n_metric_series} series: machine × metric), {self.n_rows_out} rows "
            f"in {self.seconds:.2f}s -> {self.output} "
            f"({self.n_chunks} chunks of at most {self.max_rows_per_chunk} input rows, {how})"
        )


class _Unsorted(Exception):
    """The stream met an id smaller than one it already forecast: the file is not sorted by id."""


class _MixedColumns(Exception):
    """A chunk holds numbers in columns an earlier chunk ignored as text: the pass starts again
    with them read as metrics from the first chunk on, as a whole read has them."""

    def __init__(self, columns: set[str]) -> None:
        super().__init__(f"columns {sorted(columns)} hold text in one chunk and numbers in another")
        self.columns = columns


class _Run:
    """One pass over the file: forecasts chunks of whole machines and tallies what it wrote."""

    def __init__(
        self,
        model: Forecaster,
        horizon: int,
        step: pd.Timedelta,
        writer: FrameWriter,
        on_chunk: Callable[[pd.DataFrame, pd.DataFrame], None] | None,
        numeric: set[str] | None = None,
    ) -> None:
        self.model, self.horizon, self.step, self.writer, self.on_chunk = model, horizon, step, writer, on_chunk
        # Columns seen holding numbers (metrics in every later chunk too) and columns ignored as text.
        self.numeric: set[str] = set(numeric or ())
        self.text: set[str] = set()
        self.issues: dict[tuple[str, str], SeriesIssue] = {}
        self.issue_keys: dict[str, list[tuple[str, str]]] = {}
        self.warnings: list[InputWarning] = []  # logged once, at the end (a second pass starts a new _Run)
        self.n_chunks = self.n_series = self.n_rows_in = self.max_rows = self.fallback = self.missing = 0
        self.n_metric_series = 0
        self.reasons: list[str] = []
        self.report = dict.fromkeys((f.name for f in dataclasses.fields(RegularizeReport)), 0)

    def add_issues(self, found: list[SeriesIssue]) -> None:
        """Keeps the series validation rejected; one series found in two chunks becomes one issue."""
        for issue in found:
            key = (issue.id, issue.metric)
            old = self.issues.get(key)
            self.issues[key] = issue if old is None else combine_issues(old, issue)
            if old is None:
                self.issue_keys.setdefault(issue.id, []).append(key)

    def forecast(self, df: pd.DataFrame) -> None:
        """Regularizes and forecasts ``df`` (every id in it whole) and appends the forecast."""
        mine: list[SeriesIssue] = []
        if self.issue_keys:
            for sid in pd.unique(df["id"].to_numpy()):
                mine.extend(self.issues[k] for k in self.issue_keys.get(sid, ()))
        # A whole read masks a rejected series in all its rows; a chunk only masked its own rows.
        df = mask_rejected(df, mine)
        panel, report = regularize(df, self.step)
        frame = forecast_frame(self.model, panel, self.horizon, issues=mine)
        self.writer.write(frame)
        if self.on_chunk is not None:
            self.on_chunk(df, frame)
        self.n_chunks += 1
        self.n_series += len(panel)
        self.n_rows_in += len(df)
        self.max_rows = max(self.max_rows, len(df))
        for k, v in dataclasses.asdict(report).items():
            self.report[k] += v
        firsts = frame.iloc[:: self.horizon]  # each (id, metric) is `horizon` consecutive rows
        names = firsts["model"]
        self.n_metric_series += len(names)
        gone = names.isin(NO_FORECAST).to_numpy()
        self.missing += int(gone.sum())
        self.fallback += int(on_fallback(names, self.model).sum())
        if gone.any() and len(self.reasons) < MAX_REASONS:
            self.reasons = first_reasons([*self.reasons, *firsts["reason"][gone]])


def _header(path: Path, id_col: str, time_col: str, warnings: list[InputWarning]) -> tuple[pd.DataFrame, list[str]]:
    """An empty validated frame with the file's columns, and the columns as the file names them.
    Fails as ``read_wide`` does when the id, the timestamp or every metric column is missing,
    before any data is read."""
    df = read_header(path, id_col=id_col)
    columns = list(map(str, df.columns))
    df = validate_wide(df, id_col=id_col, time_col=time_col, path=str(path), warnings=warnings)
    return df.rename(columns={id_col: "id", time_col: "timestamp"}), columns


def _raw_chunks(path: Path, rows: int, id_col: str, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The file's rows as frames of at most ``rows`` rows, in order; the index is the row number."""
    first = 0
    with map_read_errors(path), contextlib.ExitStack() as stack:
        if is_parquet(path):
            import pyarrow as pa
            import pyarrow.parquet as pq

            # With pre_buffer (the default), pyarrow's allocated memory grew by about 6 MB per million
            # rows read until the file was closed, so the peak grew with the file.
            pf = stack.enter_context(pq.ParquetFile(path, pre_buffer=False))
            batches = pf.iter_batches(batch_size=rows, columns=columns)
            chunks: Iterator[pd.DataFrame] = (pa.Table.from_batches([b]).to_pandas() for b in batches)
        else:
            chunks = stack.enter_context(pd.read_csv(path, dtype={id_col: str}, usecols=columns, chunksize=rows))
        while True:
            df = next(chunks, None)
            if df is None:
                return
            if isinstance(df.index, pd.RangeIndex):
                df.index = pd.RangeIndex(first, first + len(df))
            first += len(df)
            box = [df]
            del df
            yield box.pop()  # a suspended generator keeps its locals: hold no chunk while the caller works


def _frames(path: Path, rows: int, run: _Run, id_col: str, time_col: str) -> Generator[pd.DataFrame, None, None]:
    """Validated chunks of the file in order, with columns ``id``, ``timestamp``, metrics."""
    for raw in _raw_chunks(path, rows, id_col):
        found: list[SeriesIssue] = []
        kept: list[InputWarning] = []
        box = [
            validate_wide(
                raw,
                id_col=id_col,
                time_col=time_col,
                path=str(path),
                out_of_range="reject",
                issues=found,
                warnings=kept,
                numeric_columns=run.numeric,
            )
        ]
        del raw
        metrics = set(columns_with_numbers(box[0], found, skip=(id_col, time_col)))
        late = metrics & run.text
        if late:
            raise _MixedColumns(late)
        run.numeric |= metrics
        run.text.update(text_columns(kept))
        run.warnings.extend(kept)
        run.add_issues(found)
        if id_col != "id" or time_col != "timestamp":
            box[0] = box[0].rename(columns={id_col: "id", time_col: "timestamp"})
        yield box.pop()  # as in _raw_chunks: hold no chunk while suspended


def _sorted_by_stats(path: Path, id_col: str) -> bool | None:
    """Whether a Parquet file's row-group statistics show its ids in order (None: they cannot tell)."""
    if not is_parquet(path):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        schema = pf.schema_arrow
        if id_col not in schema.names:
            return None
        kind = schema.field(id_col).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return None  # ids compare as the strings they become, not as numbers
        meta = pf.metadata
        j = meta.schema.names.index(id_col)
        top: str | None = None
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(j).statistics
            if stats is None or not stats.has_min_max:
                return None
            if top is not None and stats.min < top:
                return False
            top = stats.max
    return True


def _stream(frames: Generator[pd.DataFrame, None, None], run: _Run, tick: Callable[[int], None]) -> None:
    carry: pd.DataFrame | None = None
    top: str | None = None  # the largest id so far; every smaller id has been forecast
    with contextlib.closing(frames):
        for df in frames:
            tick(len(df))
            if not len(df):
                continue
            uniq = pd.unique(df["id"].to_numpy())
            lo, hi = min(uniq), max(uniq)
            if top is not None and lo < top:
                raise _Unsorted(f"id {lo!r} comes after {top!r}")
            buf = df if carry is None else pd.concat([carry, df])
            del df
            last = buf["id"].to_numpy() == hi
            done = buf[~last] if not last.all() else None
            carry, top = buf[last], hi
            del buf  # hold the chunk once, as `done`, while it is forecast
            if done is not None:
                run.forecast(done)
                del done
    if carry is not None:
        run.forecast(carry)


def _id_counts(path: Path, rows: int, id_col: str, tick: Callable[[int], None]) -> pd.Series:
    """Rows per id, reading the id column only; the index is the ids (as str), sorted."""
    parts: list[pd.Series] = []
    held = 0
    for raw in _raw_chunks(path, rows, id_col, columns=[id_col]):
        vc = raw[id_col].astype(str).value_counts(sort=False)
        parts.append(vc)
        held += len(vc)
        if held > 4 * rows:  # keep the partial counts about as small as the id set
            parts = [pd.concat(parts).groupby(level=0, sort=False).sum()]
            held = len(parts[0])
        tick(len(raw))
    if not parts:
        return pd.Series(dtype=np.int64)
    return pd.concat(parts).groupby(level=0, sort=True).sum()


def _range_bounds(counts: pd.Series, rows: int) -> np.ndarray:
    """The first id of every range but the first: whole ids, about ``rows`` rows per range."""
    n = counts.to_numpy()
    k = (np.cumsum(n) - n) // max(rows, 1)
    bounds: np.ndarray = counts.index.to_numpy(dtype=object)[np.flatnonzero(np.diff(k)) + 1]
    return bounds


def _range_of(ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The range of each id (searched once per distinct id)."""
    codes, uniques = pd.factorize(ids)
    ranges: np.ndarray = np.searchsorted(bounds, np.asarray(uniques, dtype=object), side="right")[codes]
    return ranges


def _shuffle(
    path: Path,
    rows: int,
    run: _Run,
    scratch_root: Path,
    id_col: str,
    time_col: str,
    stage: Callable[[str, int | None], Callable[[int], None]],
    total: int | None,
) -> None:
    counts = _id_counts(path, rows, id_col, stage("counting ids", total))
    total = int(counts.sum())
    bounds = _range_bounds(counts, rows)
    del counts
    scratch = make_scratch(scratch_root, prefix=".atomic-shuffle-")
    try:
        tick = stage("splitting", total)
        for k, df in enumerate(_frames(path, rows, run, id_col, time_col)):
            write_pieces(df, _range_of(df["id"].to_numpy(), bounds), scratch, 0, k)
            tick(len(df))
        tick = stage("forecasting", total)
        for b in range(len(bounds) + 1):
            d = bucket_dir(scratch, 0, b)
            if d.is_dir():
                df = read_bucket(d)
                run.forecast(df)
                shutil.rmtree(d)  # give the disk back as we go
                tick(len(df))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def forecast_chunked(
    path: str | Path,
    horizon: int,
    output: str | Path,
    *,
    model: Forecaster,
    rows_per_chunk: int = DEFAULT_ROWS_PER_BUCKET,
    scratch: str | Path | None = None,
    step: pd.Timedelta | str = DEFAULT_STEP,
    id_col: str = "id",
    time_col: str = "timestamp",
    progress: Progress | None = None,
    on_chunk: Callable[[pd.DataFrame, pd.DataFrame], None] | None = None,
) -> ChunkedJob:
    """Forecasts every series of one wide file, holding about ``rows_per_chunk`` input rows at a time.

    Writes what ``read_wide(path, issues=...)``, ``regularize`` and ``forecast_frame`` over the
    whole file give, in the same row order, to ``output`` (CSV or Parquet by suffix, under a
    temporary name renamed at the end). See the module docstring for how.

    Args:
        path: a wide CSV (optionally compressed) or Parquet file, ``id,timestamp,<metric>...``.
        horizon: steps to forecast.
        output: the output file.
        model: the forecaster.
        rows_per_chunk: input rows per chunk, which bounds memory. A machine is never cut, so a
            chunk can also hold the rest of one machine.
        scratch: where an unsorted file is shuffled (a temporary folder is made in it and removed
            at the end); default: the output's folder. It needs about the input's size.
        step: the grid step.
        id_col: the id column's name.
        time_col: the timestamp column's name.
        progress: see :data:`Progress`.
        on_chunk: called with each chunk's validated wide frame and its forecast (e.g. charts).

    Returns:
        What was done.

    Raises:
        SchemaError: the file is missing, unreadable, invalid or without data rows (the message
            names it), the output cannot be written, or the horizon is out of range. No output file is left then.
    """
    t0 = time.perf_counter()
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"{p}: the file does not exist or is not a file; check the path.", path=str(p))
    step_td = pd.Timedelta(step)
    header_warnings: list[InputWarning] = []
    header, columns = _header(p, id_col, time_col, header_warnings)
    forecast_frame(model, regularize(header, step_td)[0], horizon)  # checks the horizon before any data is read
    total = estimate_rows(p) if is_parquet(p) else None
    rows = max(int(rows_per_chunk), 1)

    def stage(name: str, total: int | None) -> Callable[[int], None]:
        done = 0
        if progress is not None:
            progress(name, 0, total)

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(name, done, total)

        return tick

    with FrameWriter(output) as writer:
        numeric: set[str] = set()
        mode = "stream" if _sorted_by_stats(p, id_col) is not False else "shuffle"
        while True:
            run = _Run(model, horizon, step_td, writer, on_chunk, numeric)
            try:
                if mode == "stream":
                    try:
                        _stream(_frames(p, rows, run, id_col, time_col), run, stage("forecasting", total))
                    except _Unsorted:
                        writer.discard()
                        numeric = run.numeric
                        run = _Run(model, horizon, step_td, writer, on_chunk, numeric)
                        mode = "shuffle"
                if mode == "shuffle":
                    root = Path(scratch) if scratch is not None else writer.path.parent
                    _shuffle(p, rows, run, root, id_col, time_col, stage, total)
            except _MixedColumns as exc:
                # Rare (a column whose first rows are text): what was written used another set of
                # metrics, so the pass starts again, reading these columns as metrics throughout.
                writer.discard()
                numeric = run.numeric | exc.columns
                continue
            break
        if not run.n_rows_in:
            # A header and blank lines, or a compressed header, can be estimated as large: the
            # whole read's error then, not "0 machines" (nothing is left at the output).
            raise no_rows_error(p, columns)
    # Every chunk met the same columns, and a series may be rejected in several: each is named once.
    report_warnings([*header_warnings, *run.warnings], run.issues.values(), path=str(p))
    return ChunkedJob(
        output=writer.path,
        mode=mode,
        n_chunks=run.n_chunks,
        n_series=run.n_series,
        n_rows_in=run.n_rows_in,
        n_rows_out=writer.rows,
        max_rows_per_chunk=run.max_rows,
        fallback=run.fallback,
        missing=run.missing,
        reasons=tuple(run.reasons),
        regularize=RegularizeReport(**run.report),
        seconds=time.perf_counter() - t0,
        n_metric_series=run.n_metric_series,
    )
