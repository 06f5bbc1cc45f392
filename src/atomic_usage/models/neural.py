"""The neural forecaster: features in numpy, the network in ONNX, quantiles back in units.

Inference never imports torch. One pass is::

    context (n, C) float32, NaN = missing or left padding
      -> prepare()   normalized values + mask (and the location/scale to undo it)
      -> ONNX graph  normalized p10/p50/p90 for H steps, monotone by construction
      -> finish()    back to units, calibrated interval, sorted, clipped to the valid range

The network itself (:func:`build_network`) needs the ``train`` extra and is used only by
:mod:`atomic_usage.models.train` and the ONNX export.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.windows import last_windows
from ..errors import ArtifactError
from .base import Forecaster, PerThreadCall, finalize_quantiles
from .baselines import naive_arrays
from .lines import exact_lines
from .shifts import regime_starts

__all__ = [
    "EXACT_LINE",
    "MIN_OBSERVED",
    "NeuralForecaster",
    "NeuralSpec",
    "SplitHorizon",
    "build_network",
    "finish",
    "mean_abs_change",
    "prepare",
]

MIN_OBSERVED = 3
"""Observed values a history needs for the network; shorter ones get the naive forecast, flagged."""

EXACT_LINE = "linear(exact-history)"
"""What the ``model`` column says for a sloped history continued exactly (see models/lines.py)."""

_CLIP = 30.0  # normalized inputs beyond +-30 scales carry no more information, only risk


@dataclasses.dataclass(frozen=True)
class NeuralSpec:
    """Hyperparameters of the network; stored in ``model.json``.

    Attributes:
        context: steps of history the network reads.
        horizon: steps it forecasts.
        hidden: width of the hidden layers.
        layers: hidden layers.
        quantiles: the quantile levels of the outputs.
        interval_scale: per forecast step, the factor applied to the p10 and p90 distances
            from p50, fit on held-out windows so that 80 % of outcomes fall inside (empty = 1).
        input_clip: normalized inputs are clipped to +-this many scales.
        members: networks of this shape trained side by side from different starting
            weights; the graph outputs their average.
        ratio_window: when > 0, one more input: the log ratio of the context's mean absolute
            one-step change to that of the last ``ratio_window`` steps of the history (how
            calm the recent past is against the longer one). 0 = no such input.
    """

    context: int = 288
    horizon: int = 288
    hidden: int = 512
    layers: int = 3
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    interval_scale: tuple[float, ...] = ()
    input_clip: float = _CLIP
    members: int = 1
    ratio_window: int = 0

    @property
    def n_inputs(self) -> int:
        """Width of the network's input ``x``."""
        return 2 * self.context + (1 if self.ratio_window else 0)

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuralSpec:
        """From :meth:`to_dict`'s output (unknown keys are ignored).

        Raises:
            ValueError: a size is not a whole number (at least 1; ``ratio_window`` at least 0).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        spec = cls(**kw)
        for field in ("context", "horizon", "hidden", "layers", "members", "ratio_window"):
            value, least = getattr(spec, field), 0 if field == "ratio_window" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{field} must be a whole number of at least {least}, not {value!r}")
        return spec


def prepare(
    context: np.ndarray, *, clip: float = _CLIP, long_mad: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Normalizes context windows for the network.

    Each window is shifted by its last observed value and divided by its mean absolute
    one-step change (floored, so flat series stay finite). A window that never changes has
    an output scale of zero: its forecast is exactly its level, with a zero-width interval.

    Args:
        context: float array (n, C), NaN = missing.
        clip: normalized values are clipped to +-clip.
        long_mad: optional (n,) mean absolute one-step change over a longer stretch of each
            history (:func:`mean_abs_change`); when given, ``log(window's / long_mad)`` is
            appended as one more input column.

    Returns:
        ``(inputs, state)``: ``inputs`` feeds the ONNX graph (``x``: (n, 2C [+1]) float32
        values and mask [and the scale ratio]), ``state`` holds ``loc`` and ``scale`` (n, 1)
        for :func:`finish`.
    """
    ctx = np.asarray(context, np.float32)
    mask = ~np.isnan(ctx)
    n, C = ctx.shape
    idx = np.where(mask, np.arange(C), -1)
    last_i = idx.max(axis=1)
    loc = np.where(last_i >= 0, ctx[np.arange(n), np.maximum(last_i, 0)], 0.0).astype(np.float32)
    mad = mean_abs_change(ctx)
    level = np.where(mask, np.abs(ctx), 0).sum(1) / np.maximum(mask.sum(1), 1)
    scale = np.maximum(mad, np.maximum(1e-2 * level, 1e-3)).astype(np.float32)
    x = np.where(mask, (ctx - loc[:, None]) / scale[:, None], 0.0)
    np.clip(x, -clip, clip, out=x)
    cols = [x, mask.astype(np.float32)]
    if long_mad is not None:
        ratio = np.log(np.maximum(mad, 1e-6) / np.maximum(np.asarray(long_mad, np.float64), 1e-6))
        cols.append(np.clip(ratio, -5.0, 5.0)[:, None])
    feats = np.concatenate(cols, axis=1).astype(np.float32)
    out_scale = np.where(mad > 0, scale, 0.0).astype(np.float32)
    return {"x": feats}, {"loc": loc[:, None], "scale": out_scale[:, None], "input_scale": scale[:, None]}


