"""Threshold crossings, the ranking, charts and the self-contained HTML report."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from atomic_usage.data import generate_series, regularize  # noqa: E402
from atomic_usage.models.base import forecast_frame  # noqa: E402
from atomic_usage.models.baselines import PredictLinear  # noqa: E402
from atomic_usage.report import (  # noqa: E402
    crossings,
    eval_chart,
    fan_chart,
    figure_png,
    format_seconds,
    not_forecast,
    rank_machines,
    write_fan_charts,
    write_report,
)

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
STEP = pd.Timedelta("5min")


def _case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Machine a crosses 90 at p90 on step 2, b is already above, c never crosses."""
    p90 = {"a": [80, 91, 95, 101], "b": [95, 96, 97, 98], "c": [50, 50, 50, 50]}
    p50 = {"a": [70, 80, 89, 92], "b": [93, 93, 93, 93], "c": [40, 40, 40, 40]}
    now = {"a": 75.0, "b": 92.0, "c": 40.0}
    fc = pd.DataFrame(
        [
            {
                "id": i,
                "timestamp": T0 + STEP * (k + 1),
                "metric": "storageUsage",
                "mean": p50[i][k],
                "p10": 0.0,
                "p50": p50[i][k],
                "p90": p90[i][k],
                "model": "x",
            }
            for i in p90
            for k in range(4)
        ]
    )
    hist = pd.DataFrame([{"id": i, "timestamp": T0, "storageUsage": v} for i, v in now.items()])
    return hist, fc


class TestCrossings:
    """Seconds from the forecast origin until each quantile reaches each threshold."""

    def test_known_case(self) -> None:
        """First step at or above the level counts; already above is 0; never is +inf."""
        hist, fc = _case()
        c = crossings(fc, hist, (90, 100)).set_index(["id", "threshold"])
        assert c.loc[("a", 90.0), "p90_s"] == 600 and c.loc[("a", 90.0), "p50_s"] == 1200
        assert c.loc[("a", 100.0), "p90_s"] == 1200 and math.isinf(c.loc[("a", 100.0), "p50_s"])
        assert c.loc[("b", 90.0), "p90_s"] == 0 and c.loc[("b", 90.0), "p50_s"] == 0
        assert math.isinf(c.loc[("c", 90.0), "p90_s"])
        assert (c["origin"] == T0).all() and (c["horizon_s"] == 1200).all()

    def test_rank_machines(self) -> None:
        """Machines are ordered by time to the lowest threshold at p90."""
        hist, fc = _case()
        r = rank_machines(fc, hist, (90, 100))
        assert r["id"].tolist() == ["b", "a", "c"]
        assert r.loc[1, "p90_s@100"] == 1200

    def test_unbounded_metrics_are_ignored(self) -> None:
        """Counts have no percent threshold."""
        hist, fc = _case()
        fc["metric"] = "value"
        assert crossings(fc, hist.rename(columns={"storageUsage": "value"}), (90,)).empty


class TestFormatSeconds:
    """Durations for people."""

    @pytest.mark.parametrize(
        ("s", "text"), [(0, "now"), (600, "10 min"), (27000, "7.5 h"), (3 * 86400, "3.0 d"), (math.inf, "—")]
    )
    def test_format(self, s: float, text: str) -> None:
        """Minutes below an hour, hours below two days, days beyond."""
        assert format_seconds(s) == text


