"""Readers for the formats the library accepts, all returning the wide frame.

The wide frame has the columns ``id`` (str), ``timestamp`` (UTC datetimes) and one
float64 column per metric; missing values are NaN. Rows are as read (not sorted, not
deduplicated): :func:`~atomic_usage.data.regularize.regularize` does that.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SchemaError
from .validation import RangePolicy, SeriesIssue, validate_wide

__all__ = [
    "GCD_START",
    "GCD_STEP",
    "is_parquet",
    "map_read_errors",
    "no_rows_error",
    "read_gcd",
    "read_gcd_dir",
    "read_nab",
    "read_nab_dir",
    "read_wide",
]

GCD_START = pd.Timestamp("2011-05-01T00:00:00Z")
"""Timestamp of the first row of every GCD VM file (the files carry none)."""

GCD_STEP = pd.Timedelta(minutes=5)
"""Step between rows of a GCD VM file."""


def _fail(path: Path, what: str) -> SchemaError:
    return SchemaError(f"{path}: {what}", path=str(path))


def is_parquet(path: str | Path) -> bool:
    """Whether a wide file is read as Parquet (by its suffix); anything else is read as CSV."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


@contextlib.contextmanager
def map_read_errors(path: str | Path) -> Iterator[None]:
    """Turns pandas' and pyarrow's errors while reading a wide file into a SchemaError naming it.

    Used around a whole read (:func:`read_wide`) and around each chunk of a chunked read, so
    both report an unreadable file the same way.

    Raises:
        SchemaError: the file cannot be read as CSV or Parquet.
    """
    p = Path(path)
    try:
        yield
    except SchemaError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        kind = "Parquet" if is_parquet(p) else "CSV"
        raise _fail(
            p,
            f"cannot be read as {kind} ({type(exc).__name__}: {str(exc)[:200]}); "
            "give a CSV or Parquet file with columns id,timestamp,<metric>...",
        ) from None


def read_wide(
    path: str | Path,
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    issues: list[SeriesIssue] | None = None,
    out_of_range: RangePolicy = "reject",
) -> pd.DataFrame:
    """Reads a wide contract file (CSV or Parquet): ``id,timestamp,<metric>...``.

    Args:
        path: a ``.csv`` (optionally compressed) or ``.parquet`` file.
        id_col: the id column's name.
        time_col: the timestamp column's name (ISO 8601; no offset means UTC).
        issues: when given, a series with an infinite value or a percent far outside [0, 100]
            is masked and reported here instead of failing the file
            (:func:`~atomic_usage.data.validation.validate_wide`).
        out_of_range: the range policy; ``"reject"`` (percents of the whole machine: a value more
            than CLIP_TOLERANCE outside [0, 100] rejects its series, smaller overshoots are clipped).

    Returns:
        The validated wide frame (see the module docstring).

    Raises:
        SchemaError: the file cannot be read, holds no data rows, lacks id/timestamp, has no
            metric column, or holds a value that is not a number, or out of range without
            ``issues``. The message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise _fail(p, "the file does not exist or is not a file; check the path.")
    with map_read_errors(p):
        df = pd.read_parquet(p) if is_parquet(p) else pd.read_csv(p, dtype={id_col: str})
    out = validate_wide(df, id_col=id_col, time_col=time_col, path=str(p), issues=issues, out_of_range=out_of_range)
    if out.empty:
        raise no_rows_error(p, df.columns)
    return out


def no_rows_error(path: str | Path, columns: Iterable[object]) -> SchemaError:
    """The error for a wide file that holds a header but no data rows, naming the file.

    An empty export (a query that matched nothing, a job that died before writing) would
    otherwise "forecast 0 machines" and exit 0, and the missing forecasts go unnoticed. Every
    reader of wide files (a whole read, a chunked read, a cluster job) raises this one.
    """
    return _fail(Path(path), f"holds no rows (its columns: {list(map(str, columns))}); check what wrote it.")


def read_nab(path: str | Path, *, metric: str = "value") -> pd.DataFrame:
    """Reads a NAB file (``timestamp,value``; timestamps ``YYYY-MM-DD HH:MM:SS`` in UTC).

    The id is the file's stem. Returns the wide frame with one metric column, ``metric``.

    Raises:
        SchemaError: the file is unreadable, lacks ``timestamp``/``value`` or holds no rows.
    """
    p = Path(path)
    try:
        raw = pd.read_csv(p)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise _fail(
            p, f"cannot be read as a NAB CSV ({type(exc).__name__}); expected columns timestamp,value."
        ) from None
    if not {"timestamp", "value"} <= set(raw.columns):
        raise _fail(p, f"a NAB file needs the columns timestamp,value; found {list(raw.columns)}.")
    if raw.empty:
        raise no_rows_error(p, raw.columns)
    df = pd.DataFrame({"id": p.stem, "timestamp": raw["timestamp"], metric: raw["value"]})
    return validate_wide(df, path=str(p))


def _load_gcd_array(p: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)  # named below
            arr = np.loadtxt(p, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as exc:
        raise _fail(p, f"cannot be read as a GCD VM file ({exc}); expected two numeric columns.") from None
    if not len(arr) or not arr.size:
        raise _fail(p, "holds no rows; check what wrote it.")
    if arr.shape[1] != 2:
        raise _fail(p, f"a GCD VM file has two columns (cpu %, memory %); found {arr.shape[1]}.")
    return arr


def _gcd_frame(names: list[str], arrays: list[np.ndarray]) -> pd.DataFrame:
    lens = [len(a) for a in arrays]
    within = np.concatenate([np.arange(n) for n in lens]) if lens else np.zeros(0, np.int64)
    stacked = np.concatenate(arrays) if arrays else np.zeros((0, 2))
    return pd.DataFrame(
        {
            "id": np.repeat(np.asarray(names, object), lens),
            "timestamp": GCD_START + GCD_STEP * within,
            "cpuLoad": stacked[:, 0],
            "memoryUsage": stacked[:, 1],
        }
    )


def read_gcd(path: str | Path) -> pd.DataFrame:
    """Reads a GCD VM file: two whitespace-separated columns (cpu %, memory %), no header.

    Row k gets the synthetic timestamp ``2011-05-01T00:00:00Z + 5 min * k``; the id is
    the file name. Returns the wide frame with ``cpuLoad`` and ``memoryUsage``.
    """
    p = Path(path)
    return validate_wide(_gcd_frame([p.name], [_load_gcd_array(p)]), path=str(p))


def _files(directory: str | Path, pattern: str) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise SchemaError(f"{d}: the folder does not exist; pass the data folder with --data-dir.", path=str(d))
    files = sorted(p for p in d.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SchemaError(f"{d}: no files match {pattern!r} in this folder.", path=str(d))
    return files


def read_gcd_dir(directory: str | Path) -> pd.DataFrame:
    """Reads every ``vm_*`` file of a GCD folder into one wide frame (validated once, as a whole)."""
    files = _files(directory, "vm_*")
    return validate_wide(_gcd_frame([p.name for p in files], [_load_gcd_array(p) for p in files]), path=str(directory))


def read_nab_dir(directory: str | Path) -> pd.DataFrame:
    """Reads every ``*.csv`` file of a NAB folder into one wide frame (metric ``value``)."""
    return pd.concat([read_nab(p) for p in _files(directory, "*.csv")], ignore_index=True)
