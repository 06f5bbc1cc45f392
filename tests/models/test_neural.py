"""The neural forecaster: trained with torch, exported to ONNX, served without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomic_usage.errors import ArtifactError
from atomic_usage.models.artifact import default_model_dir, load_model, read_card
from atomic_usage.models.checks import check_forecaster
from atomic_usage.models.neural import MIN_OBSERVED, prepare


class TestPrepare:
    """Per-window normalization."""

    def test_flat_window_has_zero_output_scale(self) -> None:
        """A window that never changes is forecast exactly at its level."""
        inputs, state = prepare(np.full((1, 10), 42.0))
        assert state["loc"][0, 0] == 42.0 and state["scale"][0, 0] == 0.0
        assert np.isfinite(inputs["x"]).all()

    def test_missing_values_are_masked(self) -> None:
        """NaN become 0 with a mask of 0; nothing non-finite reaches the network."""
        ctx = np.array([[np.nan, np.nan, 1.0, 2.0, np.nan, 4.0]])
        inputs, _ = prepare(ctx)
        x = inputs["x"][0]
        assert x[6:].tolist() == [0, 0, 1, 1, 0, 1] and np.isfinite(x).all()


class TestTinyModel:
    """A network trained in the test run, through its ONNX export."""

    def test_contract(self, tiny_model_dir: Path) -> None:
        """The ONNX-served model passes the forecaster contract suite."""
        check_forecaster(load_model(tiny_model_dir))

    def test_card(self, tiny_model_dir: Path) -> None:
        """model.json records the spec, the calibration and validation scores."""
        card = read_card(tiny_model_dir)
        assert card.context_length == 48 and card.horizon == 24
        assert len(card.spec["interval_scale"]) == 24
        assert "val_calibrated" in card.validation

    def test_short_history_is_flagged(self, tiny_model_dir: Path) -> None:
        """A history with fewer than MIN_OBSERVED values gets the naive forecast, named as such."""
        m = load_model(tiny_model_dir)
        hists = [np.array([5.0] * (MIN_OBSERVED - 1)), 15 + 5 * np.sin(np.arange(30.0))]
        assert m.fallback_flags(hists) == ["naive(short-history)", "tiny"]
        fc = m.forecast_arrays(hists, 6, np.array([True, True]))
        assert fc[0, 1].tolist() == [5.0] * 6

    def test_horizon_beyond_the_network(self, tiny_model_dir: Path) -> None:
        """Steps past the network's horizon continue from its last step, intervals widening."""
        m = load_model(tiny_model_dir)
        fc = m.forecast_arrays([np.linspace(10, 20, 60)], 40, np.array([True]))[0]
        assert fc.shape == (3, 40) and np.isfinite(fc).all()
        assert (fc[2, 30:] - fc[0, 30:]).min() >= (fc[2, 23] - fc[0, 23]) - 1e-9

    def test_inference_does_not_import_torch(self, tiny_model_dir: Path) -> None:
        """Serving needs only onnxruntime: loading and forecasting never import torch."""
        code = (
            "import sys, numpy as np; from atomic_usage.models.artifact import load_model; "
            f"m = load_model({str(tiny_model_dir)!r}); m.forecast_arrays([np.arange(50.)], 12, np.array([True])); "
            "print('torch' in sys.modules)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert res.stdout.strip() == "False"

    def test_broken_folder(self, tmp_path: Path, tiny_model_dir: Path) -> None:
        """A folder without model.onnx, or with a malformed model.json, is an ArtifactError."""
        with pytest.raises(ArtifactError, match="model.onnx is missing"):
            (tmp_path / "m").mkdir()
            (tmp_path / "m" / "model.json").write_text("{}")
            load_model(tmp_path / "m")
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "model.onnx").write_bytes((tiny_model_dir / "model.onnx").read_bytes())
        (bad / "model.json").write_text(json.dumps({"name": 1}))
        with pytest.raises(ArtifactError, match="malformed"):
            load_model(bad)


class TestBundledModel:
    """The model shipped inside the package."""

    def test_contract(self) -> None:
        """The bundled model loads and passes the contract suite."""
        if not (default_model_dir() / "model.onnx").exists():
            pytest.skip("no bundled model in this checkout (run `make model`)")
        check_forecaster(load_model())

    def test_card_records_how_it_was_trained(self) -> None:
        """model.json names the command and the data fingerprint, and the model is small."""
        d = default_model_dir()
        if not (d / "model.onnx").exists():
            pytest.skip("no bundled model in this checkout (run `make model`)")
        card = read_card(d)
        assert card.training["command"].startswith("atomic-usage train")
        assert len(card.training["data_fingerprint"]) == 64
        assert (d / "model.onnx").stat().st_size < 20 * 2**20


class TestTraining:
    """Training-time helpers."""

    def test_truncate_history_masks_only_the_older_part(self) -> None:
        """Masked windows keep a suffix of at least MIN_OBSERVED steps; the others are untouched."""
        from atomic_usage.models.train import _truncate_history

        ctx = np.arange(40, dtype=np.float32).reshape(4, 10) + 1
        out = _truncate_history(ctx, np.random.default_rng(0), 1.0)
        for row, orig in zip(out, ctx, strict=True):
            kept = ~np.isnan(row)
            first = int(np.argmax(kept))
            assert kept[first:].all() and kept.sum() >= MIN_OBSERVED
            assert np.array_equal(row[first:], orig[first:])
        assert np.array_equal(_truncate_history(ctx, np.random.default_rng(0), 0.0), ctx)
