"""Shared fixtures: the public traces in ../shared (skipped when absent) and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the project; tests that need it skip on a user's clone."""
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is not beside the project (it is only on CI and development machines)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small network trained for a few seconds on generated series, exported to ONNX."""
    pytest.importorskip("torch")
    from atomic_usage.data import SeriesBank, generate_series, regularize
    from atomic_usage.models.artifact import ModelCard, save_artifact
    from atomic_usage.models.export import to_onnx
    from atomic_usage.models.neural import NeuralSpec
    from atomic_usage.models.train import TrainConfig, train_neural

    panel, _ = regularize(generate_series(20, n_steps=300, seed=3))
    bank = SeriesBank.from_panel(panel)
    holdout = np.zeros(len(bank), bool)
    holdout[:3] = True
    spec = NeuralSpec(context=48, horizon=24, hidden=32, layers=2)
    result = train_neural(bank, holdout, spec, TrainConfig(steps=60, batch_size=64, threads=1))
    card = ModelCard(
        name="tiny",
        version="test",
        created="2026-01-01T00:00:00Z",
        context_length=48,
        horizon=24,
        quantiles=[0.1, 0.5, 0.9],
        step_s=300,
        metrics=["cpuLoad"],
        normalization="test",
        spec=result.spec.to_dict(),
        validation=result.validation,
    )
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_artifact(out, to_onnx(result.network, result.spec), card)
    return out