@pytest.fixture(scope="module")
def fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four generated machines forecast one day ahead by predict_linear."""
    hist = generate_series(4, n_steps=2 * 288, seed=7)
    panel, _ = regularize(hist)
    return hist, forecast_frame(PredictLinear(), panel, 288)


class TestReport:
    """The HTML page."""

    def test_self_contained_page(self, tmp_path: Path, fleet: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        """One page: a ranked table, one embedded PNG per machine, no external reference, no script."""
        hist, fc = fleet
        p = write_report(tmp_path / "r.html", hist, fc, top=3, model="predict_linear")
        text = p.read_text()
        assert text.startswith("<!DOCTYPE html>") and "<script" not in text
        assert len(re.findall(r"src='data:image/png;base64,", text)) == 3
        assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", text)
        ranked = rank_machines(fc, hist, (90, 100))["id"].tolist()[:3]
        positions = [text.index(f">{m}</a>") for m in ranked]
        assert positions == sorted(positions)

    def test_fan_charts_as_png(self, tmp_path: Path, fleet: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        """forecast --plot writes one PNG per machine."""
        hist, fc = fleet
        paths = write_fan_charts(tmp_path / "plots", hist, fc.copy(), thresholds=(90,))
        assert [p.name for p in paths] == [f"vm-{i:03d}.png" for i in range(4)]
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    def test_fan_chart_panels_legend_and_series_not_forecast(self, fleet: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        """Panels in one order (cpu, memory, storage) whatever the rows' order; one legend for the
        figure, not one over each panel's data; a series not forecast says why in its panel (it
        was left blank, with a legend of lines it did not have)."""
        hist, fc = fleet
        fc = fc[fc["id"] == "vm-000"].copy()
        fc = pd.concat([fc[fc["metric"] == m] for m in ("storageUsage", "cpuLoad", "memoryUsage")])
        cpu = fc["metric"] == "cpuLoad"
        fc.loc[cpu, ["mean", "p10", "p50", "p90"]] = np.nan
        fc.loc[cpu, "reason"] = "rejected: cpuLoad is 'abc' at line 7"
        fig = fan_chart("vm-000", hist, fc, thresholds=(90,))
        axes = fig.get_axes()
        assert [ax.get_ylabel() for ax in axes] == ["cpuLoad %", "memoryUsage %", "storageUsage %"]
        assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["history", "p10–p90", "p50", "90%"]
        notes = [t.get_text().replace("\n", " ") for t in axes[0].texts]
        assert notes == ["not forecast: rejected: cpuLoad is 'abc' at line 7"]
        assert not axes[1].texts and not axes[2].texts

    def test_eval_chart(self) -> None:
        """The evaluation table as a bar chart."""
        rows = [
            {"dataset": "nab", "horizon": 12, "model": m, "MASE": float(a), "SQL": float(a) / 2}
            for m, a in (("atomic", 0.8), ("naive", 1.0))
        ]
        png = figure_png(eval_chart(rows))
        assert png[:4] == b"\x89PNG" and len(png) > 5000
        assert np.isfinite(len(png))

    def test_eval_chart_cuts_exploded_scores(self) -> None:
        """A score far beyond the others (an exploded interval) is cut, hatched and labelled with its value."""
        rows = [
            {"dataset": "nab", "horizon": 12, "model": m, "MASE": 1.0, "SQL": sql}
            for m, sql in (("atomic", 0.5), ("naive", 0.6), ("autoets", 1.2e19))
        ]
        ax = eval_chart(rows).axes[1]
        assert ax.get_ylim()[1] < 10 and "cut at" in ax.get_title()
        assert "1.2e+19" in [t.get_text() for t in ax.texts]


class TestNotForecast:
    """Series without a forecast are listed with their reason, and no cell ever says nan%."""

    def test_rejected_no_data_and_short_are_listed(self, tmp_path: Path) -> None:
        """The user's report hid a rejected series, a metric with no data and a 2-value history, and
        printed ``nan%`` for them; now each is listed with its reason and shows "—"."""
        from atomic_usage.data.validation import validate_wide

        hist = generate_series(3, n_steps=60, seed=2)
        ids = sorted(hist["id"].unique())
        hist.loc[hist["id"] == ids[0], "cpuLoad"] = 180.0  # per-core sum: rejected
        hist.loc[hist["id"] == ids[1], "memoryUsage"] = np.nan  # no data
        short = pd.DataFrame(
            {"id": "new", "timestamp": hist["timestamp"].iloc[-2:].to_numpy(), "cpuLoad": [50.0, 51.0]}
        )
        hist = pd.concat([hist, short], ignore_index=True)
        issues: list = []
        clean = validate_wide(hist, out_of_range="reject", issues=issues)
        panel, _ = regularize(clean)
        fc = forecast_frame(PredictLinear(), panel, 12, issues=issues)
        text = write_report(tmp_path / "r.html", clean, fc, top=10).read_text()
        cells = re.sub(r"base64,[^']*", "", text)  # the charts' bytes can spell anything
        assert "nan" not in cells.lower()
        listed = not_forecast(fc)
        assert {(r.id, r.metric) for r in listed.itertuples()} >= {
            (ids[0], "cpuLoad"),
            (ids[1], "memoryUsage"),
            ("new", "cpuLoad"),
        }
        for reason in listed["reason"]:
            assert html.escape(reason) in text
        assert "no forecast" in text and "naive(short-history)" in text
