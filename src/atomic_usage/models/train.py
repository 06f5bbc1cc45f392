"""Training the global neural forecaster on a bank of series (needs the ``train`` extra).

Windows are strided views into one padded copy of the training values: every origin of
every series is a window of ``context + horizon`` steps, missing context is masked, and
targets past a series' end or missing are left out of the pinball loss. The last
``val_frac`` of every training series is kept for validation; the interval is calibrated
there (one factor per forecast step, so 80 % of held-out outcomes fall inside p10–p90).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._types import QUANTILES
from ..data.windows import SeriesBank, make_windows
from .calibrate import calibrate_intervals, val_steps
from .neural import MIN_OBSERVED, NeuralSpec, build_network, prepare

__all__ = ["TrainConfig", "TrainResult", "near_config", "near_spec", "train_neural"]

ProgressFn = Callable[[int, int, float], None]
"""Called as progress(step, total_steps, last_loss)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (recorded in ``model.json``).

    Attributes:
        steps: optimizer steps.
        batch_size: windows per step.
        lr: peak learning rate (one-cycle schedule over the steps or the time budget).
        seed: random seed for initialization and sampling.
        val_frac: share of the end of every training series kept for validation.
        threads: torch threads (0 = all cores).
        time_budget_s: train for at most this many seconds (0 = no limit); the learning-rate
            schedule follows whichever of steps and time runs out first.
        truncate_share: share of training windows whose older history is masked at random,
            so the network meets every history length it may serve.
        loss_weight: ``"none"``, or ``"metric"``: each window's loss is weighted by its
            context's scale over the mean one-step change of the last ``ratio_window`` steps
            of its history (clipped to ``1/weight_clip .. weight_clip``), so the loss is
            scaled as UsageBench's MASE and SQL are (by the history's change, not the
            context's); needs a spec with ``ratio_window``.
        weight_clip: the bound on those weights.
    """

    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    val_frac: float = 0.1
    threads: int = 0
    time_budget_s: float = 0.0
    truncate_share: float = 0.5
    loss_weight: str = "none"
    weight_clip: float = 10.0


LOSS_WEIGHTS = ("none", "metric")
"""The choices of ``TrainConfig.loss_weight``."""


@dataclasses.dataclass
class TrainResult:
    """A trained network, its calibrated spec and the validation scores."""

    network: Any
    spec: NeuralSpec
    validation: dict[str, Any]
    seconds: float


class _Windows:
    """Origins over a padded copy of the bank, as views."""

    def __init__(
        self,
        bank: SeriesBank,
        keep: np.ndarray,
        spec: NeuralSpec,
        end_steps: np.ndarray,
        start_steps: np.ndarray,
    ) -> None:
        C, H = spec.context, spec.horizon
        parts, origins, firsts = [], [], []
        pos = 0
        for i in np.flatnonzero(keep):
            s = bank.series(int(i))[: end_steps[i]]
            parts += [np.full(C, np.nan, np.float32), s, np.full(H, np.nan, np.float32)]
            first = max(MIN_OBSERVED, start_steps[i])
            # window start w covers padded[w : w + C + H]; its origin (first forecast step) is series index w - pos
            if len(s) > first:
                origins.append(pos + np.arange(first, len(s)))
                firsts.append(np.full(len(s) - first, pos + C))
            pos += C + len(s) + H
        self.padded = np.concatenate(parts) if parts else np.zeros(C + H, np.float32)
        self.view = make_windows(self.padded, C + H)
        self.starts = np.concatenate(origins) if origins else np.zeros(0, np.int64)
        self.C = C
        self.R = spec.ratio_window
        if self.R:
            # Cumulative |one-step change| and counts over the padded array (NaN neighbours add
            # nothing), so any stretch's mean change is two look-ups.
            d = np.abs(np.diff(self.padded.astype(np.float64)))
            ok = ~np.isnan(d)
            self._cum_d = np.concatenate([[0.0], np.cumsum(np.where(ok, d, 0.0))])
            self._cum_n = np.concatenate([[0], np.cumsum(ok)])
            self._first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Context, target and (with a ratio window) the long mean change of origins ``idx``."""
        w = self.view[self.starts[idx]]  # the only copy: one mini-batch
        long_mad = None
        if self.R:
            end = self.starts[idx] + self.C  # padded index of the origin: the history is padded[..end]
            begin = np.maximum(self._first[idx], end - self.R)
            # changes between neighbours i, i+1 with begin <= i < end - 1
            s = self._cum_d[end - 1] - self._cum_d[begin]
            k = self._cum_n[end - 1] - self._cum_n[begin]
            long_mad = np.where(k > 0, s / np.maximum(k, 1), 0.0)
        return w[:, : self.C], w[:, self.C :], long_mad


