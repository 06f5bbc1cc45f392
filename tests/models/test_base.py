"""The long forecast frame's columns: the mean is estimated from the quantiles, not copied from p50."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from atomic_usage.data import generate_series, regularize
from atomic_usage.models.base import Forecaster, forecast_frame, mean_from_quantiles


class _Skewed(Forecaster):
    """A band that reaches further up than down: p10 = p50 - 2, p90 = p50 + 8 (clipped at 100)."""

    name = "skewed"

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        p50 = np.array([[np.nanmean(h)] * horizon for h in histories])
        return np.stack([p50 - 2, p50, np.minimum(p50 + 8, 100)], axis=1)


class TestMeanColumn:
    """`mean` is 0.3 p10 + 0.4 p50 + 0.3 p90 (Swanson's rule), kept within [p10, p90]."""

    def test_swanson_rule(self) -> None:
        """A skewed band moves the mean toward its long side; a symmetric one leaves it at the median."""
        got = mean_from_quantiles(np.array([10.0, 40.0]), np.array([20.0, 50.0]), np.array([50.0, 60.0]))
        assert got.tolist() == pytest.approx([26.0, 50.0])

    def test_kept_in_the_band_and_the_range(self) -> None:
        """Rounding never takes the mean past p90 (a series pinned at 100 stays at 100)."""
        hundred = np.full(5, 100.0)
        assert (mean_from_quantiles(hundred, hundred, hundred) == 100.0).all()
        rng = np.random.default_rng(0)
        q = np.sort(rng.uniform(0, 100, (3, 10_000)), axis=0)
        m = mean_from_quantiles(*q)
        assert (q[0] <= m).all() and (m <= q[2]).all()

    def test_unknown_band_gives_the_median(self) -> None:
        """Without p10/p90 (a short history) the mean is the median; without p50 it is null."""
        nan = np.array([np.nan, np.nan])
        assert mean_from_quantiles(nan, np.array([3.0, np.nan]), nan)[0] == 3.0
        assert np.isnan(mean_from_quantiles(nan, np.array([3.0, np.nan]), nan)[1])

    def test_frame_mean_is_not_p50(self) -> None:
        """In the file forecast, a skewed band's mean lies above its median, by Swanson's rule."""
        panel, _ = regularize(generate_series(2, n_steps=40, seed=4))
        out = forecast_frame(_Skewed(), panel, 6)
        want = 0.3 * out["p10"] + 0.4 * out["p50"] + 0.3 * out["p90"]
        np.testing.assert_allclose(out["mean"], want.clip(out["p10"], out["p90"]))
        assert (out["mean"] > out["p50"]).any()
