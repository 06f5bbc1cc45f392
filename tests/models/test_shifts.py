"""Level-shift detection: the network reads a history from its current regime on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_usage.models import shifts
from atomic_usage.models.artifact import load_model
from atomic_usage.models.shifts import BAND, GRID, LOOK, MARGIN, MIN_AFTER, MIN_BEFORE, SHARE, regime_starts

DAY = 288


def _reference(h: np.ndarray) -> int:
    """The rule of models/shifts.py written one candidate at a time, for comparison."""
    n = len(h)
    first = n - LOOK
    for t in range(max(first, 0), n - MIN_AFTER + 1):
        g = first + ((t - first) // GRID) * GRID  # the band is recomputed every GRID starts
        before = h[max(0, g - BAND) : max(g, 0)]
        before = before[~np.isnan(before)]
        after = h[t:]
        after = after[~np.isnan(after)]
        if len(before) < MIN_BEFORE or len(after) < MIN_AFTER or np.isnan(h[t]):
            continue
        lo, hi = np.quantile(before, [0.02, 0.98])
        w = hi - lo
        up, down = hi + MARGIN * w, lo - MARGIN * w
        if (np.mean(after > up) >= SHARE and h[t] > up) or (np.mean(after < down) >= SHARE and h[t] < down):
            return t
    return 0


def _daily(days: float, seed: int = 0, level: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * DAY))
    return level + 15 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 1.5, len(t))


class TestRegimeStarts:
    """Which histories count as shifted, and from where."""

    def test_daily_cycle_is_not_a_shift(self) -> None:
        """Two days of band already hold both the peak and the trough of a daily cycle."""
        assert regime_starts([_daily(7, seed=s) for s in range(5)]).tolist() == [0] * 5

    def test_drop_in_the_last_steps(self) -> None:
        """An autoscaling group that falls from ~33 % to ~1 % four steps ago starts a new regime there."""
        h = np.r_[_daily(3, level=33.0) * 0.1 + 30, [1.3, 1.0, 1.0, 0.7]]
        assert regime_starts([h])[0] == len(h) - 4

    def test_step_up_hours_ago(self) -> None:
        """A sustained step up 100 steps ago, with noise, starts its regime at the step."""
        rng = np.random.default_rng(1)
        h = np.r_[6 + rng.normal(0, 0.3, 2 * DAY), 14 + rng.normal(0, 0.8, 100)]
        assert regime_starts([h])[0] == 2 * DAY

    def test_blips_are_not_shifts(self) -> None:
        """Two high values at the end, or an excursion that came back, keep the whole history."""
        base = _daily(3, seed=2)
        end_spike = np.r_[base, [200.0, 210.0]]
        came_back = base.copy()
        came_back[-120:-60] += 100
        assert regime_starts([end_spike, came_back]).tolist() == [0, 0]

    def test_short_empty_and_gappy_histories(self) -> None:
        """Histories too short to hold a band give 0; NaN gaps are skipped; an empty list is fine."""
        gappy = np.r_[6 + np.zeros(2 * DAY), np.full(20, np.nan), 14 + np.zeros(30)]
        out = regime_starts([np.arange(10.0), np.full(100, np.nan), gappy])
        assert out[0] == 0 and out[1] == 0 and out[2] == 2 * DAY + 20
        assert regime_starts([]).shape == (0,)

    def test_chunks_agree(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Histories are processed in chunks; the chunk size does not change any answer."""
        hs = [np.r_[_daily(2, seed=s), 90 + np.zeros(s + 3)] for s in range(9)]
        whole = regime_starts(hs)
        monkeypatch.setattr(shifts, "_CHUNK", 2)
        assert regime_starts(hs).tolist() == whole.tolist()

    @settings(max_examples=60, deadline=None)
    @given(
        n=st.integers(20, 1200),
        at=st.integers(1, 400),
        jump=st.floats(-50, 50),
        noise=st.floats(0.0, 5.0),
        gaps=st.integers(0, 30),
        seed=st.integers(0, 2**16),
    )
    def test_matches_the_rule_written_plainly(
        self, n: int, at: int, jump: float, noise: float, gaps: int, seed: int
    ) -> None:
        """The vectorized detector finds exactly the start a candidate-by-candidate loop finds."""
        rng = np.random.default_rng(seed)
        h = 50 + rng.normal(0, noise, n)
        h[max(0, n - at) :] += jump
        h[rng.integers(0, n, gaps)] = np.nan
        # The detector reads its windows as float32 (shifts.regime_starts): a jump finer than
        # float32 can hold (6e-8 on a flat 50, once drawn) is no jump to it. Both read those values.
        h = h.astype(np.float32).astype(np.float64)
        assert regime_starts([h])[0] == _reference(h)


class TestServedAfterAShift:
    """The bundled network reads only the new regime."""

    def test_forecast_stays_at_the_new_level(self) -> None:
        """After a drop that lasts, p50 stays near the new level instead of reverting to the old one."""
        rng = np.random.default_rng(0)
        h = np.r_[33 + rng.normal(0, 1.0, 3 * DAY), [1.3, 1.0, 1.0, 0.7]]
        fc = load_model(raw=True).forecast_arrays([h], 48, np.array([True]))[0]
        assert np.abs(fc[1] - 1.0).max() < 5.0
