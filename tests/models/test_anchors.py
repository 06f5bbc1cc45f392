"""The UsageBench anchors as forecasters: shapes, safety, fallbacks, the install hint, agreement with usagebench.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atomic_usage.cli import app
from atomic_usage.data import generate_series
from atomic_usage.errors import ModelError
from atomic_usage.models.anchors import AutoETSAnchor, AutoThetaAnchor, LightGBMAnchor
from atomic_usage.models.base import Forecaster
from atomic_usage.models.baselines import naive_arrays

METRICS = ["cpuLoad", "memoryUsage", "storageUsage"]


def histories(n_series: int = 2, n_steps: int = 200, seed: int = 4) -> list[np.ndarray]:
    """cpu, memory and storage of a few generated machines, as 1-D histories."""
    df = generate_series(n_series, n_steps=n_steps, seed=seed)
    return [g[m].to_numpy(float) for _, g in df.groupby("id") for m in METRICS]


def fast(name: str) -> Forecaster:
    """An anchor sized for a unit test: one process or thread, few trees."""
    if name == "lightgbm":
        return LightGBMAnchor(n_estimators=20, threads=1)
    return AutoETSAnchor(n_jobs=1) if name == "autoets" else AutoThetaAnchor(n_jobs=1)


class TestInstallHint:
    """Without the bench extra, an anchor fails with ModelError and says what to install."""

    @pytest.mark.parametrize(("name", "module"), [("autoets", "statsforecast"), ("lightgbm", "lightgbm")])
    def test_missing_package(self, monkeypatch: pytest.MonkeyPatch, name: str, module: str) -> None:
        """A missing package is named along with `pip install 'atomic-usage[bench]'`."""
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
        with pytest.raises(ModelError, match=rf"{module}.*pip install 'atomic-usage\[bench\]'"):
            fast(name).forecast_arrays(histories(1), 4, np.ones(3, bool))


class TestAnchors:
    """Each anchor returns finite, ordered, in-range p10/p50/p90 of shape (n, 3, H)."""

    @pytest.fixture(autouse=True)
    def _packages(self) -> None:
        pytest.importorskip("statsforecast")
        pytest.importorskip("mlforecast")
        pytest.importorskip("lightgbm")

    @pytest.mark.parametrize("name", ["autoets", "autotheta", "lightgbm"])
    def test_safe_quantiles(self, name: str) -> None:
        """Generated percents, a short history and one with gaps: all forecast, within [0, 100]."""
        hists = histories()
        gappy = hists[0].copy()
        gappy[50:80] = np.nan
        hists += [hists[1][:5], gappy]
        model = fast(name)
        fc = model.forecast_arrays(hists, 12, np.ones(len(hists), bool))
        assert fc.shape == (len(hists), 3, 12)
        assert np.isfinite(fc).all() and (np.diff(fc, axis=1) >= 0).all()
        assert (fc >= 0).all() and (fc <= 100).all()
        flags = model.fallback_flags(hists)
        assert flags[:6] == [name] * 6 and flags[-1] == name
        assert flags[6] == ("naive" if name != "lightgbm" else name)  # 5 steps: too short for statsforecast

    def test_season_rule(self) -> None:
        """Season 288 where two seasons fit, else 1; AutoETS always non-seasonal (as usagebench.py)."""
        assert [AutoThetaAnchor()._season_for(n) for n in (575, 576)] == [1, 288]
        assert AutoETSAnchor()._season_for(2016) == 1

    def test_infinite_interval_made_finite(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An infinite ETS interval (it happens on NAB) becomes finite: -inf -> 0, +inf -> float32 max."""
        model = fast("autoets")
        monkeypatch.setattr(
            model, "_fit_forecast", lambda h, H, s, j: np.stack([[[-np.inf] * H, [5.0] * H, [np.inf] * H]] * len(h))
        )
        fc = model.forecast_arrays(histories(1), 3, np.zeros(3, bool))
        assert (fc[:, 0] == 0).all() and (fc[:, 1] == 5).all() and (fc[:, 2] == np.finfo(np.float32).max).all()

    def test_failed_fit_falls_back_to_naive(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """When statsforecast raises, each series is refitted alone, and those that fail again get naive."""
        model = fast("autotheta")

        def boom(*args: object) -> np.ndarray:
            raise RuntimeError("no model able to be fitted")

        monkeypatch.setattr(model, "_fit_forecast", boom)
        hists = histories(1)
        fc = model.forecast_arrays(hists, 4, np.ones(3, bool))
        assert np.allclose(fc, np.clip(naive_arrays(hists, 4), 0, 100))

    def test_lightgbm_too_short_to_train(self) -> None:
        """With no history long enough to give a training row, every series is forecast naively."""
        hists = [h[:40] for h in histories(1)]
        model = fast("lightgbm")
        assert model.fallback_flags(hists) == ["naive"] * 3
        assert np.allclose(model.forecast_arrays(hists, 4, np.ones(3, bool)), naive_arrays(hists, 4))


def write_gcd(folder: Path, n_vms: int = 2) -> Path:
    """A tiny gcd-layout folder: vm_* files of 288 rows `cpu memory`."""
    folder.mkdir()
    df = generate_series(n_vms, n_steps=288, seed=9)
    for i, (_, g) in enumerate(df.groupby("id")):
        np.savetxt(folder / f"vm_{i}", g[["cpuLoad", "memoryUsage"]].to_numpy())
    return folder


class TestEvaluateCommand:
    """`evaluate --models` picks what is scored; anchors join the same table."""

    def test_models_subset_with_an_anchor(self, tmp_path: Path) -> None:
        """`--models naive,autoets` scores exactly those two, in the markdown and JSON too."""
        pytest.importorskip("statsforecast")
        md, js = tmp_path / "s.md", tmp_path / "s.jsonl"
        res = CliRunner().invoke(
            app,
            ["evaluate", "--dataset", "gcd", "--data-dir", str(write_gcd(tmp_path / "gcd"))]
            + ["--models", "naive,autoets", "--markdown", str(md), "--json", str(js)],
        )
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in js.read_text().splitlines()]
        assert [r["model"] for r in rows] == ["naive", "autoets"] and rows[1]["windows"] == 16
        assert "| autoets |" in md.read_text()

    def test_unknown_model(self, tmp_path: Path) -> None:
        """An unknown name exits 2 and lists the choices."""
        res = CliRunner().invoke(
            app, ["evaluate", "--dataset", "gcd", "--data-dir", str(write_gcd(tmp_path / "gcd")), "--models", "prophet"]
        )
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "Unknown model(s) ['prophet']" in text and "autotheta" in text


