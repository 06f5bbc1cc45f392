"""CLI commands of issue 9: collect, forecast --from-store/--plot, report, pull errors, one source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from atomic_usage.cli import app
from atomic_usage.data import generate_series

pytest.importorskip("matplotlib")
pytest.importorskip("psutil")


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder and a small generated fleet file."""
    monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
    generate_series(3, n_steps=400, seed=1).to_csv(tmp_path / "fleet.csv", index=False)
    return tmp_path


class TestCli:
    """Commands run end to end through the typer app."""

    def test_collect_then_forecast_from_store(self, env: Path) -> None:
        """collect --count writes samples; forecast --from-store forecasts them."""
        runner = CliRunner()
        r = runner.invoke(app, ["collect", "--interval", "1s", "--count", "2", "--id", "me"])
        assert r.exit_code == 0, r.output
        out = env / "fc.csv"
        r = runner.invoke(app, ["forecast", "--from-store", "-H", "3", "-o", str(out), "-m", "naive"])
        assert r.exit_code == 0, r.output
        fc = pd.read_csv(out)
        assert set(fc["id"]) == {"me"} and set(fc["metric"]) == {"cpuLoad", "memoryUsage", "storageUsage"}

    def test_forecast_plot_and_report(self, env: Path) -> None:
        """forecast --plot writes one PNG per machine; report writes one HTML page."""
        runner = CliRunner()
        args = ["-i", str(env / "fleet.csv"), "-m", "predict_linear"]
        r = runner.invoke(app, ["forecast", *args, "-H", "12", "-o", str(env / "fc.csv"), "--plot", str(env / "png")])
        assert r.exit_code == 0, r.output
        assert sorted(p.name for p in (env / "png").iterdir()) == ["vm-000.png", "vm-001.png", "vm-002.png"]
        r = runner.invoke(app, ["report", *args, "-H", "24", "--top", "2", "-o", str(env / "r.html")])
        assert r.exit_code == 0, r.output
        assert (env / "r.html").read_text().count("data:image/png;base64,") == 2

    def test_exactly_one_source(self, env: Path) -> None:
        """Two sources, or none, is a usage error naming the options."""
        r = CliRunner().invoke(
            app,
            ["forecast", "-i", str(env / "fleet.csv"), "--from-store", "-H", "1", "-o", str(env / "x.csv")],
        )
        assert r.exit_code == 2 and "exactly one of" in r.output

    def test_pull_unreachable(self, env: Path) -> None:
        """An unreachable server exits 2 with the message naming it (after 4 retries, 7.5 s of backoff)."""
        r = CliRunner().invoke(
            app, ["pull", "--prometheus", "http://127.0.0.1:9", "--range", "1h", "-o", str(env / "p.csv")]
        )
        assert r.exit_code == 2 and "Cannot reach Prometheus at http://127.0.0.1:9" in r.output

    def test_bad_query_option(self, env: Path) -> None:
        """--query must be METRIC=PROMQL."""
        r = CliRunner().invoke(
            app,
            ["pull", "--prometheus", "http://127.0.0.1:9", "--query", "nonsense", "-o", str(env / "p.csv")],
        )
        assert r.exit_code == 2 and "METRIC=PROMQL" in r.output
