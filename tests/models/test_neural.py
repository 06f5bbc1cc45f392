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

    @pytest.mark.parametrize("content", [b"", b"not a network"], ids=["empty", "garbage"])
    def test_network_file_onnx_runtime_cannot_load(self, tmp_path: Path, tiny_model_dir: Path, content: bytes) -> None:
        """A model.onnx that ONNX Runtime cannot load is an ArtifactError naming the file (it was
        onnxruntime's own InvalidArgument, which a Dask worker's model plugin passed on as is)."""
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "model.json").write_bytes((tiny_model_dir / "model.json").read_bytes())
        (bad / "model.onnx").write_bytes(content)
        model = load_model(bad, raw=True)
        with pytest.raises(ArtifactError, match="ONNX Runtime cannot load the network") as info:
            model.warm_up()
        assert str(info.value).startswith(f"{bad / 'model.onnx'}: ") and info.value.path == str(bad)


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

    def test_a_network_of_another_shape_than_the_card_is_refused_at_warm_up(self, tmp_path: Path) -> None:
        """A folder whose networks load but are not the ones model.json describes (here swapped, as
        a half-copied retrain would leave them) is an ArtifactError at warm_up, naming the file: it
        passed warm_up, so serve said it was ready, and then failed every forecast with ONNX
        Runtime's own "Got invalid dimensions for input"."""
        import shutil

        src = default_model_dir()
        if not (src / "near.onnx").exists():
            pytest.skip("no bundled model in this checkout (run `make model`)")
        bad = tmp_path / "swapped"
        shutil.copytree(src, bad)
        (bad / "model.onnx").write_bytes((src / "near.onnx").read_bytes())
        (bad / "near.onnx").write_bytes((src / "model.onnx").read_bytes())
        model = load_model(bad)
        with pytest.raises(ArtifactError, match="does not match model.json") as info:
            model.warm_up()
        assert str(info.value).startswith(f"{bad / 'near.onnx'}: ") and info.value.path == str(bad)
        load_model(src).warm_up()  # the sound folder still warms up


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

    def test_long_change_per_origin_equals_a_direct_count(self) -> None:
        """The ratio input's long mean change at every origin is the mean |one-step change| of the
        last ``ratio_window`` steps of that series before the origin, gaps and series bounds kept."""
        import dataclasses

        from atomic_usage.data import SeriesBank
        from atomic_usage.models.neural import NeuralSpec, mean_abs_change
        from atomic_usage.models.train import _Windows

        rng = np.random.default_rng(1)
        series = [rng.normal(size=n).cumsum().astype(np.float32) for n in (30, 70, 5)]
        series[1][[10, 11, 40]] = np.nan
        offsets = np.cumsum([0] + [len(s) for s in series])
        bank = SeriesBank(
            np.concatenate(series),
            offsets,
            np.array(["a", "b", "c"]),
            np.array(["cpuLoad"] * 3),
            np.zeros(3, "datetime64[ns]"),
            300.0,
        )
        spec = dataclasses.replace(NeuralSpec(context=8, horizon=4), ratio_window=20)
        w = _Windows(bank, np.ones(3, bool), spec, bank.lengths, np.zeros(3, np.int64))
        idx = np.arange(len(w))
        ctx, _, long_mad = w.batch(idx)
        assert long_mad is not None and len(long_mad) == len(w)
        # origin o of series i: history series[i][:o]; rebuild each origin's history from the view
        pos, want = 0, []
        for s in series:
            for o in range(MIN_OBSERVED, len(s)):
                h = s[max(0, o - 20) : o]
                want.append(mean_abs_change(h[None, :])[0])
            pos += len(s)
        np.testing.assert_allclose(long_mad, want, rtol=1e-5, atol=1e-6)
        assert ctx.shape == (len(w), 8)

    def test_metric_weights_turn_the_loss_into_the_metrics_units(self) -> None:
        """Weighted by ``metric_weights``, an error in units of the context's scale is the same
        error in units of the history's mean change (UsageBench's scale), within the clip; a flat
        history is floored at a thousandth of its level, as the protocol floors it."""
        from atomic_usage.models.neural import prepare
        from atomic_usage.models.train import metric_weights

        rng = np.random.default_rng(2)
        ctx = np.stack([50 + rng.normal(0, sd, 12) for sd in (0.5, 2.0, 8.0)]).astype(np.float32)
        hist_change = np.array([1.0, 1.0, 1.0])
        w = metric_weights(ctx, hist_change, clip=10.0)
        scale = prepare(ctx)[1]["input_scale"][:, 0]
        err_units = 3.0  # |y - p| in units of each context's scale
        np.testing.assert_allclose(err_units * w, err_units * scale / hist_change, rtol=1e-5)
        assert w[0] < w[1] < w[2]
        # clipped both ways; a flat history (change 0) gets the floor, not a division by zero
        assert metric_weights(ctx[:1], np.array([1e6]), clip=10.0)[0] == pytest.approx(0.1)
        assert metric_weights(ctx[2:], np.array([0.0]), clip=10.0)[0] == pytest.approx(10.0)

    def test_metric_loss_weight_needs_the_history_scale(self) -> None:
        """loss_weight='metric' on a spec without ratio_window, or an unknown choice, is refused
        before any training."""
        pytest.importorskip("torch")
        from atomic_usage.data import SeriesBank, generate_series, regularize
        from atomic_usage.models.neural import NeuralSpec
        from atomic_usage.models.train import TrainConfig, train_neural

        bank = SeriesBank.from_panel(regularize(generate_series(2, n_steps=80, seed=1))[0])
        none = np.zeros(len(bank), bool)
        with pytest.raises(ValueError, match="ratio_window"):
            train_neural(bank, none, NeuralSpec(context=8, horizon=4), TrainConfig(steps=1, loss_weight="metric"))
        with pytest.raises(ValueError, match="loss_weight"):
            train_neural(bank, none, NeuralSpec(context=8, horizon=4), TrainConfig(steps=1, loss_weight="mase"))

    def test_weighted_training_runs_and_records_its_weighting(self) -> None:
        """A short network trains with the metric-weighted loss (finite loss, calibrated spec)."""
        pytest.importorskip("torch")
        from atomic_usage.data import SeriesBank, generate_series, regularize
        from atomic_usage.models.neural import NeuralSpec
        from atomic_usage.models.train import TrainConfig, train_neural

        bank = SeriesBank.from_panel(regularize(generate_series(6, n_steps=120, seed=4))[0])
        spec = NeuralSpec(context=12, horizon=4, hidden=16, layers=1, ratio_window=48)
        config = TrainConfig(steps=20, batch_size=32, threads=1, loss_weight="metric")
        result = train_neural(bank, np.zeros(len(bank), bool), spec, config)
        assert np.isfinite(result.validation["final_loss"]) and result.validation["steps_run"] == 20
        assert len(result.spec.interval_scale) == 4


