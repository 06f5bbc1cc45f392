"""One self-contained HTML page: the machines closest to exhausting a resource, and their charts.

The page has no external asset and no script: CSS is inline and every chart is a PNG in a
``data:`` URI, so it can be mailed, attached to a ticket or opened offline.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pandas as pd

from ..models.base import NO_FORECAST
from .charts import fan_chart, figure_png
from .ranking import rank_machines

__all__ = ["format_seconds", "not_forecast", "render_report", "write_report"]

DEFAULT_TOP: Final = 20
"""Machines shown in a report (the closest to exhausting a resource)."""

_CSS: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}
p.meta{color:#555;margin:0 0 16px;font-size:13px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}td.hot{color:#b03a2e;font-weight:600}
td.warm{color:#b9770e}figure{margin:8px 0 24px}img{max-width:100%;height:auto;border:1px solid #eee}
"""


def format_seconds(s: float) -> str:
    """A duration for people: ``now``, ``45 min``, ``7.5 h``, ``3.2 d``, or ``—`` for never (inf)."""
    if not math.isfinite(s):
        return "—"
    if s <= 0:
        return "now"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _pct(v: float) -> str:
    """A percent cell: ``—`` where there is no value (no history, or an interval unknown), never ``nan%``."""
    return f"{v:.1f}%" if math.isfinite(v) else "—"


def not_forecast(forecast: pd.DataFrame) -> pd.DataFrame:
    """The series (id, metric) of a long forecast frame that carry a reason: not forecast (rejected, no
    data, no observations) or forecast without the model's full answer (a short history, a fallback).

    Returns:
        Columns ``id, metric, model, reason``, one row per such series, in the frame's order.
    """
    cols = ["id", "metric", "model", "reason"]
    if "reason" not in forecast.columns:
        return pd.DataFrame({c: [] for c in cols})
    firsts = forecast.drop_duplicates(["id", "metric"])
    flagged = firsts[firsts["reason"].fillna("").astype(str) != ""]
    return flagged[cols].reset_index(drop=True)


def _cls(s: float) -> str:
    return "hot" if s <= 3600 * 6 else "warm" if math.isfinite(s) else ""


def render_report(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    thresholds: Sequence[float] = (90.0, 100.0),
    top: int = DEFAULT_TOP,
    title: str = "ATOMIC capacity report",
    model: str | None = None,
    progress: Callable[[], None] | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    ranked = rank_machines(forecast, history, thresholds).head(top)
    levels = sorted(float(t) for t in thresholds)
    low = levels[0] if levels else float("nan")
    esc = html.escape
    head = (
        "<tr><th>#</th><th class=l>machine</th><th class=l>resource</th><th>now</th>"
        "<th title='the highest p90 of the horizon'>max p90</th>"
        + "".join(f"<th>&ge;{t:g}% at p90</th>" for t in levels)
        + f"<th>&ge;{low:g}% at p50</th></tr>"
    )
    body_rows = []
    for k, d in enumerate(ranked.to_dict("records"), start=1):
        cells = "".join(f"<td class={_cls(d[f'p90_s@{t:g}'])}>{format_seconds(d[f'p90_s@{t:g}'])}</td>" for t in levels)
        body_rows.append(
            f"<tr><td>{k}</td><td class=l><a href='#m{k}'>{esc(str(d['id']))}</a></td>"
            f"<td class=l>{esc(d['metric'])}</td><td>{_pct(d['now'])}</td><td>{_pct(d['peak_p90'])}</td>{cells}"
            f"<td class={_cls(d['p50_s'])}>{format_seconds(d['p50_s'])}</td></tr>"
        )
    horizon_s = float(ranked["horizon_s"].max()) if len(ranked) else 0.0
    charts = []
    for k, machine in enumerate(ranked["id"], start=1):
        png = figure_png(fan_chart(str(machine), history, forecast, thresholds=levels))
        charts.append(
            f"<figure id='m{k}'><img alt='{esc(str(machine))}: history, forecast fan p10–p90 and thresholds' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'></figure>"
        )
        if progress is not None:
            progress()
    n_machines = forecast["id"].nunique()
    meta = (
        f"{n_machines} machines forecast {format_seconds(horizon_s)} ahead"
        + (f" by {esc(model)}" if model else "")
        + f"; thresholds {', '.join(f'{t:g}%' for t in levels)}; generated "
        + datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        + ". &mdash; means not within the horizon."
    )
    table = (
        f"<table><thead>{head}</thead><tbody>{''.join(body_rows)}</tbody></table>"
        if body_rows
        else "<p>No percent metric (cpuLoad, memoryUsage, storageUsage) was forecast.</p>"
    )
    flagged = not_forecast(forecast)
    listed = "".join(
        f"<tr><td class=l>{esc(str(d['id']))}</td><td class=l>{esc(str(d['metric']))}</td>"
        f"<td class=l>{'no forecast' if d['model'] in NO_FORECAST else esc(str(d['model']))}</td>"
        f"<td class=l>{esc(str(d['reason']))}</td></tr>"
        for d in flagged.to_dict("records")
    )
    apart = (
        "<h2>Not forecast, or not by the model</h2><table><thead><tr><th class=l>machine</th>"
        f"<th class=l>resource</th><th class=l>forecast</th><th class=l>reason</th></tr></thead><tbody>{listed}"
        "</tbody></table>"
        if listed
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=meta>{meta}</p>"
        f"<h2>Closest to exhausting a resource (time until threshold at p90)</h2>{table}{apart}"
        f"<h2>Charts</h2>{''.join(charts)}</body></html>\n"
    )


def write_report(
    path: str | Path,
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    thresholds: Sequence[float] = (90.0, 100.0),
    top: int = DEFAULT_TOP,
    title: str = "ATOMIC capacity report",
    model: str | None = None,
    progress: Callable[[], None] | None = None,
) -> Path:
    """Writes one self-contained HTML report (atomically: a temporary file renamed into place).

    The page ranks the ``top`` machines by time until their first resource reaches the
    lowest threshold at p90 (then p50, then peak), and shows for each a chart of its
    history with the forecast fan (p10–p90), p50 and the thresholds.

    Args:
        path: the ``.html`` file to write.
        history: the wide frame the forecast was made from.
        forecast: the long forecast frame (``id,timestamp,metric,mean,p10,p50,p90``...).
        thresholds: percent levels.
        top: machines in the table and charts.
        title: the page's title.
        model: the model's name, shown in the header.
        progress: called after each chart.

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(history, forecast, thresholds=thresholds, top=top, title=title, model=model, progress=progress)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return p
