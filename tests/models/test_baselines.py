"""Baselines against hand-computed values, and the contract every forecaster keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atomic_usage.errors import NotFittedError
from atomic_usage.models.base import FRAME_COLUMNS
from atomic_usage.models.baselines import DampedTrend, Naive, PredictLinear, SeasonalNaive, _nanquantile_rows
from atomic_usage.models.checks import check_forecaster

B = np.array([False])


class TestBaselines:
    """naive, seasonal naive and predict_linear on small series computed by hand."""

    def test_naive(self) -> None:
        """Last value; interval from the 10/90 % quantiles of 1-step differences."""
        fc = Naive().forecast_arrays([np.array([1.0, 3.0, 2.0, 4.0])], 1, B)[0]
        # diffs: 2, -1, 2 -> q10 = -0.4, q90 = 2
        assert fc[:, 0].tolist() == pytest.approx([3.6, 4.0, 6.0])

    def test_naive_band_past_the_first_hour_is_each_lags_quantiles_averaged_over_9(self) -> None:
        """Steps 1-12 are each lag's own 10/90 % quantiles of differences; from step 13 on, the mean
        of 9 neighbouring lags' (the last lag's repeated past the end): a noisy series' day-ahead
        band no longer zig-zags from one step to the next."""
        rng = np.random.default_rng(3)
        y = 50 + 10 * np.sin(np.arange(576) * 2 * np.pi / 288) + rng.normal(0, 3, 576)
        H = 288
        fc = Naive().forecast_arrays([y], H, B)[0]
        own = np.array([np.nanquantile(y[h:] - y[:-h], [0.1, 0.9]) for h in range(1, H + 1)]).T  # (2, H)
        np.testing.assert_allclose(fc[0, :12] - y[-1], np.minimum(own[0, :12], 0))
        np.testing.assert_allclose(fc[2, :12] - y[-1], np.maximum(own[1, :12], 0))
        padded = np.concatenate([own, np.repeat(own[:, -1:], 4, axis=1)], axis=1)
        mean9 = np.array([padded[:, h - 4 : h + 5].mean(axis=1) for h in range(12, H)]).T
        np.testing.assert_allclose(fc[0, 12:] - y[-1], np.minimum(mean9[0], 0))
        np.testing.assert_allclose(fc[2, 12:] - y[-1], np.maximum(mean9[1], 0))
        turns = np.sum(np.diff(np.sign(np.diff(fc[0, 12:]))) != 0)
        assert turns < np.sum(np.diff(np.sign(np.diff(own[0, 12:]))) != 0) / 2

    def test_naive_skips_missing_last_value(self) -> None:
        """A missing last value uses the last observed one."""
        fc = Naive().forecast_arrays([np.array([1.0, 5.0, np.nan])], 2, B)[0]
        assert fc[1].tolist() == [5.0, 5.0]

    def test_seasonal_naive(self) -> None:
        """Repeats the last season; falls back to naive when history is shorter than two seasons."""
        y = np.tile([1.0, 2.0, 3.0], 4)
        fc = SeasonalNaive(season=3).forecast_arrays([y], 5, B)[0]
        assert fc[1].tolist() == [1, 2, 3, 1, 2]
        assert fc[0].tolist() == fc[2].tolist() == [1, 2, 3, 1, 2]  # perfect seasonality: zero-width
        assert SeasonalNaive(season=3).forecast_arrays([y[:4]], 2, B)[0, 1].tolist() == [1.0, 1.0]

    def test_predict_linear(self) -> None:
        """Least squares over the window, extrapolated; exact on a line."""
        y = np.arange(20, dtype=float) * 2 + 1
        fc = PredictLinear(window=12).forecast_arrays([y], 3, B)[0]
        assert fc[1].tolist() == pytest.approx([41.0, 43.0, 45.0])
        assert fc[0].tolist() == pytest.approx(fc[1].tolist())

    def test_predict_linear_clips_at_zero(self) -> None:
        """A falling line is never forecast below 0, nor a percent above 100."""
        down = PredictLinear(window=4).forecast_arrays([np.array([3.0, 2.0, 1.0, 0.5])], 5, B)[0]
        assert (down >= 0).all() and down[1, -1] == 0.0
        up = PredictLinear(window=4).forecast_arrays([np.array([97.0, 98.0, 99.0, 99.5])], 5, np.array([True]))[0]
        assert (up <= 100).all() and up[1, -1] == 100.0

    @pytest.mark.parametrize(
        "model", [Naive(), SeasonalNaive(), SeasonalNaive(season=12), PredictLinear(), DampedTrend()]
    )
    def test_contract(self, model: object) -> None:
        """Every baseline passes the forecaster contract suite."""
        check_forecaster(model)  # type: ignore[arg-type]

    def test_sklearn_style_fit_predict(self) -> None:
        """predict before fit raises NotFittedError; after fit it returns the long format."""
        with pytest.raises(NotFittedError, match="fit"):
            Naive().predict(3)
        df = pd.DataFrame(
            {
                "id": "m",
                "timestamp": pd.date_range("2024-01-01", periods=4, freq="5min", tz="UTC"),
                "cpuLoad": [1.0, 2.0, 3.0, 4.0],
            }
        )
        out = Naive().fit(df).predict(2)
        assert list(out.columns) == list(FRAME_COLUMNS)
        assert out["timestamp"].tolist() == list(pd.date_range("2024-01-01 00:20", periods=2, freq="5min", tz="UTC"))
        assert out["p50"].tolist() == [4.0, 4.0] and set(out["model"]) == {"naive"}


class TestDampedTrend:
    """The damped trend offered after the first hour: a climb carried on, then levelling off."""

    def test_a_steady_climb_rises_less_and_less(self) -> None:
        """A disk filling 1 %/h: p50 rises every step, each step less than the one before, and
        stops short of the undamped line; the band is naive's, so it widens."""
        rng = np.random.default_rng(0)
        disk = 60 + np.arange(288) / 12 + rng.normal(0, 0.05, 288)
        fc = DampedTrend().forecast_arrays([disk], 288, np.array([True]))[0]
        step = np.diff(np.concatenate([[disk[-1]], fc[1]]))
        assert (step[1:] > 0).all() and (np.diff(step[1:]) < 0).all()
        assert 90 < fc[1, -1] < disk[-1] + 288 / 12
        nv = Naive().forecast_arrays([disk], 288, np.array([False]))[0]
        np.testing.assert_allclose(np.minimum(fc[1] + (nv[2] - nv[1]), 100), fc[2], atol=1e-9)
        assert fc[2, -1] - fc[1, -1] > fc[2, 0] - fc[1, 0]  # wider a day out than 5 minutes out
        assert (fc <= 100).all()

    def test_flat_and_short_histories_are_naive(self) -> None:
        """No slope, no trend: a flat history and one shorter than the window get naive's forecast."""
        flat = np.full(100, 70.0)
        short = np.linspace(10, 20, 30)
        got = DampedTrend().forecast_arrays([flat, short], 24, np.array([True, True]))
        want = Naive().forecast_arrays([flat, short], 24, np.array([True, True]))
        np.testing.assert_allclose(got, want)

    def test_a_falling_series_stays_in_range(self) -> None:
        """A shrinking disk keeps falling, more and more slowly, and never below 0."""
        fc = DampedTrend().forecast_arrays([np.linspace(20, 2, 200)], 288, np.array([True]))[0]
        assert fc[1, 0] < 2 and (np.diff(fc[1]) <= 0).all() and (fc >= 0).all()

    def test_a_burst_that_ended_neither_lifts_nor_tilts_the_line(self) -> None:
        """Flat load with a 30-minute burst to +40 that ended 35 minutes ago: the line starts at the
        load's level and stays flat (least squares over the same steps started 5.6 points above the
        last value and climbed; a fresh-clone user saw the day-ahead forecast jump 14 points)."""
        rng = np.random.default_rng(1)
        load = 55 + rng.normal(0, 2, 200)
        load[-13:-7] += 40
        slope, level = DampedTrend().line([load])
        assert abs(slope[0]) < 0.05 and abs(level[0] - 55) < 1.5
        fc = DampedTrend().forecast_arrays([load], 288, np.array([True]))[0]
        assert abs(fc[1, 0] - 55) < 1.5 and abs(fc[1, -1] - 55) < 5

    def test_a_daily_cycle_is_not_carried_to_0_or_100(self) -> None:
        """CPU cycling 25-75 % every day, on its steep rise: the day-long fit sees no trend, so the
        rise is not carried on (it reached 100 % within the day, and the fall 0 %, at p50 and the
        band's edge alike), while the level stays where the series is now."""
        t = np.arange(576)
        for phase in (0.0, np.pi):  # rising, falling at the last step
            cpu = 50 + 25 * np.sin(2 * np.pi * t / 288 + phase - 2 * np.pi * 575 / 288)
            slope, level = DampedTrend().line([cpu])
            assert slope[0] == 0.0 and abs(level[0] - cpu[-1]) < 3  # the 6-hour line's level
            fc = DampedTrend().forecast_arrays([cpu], 288, np.array([True]))[0]
            assert np.allclose(fc[1], level[0]) and (fc[1] > 20).all() and (fc[1] < 80).all()
            assert abs(DampedTrend(long_window=0).line([cpu])[0][0]) > 0.3  # the 6-hour fit alone climbs

    def test_missing_steps_in_the_window_are_left_out(self) -> None:
        """Gaps inside the fitted steps are skipped, and a window with no value at all is naive's."""
        climb = 40 + np.arange(120) * 0.1
        holed = climb.copy()
        holed[-50:-20] = np.nan
        slope, level = DampedTrend().line([climb, holed])
        np.testing.assert_allclose(slope, [0.1, 0.1], atol=1e-9)
        np.testing.assert_allclose(level, [climb[-1]] * 2, atol=1e-9)
        empty = np.concatenate([np.full(10, 30.0), np.full(80, np.nan)])
        got = DampedTrend().forecast_arrays([empty], 12, np.array([True]))
        np.testing.assert_allclose(got, Naive().forecast_arrays([empty], 12, np.array([True])))

    def test_phi_out_of_range_is_refused(self) -> None:
        with pytest.raises(ValueError, match="phi"):
            DampedTrend(phi=1.5)
        with pytest.raises(ValueError, match="window"):
            DampedTrend(window=1)
        with pytest.raises(ValueError, match="long_window"):
            DampedTrend(window=72, long_window=36)


