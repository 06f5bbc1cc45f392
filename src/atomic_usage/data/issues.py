"""What validation reports: series it rejected, warnings that reject nothing, and their messages.

A whole read (:func:`~atomic_usage.data.readers.read_wide`) logs each of them as it finds
them. A job that validates its input in parts (the chunks of a large file, a cluster's
partitions) meets the same column in every part and the same series in several: it keeps
them instead (``validate_wide(..., issues=[], warnings=[])``), joins the parts' issues
(:func:`combine_issues`, :func:`place_issue`), masks each rejected series in every part
(:func:`mask_rejected`), and logs each distinct warning once, with the counts of all the
parts (:func:`report_warnings`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS

__all__ = [
    "MAX_MAGNITUDE",
    "MAX_WARNING_IDS",
    "InputWarning",
    "SeriesIssue",
    "WarningKind",
    "combine_issues",
    "locate_row",
    "make_issue",
    "mask_rejected",
    "place_issue",
    "range_text",
    "report_warnings",
]

MAX_MAGNITUDE = 1e30
"""Largest magnitude a value may have (the model computes in float32, whose range ends at 3.4e38)."""

MAX_WARNING_IDS = 1000
"""Ids an :class:`InputWarning` of clipped values keeps, to count a series met in two parts once;
past it the warning says "at least" that many series."""

_log = logging.getLogger("atomic_usage.data")


def range_text(column: str) -> str:
    """The valid range of a metric, as messages write it.

    >>> range_text("cpuLoad"), range_text("connections")
    ('0 to 100 (percent)', '0 to 1e+30')
    """
    return "0 to 100 (percent)" if column in BOUNDED_METRICS else f"0 to {MAX_MAGNITUDE:g}"


def locate_row(label: object, path: str | None, row_numbers: bool) -> str:
    """Where a row is, for messages: its file line (header is line 1) in a CSV, its row in a
    Parquet file, else the frame's index label.

    >>> locate_row(5, "a.csv", True), locate_row(5, "a.parquet", True), locate_row(5, "a.csv", False)
    ('line 7', 'row 6 of the file', 'row 5')
    """
    if row_numbers and path is not None and isinstance(label, int | np.integer):
        if str(path).lower().endswith((".parquet", ".pq")):
            return f"row {int(label) + 1} of the file"
        return f"line {int(label) + 2}"
    return f"row {label}"


@dataclasses.dataclass(frozen=True)
class SeriesIssue:
    """A series (one id and metric) rejected by validation and left out of the forecast.

    Attributes:
        id: the series id.
        metric: the metric column.
        timestamp: ISO 8601 UTC time of the first offending value.
        value: that value.
        message: one sentence naming what is wrong, where, and what to do (without the file
            name, unless ``path`` is set).
        count: how many values of the series were far out (or not numbers).
        raw: for a value that is not a number, the cell as written (``value`` is then NaN).
        line: where that value is in the file (``"line 7"``), or empty when unknown.
        path: the file, named at the start of ``message``, for an input of several files (a
            cluster's partitions, see :func:`place_issue`); None when the caller names the file.
        row: for a value that is not a number, its 0-based data row in what was validated
            (the file, or the part of it read), from which ``line`` is written; None if unknown.
    """

    id: str
    metric: str
    timestamp: str
    value: float
    message: str
    count: int = 1
    raw: str | None = None
    line: str = ""
    path: str | None = None
    row: int | None = None


def _issue_message(sid: str, c: str, ts: str, value: float, count: int, raw: str | None = None, line: str = "") -> str:
    if raw is not None:
        at = f" ({line})" if line else ""
        return (
            f"{c} of id {sid!r} is {raw!r} at {ts}{at}, not a number ({count} such value(s)), so this series "
            "was rejected; write metric values as numbers (leave a cell empty for not measured)."
        )
    bounded = c in BOUNDED_METRICS
    if np.isinf(value):
        what, fix = "infinite", "fix the collector or drop these rows"
    elif bounded:
        what = f"far outside {range_text(c)}"
        fix = "send a percent of the whole machine (divide per-core sums by the core count)"
    else:
        what = f"far outside {range_text(c)}"
        fix = "send the values in a larger unit (e.g. GB instead of bytes)"
    return f"{c} of id {sid!r} is {value!r} at {ts} ({count} value(s) {what}), so this series was rejected; {fix}."


def _message_of(issue: SeriesIssue) -> str:
    text = _issue_message(issue.id, issue.metric, issue.timestamp, issue.value, issue.count, issue.raw, issue.line)
    return f"{issue.path}: {text}" if issue.path else text


def make_issue(
    sid: str,
    metric: str,
    timestamp: str,
    value: float,
    count: int,
    *,
    raw: str | None = None,
    line: str = "",
    row: int | None = None,
) -> SeriesIssue:
    """The issue of a series with ``count`` bad values, the first of them ``value`` (or ``raw``) at ``timestamp``.

    >>> make_issue("vm-1", "cpuLoad", "2024-01-01T00:00:00Z", float("nan"), 1, raw="abc", line="line 2").message[:62]
    "cpuLoad of id 'vm-1' is 'abc' at 2024-01-01T00:00:00Z (line 2)"
    """
    issue = SeriesIssue(sid, metric, timestamp, value, "", count, raw, line, row=row)
    return dataclasses.replace(issue, message=_message_of(issue))


def combine_issues(first: SeriesIssue, later: SeriesIssue) -> SeriesIssue:
    """One issue for a series whose rows were checked in two parts (chunks of one file, in order).

    Keeps the first part's offending value and timestamp (and file and line) and sums the
    counts, so the message is the one a check of all the rows at once writes.

    >>> a = SeriesIssue("vm-1", "cpuLoad", "2024-01-01T00:00:00Z", 180.0, "", 2)
    >>> combine_issues(a, a).message.startswith("cpuLoad of id 'vm-1' is 180.0 at 2024-01-01T00:00:00Z (4 value(s)")
    True
    """
    combined = dataclasses.replace(first, count=first.count + later.count)
    return dataclasses.replace(combined, message=_message_of(combined))


def place_issue(issue: SeriesIssue, *, path: str | None = None, row_offset: int = 0) -> SeriesIssue:
    """The issue as the whole input sees it: its file named, and its row counted from the file's start.

    For a job that reads several files, or a file in parts whose first row it does not know
    when it reads them (a CSV byte range): ``path`` is named at the start of the message, and
    ``row_offset`` data rows (those before the part) are added to the row and its line.

    Args:
        issue: from :func:`~atomic_usage.data.validation.validate_wide`.
        path: the file (None: keep the issue's).
        row_offset: data rows of the file before the part that was validated.

    Returns:
        The issue with ``path``, ``row``, ``line`` and ``message`` set accordingly.

    >>> i = make_issue("vm-1", "cpuLoad", "2024-01-01T00:00:00Z", float("nan"), 1, raw="abc", line="row 0", row=0)
    >>> place_issue(i, path="p2.csv", row_offset=10).message[:71]
    "p2.csv: cpuLoad of id 'vm-1' is 'abc' at 2024-01-01T00:00:00Z (line 12)"
    """
    where = issue.path if path is None else path
    row = issue.row + row_offset if issue.row is not None else None
    line = locate_row(row, where, True) if row is not None else issue.line
    placed = dataclasses.replace(issue, path=where, row=row, line=line)
    return dataclasses.replace(placed, message=_message_of(placed))


def mask_rejected(df: pd.DataFrame, issues: Iterable[SeriesIssue], *, id_col: str = "id") -> pd.DataFrame:
    """``df`` with every value of each rejected series masked (NaN).

    Validation masks a rejected series in the rows it checked; an input checked in parts (a
    file's chunks, a cluster's partitions) also has rows of that series in the other parts,
    and those are masked here, so the series is masked as a whole read masks it.

    Args:
        df: a wide frame.
        issues: the rejected series (of any ids; those not in ``df`` change nothing).
        id_col: the id column's name.

    Returns:
        A copy of ``df`` when a value was masked, else ``df`` itself.
    """
    by_metric: dict[str, list[str]] = {}
    for i in issues:
        if i.metric in df.columns:
            by_metric.setdefault(i.metric, []).append(i.id)
    ids = df[id_col].to_numpy()
    hit = {m: np.isin(ids, sids) for m, sids in by_metric.items()}
    hit = {m: h for m, h in hit.items() if h.any()}
    if not hit:
        return df
    df = df.copy()
    for m, h in hit.items():
        df.loc[h, m] = np.nan
    return df


WarningKind = Literal["text_columns", "close_metric", "clipped"]
"""What an :class:`InputWarning` is about: columns ignored as text, a column named like a known
metric, or values clipped into range."""


@dataclasses.dataclass(frozen=True)
class InputWarning:
    """A warning about an input that rejects nothing, kept to be logged once per job.

    Attributes:
        kind: see :data:`WarningKind`.
        columns: the columns ignored as text (``text_columns``), else the one column.
        path: the file, or None.
        meant: for ``close_metric``, the known metric the column may mean.
        example: for ``clipped``, the first value: ``"of id 'vm-1' at 2026-01-05T00:00:00Z is 103.0"``.
        values: for ``clipped``, the values clipped.
        series: for ``clipped``, the series (ids) with a clipped value.
        ids: for ``clipped``, those ids, at most MAX_WARNING_IDS of them.
        exact: whether ``series`` is exact; False once parts that kept only some of their ids
            were merged (a series in two of them may then be counted twice).
    """

    kind: WarningKind
    columns: tuple[str, ...]
    path: str | None = None
    meant: str = ""
    example: str = ""
    values: int = 0
    series: int = 0
    ids: frozenset[str] = frozenset()
    exact: bool = True

    @property
    def message(self) -> str:
        """One sentence naming what was found and what to do, without the file name.

        >>> InputWarning("close_metric", ("cpuload",), meant="cpuLoad").message[-48:]
        "did you mean 'cpuLoad'? Rename the column if so."
        """
        if self.kind == "text_columns":
            return (
                f"Column(s) {list(self.columns)} hold text, not numbers, so they are not metrics and are ignored; "
                "metric columns are cpuLoad, memoryUsage, storageUsage or other numeric columns."
            )
        c = self.columns[0]
        if self.kind == "close_metric":
            return (
                f"Column {c!r} is not a known metric, so it is forecast as a count (unbounded, not a percent); "
                f"did you mean {self.meant!r}? Rename the column if so."
            )
        series = f"{self.series}" if self.exact else f"at least {self.series}"
        return (
            f"{c} {self.example}, outside {range_text(c)} ({self.values} such value(s) in {series} series); "
            "clipped into range."
        )


def _merge(first: InputWarning, later: InputWarning) -> InputWarning:
    """One warning for two parts of an input; the first part's example is kept."""
    if first.kind != "clipped":
        return first
    ids = first.ids | later.ids
    values = first.values + later.values
    whole = first.series == len(first.ids) and later.series == len(later.ids)  # every id kept
    if first.exact and later.exact and whole and len(ids) <= MAX_WARNING_IDS:
        return dataclasses.replace(first, values=values, series=len(ids), ids=ids)
    kept = frozenset(sorted(ids)[:MAX_WARNING_IDS])
    series = max(first.series, later.series, len(ids))
    return dataclasses.replace(first, values=values, series=series, ids=kept, exact=False)


def report_warnings(
    warnings: Iterable[InputWarning], issues: Iterable[SeriesIssue] = (), *, path: str | None = None
) -> list[str]:
    """Logs each distinct warning of an input validated in parts once, then each rejected series once.

    Warnings about the same column (and, for a misspelled metric, the same meaning) are one
    warning: it names the file, or the first file and how many others, and for clipped values
    counts them over all the parts. A whole read logs the same sentences.

    Args:
        warnings: from the parts' ``validate_wide`` calls, in input order.
        issues: the rejected series, one issue each (see :func:`combine_issues`).
        path: the file named before an issue that names none (``issue.path`` is None).

    Returns:
        The lines logged, in order.

    >>> w = InputWarning("text_columns", ("note",), "a.csv")
    >>> [line[:30] for line in report_warnings([w, w, InputWarning("text_columns", ("note",), "b.csv")])]
    ['a.csv (and 1 other file): Colu']
    """
    merged: dict[tuple[str, tuple[str, ...], str], InputWarning] = {}
    paths: dict[tuple[str, tuple[str, ...], str], list[str]] = {}  # the files each warning was met in
    for w in warnings:
        key = (w.kind, w.columns, w.meant)
        merged[key] = w if key not in merged else _merge(merged[key], w)
        seen = paths.setdefault(key, [])
        if w.path is not None and w.path not in seen:
            seen.append(w.path)
    lines = []
    for seen_key, w in merged.items():
        files = paths[seen_key]
        where = ""
        if len(files) == 1:
            where = f"{files[0]}: "
        elif files:
            where = f"{files[0]} (and {len(files) - 1} other file{'s' if len(files) > 2 else ''}): "
        lines.append(where + w.message)
    lines.extend(f"{path}: {i.message}" if path and i.path is None else i.message for i in issues)
    for line in lines:
        _log.warning("%s", line)
    return lines