def mean_abs_change(windows: np.ndarray) -> np.ndarray:
    """Mean absolute one-step change of each row over its observed neighbours (0 if none)."""
    w = np.asarray(windows)
    d = np.abs(np.diff(w, axis=1))
    ok = ~np.isnan(d)
    n_d = ok.sum(1)
    return np.asarray(np.where(n_d > 0, np.where(ok, d, 0).sum(1) / np.maximum(n_d, 1), 0.0))


def finish(raw: np.ndarray, state: dict[str, np.ndarray], spec: NeuralSpec, bounded: np.ndarray) -> np.ndarray:
    """Maps normalized network outputs (n, 3, H) back to units, calibrated and clipped."""
    loc = state["loc"][:, :, None] if state["loc"].ndim == 2 else state["loc"]
    scale = state["scale"][:, :, None] if state["scale"].ndim == 2 else state["scale"]
    out = raw.astype(np.float64)
    if spec.interval_scale:
        f = np.asarray(spec.interval_scale, np.float64)[: out.shape[2]]
        mid = out[:, 1:2, :]
        out = mid + (out - mid) * f[None, None, :]
    out = loc + scale * out
    return finalize_quantiles(out, bounded)


def build_network(spec: NeuralSpec) -> Any:
    """The torch module for ``spec`` (needs the ``train`` extra).

    Input ``x`` (n, ``spec.n_inputs``); output (n, 3, H): p50 is free, p10 and p90 are p50
    minus / plus a softplus, so the quantiles never cross. With ``spec.members > 1`` the
    module holds that many such networks and outputs their average (still in order);
    ``members_forward`` gives each one's output, for training them side by side.
    """
    try:
        import torch
        from torch import nn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Training needs PyTorch: pip install 'atomic-usage[train]'") from exc

    class QuantileMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dims = [spec.n_inputs] + [spec.hidden] * spec.layers
            blocks: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                blocks += [nn.Linear(a, b), nn.GELU()]
            self.body = nn.Sequential(*blocks)
            self.head = nn.Linear(dims[-1], 3 * spec.horizon)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            o = self.head(self.body(x)).view(-1, 3, spec.horizon)
            mid = o[:, 1]
            lo = mid - nn.functional.softplus(o[:, 0])
            hi = mid + nn.functional.softplus(o[:, 2])
            return torch.stack([lo, mid, hi], dim=1)

        def members_forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward(x)[None]

    class Members(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList([QuantileMLP() for _ in range(spec.members)])

        def members_forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(x) for m in self.members])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.members_forward(x).mean(0)

    return Members() if spec.members > 1 else QuantileMLP()