class TestNanQuantileRows:
    """The vectorised row quantiles are np.nanquantile's numbers, bit for bit."""

    def test_equals_numpy_bit_for_bit(self) -> None:
        """Random rows: gaps, ties, empty rows, single values, tiny and huge scales."""
        import warnings

        rng = np.random.default_rng(0)
        for trial in range(200):
            k, L = int(rng.integers(1, 30)), int(rng.integers(1, 200))
            a = rng.normal(0, rng.choice([1e-6, 1.0, 100.0, 1e9]), (k, L))
            if trial % 3 == 0:
                a = np.round(a, 1)  # ties
            a[rng.random((k, L)) < rng.random()] = np.nan
            a[0] = np.nan if trial % 5 == 0 else a[0]
            qs = [0.1, 0.9] if trial % 2 else [0.05, 0.5, 0.95]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                want = np.nanquantile(a, qs, axis=1).T
            np.testing.assert_array_equal(_nanquantile_rows(a, qs), want)


class TestFallbackLabels:
    """A row's ``model`` and ``reason`` say what served it, not the model that was asked."""

    @staticmethod
    def _forecast(model: object, n: dict[str, int]) -> pd.DataFrame:
        from atomic_usage.data import regularize
        from atomic_usage.models.base import forecast_frame

        t0 = pd.Timestamp("2026-01-01T00:00:00Z")
        rows = [(sid, t0 + pd.Timedelta(minutes=5 * k), 10.0 + 2 * k) for sid, m in n.items() for k in range(m)]
        panel, _ = regularize(pd.DataFrame(rows, columns=["id", "timestamp", "cpuLoad"]))
        return forecast_frame(model, panel, 2).drop_duplicates("id").set_index("id")  # type: ignore[arg-type]

    def test_seasonal_naive_short_of_a_season_says_naive(self) -> None:
        """The user's case: seasonal_naive on 10 steps served the last value as ``seasonal_naive``
        with an empty reason. It is ``naive(short-season)`` with a ``short season`` reason."""
        out = self._forecast(SeasonalNaive(season=6), {"short": 7, "long": 8})
        assert out.loc["short", "model"] == "naive(short-season)" and out.loc["short", "p50"] == 22.0
        assert out.loc["short", "reason"].startswith("short season: cpuLoad of id 'short' has 7 step(s)")
        assert out.loc["long", "model"] == "seasonal_naive" and out.loc["long", "reason"] == ""

    def test_predict_linear_short_of_its_window_says_naive(self) -> None:
        """predict_linear repeats the last value below its window, and says so."""
        out = self._forecast(PredictLinear(window=5), {"short": 4, "long": 5})
        assert out.loc["short", "model"] == "naive(short-window)" and out.loc["short", "p50"] == 16.0
        assert out.loc["short", "reason"].startswith("short window: cpuLoad of id 'short'")
        assert out.loc["long", "model"] == "predict_linear" and out.loc["long", "p50"] == 20.0

    @pytest.mark.parametrize("model", [Naive(), SeasonalNaive(), PredictLinear(window=2)])
    def test_two_points_are_naive_short_history(self, model: object) -> None:
        """Fewer than 3 values, whatever the model: the last value, named ``naive(short-history)`` as
        docs/data-rules.md promises (it was labelled seasonal_naive/naive/predict_linear, and
        predict_linear continued the line through the two points)."""
        out = self._forecast(model, {"two": 2})
        assert out.loc["two", "model"] == "naive(short-history)" and out.loc["two", "p50"] == 12.0
        assert np.isnan(out.loc["two", "p10"]) and out.loc["two", "reason"].startswith("short history")