@pytest.mark.shared
@pytest.mark.slow
class TestAgreementWithUsageBench:
    """Our anchors score like usagebench.py's on the same NAB windows (first 4 series, H=12)."""

    @pytest.mark.parametrize("name", ["autoets", "autotheta", "lightgbm"])
    def test_same_scores(self, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        """MASE and coverage agree on every window; SQL agrees wherever our clipping changed nothing.

        finalize_quantiles clips to the valid range (counts >= 0) and makes infinite bounds finite;
        the harness scores raw outputs. For actual values that are themselves >= 0, raising a
        negative p10 to 0 only lowers the pinball loss and leaves coverage as it was, so on the
        windows it touched our SQL is at most the harness's, and elsewhere it is equal.
        """
        pytest.importorskip("statsforecast")
        pytest.importorskip("mlforecast")
        from atomic_usage.models import anchors
        from atomic_usage.models.evaluate import evaluate, load_dataset

        bench = shared_dir / "bench" / "usagebench.py"
        windows_csv = tmp_path / "windows.csv"
        subprocess.run(
            [
                sys.executable,
                str(bench),
                "anchors",
                "--dataset",
                "nab",
                "--data-dir",
                str(shared_dir / "data" / "nab_aws"),
            ]
            + ["--limit-series", "4", "--horizons", "12", "--models", name]
            + ["--out-json", str(tmp_path / "h.jsonl"), "--out-windows", str(windows_csv)],
            check=True,
            capture_output=True,
        )
        touched: list[np.ndarray] = []
        finalize = anchors.finalize_quantiles

        def spy(fc: np.ndarray, bounded: np.ndarray) -> np.ndarray:
            raw = fc.copy()
            out = finalize(fc, bounded)
            touched.append(~(raw == out).all(axis=(1, 2)))  # NaN or inf in raw also count as touched
            return out

        monkeypatch.setattr(anchors, "finalize_quantiles", spy)
        series = load_dataset("nab", shared_dir / "data" / "nab_aws")[:4]
        (res,) = evaluate("nab", series, {name: anchors.ANCHORS[name]()}, horizons=[12])
        ours = res.per_window.assign(touched=np.concatenate(touched))  # rows in window order, as the calls
        ours = ours.sort_values(["id", "cutoff"]).reset_index(drop=True)
        ref = pd.read_csv(windows_csv).sort_values(["id", "cutoff"]).reset_index(drop=True)
        assert list(ours["id"]) == list(ref["id"]) and list(ours["cutoff"]) == list(ref["cutoff"])
        np.testing.assert_allclose(ours["mase"], ref["mase"], rtol=1e-6)
        np.testing.assert_allclose(ours["cov80"], ref["cov80"])
        same = ~ours["touched"]
        np.testing.assert_allclose(ours.loc[same, "sql"], ref.loc[same, "sql"], rtol=1e-6)
        assert (ours.loc[~same, "sql"] <= ref.loc[~same, "sql"] * (1 + 1e-6)).all()
        headline = json.loads((tmp_path / "h.jsonl").read_text().splitlines()[0])
        assert res.mase == pytest.approx(headline["mase"], rel=1e-6)
