"""Checks on input frames: required columns, metric columns, types and ranges.

Range rule for files (the README's "Data rules"): a percent a little outside [0, 100]
(within :data:`CLIP_TOLERANCE` points) is clipped with a warning naming id, field and
timestamp; a value further out, or an infinite one, means the series is not a percent
of this machine (per-core sums, bytes, a broken collector), so the whole series (id and
metric) is rejected: strict callers get a SchemaError, and callers that pass an
``issues`` list get that series masked and a :class:`SeriesIssue` naming it.

A whole read logs each warning as it finds it. A job that validates its input in parts
(the chunks of a large file, a cluster's partitions) passes a ``warnings`` list instead:
the parts then log nothing, and the job logs each distinct warning once, with the counts
of all the parts (:mod:`atomic_usage.data.issues`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS, DEFAULT_METRICS
from ..errors import SchemaError
from .issues import (
    MAX_MAGNITUDE,
    MAX_WARNING_IDS,
    InputWarning,
    SeriesIssue,
    combine_issues,
    locate_row,
    make_issue,
    range_text,
)

__all__ = [
    "CLIP_TOLERANCE",
    "MAX_MAGNITUDE",
    "RangePolicy",
    "SeriesIssue",
    "check_ranges",
    "close_metric",
    "combine_issues",
    "ensure_utc",
    "metric_columns",
    "require_columns",
    "validate_wide",
]

RangePolicy = Literal["clip", "reject", "error"]
"""What to do with a percent outside [0, 100] or a negative count, each naming id, field and timestamp:

- ``"clip"``: clip every finite one, with a logged warning (the benchmark traces, whose GCD memory
  is relative to a request and passes 100);
- ``"reject"``: clip those within CLIP_TOLERANCE with a warning, reject the series of any further
  out (user files: percents of the whole machine, so 180 % is a per-core sum, not an overshoot);
- ``"error"``: raise for any.

An infinite value always rejects its series."""

CLIP_TOLERANCE = 10.0
"""Percent points outside [0, 100] that are still clipped (monitoring overshoot); beyond, the
series is rejected. A per-core sum on two cores passes 110 % once the cores average 55 %."""

_log = logging.getLogger("atomic_usage.data")


def require_columns(df: pd.DataFrame, columns: Sequence[str], *, path: str | None = None) -> None:
    """Raises SchemaError listing every column of ``columns`` that ``df`` lacks.

    >>> require_columns(pd.DataFrame({"id": []}), ["id", "timestamp"])
    Traceback (most recent call last):
    ...
    atomic_usage.errors.SchemaError: The following columns are missing: ['timestamp']; ...
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        where = f"{path}: " if path else ""
        raise SchemaError(
            f"{where}The following columns are missing: {missing}; "
            f"the file needs `id,timestamp` and at least one metric column (found {list(df.columns)}).",
            path=path,
        )


def metric_columns(
    df: pd.DataFrame,
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    path: str | None = None,
    warnings: list[InputWarning] | None = None,
    numeric_columns: Collection[str] = (),
) -> list[str]:
    """The metric columns of a wide frame: every column but id and timestamp that holds numbers.

    A metric is one of cpuLoad, memoryUsage, storageUsage or another numeric column (DESIGN's
    wide format). A column that is none of these and holds text only (a ``note``, a label) is
    not a metric: it is left out with a logged warning naming it. A known metric, or a column
    with at least one number, stays a metric even with text cells: :func:`validate_wide` deals
    with those. An unknown name close to a known metric (``cpuload``) is kept, as a count, with
    a warning naming the metric it may mean. The warnings are logged, or appended to
    ``warnings`` when it is given (see :func:`validate_wide`).

    Args:
        numeric_columns: for a part of a file: the columns another part of it holds numbers in.
            They are metrics here too, even where this part holds only text, as in a whole read.

    Raises:
        SchemaError: there is no metric column.
    """
    cols = [c for c in df.columns if c not in (id_col, time_col)]
    where = f"{path}: " if path else ""
    keep = set(BOUNDED_METRICS) | set(numeric_columns)
    text_only = [c for c in cols if c not in keep and _is_text_only(df[c])]
    if text_only:
        _warn(InputWarning("text_columns", tuple(text_only), path), warnings)
    cols = [c for c in cols if c not in text_only]
    if not cols:
        ignored = f" (ignored as text: {text_only})" if text_only else ""
        raise SchemaError(
            f"{where}No metric column was found{ignored}; add at least one of cpuLoad, memoryUsage, storageUsage "
            "or another numeric column beside id and timestamp.",
            path=path,
        )
    for c in cols:
        near = close_metric(str(c))
        if near is not None:
            _warn(InputWarning("close_metric", (c,), path, meant=near), warnings)
    return cols


