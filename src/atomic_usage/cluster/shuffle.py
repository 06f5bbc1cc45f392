"""The parts every distributed job shares: the split pass, the output folder, and Dask errors mapped.

Only small values cross to the client (row counts per bucket, per-part summaries);
the data goes from the input files to the scratch folder to the output parts on
the workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AtomicError, ClusterError, SchemaError
from .partitions import Chunk, bucket_dir, empty_split, header_columns, split_chunk

if TYPE_CHECKING:
    from ..data.issues import InputWarning, SeriesIssue
    from ..data.validation import RangePolicy

__all__ = [
    "DEFAULT_ROWS_PER_BUCKET",
    "check_rows",
    "cleared_on_failure",
    "finish_output",
    "gather",
    "make_scratch",
    "map_dask_errors",
    "mixed_columns",
    "n_buckets_for",
    "prepare_output",
    "read_mixed_again",
    "run_split",
]

DEFAULT_ROWS_PER_BUCKET = 1_000_000
"""Input rows per bucket (one forecast task): about 3,500 machines of one day at 5 minutes,
a few hundred MB of worker memory at peak."""

SUCCESS_FILE = "_SUCCESS"
"""Written last into an output folder, with the job's summary as JSON: a folder without it is incomplete."""


@contextlib.contextmanager
def map_dask_errors(label: str) -> Iterator[None]:
    """Turns Dask's own failures into :class:`ClusterError`; our errors pass through as they are."""
    try:
        yield
    except AtomicError:
        raise
    except Exception as exc:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            raise ClusterError(
                f"A task was running on workers that died too often ({exc}); the likeliest cause is "
                "memory: lower --rows-per-bucket or give workers more memory.",
                address=label,
            ) from exc
        if isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith("distributed"):
            raise ClusterError(
                f"The cluster {label} failed during the job ({type(exc).__name__}: {exc}); "
                "run it again (finished parts are rewritten, never duplicated).",
                address=label,
            ) from exc
        raise


def gather(client: Any, futures: Sequence[Any]) -> list[Any]:
    """Waits for ``futures``; on the first error cancels the rest and re-raises it."""
    try:
        return list(client.gather(list(futures)))
    except BaseException:
        client.cancel(list(futures))
        raise


def mixed_columns(chunks: Sequence[Chunk], results: Sequence[dict[str, Any]]) -> dict[int, list[str]]:
    """The chunks to read again, each with the columns to read as metrics this time.

    A chunk decides alone whether a column is a metric (it holds a number) or text to ignore.
    A whole read decides for the whole file: a column that holds a number anywhere in it is a
    metric, and its text cells reject their series. So a chunk that ignored as text a column
    another chunk of its file read as a metric is read again with that column kept.

    Args:
        chunks: the chunks, as submitted.
        results: their results, with ``metrics`` (the columns that held a number) and
            ``text_columns`` (those ignored as text) lists.

    Returns:
        ``{chunk index: columns}``, empty when every file's chunks agree (the usual case).

    >>> c = [Chunk("a.csv", "csv"), Chunk("a.csv", "csv"), Chunk("b.csv", "csv")]
    >>> r = [{"metrics": ["cpuLoad"], "text_columns": ["value"]}, {"metrics": ["cpuLoad", "value"],
    ...      "text_columns": []}, {"metrics": ["cpuLoad"], "text_columns": ["value"]}]
    >>> mixed_columns(c, r)
    {0: ['value']}
    """
    numeric: dict[str, set[str]] = {}
    for chunk, r in zip(chunks, results, strict=True):
        numeric.setdefault(chunk.path, set()).update(r["metrics"])
    redo: dict[int, list[str]] = {}
    for i, (chunk, r) in enumerate(zip(chunks, results, strict=True)):
        cols = sorted(numeric[chunk.path] & set(r["text_columns"]))
        if cols:
            redo[i] = cols
    return redo


def read_mixed_again(
    client: Any,
    chunks: Sequence[Chunk],
    results: list[dict[str, Any]],
    submit: Callable[[int, Sequence[str], str], Any],
) -> None:
    """Runs again every chunk :func:`mixed_columns` names, with those columns as metrics, and puts
    its new result in its place in ``results``; ``submit(i, columns, "-metrics")`` submits chunk
    ``i``'s task under a key of its own."""
    redo = mixed_columns(chunks, results)
    if redo:
        again = gather(client, [submit(i, cols, "-metrics") for i, cols in redo.items()])
        for i, result in zip(redo, again, strict=True):
            results[i] = result


