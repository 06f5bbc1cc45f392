"""Checks on input frames: required columns, metric columns, types and ranges."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS
from ..errors import SchemaError

__all__ = ["RangePolicy", "check_ranges", "ensure_utc", "metric_columns", "require_columns", "validate_wide"]

RangePolicy = Literal["clip", "error"]
"""What to do with a percent below 0 or above 100, or a negative count: clip it (with a
logged warning naming id, field and timestamp) or raise SchemaError."""

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
    df: pd.DataFrame, *, id_col: str = "id", time_col: str = "timestamp", path: str | None = None
) -> list[str]:
    """The metric columns of a wide frame: every column but id and timestamp.

    Raises:
        SchemaError: there is no metric column, or one is not numeric.
    """
    cols = [c for c in df.columns if c not in (id_col, time_col)]
    where = f"{path}: " if path else ""
    if not cols:
        raise SchemaError(
            f"{where}No metric column was found; add at least one of cpuLoad, memoryUsage, storageUsage "
            "or another numeric column beside id and timestamp.",
            path=path,
        )
    for c in cols:
        if not pd.api.types.is_numeric_dtype(df[c]):
            converted = pd.to_numeric(df[c], errors="coerce")
            bad = df[c][converted.isna() & df[c].notna()]
            if len(bad):
                row = int(bad.index[0])
                raise SchemaError(
                    f"{where}Column {c!r} holds a non-numeric value {bad.iloc[0]!r} (row {row}, "
                    f"id {df[id_col].iloc[row] if id_col in df else '?'!s}); metric columns must be numbers.",
                    path=path,
                )
    return cols


def ensure_utc(values: pd.Series, *, column: str = "timestamp", path: str | None = None) -> pd.Series:
    """Parses ISO 8601 timestamps to UTC; naive ones are taken as UTC.

    Raises:
        SchemaError: a value is not a timestamp (the message shows it).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    try:
        if pd.api.types.is_datetime64_any_dtype(values):
            return values.dt.tz_localize("UTC")
        return pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        bad = values[parsed.isna() & values.notna()]
        shown = repr(bad.iloc[0]) if len(bad) else "(unknown)"
        where = f"{path}: " if path else ""
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
) -> pd.DataFrame:
    """Checks and normalizes a wide frame (``id,timestamp,<metric>...``).

    Returns a new frame with ``id`` as str, ``timestamp`` as UTC datetimes and metrics as float64.
    Empty cells stay NaN (missing). Infinite values are rejected. Percents outside [0, 100] and
    negative counts are clipped with a warning (``out_of_range="clip"``, the default for files:
    monitoring systems overshoot by a little, and one sample must not block a fleet) or rejected
    (``"error"``).

    Raises:
        SchemaError: a column is missing, a timestamp or number does not parse, a value is out of range.
    """
    require_columns(df, [id_col, time_col], path=path)
    metrics = metric_columns(df, id_col=id_col, time_col=time_col, path=path)
    out = pd.DataFrame(
        {
            id_col: df[id_col].astype(str),
            time_col: ensure_utc(df[time_col], column=time_col, path=path),
        }
    )
    if df[id_col].isna().any():
        row = int(df[id_col].isna().to_numpy().nonzero()[0][0])
        raise SchemaError(f"{path + ': ' if path else ''}Row {row} has no id; give every row an id.", path=path)
    for c in metrics:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    check_ranges(out, metrics, id_col=id_col, time_col=time_col, path=path, policy=out_of_range)
    return out


def check_ranges(
    df: pd.DataFrame,
    metrics: Sequence[str],
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    path: str | None = None,
    policy: RangePolicy = "error",
) -> None:
    """Finds infinite values, negatives and percents above 100, naming id, field and timestamp.

    Infinite values always raise. Out-of-range finite values raise with ``policy="error"``;
    with ``"clip"`` they are clipped in place into the valid range and a warning is logged.

    Raises:
        SchemaError: an infinite value, or an out-of-range one under ``policy="error"``.
    """
    where = f"{path}: " if path else ""
    for c in metrics:
        v = df[c].to_numpy(np.float64)
        hi = 100.0 if c in BOUNDED_METRICS else np.inf
        rng = "0 to 100 (percent)" if c in BOUNDED_METRICS else "finite and not negative"
        inf = np.isinf(v)
        bad = ((v < 0) | (v > hi)) & ~inf
        for mask, fatal in ((inf, True), (bad, policy == "error")):
            if not mask.any():
                continue
            i = int(mask.nonzero()[0][0])
            msg = (
                f"{where}{c} of id {df[id_col].iloc[i]!r} at {df[time_col].iloc[i].isoformat()} is {float(v[i])!r}, "
                f"outside {rng} ({int(mask.sum())} such value(s) in the column)"
            )
            if fatal:
                raise SchemaError(
                    msg + "; fix or drop these rows (per-core sums must be divided by the core count).",
                    path=path,
                )
            _log.warning("%s; clipped into range.", msg)
            df[c] = np.clip(v, 0.0, hi)