def _warn(warning: InputWarning, warnings: list[InputWarning] | None) -> None:
    """Keeps ``warning`` for the caller to report, or logs it now (a whole read)."""
    if warnings is not None:
        warnings.append(warning)
    else:
        _log.warning("%s%s", f"{warning.path}: " if warning.path else "", warning.message)


def close_metric(name: str) -> str | None:
    """The known metric (cpuLoad, memoryUsage, storageUsage) that ``name`` looks like a misspelling
    of, by :func:`difflib.get_close_matches` on lowercase names; None for a known metric or none close.

    >>> close_metric("cpuload"), close_metric("memUsage"), close_metric("value"), close_metric("cpuLoad")
    ('cpuLoad', 'memoryUsage', None, None)
    """
    if name in BOUNDED_METRICS:
        return None
    known = {m.lower(): m for m in DEFAULT_METRICS}
    found = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.6)
    return known[found[0]] if found else None


def _is_text_only(values: pd.Series) -> bool:
    """Whether a column has cells and none of them is a number (a label column, not a metric)."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return False
    present = values.notna()
    return bool(present.any()) and not bool(pd.to_numeric(values, errors="coerce").notna().any())


_NAIVE_TIME = r"[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?$"
_DATE_ONLY = r"^\d{4}-\d{2}-\d{2}$"


def _mark_naive_as_utc(values: pd.Series) -> pd.Series:
    """Gives every ISO 8601 string without an offset an explicit ``+00:00``.

    pandas parses a column that mixes strings with and without offsets by shifting the naive
    ones by another row's offset; spelling out UTC first keeps each row's own meaning.
    """
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return values
    text = values.astype("string").str.strip()
    naive_time = text.str.contains(_NAIVE_TIME, regex=True, na=False)
    date_only = text.str.contains(_DATE_ONLY, regex=True, na=False)
    text = text.where(~naive_time, text + "+00:00")
    text = text.where(~date_only, text + "T00:00:00+00:00")
    return text.astype(object).where(values.notna(), None)


def ensure_utc(values: pd.Series, *, column: str = "timestamp", path: str | None = None) -> pd.Series:
    """Parses ISO 8601 timestamps to UTC; naive ones are taken as UTC.

    Raises:
        SchemaError: a value is not a timestamp (the message shows it).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    where = f"{path}: " if path else ""
    numbers = values.dropna() if pd.api.types.is_numeric_dtype(values) else values.iloc[:0]
    if len(numbers) and not pd.api.types.is_datetime64_any_dtype(values):
        # A column of numbers (epoch seconds, say): pandas would read them as ISO text now and as
        # epochs in a later version, so they are refused here, the same in every version.
        raise SchemaError(
            f"{where}Column {column!r} holds a value that is not an ISO 8601 timestamp: "
            f"{numbers.iloc[:1].tolist()[0]!r}; numbers "
            "(epoch seconds, say) are not read as times in files; write timestamps like 2014-02-17T14:30:00Z.",
            path=path,
        )
    try:
        if pd.api.types.is_datetime64_any_dtype(values):
            return values.dt.tz_localize("UTC")
        return pd.to_datetime(_mark_naive_as_utc(values), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        bad = values[parsed.isna() & values.notna()]
        shown = repr(bad.iloc[0]) if len(bad) else "(unknown)"
        raise SchemaError(
            f"{where}Column {column!r} holds a value that is not an ISO 8601 timestamp: {shown}; "
            "write timestamps like 2014-02-17T14:30:00Z.",
            path=path,
        ) from exc


def validate_wide(
    df: pd.DataFrame,
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    path: str | None = None,
    out_of_range: RangePolicy = "clip",
    issues: list[SeriesIssue] | None = None,
    row_numbers: bool = True,
    warnings: list[InputWarning] | None = None,
    numeric_columns: Collection[str] = (),
) -> pd.DataFrame:
    """Checks and normalizes a wide frame (``id,timestamp,<metric>...``).

    Returns a new frame with ``id`` as str, ``timestamp`` as UTC datetimes and metrics as float64.
    Empty cells stay NaN (missing). Out-of-range values follow ``out_of_range`` (RangePolicy:
    monitoring systems overshoot by a little, and one sample must not block a fleet). Infinite
    values, and under ``"reject"`` percents far out, reject their series: with an ``issues``
    list, the series is masked (all NaN) and a SeriesIssue appended; without one, SchemaError
    is raised. A cell of a metric column that is not a number (``abc``, ``12,5%``) is treated
    the same way: with ``issues`` its series is rejected and the rest is forecast. Columns that
    hold only text are not metrics and are left out (:func:`metric_columns`).

    Args:
        row_numbers: whether ``df``'s index labels are the file's 0-based data rows (a whole
            read or a chunk of one), so messages can give the file line; False for a byte range
            (an issue's ``row`` is then the label, for
            :func:`~atomic_usage.data.issues.place_issue` to shift).
        warnings: for an input validated in parts: the warnings that reject nothing
            (:class:`~atomic_usage.data.issues.InputWarning`) are appended here instead of logged,
            and rejected series (``issues``) are not logged either, so the caller reports each
            once (:func:`~atomic_usage.data.issues.report_warnings`). None: both are logged here.
        numeric_columns: for a part of a file: the columns another part of it holds numbers in,
            kept as metrics even where this part holds only text, so that the part's text cells
            reject their series as a whole read does (:func:`metric_columns`).

    Raises:
        SchemaError: a column is missing, a timestamp does not parse, a row has no id or no
            timestamp, or (without ``issues``) a value is not a number or is out of range (see above).
    """
    require_columns(df, [id_col, time_col], path=path)
    metrics = metric_columns(
        df, id_col=id_col, time_col=time_col, path=path, warnings=warnings, numeric_columns=numeric_columns
    )
    out = pd.DataFrame(
        {
            id_col: df[id_col].astype(str),
            time_col: ensure_utc(df[time_col], column=time_col, path=path),
        }
    )
    if df[id_col].isna().any():
        # The index label, as for a non-numeric value: a chunk of a file keeps its rows' numbers.
        row = df.index[df[id_col].isna().to_numpy()][0]
        place = locate_row(row, path, row_numbers)
        raise SchemaError(
            f"{path + ': ' if path else ''}{place[0].upper() + place[1:]} has no id; give every row an id.", path=path
        )
    if out[time_col].isna().any():
        # An empty cell parses as NaT, which regularize would floor to the far ends of the
        # datetime range (a grid from 1677 to 2262): refused as a row without id is.
        row = df.index[out[time_col].isna().to_numpy()][0]
        place = locate_row(row, path, row_numbers)
        raise SchemaError(
            f"{path + ': ' if path else ''}{place[0].upper() + place[1:]} has no timestamp; "
            "give every row one, written like 2014-02-17T14:30:00Z.",
            path=path,
        )
    for c in metrics:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        if not pd.api.types.is_numeric_dtype(df[c]):
            _reject_non_numeric(
                df,
                out,
                c,
                id_col=id_col,
                time_col=time_col,
                path=path,
                row_numbers=row_numbers,
                issues=issues,
                quiet=warnings is not None,
            )
    check_ranges(
        out,
        metrics,
        id_col=id_col,
        time_col=time_col,
        path=path,
        policy=out_of_range,
        issues=issues,
        warnings=warnings,
    )
    return out


def _reject_non_numeric(
    df: pd.DataFrame,
    out: pd.DataFrame,
    c: str,
    *,
    id_col: str,
    time_col: str,
    path: str | None,
    row_numbers: bool,
    issues: list[SeriesIssue] | None,
    quiet: bool = False,
) -> None:
    """Rejects every series of column ``c`` with a cell that is not a number, as a far-out value
    rejects its series: masked in ``out`` and appended to ``issues`` (and logged unless ``quiet``),
    or raised without them."""
    bad = (out[c].isna() & df[c].notna()).to_numpy()
    if not bad.any():
        return
    where = f"{path}: " if path else ""
    ids = out[id_col].to_numpy()
    bad_ids = pd.unique(ids[bad])
    for sid in bad_ids:
        rows = np.flatnonzero(bad & (ids == sid))
        i = int(rows[0])
        raw = str(df[c].iloc[i])
        label = df.index[i]
        line = locate_row(label, path, row_numbers)
        ts = _iso(out[time_col].iloc[i])
        if issues is None:
            raise SchemaError(
                f"{where}Column {c!r} holds a non-numeric value {raw!r} ({line}, id {sid!s}, at {ts}); "
                "metric columns must be numbers (leave a cell empty for not measured).",
                path=path,
            )
        issue = make_issue(
            str(sid),
            c,
            ts,
            float("nan"),
            len(rows),
            raw=raw,
            line=line,
            row=int(label) if isinstance(label, int | np.integer) else None,
        )
        issues.append(issue)
        if not quiet:
            _log.warning("%s%s", where, issue.message)
    out.loc[np.isin(ids, bad_ids), c] = np.nan


def check_ranges(
    df: pd.DataFrame,
    metrics: Sequence[str],
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    path: str | None = None,
    policy: RangePolicy = "error",
    issues: list[SeriesIssue] | None = None,
    warnings: list[InputWarning] | None = None,
) -> None:
    """Finds infinite values, negatives and percents above 100, naming id, field and timestamp.

    Out-of-range finite values are handled by ``policy`` (see RangePolicy); clipping happens in
    place with a logged warning (appended to ``warnings`` instead, when given). An infinite
    value, or under ``"reject"`` a percent more than CLIP_TOLERANCE out, rejects its whole
    series: appended to ``issues`` with the series masked in place when a list is given
    (logged unless ``warnings`` is given), raised otherwise.

    Raises:
        SchemaError: a rejected series without ``issues``, or a small overshoot under ``"error"``.
    """
    where = f"{path}: " if path else ""
    for c in metrics:
        v = df[c].to_numpy(np.float64).copy()
        bounded = c in BOUNDED_METRICS
        hi = 100.0 if bounded else np.inf
        rng = range_text(c)
        # Beyond MAX_MAGNITUDE a value cannot be held in the float32 the model computes in.
        far = np.isinf(v) | (np.abs(v) > MAX_MAGNITUDE)
        if bounded and policy == "reject":
            far |= (v < -CLIP_TOLERANCE) | (v > 100.0 + CLIP_TOLERANCE)
        if far.any():
            ids = df[id_col].to_numpy()
            bad_ids = pd.unique(ids[far])
            in_bad = np.isin(ids, bad_ids)
            for sid in bad_ids:
                rows = np.flatnonzero(far & (ids == sid))
                first = df.iloc[rows[0]]
                issue = _series_issue(first, c, len(rows), id_col=id_col, time_col=time_col)
                if issues is None:
                    raise SchemaError(where + issue.message, path=path)
                issues.append(issue)
                if warnings is None:
                    _log.warning("%s%s", where, issue.message)
            v[in_bad] = np.nan
        small = ((v < 0) | (v > hi)) & ~np.isnan(v)
        if small.any():
            i = int(small.nonzero()[0][0])
            example = f"of id {df[id_col].iloc[i]!r} at {_iso(df[time_col].iloc[i])} is {float(v[i])!r}"
            if policy == "error":
                raise SchemaError(
                    f"{where}{c} {example}, outside {rng} ({int(small.sum())} such value(s) in the column); "
                    "fix or drop these rows.",
                    path=path,
                )
            clipped_ids = pd.unique(df[id_col].to_numpy()[small])
            found = InputWarning(
                "clipped",
                (c,),
                path,
                example=example,
                values=int(small.sum()),
                series=len(clipped_ids),
                ids=frozenset(str(x) for x in clipped_ids[:MAX_WARNING_IDS]),
            )
            _warn(found, warnings)
        df[c] = np.clip(v, 0.0, hi)


def _iso(ts: pd.Timestamp) -> str:
    return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _series_issue(row: pd.Series, c: str, count: int, *, id_col: str, time_col: str) -> SeriesIssue:
    return make_issue(str(row[id_col]), c, _iso(row[time_col]), float(row[c]), count)
