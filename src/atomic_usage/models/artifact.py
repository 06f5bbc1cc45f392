"""Model folders: ``model.onnx`` plus ``model.json`` (the model card), written and read safely.

A folder may hold a second network, ``near.onnx``, that forecasts the first steps from a
short context (``model.json``'s ``near``; see :class:`~atomic_usage.models.neural.SplitHorizon`).

``model.json`` holds the format version, context length, horizon, quantiles, step, metrics,
normalization, the training data's fingerprint, validation scores and the command that
trained the model. A folder is written under a temporary name and renamed into place, so
a reader sees either the old model or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ArtifactError
from .base import Forecaster
from .baselines import BASELINES
from .ensemble import BacktestSelector
from .neural import NeuralForecaster, NeuralSpec, SplitHorizon

__all__ = [
    "FORMAT_VERSION",
    "SELECTIONS",
    "ModelCard",
    "default_model_dir",
    "load_forecaster",
    "load_model",
    "read_networks",
    "refuse_unknown_model",
    "save_artifact",
]

FORMAT_VERSION = 1
"""The model folder format this version reads and writes."""

SELECTIONS = ("after-near", "none", "backtest")
"""The values of ``serving.selection`` (see :class:`ModelCard`)."""


class ModelCard(BaseModel):
    """The contents of ``model.json``."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    name: str = Field(description="What the forecast's `model` column says.")
    version: str = Field(description="Identifies this trained model (a short hash of model.onnx).")
    created: str = Field(description="UTC time the model was trained.")
    context_length: int = Field(ge=1)
    horizon: int = Field(ge=1)
    quantiles: list[float]
    step_s: float = Field(gt=0)
    metrics: list[str] = Field(description="Metrics seen in training; any other metric is served too.")
    normalization: str
    spec: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict, description="command, data fingerprint, sources, time.")
    validation: dict[str, Any] = Field(default_factory=dict)
    near: dict[str, Any] = Field(
        default_factory=dict,
        description='The short-context network for the first steps, if any: {"file": "near.onnx", "spec": {...}, '
        '"version": ..., "validation": {...}}.',
    )
    serving: dict[str, Any] = Field(
        default_factory=dict,
        description='How to serve: {"selection": "backtest", "k": 3, "backtest_max": 12, "candidates": ["naive"], '
        '"interval_scale": [...]} serves each series with the network or a baseline, whichever backtested best '
        "on k stretches of at most backtest_max steps of that series' own history, and scales the p10/p90 "
        'distances from p50 by interval_scale per step (fit by `atomic-usage calibrate`); {"selection": "none", '
        '"interval_scale": [...]} serves every series with the networks, the band scaled the same way; '
        '"after-near" (with the same keys as "backtest") serves the first steps with the near network and '
        "chooses per series only for the steps after them.",
    )


def default_model_dir() -> Path:
    """The folder of the model bundled inside the package."""
    return Path(str(resources.files("atomic_usage.models") / "_default"))