class TestMembersAndSplit:
    """Averaged members in one graph, and the short network serving the first steps."""

    def test_members_average_in_order(self) -> None:
        """A 3-member network outputs the mean of its members, quantiles in order, exported as one graph."""
        torch = pytest.importorskip("torch")
        from atomic_usage.models.export import to_onnx
        from atomic_usage.models.neural import NeuralSpec, build_network

        spec = NeuralSpec(context=6, horizon=3, hidden=8, layers=1, members=3, ratio_window=12)
        net = build_network(spec).eval()
        x = torch.randn(5, spec.n_inputs)
        with torch.no_grad():
            each = net.members_forward(x)
            out = net(x)
        assert each.shape == (3, 5, 3, 3)
        torch.testing.assert_close(out, each.mean(0))
        assert (out[:, 0] <= out[:, 1]).all() and (out[:, 1] <= out[:, 2]).all()
        assert len(to_onnx(net, spec)) > 0  # the export check compares ONNX Runtime with torch

    def test_split_horizon(self, tiny_model_dir: Path) -> None:
        """The near network alone serves short horizons; beyond them it serves its first steps and
        the long network the rest."""
        from atomic_usage.models.neural import NeuralForecaster, NeuralSpec, SplitHorizon

        far = load_model(tiny_model_dir, raw=True)
        assert isinstance(far, NeuralForecaster)
        near = NeuralForecaster(far.onnx_path, far.spec, name="tiny")  # same graph, 24 steps; called for its first 6
        near.spec = NeuralSpec(**{**far.spec.to_dict(), "horizon": 6})  # type: ignore[arg-type]
        calls: list[int] = []
        orig = far.forecast_arrays

        def spy(h, H, b):  # type: ignore[no-untyped-def]
            calls.append(H)
            return orig(h, H, b)

        far.forecast_arrays = spy  # type: ignore[method-assign]
        split = SplitHorizon(near, far)
        hists = [15 + 5 * np.sin(np.arange(60.0) / 3), np.linspace(20, 30, 60)]
        b = np.array([True, True])
        short = split.forecast_arrays(hists, 4, b)
        assert calls == [] and short.shape == (2, 3, 4)
        np.testing.assert_array_equal(short, near.forecast_arrays(hists, 4, b))
        both = split.forecast_arrays(hists, 20, b)
        assert calls == [20]
        np.testing.assert_array_equal(both[:, :, :6], near.forecast_arrays(hists, 6, b))
        np.testing.assert_array_equal(both[:, :, 6:], orig(hists, 20, b)[:, :, 6:])
        assert split.spec is far.spec and split.fallback_flags(hists) == ["tiny", "linear(exact-history)"]

    def test_split_horizon_fades_the_gap_where_the_parts_meet(self, tiny_model_dir: Path) -> None:
        """Where the near network ends 5 points above the long one, the long one's next steps are
        moved by 4, 3, 2, 1 (a fade of 4 steps), the whole band with its median, and served as they
        are after that; a series whose near forecast is NaN there is not moved."""
        from atomic_usage.models.neural import NeuralForecaster, NeuralSpec, SplitHorizon

        far = load_model(tiny_model_dir, raw=True)
        assert isinstance(far, NeuralForecaster)
        near = NeuralForecaster(far.onnx_path, far.spec, name="tiny")  # the same graph, so the gap is the shift
        near.spec = NeuralSpec(**{**far.spec.to_dict(), "horizon": 6})  # type: ignore[arg-type]
        own = near.forecast_arrays

        def above(h, H, b):  # type: ignore[no-untyped-def]
            out = own(h, H, b) + 5.0
            out[2, :, -1] = np.nan
            return out

        near.forecast_arrays = above  # type: ignore[method-assign]
        hists = [15 + 5 * np.sin(np.arange(60.0) / 3), np.linspace(20, 30, 60), np.full(60, 40.0)]
        b = np.ones(3, bool)
        plain = far.forecast_arrays(hists, 20, b)
        out = SplitHorizon(near, far, fade=4).forecast_arrays(hists, 20, b)
        np.testing.assert_array_equal(out[:2, :, :6], above(hists, 6, b)[:2])
        moved = out[:2, :, 6:10] - plain[:2, :, 6:10]
        np.testing.assert_allclose(moved, np.broadcast_to([4.0, 3.0, 2.0, 1.0], (2, 3, 4)))
        np.testing.assert_array_equal(out[:2, :, 10:], plain[:2, :, 10:])
        np.testing.assert_array_equal(out[2, :, 6:], plain[2, :, 6:])
        unfaded = SplitHorizon(near, far, fade=0).forecast_arrays(hists, 20, b)
        np.testing.assert_array_equal(unfaded[:, :, 6:], plain[:, :, 6:])
        jump = np.abs(out[:2, 1, 6] - out[:2, 1, 5])
        # the jump at the seam shrinks by 4 of its 5 points
        assert (jump < np.abs(unfaded[:2, 1, 6] - unfaded[:2, 1, 5]) - 3).all()

    def test_split_horizon_fades_the_band_width_too(self, tiny_model_dir: Path) -> None:
        """Where the near network's band ends 5 points wider on each side than the long one's,
        the long one's p10 and p90 open by 4, 3, 2, 1 (a fade of 4 steps) while its median stays:
        the band does not pinch at the seam (a generated fleet's narrowed from 64 to 28 points)."""
        from atomic_usage.models.neural import NeuralForecaster, NeuralSpec, SplitHorizon

        far = load_model(tiny_model_dir, raw=True)
        assert isinstance(far, NeuralForecaster)
        near = NeuralForecaster(far.onnx_path, far.spec, name="tiny")
        near.spec = NeuralSpec(**{**far.spec.to_dict(), "horizon": 6})  # type: ignore[arg-type]
        own = near.forecast_arrays

        def wider(h, H, b):  # type: ignore[no-untyped-def]
            out = own(h, H, b)
            out[:, 0] -= 5.0
            out[:, 2] += 5.0
            return out

        near.forecast_arrays = wider  # type: ignore[method-assign]
        hists = [50 + 5 * np.sin(np.arange(60.0) / 3), np.linspace(45, 55, 60)]
        b = np.ones(2, bool)
        plain = far.forecast_arrays(hists, 20, b)
        out = SplitHorizon(near, far, fade=4).forecast_arrays(hists, 20, b)
        fade = np.array([4.0, 3.0, 2.0, 1.0])
        np.testing.assert_allclose(out[:, 0, 6:10] - plain[:, 0, 6:10], np.broadcast_to(-fade, (2, 4)))
        np.testing.assert_allclose(out[:, 1, 6:10], plain[:, 1, 6:10])
        np.testing.assert_allclose(out[:, 2, 6:10] - plain[:, 2, 6:10], np.broadcast_to(fade, (2, 4)))
        np.testing.assert_array_equal(out[:, :, 10:], plain[:, :, 10:])
        width, plain_width = out[:, 2] - out[:, 0], plain[:, 2] - plain[:, 0]
        # at the seam the width changes as the long network's does, less a fifth of the 10 points
        np.testing.assert_allclose(width[:, 6] - width[:, 5], plain_width[:, 6] - plain_width[:, 5] - 2.0)

    def test_split_horizon_names_what_served_the_later_steps(self, tiny_model_dir: Path) -> None:
        """Where a baseline served the steps after the near network's, ``model`` names both; a
        forecast the near network serves alone names it alone, and so does a pickled copy."""
        import pickle

        from atomic_usage.models.baselines import Naive
        from atomic_usage.models.ensemble import BacktestSelector
        from atomic_usage.models.neural import NeuralForecaster, NeuralSpec, SplitHorizon

        far = load_model(tiny_model_dir, raw=True)
        assert isinstance(far, NeuralForecaster)
        near = NeuralForecaster(far.onnx_path, far.spec, name="tiny")
        near.spec = NeuralSpec(**{**far.spec.to_dict(), "horizon": 6})  # type: ignore[arg-type]
        split = SplitHorizon(near, BacktestSelector([far, Naive()], k=2))
        rng = np.random.default_rng(0)
        hists = [40 + np.cumsum(rng.normal(0, s, 60)) for s in (0.2, 1.0, 3.0)]
        hists += [15 + 5 * np.sin(np.arange(60.0) / 3), np.linspace(20, 30, 60)]
        b = np.ones(len(hists), bool)
        split.forecast_arrays(hists, 20, b)
        own = far.fallback_flags(hists)
        later = [own[i] if c == 0 else "naive" for i, c in enumerate(split.far.choose(hists, 20, b))]
        assert "naive" in later and "tiny" in later  # both kinds are exercised
        first = near.fallback_flags(hists)
        assert split.fallback_flags(hists) == [a if a == z else f"{a}+{z}" for a, z in zip(first, later, strict=True)]
        walk = hists[later.index("naive")]
        assert split.fallback_flags(hists)[later.index("naive")] == "tiny+naive"
        copy = pickle.loads(pickle.dumps(split))
        copy.forecast_arrays([walk], 6, b[:1])
        assert copy.fallback_flags([walk]) == ["tiny"]

    def test_near_network_missing_or_malformed(self, tmp_path: Path, tiny_model_dir: Path) -> None:
        """A card naming a near network whose file is absent, or whose spec or file name is bad,
        is an ArtifactError naming the problem; nothing is half-loaded."""
        card = json.loads((tiny_model_dir / "model.json").read_text())
        spec = {**card["spec"], "horizon": 6}
        for near, message in [
            ({"file": "near.onnx", "spec": spec}, "near.onnx is missing"),
            ({"file": "../x.onnx", "spec": spec}, "must be a plain"),
            ({"file": "near.onnx", "spec": {"context": "many"}}, "near network is malformed"),
        ]:
            d = tmp_path / f"m{len(message)}"
            d.mkdir()
            (d / "model.onnx").write_bytes((tiny_model_dir / "model.onnx").read_bytes())
            if "missing" not in message:
                (d / "near.onnx").write_bytes((tiny_model_dir / "model.onnx").read_bytes())
            (d / "model.json").write_text(json.dumps({**card, "near": near}))
            with pytest.raises(ArtifactError, match=message):
                load_model(d).forecast_arrays([np.arange(60.0)], 12, np.array([True]))
