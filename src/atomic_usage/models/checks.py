"""The contract suite every forecaster must pass (after sklearn's ``check_estimator``).

``check_forecaster(model)`` runs each check and raises AssertionError naming the first
one that fails. The tests run it on every baseline, the torch-trained network through
ONNX, and the bundled model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import Forecaster

__all__ = ["CHECKS", "check_forecaster"]


def _call(model: Forecaster, hists: list[np.ndarray], H: int, bounded: bool | np.ndarray = True) -> np.ndarray:
    b = np.broadcast_to(np.asarray(bounded), (len(hists),)).copy()
    fc = model.forecast_arrays(hists, H, b)
    assert fc.shape == (len(hists), 3, H), f"shape {fc.shape} != {(len(hists), 3, H)}"
    return fc


def check_shape_and_finite(model: Forecaster) -> None:
    """Forecasts have shape (n, 3, H) and hold no NaN or infinity."""
    rng = np.random.default_rng(0)
    hists = [rng.uniform(0, 100, n) for n in (1, 2, 5, 50, 400)]
    for H in (1, 12, 30):
        fc = _call(model, hists, H)
        assert np.isfinite(fc).all(), "non-finite forecast"


def check_ordered_and_bounded(model: Forecaster) -> None:
    """p10 <= p50 <= p90, percents within [0, 100], counts >= 0, even for steep trends."""
    up = np.linspace(50, 99.5, 60)
    down = np.linspace(40, 0.5, 60)
    noisy = np.clip(np.random.default_rng(1).normal(50, 30, 200), 0, 100)
    fc = _call(model, [up, down, noisy], 24, True)
    assert (np.diff(fc, axis=1) >= 0).all(), "quantiles cross"
    assert (fc >= 0).all() and (fc <= 100).all(), "percent forecast outside [0, 100]"
    big = np.linspace(1e9, 1e6, 100)
    fc = _call(model, [big], 24, False)
    assert (fc >= 0).all() and (np.diff(fc, axis=1) >= 0).all(), "count forecast negative or crossing"


def check_constant_series(model: Forecaster) -> None:
    """A constant series is forecast as that constant (within 1e-6 of its scale), zero stays zero."""
    for level in (0.0, 12.5, 63.0, 100.0):
        fc = _call(model, [np.full(48, level)], 12)
        assert np.allclose(fc[0, 1], level, atol=1e-6 * max(1.0, level)), f"constant {level} -> {fc[0, 1, :3]}"
        assert (fc[0, 0] >= 0).all()


def check_deterministic_and_independent(model: Forecaster) -> None:
    """Repeated calls agree, and a series' forecast does not depend on its neighbours or their order."""
    rng = np.random.default_rng(2)
    hists = [rng.uniform(10, 90, n) for n in (30, 200, 7)]
    a = _call(model, hists, 12)
    b = _call(model, hists[::-1], 12)[::-1]
    c = _call(model, hists[:1], 12)
    assert np.allclose(a, b, atol=1e-5), "order of series changes forecasts"
    assert np.allclose(a[:1], c, atol=1e-5), "neighbours change a series' forecast"
    assert np.array_equal(a, _call(model, hists, 12)), "repeated calls differ"


def check_missing_values(model: Forecaster) -> None:
    """Histories with missing values (NaN) anywhere still give finite, ordered forecasts."""
    h = np.linspace(20, 40, 100)
    h[10:30] = np.nan
    h2 = np.full(50, np.nan)
    h2[-2:] = [5.0, 6.0]
    fc = _call(model, [h, h2], 12)
    assert np.isfinite(fc).all() and (np.diff(fc, axis=1) >= 0).all()


def check_empty_history(model: Forecaster) -> None:
    """An empty history is forecast as one without any observed value, and its neighbours as
    without it."""
    rng = np.random.default_rng(3)
    full = rng.uniform(10, 90, 120)
    fc = _call(model, [full, np.array([], np.float64), np.full(5, np.nan)], 12)
    assert np.isfinite(fc).all() and (np.diff(fc, axis=1) >= 0).all()
    assert np.array_equal(fc[1], fc[2]), "an empty history differs from one without values"
    assert np.allclose(fc[0], _call(model, [full], 12)[0], atol=1e-5), "an empty neighbour changes a forecast"


CHECKS: tuple[Callable[[Forecaster], None], ...] = (
    check_shape_and_finite,
    check_ordered_and_bounded,
    check_constant_series,
    check_deterministic_and_independent,
    check_missing_values,
    check_empty_history,
)
"""Every check, in the order :func:`check_forecaster` runs them."""


def check_forecaster(model: Forecaster) -> None:
    """Runs every check in :data:`CHECKS` on ``model``.

    Raises:
        AssertionError: naming the check that failed and why.
    """
    for check in CHECKS:
        try:
            check(model)
        except AssertionError as exc:
            raise AssertionError(f"{type(model).__name__} fails {check.__name__}: {exc}") from exc