def save_artifact(out_dir: str | Path, onnx_bytes: bytes, card: ModelCard, *, near_bytes: bytes | None = None) -> Path:
    """Writes a model folder atomically (replacing an existing one).

    Args:
        out_dir: the folder.
        onnx_bytes: the (long) network, written as ``model.onnx``.
        card: ``model.json``.
        near_bytes: the short-context network, written as ``card.near["file"]``; required
            when the card names one.

    Returns:
        The folder's path.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be read by all
    try:
        (tmp / "model.onnx").write_bytes(onnx_bytes)
        if card.near:
            if near_bytes is None:
                raise ArtifactError(f"{out}: model.json names {card.near.get('file')!r} but no network was given.")
            (tmp / _near_file(card, out)).write_bytes(near_bytes)
        (tmp / "model.json").write_text(json.dumps(card.model_dump(), indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_card(model_dir: str | Path) -> ModelCard:
    """Reads and checks ``model.json``.

    Raises:
        ArtifactError: the folder or a file is missing, or model.json is malformed.
    """
    d = Path(model_dir)
    card_path, onnx_path = d / "model.json", d / "model.onnx"
    for p in (card_path, onnx_path):
        if not p.is_file():
            raise ArtifactError(
                f"{d}: {p.name} is missing; a model folder holds model.onnx and model.json "
                "(make one with `atomic-usage train`).",
                path=str(d),
            )
    try:
        card = ModelCard.model_validate_json(card_path.read_text())
    except (ValidationError, ValueError) as exc:
        raise ArtifactError(
            f"{card_path}: model.json is malformed ({str(exc).splitlines()[0]}).", path=str(d)
        ) from None
    if card.near and not (d / _near_file(card, d)).is_file():
        raise ArtifactError(
            f"{d}: {_near_file(card, d)} is missing; model.json names it as the short-context network.", path=str(d)
        )
    if card.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{card_path}: format version {card.format_version} is not {FORMAT_VERSION}; "
            "retrain the model with this version of atomic-usage.",
            path=str(d),
        )
    return card


def load_model(model_dir: str | Path | None = None, *, threads: int = 0, raw: bool = False) -> Forecaster:
    """Loads a model folder (default: the bundled model) as a forecaster served by ONNX Runtime.

    Args:
        model_dir: a folder written by ``atomic-usage train``; None for the bundled model.
        threads: ONNX Runtime intra-op threads (0 = its default).
        raw: the network alone, without the per-series selection that ``model.json`` may ask for.

    Raises:
        ArtifactError: the folder is missing, incomplete or malformed.

    >>> load_model(raw=True).spec.horizon >= 12
    True
    """
    d = Path(model_dir) if model_dir is not None else default_model_dir()
    card = read_card(d)
    far = NeuralForecaster(d / "model.onnx", _spec(card.spec, d, "spec"), name=card.name, threads=threads)
    far.card = card  # type: ignore[attr-defined]
    model: Forecaster = far
    sel = card.serving.get("selection")
    if sel is not None and sel not in SELECTIONS:
        raise ArtifactError(
            f"{d}: unknown serving selection {sel!r} in model.json; use one of {', '.join(SELECTIONS)}.",
            path=str(d),
        )
    names = card.serving.get("candidates", ["naive"]) if sel in ("backtest", "after-near") else []
    unknown = [c for c in names if c not in BASELINES]
    if unknown:
        raise ArtifactError(
            f"{d}: unknown serving candidates {unknown} in model.json; use {sorted(BASELINES)}.", path=str(d)
        )
    k, backtest_max = int(card.serving.get("k", 3)), int(card.serving.get("backtest_max", 288))
    if card.near:
        near_spec = _spec(card.near.get("spec"), d, "near network")
        near = NeuralForecaster(d / _near_file(card, d), near_spec, name=card.name, threads=threads)
        # "after-near": the short network serves the first steps; after them each series gets
        # the long network or a baseline, whichever backtested best on that series.
        after: Forecaster = far
        if sel == "after-near" and not raw:
            after = BacktestSelector([far, *(BASELINES[c]() for c in names)], k=k, backtest_max=backtest_max)
        model = SplitHorizon(near, after)
    model.card = card  # type: ignore[attr-defined]
    if raw or not sel:
        return model
    # "backtest": the whole forecast is chosen per series; otherwise only the served band applies.
    return BacktestSelector(
        [model, *(BASELINES[c]() for c in (names if sel == "backtest" else []))],
        k=k,
        backtest_max=backtest_max,
        interval_scale=[float(f) for f in card.serving.get("interval_scale", [])],
    )


def _spec(d: Any, folder: Path, what: str) -> NeuralSpec:
    try:
        return NeuralSpec.from_dict(d)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{folder}: model.json's {what} is malformed ({exc}).", path=str(folder)) from None


def read_networks(model_dir: str | Path) -> tuple[bytes, bytes | None]:
    """The bytes of a folder's ``model.onnx`` and of its near network (None if it has none)."""
    d = Path(model_dir)
    card = read_card(d)
    near = (d / _near_file(card, d)).read_bytes() if card.near else None
    return (d / "model.onnx").read_bytes(), near


def _near_file(card: ModelCard, d: Path) -> str:
    name = str(card.near.get("file", "near.onnx"))
    if Path(name).name != name or not name.endswith(".onnx") or name == "model.onnx":
        raise ArtifactError(f"{d}: model.json's near file {name!r} must be a plain *.onnx name.", path=str(d))
    return name


def load_forecaster(ref: str | Path | None, *, threads: int = 0) -> Forecaster:
    """What a ``--model`` value names: a baseline (``naive``, ``seasonal_naive``,
    ``predict_linear``), a model folder, or the bundled model when None.

    Raises:
        ArtifactError: the folder is missing, incomplete or malformed.
    """
    from .baselines import BASELINES

    if isinstance(ref, str) and ref in BASELINES:
        return BASELINES[ref]()
    refuse_unknown_model(ref)
    return load_model(ref, threads=threads)


def refuse_unknown_model(ref: object) -> None:
    """Refuses a ``--model`` value that is neither a baseline nor an existing path, listing the
    baselines (and the one meant, for ``NAIVE``); anything else passes (a folder is read later).

    Raises:
        ArtifactError: ``ref`` names nothing.
    """
    from .baselines import BASELINES

    if not isinstance(ref, str | Path) or (isinstance(ref, str) and ref in BASELINES) or Path(ref).exists():
        return
    names = ", ".join(sorted(BASELINES))
    near = [b for b in BASELINES if b == str(ref).strip().lower()]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ArtifactError(
        f"{str(ref)!r} is neither a baseline ({names}) nor a model folder (no such file or folder){hint}",
        path=str(ref),
    )