def near_spec(context: int = 36, horizon: int = 12) -> NeuralSpec:
    """The short-context network's shape (``SplitHorizon``'s ``near``).

    Chosen on validation windows that end before UsageBench's cutoffs (``docs/accuracy.md``):
    three hidden layers of 512, and the ratio of the context's one-step change to that of the
    last day as one more input.
    """
    return NeuralSpec(context=context, horizon=horizon, hidden=512, layers=3, members=1, ratio_window=288)


def near_config(*, steps: int = 4000, seed: int = 0, time_budget_s: float = 0.0) -> TrainConfig:
    """The short-context network's optimization settings (the loss weighted as the metric is,
    chosen on validation windows: ``docs/accuracy.md``)."""
    return TrainConfig(
        steps=steps, batch_size=512, lr=1e-3, seed=seed, time_budget_s=time_budget_s, loss_weight="metric"
    )


def _one_cycle(done: float, peak: float, warmup: float = 0.1) -> float:
    """Learning rate at fraction ``done`` of training: linear warm-up, then cosine decay to 1 %."""
    if done < warmup:
        return peak * (0.04 + 0.96 * done / warmup)
    t = (done - warmup) / (1 - warmup)
    return float(peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(t, 1.0)))))


def _truncate_history(ctx: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """Masks the older part of the context of a random ``share`` of windows, keeping the last
    k steps, k uniform in [MIN_OBSERVED, context].

    Without it the network only ever sees the history lengths the training series happen to
    have (a 240-step trace never gives a window with more than 240 steps) and is out of its
    depth on a longer history at serving time.
    """
    n, C = ctx.shape
    pick = np.asarray(rng.random(n) < share)
    if not pick.any():
        return ctx
    keep = rng.integers(MIN_OBSERVED, C + 1, int(pick.sum()))
    cols = np.arange(C)[None, :]
    ctx = ctx.copy()
    rows = np.flatnonzero(pick)
    ctx[rows] = np.where(cols >= (C - keep)[:, None], ctx[rows], np.nan)
    return ctx


def _normalized_batch(
    ctx: np.ndarray, tgt: np.ndarray, spec: NeuralSpec, long_mad: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    inputs, state = prepare(ctx, clip=spec.input_clip, long_mad=long_mad)
    y = (tgt - state["loc"]) / state["input_scale"]
    mask = ~np.isnan(y)
    y = np.clip(np.nan_to_num(y), -100, 100).astype(np.float32)
    return inputs["x"], y, mask.astype(np.float32), state


def metric_weights(ctx: np.ndarray, long_mad: np.ndarray, clip: float) -> np.ndarray:
    """Per-window loss weights that turn a loss in units of the context's scale into one in
    units of the history's mean one-step change (UsageBench's MASE and SQL scale).

    A flat history's change is floored as the protocol floors it (a thousandth of its level).
    """
    return _weights(prepare(ctx)[1], long_mad, clip)


def _weights(state: dict[str, np.ndarray], long_mad: np.ndarray, clip: float) -> np.ndarray:
    """:func:`metric_weights` from the state :func:`prepare` already gave for the windows."""
    level = np.abs(state["loc"][:, 0]).astype(np.float64)
    hist = np.maximum(np.asarray(long_mad, np.float64), np.maximum(1e-3 * level, 1e-8))
    weights: np.ndarray = np.clip(state["input_scale"][:, 0] / hist, 1.0 / clip, clip).astype(np.float32)
    return weights


def _pinball(torch: Any, pred: Any, y: Any, mask: Any) -> Any:
    """Mean pinball loss of ``pred`` (members, n, 3, H) against ``y`` (n, H), averaged over members.

    ``mask`` (n, H) leaves missing targets out; a weighted mask weights windows (the mean is
    over the weights).
    """
    q = torch.tensor(QUANTILES, dtype=pred.dtype).view(1, 1, -1, 1)
    d = y[None, :, None, :] - pred
    loss = torch.maximum(q * d, (q - 1) * d) * mask[None, :, None, :]
    return loss.sum() / mask.sum().clamp(min=1e-6) / len(QUANTILES) / pred.shape[0]


def _predict_norm(torch: Any, net: Any, x: np.ndarray, bs: int = 4096) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), bs):
            outs.append(net(torch.from_numpy(x[a : a + bs])).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 3, 1), np.float32)


def _scores(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, H: int) -> dict[str, float]:
    p, yy, m = pred[:, :, :H], y[:, :H], mask[:, :H] > 0
    if not m.any():
        return {}
    d = np.abs(yy - p[:, 1])
    qs = np.asarray(QUANTILES)[None, :, None]
    pin = np.maximum(qs * (yy[:, None] - p), (qs - 1) * (yy[:, None] - p)).mean(1) * 2
    cov = (yy >= p[:, 0]) & (yy <= p[:, 2])
    return {
        "mae_scaled": float(d[m].mean()),
        "sql_scaled": float(pin[m].mean()),
        "cov80": float(cov[m].mean()),
    }