class NeuralForecaster(Forecaster):
    """The global neural forecaster served with ONNX Runtime.

    Args:
        onnx_path: the ``model.onnx`` file.
        spec: the network's hyperparameters (from ``model.json``).
        name: what the ``model`` column says for its forecasts.
        threads: ONNX Runtime intra-op threads (0 = its default).
    """

    def __init__(self, onnx_path: str | Path, spec: NeuralSpec, *, name: str = "atomic", threads: int = 0) -> None:
        self.onnx_path = Path(onnx_path)
        self.spec = spec
        self.name = name
        self.threads = threads
        self._session: Any = None

    def _get_session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime's Fail, InvalidArgument, NoSuchFile... derive from Exception alone
                raise ArtifactError(
                    f"{self.onnx_path}: ONNX Runtime cannot load the network ({exc}); copy the model folder "
                    "again or retrain it with `atomic-usage train`.",
                    path=str(self.onnx_path.parent),
                ) from None
            self._check_shapes(session)
            self._session = session
        return self._session

    def _check_shapes(self, session: Any) -> None:
        """Refuses a network that loads but is not the one the spec describes (a folder whose
        model.json and networks come from different trainings, or whose networks were swapped):
        every forecast would fail in ONNX Runtime, after serve said it was ready."""
        inputs, outputs = session.get_inputs(), session.get_outputs()
        want_in, want_out = ["x", self.spec.n_inputs], ["q", 3, self.spec.horizon]
        got_in = [inputs[0].name, *inputs[0].shape[1:]] if len(inputs) == 1 else None
        got_out = [outputs[0].name, *outputs[0].shape[1:]] if outputs else None

        def fits(got: list[Any] | None, want: list[Any]) -> bool:
            # A named (dynamic) axis fits any size; the output's steps may be more than the spec's.
            if got is None or len(got) != len(want) or got[0] != want[0]:
                return False
            sizes = zip(got[1:], want[1:], strict=True)
            return all(not isinstance(g, int) or g == w or (k == 1 and g > w) for k, (g, w) in enumerate(sizes))

        if not (fits(got_in, want_in) and fits(got_out, want_out)):
            shown = ", ".join(f"{a.name} {a.shape}" for a in [*inputs, *outputs])
            raise ArtifactError(
                f"{self.onnx_path}: the network ({shown}) does not match model.json's spec (x [n, "
                f"{self.spec.n_inputs}], q [n, 3, {self.spec.horizon}]); copy the model folder again or "
                "retrain it with `atomic-usage train`.",
                path=str(self.onnx_path.parent),
            )

    def warm_up(self) -> None:
        """Opens the ONNX Runtime session now rather than in the first forecast.

        Raises:
            ArtifactError: ONNX Runtime cannot load the network file (empty, cut short, not ONNX).
        """
        self._get_session()

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle; workers open their own
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Per history: ``self.name`` where the network served it (or it was a constant, continued),
        ``naive(short-history)`` where it was too short, EXACT_LINE where an exact sloped line was
        continued."""
        enough = _n_observed(histories, self.spec.context) >= MIN_OBSERVED
        names = [self.name if ok else "naive(short-history)" for ok in enough.tolist()]
        idx, slope, _ = exact_lines(histories, 1, self.spec.context)
        for i in idx[slope != 0]:
            names[i] = EXACT_LINE
        return names

    def forecast_arrays(
        self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray, *, batch_size: int = 8192
    ) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`. Horizons beyond the network's are
        continued from its last step by the naive rule (its interval widening with sqrt of steps).
        Histories that are exact lines (constants included) are continued exactly in float64
        (:mod:`~atomic_usage.models.lines`)."""
        n = len(histories)
        H = min(horizon, self.spec.horizon)
        out = np.empty((n, 3, horizon), np.float64)
        bounded = np.asarray(bounded)
        short = np.flatnonzero(_n_observed(histories, self.spec.context) < MIN_OBSERVED).tolist()
        idx, _, lines = exact_lines(histories, horizon, self.spec.context)
        # Only the histories the network serves go through it (and the regime detector): a short
        # history or an exact line is answered by its rule below.
        rest = np.setdiff1d(np.arange(n), np.concatenate([np.asarray(short, np.int64), np.asarray(idx, np.int64)]))
        if len(rest):
            out[rest] = self._network(histories, rest, horizon, H, bounded[rest], batch_size)
        if short:
            out[short] = naive_arrays([np.asarray(histories[i], np.float64) for i in short], horizon)
        out[idx] = lines
        return finalize_quantiles(out, bounded)

    def _network(
        self, histories: Sequence[np.ndarray], rows: np.ndarray, horizon: int, H: int, bounded: np.ndarray, batch: int
    ) -> np.ndarray:
        """The network's forecast of ``histories[rows]``, continued past its horizon."""
        hists = [histories[int(i)] for i in rows]
        n = len(hists)
        out = np.empty((n, 3, horizon), np.float64)
        ctx = _current_regime(hists, last_windows(hists, self.spec.context))
        long_mad = mean_abs_change(last_windows(hists, self.spec.ratio_window)) if self.spec.ratio_window else None
        sess = self._get_session()
        for a in range(0, n, batch):
            b = min(n, a + batch)
            inputs, state = prepare(
                ctx[a:b], clip=self.spec.input_clip, long_mad=None if long_mad is None else long_mad[a:b]
            )
            raw = sess.run(None, inputs)[0][:, :, :H]
            out[a:b, :, :H] = finish(raw, state, self.spec, bounded[a:b])
        if horizon > H:
            last = out[:, :, H - 1 : H]
            grow = np.sqrt(np.arange(H + 1, horizon + 1) / H)[None, None, :]
            mid = last[:, 1:2]
            out[:, :, H:] = mid + (last - mid) * grow
        return out

    def __repr__(self) -> str:
        return f"NeuralForecaster({str(self.onnx_path)!r}, context={self.spec.context}, horizon={self.spec.horizon})"


