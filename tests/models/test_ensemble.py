"""Per-series selection by backtest."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atomic_usage.models.base import Forecaster, finalize_quantiles
from atomic_usage.models.baselines import Naive, PredictLinear
from atomic_usage.models.checks import check_forecaster
from atomic_usage.models.ensemble import BacktestSelector


class Constant(Forecaster):
    """Always forecasts the same value (a deliberately bad candidate)."""

    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        return finalize_quantiles(np.full((len(histories), 3, horizon), self.value), np.asarray(bounded))


class TestBacktestSelector:
    """Each series is served by the candidate that did best on its own history."""

    def test_picks_per_series(self) -> None:
        """A ramp goes to predict_linear, a series near 50 to the constant 50."""
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 60, 200)
        noisy = 50 + rng.normal(0, 5, 200)
        sel = BacktestSelector([Constant(50.0), PredictLinear()], k=3)
        choice = sel.choose([ramp, noisy], 12, np.array([True, True]))
        assert choice.tolist() == [1, 0]
        fc = sel.forecast_arrays([ramp, noisy], 12, np.array([True, True]))
        assert sel.fallback_flags([ramp, noisy]) == ["predict_linear", "constant"]
        assert fc[0, 1, 0] > 60 and fc[1, 1, 0] == 50.0

    def test_short_history_goes_to_the_first_candidate(self) -> None:
        """A history too short to backtest is served by the first candidate."""
        sel = BacktestSelector([Constant(7.0), Naive()], k=3)
        fc = sel.forecast_arrays([np.array([1.0, 2.0, 3.0])], 4, np.array([True]))
        assert fc[0, 1].tolist() == [7.0] * 4

    def test_uses_only_the_history(self) -> None:
        """The choice depends on the history alone: the same inputs give the same forecast."""
        h = np.sin(np.arange(300) / 10) * 10 + 50
        sel = BacktestSelector([Naive(), PredictLinear()])
        a = sel.forecast_arrays([h], 12, np.array([True]))
        assert np.array_equal(a, sel.forecast_arrays([h], 12, np.array([True])))

    def test_one_candidate_runs_no_backtest(self) -> None:
        """With a single candidate (serving selection "none") nothing is backtested: the candidate
        forecasts once, and only the served interval scale is applied."""
        calls: list[int] = []

        class Counting(Naive):
            def forecast_arrays(self, histories, horizon, bounded):  # type: ignore[no-untyped-def]
                calls.append(len(histories))
                return super().forecast_arrays(histories, horizon, bounded)

        h = 50 + np.random.default_rng(1).normal(0, 3, 100)
        sel = BacktestSelector([Counting()], interval_scale=[2.0] * 6)
        fc = sel.forecast_arrays([h], 6, np.array([True]))
        assert calls == [1]
        plain = Naive().forecast_arrays([h], 6, np.array([True]))
        np.testing.assert_allclose(fc[:, 1], plain[:, 1])
        np.testing.assert_allclose(fc[:, 2] - fc[:, 1], 2.0 * (plain[:, 2] - plain[:, 1]))

    def test_contract(self) -> None:
        """The selector passes the forecaster contract suite."""
        check_forecaster(BacktestSelector([PredictLinear(), Naive()]))

    def test_bundled_model_warms_up(self) -> None:
        """The bundled model, served through the selector, opens both networks' sessions on warm_up
        (as Dask workers do)."""
        from atomic_usage.models.artifact import default_model_dir, load_model

        if not (default_model_dir() / "model.onnx").exists():
            import pytest

            pytest.skip("no bundled model in this checkout")
        model = load_model()
        assert isinstance(model, BacktestSelector)
        model.warm_up()
        split = model.candidates[0]
        far = getattr(split.far, "candidates", [split.far])[0]  # the long network, maybe inside its selector
        assert split.near._session is not None and far._session is not None  # type: ignore[attr-defined]
