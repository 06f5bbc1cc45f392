"""Prometheus as a source: range-query JSON to the wide frame, and paged range queries over HTTP.

:func:`pull` runs one range query per metric against ``/api/v1/query_range`` and joins the
answers into the wide frame (``id`` = the ``instance`` label). The default queries are
the usual node_exporter recipes, one series per instance:

- ``cpuLoad`` = 100 × (1 − the rate of idle CPU seconds, averaged over the CPUs);
- ``memoryUsage`` = 100 × (1 − MemAvailable / MemTotal);
- ``storageUsage`` = 100 × (1 − avail / size) of one mount point (``/`` by default).

A range longer than the server's limit of 11,000 points per series is split into
consecutive pages on the same step grid. Connection failures, timeouts and 5xx answers
are retried with exponential backoff; a query the server rejects is not retried.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from ..errors import DataError, SchemaError
from .validation import validate_wide

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_QUERIES",
    "MAX_POINTS",
    "build_queries",
    "page_ranges",
    "parse_duration",
    "pull",
    "read_prom_json",
]

MAX_POINTS: Final = 11_000
"""Points per series that Prometheus returns at most from one range query."""

DEFAULT_QUERIES: Final = {
    "cpuLoad": "100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{{{idle}}}[{window}])))",
    "memoryUsage": "100 * (1 - max by (instance) (node_memory_MemAvailable_bytes{{{sel}}}) "
    "/ max by (instance) (node_memory_MemTotal_bytes{{{sel}}}))",
    "storageUsage": "100 * (1 - max by (instance) (node_filesystem_avail_bytes{{{fs}}}) "
    "/ max by (instance) (node_filesystem_size_bytes{{{fs}}}))",
}
"""The node_exporter recipe of each metric; :func:`build_queries` fills in the selector,
mount point and rate window."""

_RETRY_STATUS: Final = frozenset({429, 502, 503, 504})
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_log = logging.getLogger("atomic_usage.data")


def parse_duration(text: str, *, name: str = "duration") -> pd.Timedelta:
    """Parses a Prometheus duration such as ``7d``, ``5m``, ``1h30m`` or ``90s``.

    Raises:
        SchemaError: the text is not a positive duration (the message shows it).

    >>> parse_duration("1h30m")
    Timedelta('0 days 01:30:00')
    """
    s = text.strip()
    parts = _DURATION.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise SchemaError(
            f"The {name} {text!r} is not a duration; write e.g. 7d, 5m or 1h30m (units ms, s, m, h, d, w, y)."
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise SchemaError(f"The {name} {text!r} must be longer than zero.")
    return pd.Timedelta(seconds=seconds)


def _matchers(selector: str | None) -> str:
    s = (selector or "").strip()
    if not s:
        return ""
    if not (s.startswith("{") and s.endswith("}")):
        raise SchemaError(
            f"The selector {selector!r} is not a label matcher list; write it in braces, e.g. '{{job=\"node\"}}'."
        )
    return s[1:-1].strip().rstrip(",")


def build_queries(
    *,
    selector: str | None = None,
    mount: str = "/",
    step: pd.Timedelta | str = "5m",
    queries: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The PromQL query of each metric: the node_exporter recipes, overridden by ``queries``.

    Args:
        selector: label matchers added to every recipe, e.g. ``{job="node"}``.
        mount: the mount point whose file system ``storageUsage`` follows.
        step: the query step; the CPU rate window is the larger of it and 5 minutes.
        queries: metric -> custom PromQL, used as given (it must keep the ``instance`` label).
            A metric mapped to an empty string is left out.

    Returns:
        metric -> PromQL, recipes first, custom metrics after.

    Raises:
        SchemaError: the selector is not in braces.
    """
    sel = _matchers(selector)
    window = max(pd.Timedelta(step), pd.Timedelta(minutes=5))
    join = ", ".join
    mount_q = mount.replace("\\", "\\\\").replace('"', '\\"')
    fill = {
        "sel": sel,
        "idle": join(x for x in (sel, 'mode="idle"') if x),
        "fs": join(x for x in (sel, f'mountpoint="{mount_q}"') if x),
        "window": f"{int(window.total_seconds())}s",
    }
    out = {m: q.format(**fill) for m, q in DEFAULT_QUERIES.items()}
    for m, q in (queries or {}).items():
        if q.strip():
            out[m] = q
        else:
            out.pop(m, None)
    return out