def _read_whole(chunks: list[Chunk], results: list[dict[str, Any]], scratch: Path) -> list[int]:
    """Turns every CSV file one of whose byte ranges reported quoted cells spanning lines (``whole``)
    into one chunk read whole, at its first range's index; removes the pieces its other ranges
    wrote and empties their results. Returns the indexes to split again."""
    files = {c.path for c, r in zip(chunks, results, strict=True) if r.get("whole")}
    again = []
    for path in sorted(files):
        mine = [i for i, c in enumerate(chunks) if c.path == path]
        for i in mine:
            for b in results[i]["buckets"]:
                (bucket_dir(scratch, chunks[i].source, b) / f"c{i:06d}.arrow").unlink(missing_ok=True)
            results[i] = empty_split()
        first = chunks[mine[0]]
        est = sum(chunks[i].est_rows for i in mine)
        chunks[mine[0]] = dataclasses.replace(first, byte_range=None, est_rows=est)
        again.append(mine[0])
    return again


def check_rows(chunks: Sequence[Chunk], rows: Sequence[int]) -> None:
    """Fails naming the first wide file whose chunks held no data row, as a whole read of it fails.

    Args:
        chunks: the input's chunks, in input order.
        rows: the data rows read from each chunk.

    Raises:
        SchemaError: a file holds a header but no rows (:func:`~atomic_usage.data.readers.no_rows_error`).
    """
    from ..data.readers import no_rows_error

    per_file: dict[str, int] = {}
    for chunk, n in zip(chunks, rows, strict=True):
        if chunk.kind != "source":  # a GCD/NAB folder is read whole, by its own reader
            per_file[chunk.path] = per_file.get(chunk.path, 0) + int(n)
    for path, n in per_file.items():
        if not n:
            raise no_rows_error(path, header_columns(path))


def n_buckets_for(chunks: Sequence[Chunk], n_workers: int, rows_per_bucket: int) -> int:
    """Buckets per source: enough for ``rows_per_bucket`` each, and at least two per worker."""
    rows = sum(c.est_rows for c in chunks)
    return max(2 * max(n_workers, 1), math.ceil(rows / max(rows_per_bucket, 1)))


def run_split(
    client: Any,
    chunks: Sequence[Chunk],
    n_buckets: int,
    scratch: Path,
    *,
    out_of_range: RangePolicy = "clip",
    issues: list[SeriesIssue] | None = None,
    warnings: list[InputWarning] | None = None,
) -> dict[tuple[int, int], int]:
    """Pass 1 on the workers. Returns the rows written per ``(source, bucket)``.

    Args:
        client: a connected Dask client.
        chunks: the input's chunks, in input order.
        n_buckets: buckets per source.
        scratch: the scratch folder.
        out_of_range: the range policy of validation (``"reject"`` for a forecast).
        issues: when given, a series with a bad value is rejected instead of failing its chunk,
            and its issue is appended here: one per series over all the chunks
            (:func:`~atomic_usage.data.issues.combine_issues`), naming the file and the line
            counted from the file's start, in input order.
        warnings: when given, the chunks' warnings are appended here, for the caller to report;
            otherwise they are logged here, each distinct one once
            (:func:`~atomic_usage.data.issues.report_warnings`). Workers log none of them.

    A chunk that ignored as text a column another chunk of its file holds numbers in is split
    again with that column kept as a metric (:func:`mixed_columns`), as a whole read has it.
    """
    from ..data.issues import combine_issues, place_issue, report_warnings

    job = uuid.uuid4().hex[:8]
    todo = list(chunks)  # a file read whole replaces its byte ranges here

    def split(i: int, numeric_columns: Sequence[str] = (), attempt: str = "") -> Any:
        return client.submit(
            split_chunk,
            todo[i],
            i,
            n_buckets,
            str(scratch),
            out_of_range=out_of_range,
            reject=issues is not None,
            numeric_columns=numeric_columns,
            key=f"atomic-split-{job}-{i:06d}{attempt}",
            pure=False,
        )

    results = gather(client, [split(i) for i in range(len(todo))])
    whole = _read_whole(todo, results, scratch)
    if whole:
        # A file whose quoted cells span lines cannot be cut by lines: one task reads it whole,
        # under its first range's number (its pieces keep their place); its other ranges hold nothing.
        again = gather(client, [split(i, attempt="-whole") for i in whole])
        for i, result in zip(whole, again, strict=True):
            results[i] = result
    # The futures are released by now, so Dask cannot re-run a first read (after a worker died)
    # over the second one's pieces, which hold the same rows with one more column.
    read_mixed_again(client, todo, results, split)
    check_rows(todo, [r["rows"] for r in results])
    rows: dict[tuple[int, int], int] = {}
    found: dict[tuple[str, str], SeriesIssue] = {}
    kept: list[InputWarning] = []
    rows_before: dict[str, int] = {}  # data rows of each file in the chunks before this one
    for chunk, result in zip(todo, results, strict=True):
        for b, n in result["buckets"].items():
            rows[(chunk.source, b)] = rows.get((chunk.source, b), 0) + n
        offset = rows_before.get(chunk.path, 0)
        for issue in result["issues"]:
            if chunk.byte_range is not None:  # a byte range counts its rows from its own first line
                issue = place_issue(issue, path=chunk.path, row_offset=offset)
            key = (issue.id, issue.metric)
            found[key] = issue if key not in found else combine_issues(found[key], issue)
        rows_before[chunk.path] = offset + result["rows"]
        kept.extend(result["warnings"])
    if issues is not None:
        issues.extend(found.values())
    if warnings is not None:
        warnings.extend(kept)
    else:
        report_warnings(kept)
    return dict(sorted(rows.items()))


