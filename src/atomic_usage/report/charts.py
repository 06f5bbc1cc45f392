"""Charts drawn with matplotlib's Agg backend: a machine's history with its forecast fan, and scores.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through pyplot, so
no global figure state or GUI backend is involved and charts can be drawn from any thread.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from .._types import BOUNDED_METRICS, DEFAULT_METRICS
from ..errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["eval_chart", "fan_chart", "figure_png", "require_matplotlib", "safe_name", "write_fan_charts"]

DPI: Final = 80
"""Resolution of the PNGs (pixels per inch): small enough to embed dozens in one page."""

_HISTORY: Final = "#1f4e79"
_FAN: Final = "#f28e2b"
_THRESHOLD_COLORS: Final = ("#c0392b", "#7b241c", "#4a235a")


def require_matplotlib() -> None:
    """Raises the DataError naming the ``report`` extra when matplotlib is missing, so a command
    that will draw says so before its other work (``forecast --plot`` wrote its table first)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise DataError("Charts need matplotlib; install it: pip install 'atomic-usage[report]'.") from None


def _figure(width_in: float, height_in: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI)


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def safe_name(machine_id: str) -> str:
    """A file name for a machine id (``/``, ``:`` and other odd characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", machine_id).strip("._") or "machine"


def fan_chart(
    machine_id: str,
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    thresholds: Sequence[float] = (),
    history_steps: int | None = None,
) -> Figure:
    """One machine: per metric, its recent history, the forecast's p10–p90 fan and p50, and the thresholds.

    Args:
        machine_id: the id to draw.
        history: the wide frame (rows of other ids are ignored).
        forecast: the long forecast frame (rows of other ids are ignored).
        thresholds: percent levels drawn as dashed lines on percent metrics.
        history_steps: history rows shown (default: twice the forecast's length, at least 288).

    Returns:
        A matplotlib Figure with one panel per metric.
    """
    h = history[history["id"] == machine_id].sort_values("timestamp")
    f = forecast[forecast["id"] == machine_id].sort_values("timestamp")
    metrics = list(dict.fromkeys(f["metric"])) or [c for c in h.columns if c not in ("id", "timestamp")]
    # cpu, memory, storage, then any other, in every chart whatever order the rows came in
    metrics.sort(key=lambda m: DEFAULT_METRICS.index(m) if m in DEFAULT_METRICS else len(DEFAULT_METRICS))
    n_fc = int(f.groupby("metric").size().max()) if len(f) else 0
    keep = history_steps if history_steps is not None else max(2 * n_fc, 288)
    height = 0.9 + 2.1 * len(metrics)
    fig = _figure(9.0, height)
    # Fixed margins instead of a layout engine: constrained layout doubles the drawing time.
    fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.4 / height, bottom=0.45 / height, hspace=0.12)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, m in zip(axes, metrics, strict=True):
        hm = h[["timestamp", m]].dropna().tail(keep) if m in h else h[["timestamp"]].iloc[:0]
        fm = f[f["metric"] == m]
        if len(hm):
            ax.plot(hm["timestamp"], hm[m], color=_HISTORY, lw=1.1, label="history")
            ax.axvline(hm["timestamp"].iloc[-1], color="#888888", lw=0.8, ls=":")
        if len(fm) and fm["p50"].notna().any():
            ax.fill_between(fm["timestamp"], fm["p10"], fm["p90"], color=_FAN, alpha=0.3, lw=0, label="p10–p90")
            ax.plot(fm["timestamp"], fm["p50"], color=_FAN, lw=1.6, label="p50")
        else:  # said in the panel, not left blank
            reasons = fm["reason"].dropna().astype(str) if "reason" in fm else pd.Series(dtype=str)
            why = next((r for r in reasons if r), "")
            note = f"not forecast: {why}" if why else ("not forecast" if len(hm) else "no data")
            ax.text(
                0.5,
                0.5,
                textwrap.fill(note, 100),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="#555555",
            )
        if m in BOUNDED_METRICS:
            for k, level in enumerate(sorted(thresholds)):
                ax.axhline(level, color=_THRESHOLD_COLORS[k % 3], lw=1.0, ls="--", label=f"{level:g}%")
            ax.set_ylim(0, 105)
            ax.set_ylabel(f"{m} %")
        else:
            ax.set_ylabel(m)
        ax.grid(alpha=0.25)
    # One legend for the figure, beside the title: in each panel it hid the history near 100 %.
    shown: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            shown.setdefault(label, handle)
    first = ("history", "p10–p90", "p50")
    shown = dict(sorted(shown.items(), key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first)))
    if shown:
        fig.legend(
            list(shown.values()),
            list(shown),
            loc="upper right",
            bbox_to_anchor=(0.98, 1.0),
            ncol=len(shown),
            fontsize=8,
            frameon=False,
        )
    axes[0].set_title(machine_id, loc="left", fontsize=11)
    axes[-1].tick_params(axis="x", labelsize=8)
    return fig


def write_fan_charts(
    directory: str | Path,
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    thresholds: Sequence[float] = (),
    progress: Any = None,
) -> list[Path]:
    """Writes ``<directory>/<machine id>.png`` with :func:`fan_chart` for every machine of the forecast.

    Args:
        progress: called once per chart written (e.g. a progress bar's advance).

    Returns:
        The files written, in id order.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for machine in sorted(forecast["id"].unique()):
        p = out / f"{safe_name(str(machine))}.png"
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(figure_png(fan_chart(str(machine), history, forecast, thresholds=thresholds)))
        tmp.replace(p)
        paths.append(p)
        if progress is not None:
            progress()
    return paths


def _axis_top(values: np.ndarray) -> float:
    """Where to cut the bars: 5x the median score when some score is far beyond it (an exploded
    interval gives SQL ~1e18 and would flatten every other bar), else no cut (inf)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("inf")
    top = 5 * float(np.median(np.abs(finite)))
    return top if top > 0 and (values > top).any() else float("inf")


def eval_chart(rows: Sequence[Mapping[str, Any]], *, scores: Sequence[str] = ("MASE", "SQL")) -> Figure:
    """A bar chart of scores per model, one group per data set and horizon (lower is better).

    Args:
        rows: score rows as printed by ``atomic-usage evaluate`` (``dataset, horizon, model``
            and the score columns).
        scores: the score columns to draw, one panel each.

    Raises:
        DataError: no row holds any of the scores.
    """
    df = pd.DataFrame(list(rows))
    scores = [s for s in scores if s in df.columns]
    if df.empty or not scores:
        raise DataError("There are no scores to chart; run the evaluation first.")
    df["group"] = df["dataset"].astype(str) + " h=" + df["horizon"].astype(str)
    groups = list(dict.fromkeys(df["group"]))
    models = list(dict.fromkeys(df["model"]))
    fig = _figure(max(4.0, 1.6 * len(groups) + 2.5) * len(scores), 4.0)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.1, wspace=0.2)
    axes = fig.subplots(1, len(scores), squeeze=False)[0]
    width = 0.8 / len(models)
    for ax, score in zip(axes, scores, strict=True):
        top = _axis_top(df[score].to_numpy(float))
        for k, model in enumerate(models):
            values = df[df["model"] == model].set_index("group")[score].reindex(groups).to_numpy(float)
            xs = [g + (k - (len(models) - 1) / 2) * width for g in range(len(groups))]
            cut = values > top
            bars = ax.bar(xs, np.where(cut, top, values), width=width * 0.95, label=model)
            for bar, c in zip(bars, cut, strict=True):
                if c:
                    bar.set_hatch("//")
            labels = [f"{v:.3g}" if c else f"{v:.3f}" for v, c in zip(values, cut, strict=True)]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
        ax.set_xticks(range(len(groups)), groups)
        title = f"{score} (lower is better)"
        if np.isfinite(top):
            ax.set_ylim(0, top * 1.12)
            title += f"; hatched bars cut at {top:.3g}"
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.25)
    axes[0].legend(fontsize=8, frameon=False)
    return fig