def _sample(n: int, rng: np.random.Generator, at_most: int = 50_000) -> np.ndarray:
    """All of ``n`` origins, or a sample of ``at_most`` of them."""
    return np.arange(n) if n <= at_most else rng.choice(n, at_most, replace=False)


def train_neural(
    bank: SeriesBank,
    holdout: np.ndarray,
    spec: NeuralSpec,
    config: TrainConfig = TrainConfig(),
    *,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Trains the network on the ``~holdout`` series of ``bank`` and calibrates its interval.

    Args:
        bank: the training series.
        holdout: bool per series; True series are never trained on (scored only).
        spec: network shape.
        config: optimization settings.
        progress: called after every step.

    Returns:
        The trained network (eval mode), the spec with ``interval_scale`` set, and
        validation scores (in units of each window's scale) on the training series' held-out
        ends and on the holdout machines.
    """
    import torch

    if config.loss_weight not in LOSS_WEIGHTS:
        raise ValueError(f"loss_weight must be one of {', '.join(LOSS_WEIGHTS)}, not {config.loss_weight!r}")
    if config.loss_weight == "metric" and not spec.ratio_window:
        raise ValueError("loss_weight='metric' needs a spec with ratio_window (the history's scale)")
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    lengths = bank.lengths
    n_val = val_steps(lengths, config.val_frac)
    train = ~np.asarray(holdout, bool)
    zeros = np.zeros(len(bank), np.int64)
    tr = _Windows(bank, train, spec, lengths - n_val, zeros)
    if len(tr) == 0:
        raise ValueError(
            f"No training windows: every series is held out or shorter than {MIN_OBSERVED + 1} steps; give more data."
        )
    val = _Windows(bank, train & (n_val > 0), spec, lengths, lengths - n_val)
    ho = _Windows(bank, ~train, spec, lengths, np.maximum(lengths - n_val, 0))

    net = build_network(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    net.train()
    loss_v = float("nan")
    t_train = time.perf_counter()
    ran = 0
    for step in range(config.steps):
        # One-cycle schedule over whichever runs out first, the steps or the time budget, so a
        # run stopped by the budget still ends with a small learning rate.
        done = step / config.steps
        if config.time_budget_s:
            done = max(done, (time.perf_counter() - t_train) / config.time_budget_s)
        if done >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = _one_cycle(done, config.lr)
        idx = rng.integers(0, len(tr), config.batch_size)
        ctx, tgt, long_mad = tr.batch(idx)
        ctx = _truncate_history(ctx, rng, config.truncate_share)
        x, y, m, state = _normalized_batch(ctx, tgt, spec, long_mad)
        if config.loss_weight == "metric" and long_mad is not None:
            m = m * _weights(state, long_mad, config.weight_clip)[:, None]
        pred = net.members_forward(torch.from_numpy(x))
        loss = _pinball(torch, pred, torch.from_numpy(y), torch.from_numpy(m))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        loss_v = float(loss.detach())
        ran += 1
        if progress:
            progress(step + 1, config.steps, loss_v)
    net.eval()

    validation: dict[str, Any] = {"final_loss": loss_v, "steps_run": ran}
    factors = np.ones(spec.horizon)
    if len(val):
        ctx, tgt, long_mad = val.batch(_sample(len(val), rng))
        x, y, m, _ = _normalized_batch(ctx, tgt, spec, long_mad)
        pred = _predict_norm(torch, net, x)
        validation["val_uncalibrated"] = {h: _scores(pred, y, m, h) for h in (12, spec.horizon)}
        factors = calibrate_intervals(pred, y, m)
        mid = pred[:, 1:2]
        cal = mid + (pred - mid) * factors[None, None, :]
        validation["val_calibrated"] = {h: _scores(cal, y, m, h) for h in (12, spec.horizon)}
    spec = dataclasses.replace(spec, interval_scale=tuple(float(round(f, 4)) for f in factors))
    if len(ho):
        ctx, tgt, long_mad = ho.batch(_sample(len(ho), rng))
        x, y, m, _ = _normalized_batch(ctx, tgt, spec, long_mad)
        pred = _predict_norm(torch, net, x)
        mid = pred[:, 1:2]
        cal = mid + (pred - mid) * factors[None, None, :]
        validation["holdout_machines"] = {h: _scores(cal, y, m, h) for h in (12, spec.horizon)}
    return TrainResult(net, spec, validation, time.perf_counter() - t0)