def make_scratch(root: Path, *, prefix: str = "atomic-scratch-") -> Path:
    """A new folder of the job's own in the user's scratch folder ``root`` (made if missing).

    Raises:
        SchemaError: ``root`` is a file, or no folder can be made in it (an OSError here is the
            user's path, not a failure of the cluster that running again would get past).
    """
    if root.exists() and not root.is_dir():
        raise SchemaError(f"{root}: is a file, not a folder; give --scratch a folder to work in.", path=str(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise SchemaError(
            f"{root}: cannot make a scratch folder in it ({exc.strerror or exc}); give --scratch a folder "
            "you can write to.",
            path=str(root),
        ) from None


def prepare_output(out_dir: Path, scratch: Path | None, inputs: Iterable[str] = ()) -> Path:
    """Makes the output folder, removes parts of an earlier run, and returns the scratch folder.

    Args:
        out_dir: the output folder.
        scratch: a folder to work in (the scratch folder is made in it, under a name of its own, so
            nothing else of it is touched), or None for ``out_dir/_scratch``.
        inputs: the job's input files, none of which may be among what this removes.

    Raises:
        SchemaError: ``out_dir`` exists and is a file, or holds an input file this would remove
            (a Spark folder of ``part-*.parquet`` given as both input and output); or ``scratch``
            is a file or cannot be written (:func:`make_scratch`).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SchemaError(
            f"{out_dir}: exists and is a file; on a cluster the output is a folder of Parquet parts, "
            "so give a folder path.",
            path=str(out_dir),
        )
    for name in inputs:
        f = Path(name)
        replaced = f.parent == out_dir and (fnmatch.fnmatch(f.name, "part-*.parquet") or f.name == SUCCESS_FILE)
        if replaced or (scratch is None and out_dir / "_scratch" in f.parents):
            raise SchemaError(
                f"{out_dir}: the output folder holds the input file {f}, which the job's parts would replace; "
                "give an output folder apart from the input.",
                path=str(out_dir),
            )
    # The user's folder (``--scratch /tmp``): the job's own folder in it, never the folder itself;
    # made before the earlier run's parts are removed, so that a bad --scratch leaves them.
    own = make_scratch(scratch) if scratch is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("part-*.parquet"), out_dir / SUCCESS_FILE]:
        old.unlink(missing_ok=True)
    if own is not None:
        return own
    scratch = out_dir / "_scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    return scratch


@contextlib.contextmanager
def cleared_on_failure(out_dir: Path, scratch: Path, *, keep_scratch: bool = False) -> Iterator[None]:
    """Removes what a job that fails wrote (its parts, temporary files, the scratch folder, and the
    output folder if nothing else is left in it), so a failed job leaves nothing half-written."""
    try:
        yield
    except BaseException:
        for old in [*out_dir.glob("part-*.parquet"), *out_dir.glob(".part-*.tmp")]:
            old.unlink(missing_ok=True)
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # only when empty: a folder holding anything else is the user's
        raise


def finish_output(out_dir: Path, scratch: Path, summary: dict[str, Any], *, keep_scratch: bool = False) -> None:
    """Removes temporary files left by attempts on workers that died, and marks the folder complete."""
    for tmp in out_dir.glob(".part-*.tmp"):
        tmp.unlink(missing_ok=True)
    if not keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    (out_dir / SUCCESS_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")


def bucket_dirs(scratch: Path, rows: dict[tuple[int, int], int]) -> list[tuple[int, int, Path]]:
    """``(source, bucket, folder)`` of every non-empty bucket, in order."""
    return [(s, b, bucket_dir(scratch, s, b)) for (s, b) in rows]