class SplitHorizon(PerThreadCall, Forecaster):
    """Two networks, one forecast: the first steps from a short-context network, the rest
    from the long one.

    What happens in the next hour is best read from the last few hours at full resolution;
    what happens tomorrow needs the last day or more. One network asked to do both spends
    its inputs on the long view and its capacity on the far steps, and the near steps,
    which monitoring asks for most, come out no better than repeating the last value. So a
    small network with a short context (``near``) forecasts the first ``near.spec.horizon``
    steps, and the long network (``far``) the steps after them. A request for no more
    steps than ``near`` covers never runs ``far``.

    Args:
        near: the short-context network.
        far: the long-context network (or a forecaster serving it, such as a per-series
            selection between it and naive); its spec sizes the engine's history.

    The two parts seldom agree where they meet, and a forecast that jumps there (18 points
    on a generated fleet) reads as an event the history does not show; nor does a band that
    narrows from 64 to 28 points in one step. So, for each of p10, p50 and p90, the gap
    between ``near``'s last step and ``far``'s forecast of that step is carried into
    ``far``'s steps, fading linearly to nothing over ``fade`` steps (by default as many as
    ``near`` covers): the band starts where ``near``'s ends, and beyond the fade ``far`` is
    served as it is.

    The ``model`` of a forecast longer than ``near``'s steps names both parts where they
    differ: ``atomic+naive`` is the network for the first hour, then naive.
    """

    def __init__(self, near: NeuralForecaster, far: Forecaster, *, fade: int | None = None) -> None:
        self.near = near
        self.far = far
        self.fade = near.spec.horizon if fade is None else fade
        self.name = far.name
        self._local = threading.local()  # the horizon of the last call, per thread

    @property
    def spec(self) -> NeuralSpec:
        """The long network's spec (its context is the history the engine keeps)."""
        spec: NeuralSpec = getattr(self.far, "spec")  # noqa: B009 - a selector passes its network's spec on
        return spec

    def warm_up(self) -> None:
        """Opens both networks' sessions."""
        self.near.warm_up()
        self.far.warm_up()

    def fallback_flags(self, histories: Sequence[np.ndarray]) -> list[str]:
        """Who served each history in the last forecast: the near network's flags
        (:meth:`NeuralForecaster.fallback_flags`), joined by ``+`` to what served the steps
        after it where that was something else."""
        first = self.near.fallback_flags(histories)
        if getattr(self._local, "horizon", 0) <= self.near.spec.horizon:
            return first
        rest = self.far.fallback_flags(histories)
        return [a if a == b else f"{a}+{b}" for a, b in zip(first, rest, strict=True)]

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        """See :class:`~atomic_usage.models.base.Forecaster`."""
        k = self.near.spec.horizon
        self._local.horizon = horizon
        if horizon <= k:
            return self.near.forecast_arrays(histories, horizon, bounded)
        out = self.far.forecast_arrays(histories, horizon, bounded)
        first = self.near.forecast_arrays(histories, k, bounded)
        if self.fade > 0:
            gap = first[:, :, k - 1] - out[:, :, k - 1]  # (n, 3): each quantile's own gap
            w = np.clip(1 - np.arange(1, horizon - k + 1) / (self.fade + 1), 0, 1)
            out[:, :, k:] += np.nan_to_num(gap)[:, :, None] * w[None, None, :]
        out[:, :, :k] = first
        return finalize_quantiles(out, np.asarray(bounded))

    def __repr__(self) -> str:
        return f"SplitHorizon(near={self.near!r}, far={self.far!r}, fade={self.fade})"


def _current_regime(histories: Sequence[np.ndarray], ctx: np.ndarray) -> np.ndarray:
    """Masks the part of each context window older than its current regime (models/shifts.py)."""
    C = ctx.shape[1]
    lens = np.array([len(h) for h in histories], np.int64)
    cut = regime_starts(histories) - (lens - C)  # window columns before the regime's start
    if (cut > 0).any():
        ctx[np.arange(C)[None, :] < cut[:, None]] = np.nan
    return ctx


def _n_observed(histories: Sequence[np.ndarray], context: int) -> np.ndarray:
    """Observed values in each history's last ``context`` steps."""
    return np.asarray(np.count_nonzero(~np.isnan(last_windows(histories, context)), axis=1))