def page_ranges(
    start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta, *, max_points: int = MAX_POINTS
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Splits ``[start, end]`` into pages of at most ``max_points`` steps on the same grid.

    Page k covers the steps ``start + step * (k * max_points ... (k + 1) * max_points - 1)``,
    so pages neither overlap nor leave a step out.

    >>> t = pd.Timestamp("2024-01-01", tz="UTC")
    >>> pages = page_ranges(t, t + pd.Timedelta("9min"), pd.Timedelta("1min"), max_points=4)
    >>> [(a.minute, b.minute) for a, b in pages]
    [(0, 3), (4, 7), (8, 9)]
    """
    if max_points < 1:
        raise SchemaError(f"max_points must be at least 1; got {max_points}.")
    n = int((end - start) // step) + 1
    return [(start + step * a, start + step * (min(a + max_points, n) - 1)) for a in range(0, max(n, 0), max_points)]


def read_prom_json(
    source: str | Path | Mapping[str, Any], *, metric: str = "value", id_label: str = "instance"
) -> pd.DataFrame:
    """Reads the JSON answer of a Prometheus range (or instant) query into the wide frame.

    Args:
        source: a file holding the answer, or the parsed answer itself.
        metric: the name of the one metric column.
        id_label: the label whose value becomes the id; a series without it gets the
            whole label set as its id (e.g. ``{job="node"}``).

    Returns:
        The wide frame ``id,timestamp,<metric>`` (``NaN`` samples stay missing).

    Raises:
        SchemaError: the file or answer is not a successful matrix/vector answer.
    """
    where = str(source) if isinstance(source, str | Path) else "the Prometheus answer"
    if isinstance(source, str | Path):
        try:
            body = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise SchemaError(
                f"{source}: cannot be read as Prometheus JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                "save the answer of /api/v1/query_range.",
                path=str(source),
            ) from None
    else:
        body = source
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, Mapping) or body.get("status") != "success":
        err = body.get("error", "no data field") if isinstance(body, Mapping) else "not a JSON object"
        raise SchemaError(f"{where}: not a successful Prometheus answer ({err}).")
    kind = data.get("resultType")
    if kind not in ("matrix", "vector"):
        raise SchemaError(f"{where}: the result type is {kind!r}; a range query (matrix) is needed.")
    ids: list[str] = []
    ts: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for series in data.get("result", []):
        labels = series.get("metric", {})
        sid = labels.get(id_label) or "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        points = series.get("values") if kind == "matrix" else [series.get("value")]
        if not points:
            continue
        arr = np.asarray(points, dtype=object)
        ts.append(arr[:, 0].astype(np.float64))
        vals.append(np.asarray(arr[:, 1], dtype=str).astype(np.float64))
        ids += [str(sid)] * len(points)
    t = np.concatenate(ts) if ts else np.zeros(0)
    df = pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=object),
            # Prometheus timestamps are float seconds with millisecond precision.
            "timestamp": pd.to_datetime(np.round(t * 1000).astype(np.int64), unit="ms", utc=True),
            metric: np.concatenate(vals) if vals else np.zeros(0),
        }
    )
    # Prometheus may answer +Inf (e.g. a division by a zero size); that is no usable value.
    df.loc[np.isinf(df[metric].to_numpy()), metric] = np.nan
    return validate_wide(df, path=where if isinstance(source, str | Path) else None)


@contextmanager
def _map_httpx(url: str) -> Iterator[None]:
    """Translates httpx errors into DataError naming the server and what to check."""
    import httpx

    try:
        yield
    except httpx.InvalidURL as exc:
        raise SchemaError(f"{url!r} is not a valid URL ({exc}); give e.g. http://localhost:9090.") from None
    except httpx.UnsupportedProtocol as exc:
        raise SchemaError(f"{url!r}: {exc}; give an http:// or https:// URL.") from None
    except httpx.TransportError as exc:
        raise DataError(
            f"Cannot reach Prometheus at {url} ({type(exc).__name__}: {exc or 'no detail'}); "
            "check the URL and that the server is running and reachable from here."
        ) from None


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"{body.get('errorType', 'error')}: {body.get('error', resp.text[:300])}"
    except ValueError:
        return resp.text[:300].strip() or resp.reason_phrase


def _get(
    client: httpx.Client,
    url: str,
    params: dict[str, str],
    *,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None],
) -> httpx.Response:
    import httpx

    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            resp = client.get(url, params=params)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise
        except httpx.TransportError as exc:
            if last:
                raise
            _log.warning("Prometheus %s: %s; retry %d of %d", url, type(exc).__name__, attempt + 1, retries)
        else:
            if (resp.status_code < 500 and resp.status_code not in _RETRY_STATUS) or last:
                return resp
            _log.warning("Prometheus %s: HTTP %d; retry %d of %d", url, resp.status_code, attempt + 1, retries)
        sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def pull(
    url: str,
    *,
    range: pd.Timedelta | str = "7d",
    step: pd.Timedelta | str = "5m",
    end: pd.Timestamp | str | None = None,
    selector: str | None = None,
    mount: str = "/",
    queries: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
    max_points: int = MAX_POINTS,
    retries: int = 4,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> pd.DataFrame:
    """Runs the range queries of every metric against a Prometheus server; returns the wide frame.

    The query grid is aligned to the step (``end`` is floored to a multiple of it), so
    pulls of different ranges give the same timestamps, and regularizing at ``step``
    changes nothing.

    Args:
        url: the server, e.g. ``http://localhost:9090`` (a path prefix is kept).
        range: how far back from ``end`` to read, e.g. ``7d``.
        step: the query step, e.g. ``5m``.
        end: the last step (default: now).
        selector: label matchers for the recipes, e.g. ``{job="node"}``.
        mount: the mount point of ``storageUsage``.
        queries: custom PromQL per metric (see :func:`build_queries`).
        client: an httpx client to use (default: a new one with ``timeout_s``).
        max_points: points per series and query at most (the server's limit).
        retries: retries of a page after a connection error, a timeout or a 5xx answer.
        backoff_s: seconds before the first retry; doubled at each one.
        timeout_s: seconds a request may take.
        progress: called with the metric's name after each page.
        sleep: waits between retries (tests pass a fake).

    Returns:
        The wide frame ``id,timestamp,<metric>...`` with one row per instance and step
        that any metric has a value for.

    Raises:
        DataError: the server cannot be reached after the retries, or no query matched any series.
        SchemaError: a duration, selector or URL is malformed, or the server rejected a query
            (the message includes the server's error and the query).
    """
    try:
        import httpx
    except ImportError:  # pragma: no cover
        raise DataError(
            "Reading from Prometheus needs httpx; install it: pip install 'atomic-usage[prometheus]'."
        ) from None

    step_td = parse_duration(step, name="step") if isinstance(step, str) else pd.Timedelta(step)
    range_td = parse_duration(range, name="range") if isinstance(range, str) else pd.Timedelta(range)
    if step_td <= pd.Timedelta(0) or range_td <= pd.Timedelta(0):
        raise SchemaError(f"The range and step must be positive; got range={range_td}, step={step_td}.")
    stop = pd.Timestamp.now(tz="UTC") if end is None else pd.Timestamp(end)
    stop = (stop.tz_localize("UTC") if stop.tzinfo is None else stop.tz_convert("UTC")).floor(step_td)
    pages = page_ranges(stop - range_td, stop, step_td, max_points=max_points)
    api = url.rstrip("/") + "/api/v1/query_range"
    frames: list[pd.DataFrame] = []
    own = client is None
    http = httpx.Client(timeout=timeout_s) if client is None else client
    try:
        with _map_httpx(url):
            todo = build_queries(selector=selector, mount=mount, step=step_td, queries=queries)
            for metric, query in todo.items():
                parts = []
                for a, b in pages:
                    params = {
                        "query": query,
                        "start": f"{a.value / 1e9:.3f}",
                        "end": f"{b.value / 1e9:.3f}",
                        "step": f"{step_td.total_seconds():g}s",
                    }
                    resp = _get(http, api, params, retries=retries, backoff_s=backoff_s, sleep=sleep)
                    if resp.status_code >= 400:
                        what = "rejected the query" if resp.status_code in (400, 422) else "failed"
                        exc_type = SchemaError if resp.status_code in (400, 422) else DataError
                        raise exc_type(
                            f"Prometheus at {url} {what} for {metric} (HTTP {resp.status_code}, "
                            f"{_error_text(resp)}); the query was: {query}. "
                            "Fix the selector or the custom query."
                        )
                    try:
                        body = resp.json()
                    except ValueError:
                        raise DataError(
                            f"{url} answered {api} with something that is not JSON ({resp.text[:120]!r}); "
                            "is this the Prometheus server's base URL?"
                        ) from None
                    parts.append(read_prom_json(body, metric=metric))
                    if progress is not None:
                        progress(metric)
                part = pd.concat(parts, ignore_index=True)
                if part.empty:
                    _log.warning("Prometheus %s: no series for %s (query: %s)", url, metric, query)
                    continue
                # A custom query may return several series per instance: merge them by their mean.
                frames.append(part.groupby(["id", "timestamp"], sort=False)[metric].mean().to_frame())
    finally:
        if own:
            http.close()
    if not frames:
        raise DataError(
            f"No query matched any series at {url} between {pages[0][0]} and {stop}; check the selector "
            "(e.g. '{job=\"node\"}'), that node_exporter is scraped there, and the time range."
        )
    wide = pd.concat(frames, axis=1, join="outer").sort_index().reset_index()
    return wide[["id", "timestamp", *[c for c in wide.columns if c not in ("id", "timestamp")]]]
