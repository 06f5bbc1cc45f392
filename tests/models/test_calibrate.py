"""Conformal factors for the served p10-p90 band."""

from __future__ import annotations

import numpy as np

from atomic_usage.data import SeriesBank, generate_series, regularize
from atomic_usage.models.baselines import Naive, PredictLinear
from atomic_usage.models.calibrate import apply_interval_scale, calibrate_intervals, served_interval_scale
from atomic_usage.models.ensemble import BacktestSelector


def _coverage(fc: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((y >= fc[:, 0]) & (y <= fc[:, 2])))


class TestCalibrateIntervals:
    """The factor per step that puts 80 % of outcomes inside."""

    def test_too_narrow_band_is_widened(self) -> None:
        """A band of +-0.64 sigma (about 48 % coverage) for Gaussian outcomes gets a factor near 2."""
        rng = np.random.default_rng(0)
        n, H = 20_000, 6
        y = rng.normal(0, 1, (n, H))
        pred = np.zeros((n, 3, H))
        pred[:, 0], pred[:, 2] = -0.64, 0.64
        f = calibrate_intervals(pred, y, np.ones((n, H)))
        assert np.allclose(f, 1.2816 / 0.64, rtol=0.05)
        fc = apply_interval_scale(pred.copy() + 50, f, np.ones(n, bool))
        assert abs(_coverage(fc, y + 50) - 0.80) < 0.01

    def test_steps_without_outcomes_take_the_previous_factor(self) -> None:
        """A step with fewer than 50 observed outcomes inherits its neighbour's factor."""
        rng = np.random.default_rng(1)
        y = rng.normal(0, 1, (500, 4))
        pred = np.zeros((500, 3, 4))
        pred[:, 0], pred[:, 2] = -1.0, 1.0
        mask = np.ones((500, 4))
        mask[:, 3] = 0
        f = calibrate_intervals(pred, y, mask)
        assert np.isfinite(f).all() and abs(f[3] - f[2]) < 0.2


class TestApply:
    """Scaling keeps p50 and the valid range."""

    def test_p50_kept_range_clipped_last_factor_extends(self) -> None:
        """p50 is untouched; steps past the factors use the last one; percents stay in 0-100."""
        fc = np.array([[[40.0] * 5, [50.0] * 5, [60.0] * 5]])
        out = apply_interval_scale(fc.copy(), np.array([1.0, 2.0, 6.0]), np.array([True]))
        assert out[0, 1].tolist() == [50.0] * 5
        assert out[0, 2].tolist() == [60.0, 70.0, 100.0, 100.0, 100.0]
        assert out[0, 0].tolist() == [40.0, 30.0, 0.0, 0.0, 0.0]
        assert apply_interval_scale(fc.copy(), np.ones(0), np.array([True])).tolist() == fc.tolist()


class TestServedScale:
    """Calibration of a whole served forecaster on the ends of its training series."""

    def test_coverage_lands_near_target_and_holdout_is_unused(self) -> None:
        """On generated series the served band covers about 80 % after calibration; held-out
        machines are not read."""
        panel, _ = regularize(generate_series(40, n_steps=3 * 288, seed=5))
        bank = SeriesBank.from_panel(panel)
        holdout = np.zeros(len(bank), bool)
        holdout[:9] = True
        sel = BacktestSelector([Naive(), PredictLinear()], backtest_max=12)
        f, report = served_interval_scale(sel, bank, holdout, 48)
        assert f.shape == (48,) and (f > 0).all()
        assert report["series"] == len(bank) - 9 and report["windows"] > 0
        assert abs(report["cov80_after"]["all"] - 0.80) < 0.03
        # nothing to calibrate on: no factors, nothing claimed
        f0, r0 = served_interval_scale(sel, bank, np.ones(len(bank), bool), 48)
        assert f0.shape == (0,) and r0 == {"windows": 0}
