"""The GCD experiment that chose the short-context network's shape (docs/accuracy.md).

Run: ``PYTHONPATH=src python benchmarks/near_sweep.py --C 36 --hidden 512 --layers 3 --steps 4000 --fullscale 2``
(one line of JSON per run). Needs the ``train`` extra and ``../shared/data/gcd2011_vms``.

Validation (the default): the GCD VMs that training keeps (four in five, ``is_holdout``) are
split again by a second hash (``sha256(name + "#val") % 5 == 0``: the validation VMs). The
network is trained on steps before 180 of the other VMs, then forecasts origins 180, 192,
204, 216, 228 of the validation VMs (H = 12), scored as UsageBench scores (MASE, SQL,
coverage80; forecasts clipped to 0-100). No UsageBench window (cutoffs 240-276) and no
held-out VM is touched. ``--final 1`` instead trains on steps before 240 of every kept VM and
scores UsageBench's own gcd windows: that is the test, run once per kept design.

The network is an MLP over the last ``C`` steps, each window shifted by its last value and
divided by its mean absolute one-step change (floored at 1 % of its level and at 1e-3),
with the mask of missing steps; ``--fullscale 2`` adds the log ratio of that change to the
one of the whole history before the origin; ``--cross 1`` adds the machine's other metric,
normalized the same way. 30 % of the training windows have their older part masked.

Further options (docs/accuracy.md, "The loss in the metric's units"): ``--metricw 1`` weights
each window's loss by its scale over the whole history's mean change (clipped by ``--wclip``),
as the product's ``loss_weight="metric"`` does; ``--coarse K --block B`` adds the means of
the K blocks of B steps before the origin; ``--aug r|n|m`` adds time-reversed, mirrored or
pairwise-mean copies of the training series; ``--dropout``; ``--arch res`` (residual blocks
with layer norm); ``--bounds 1`` (the distances to 0 and 100 in units of the scale);
``--q50w W`` weights the p50 term of the loss W times the p10 and p90 ones; ``--ema D``
scores an exponential moving average of the weights (decay D) instead of the last ones;
``--dump F.npy`` saves the forecasts (windows in the scoring order) so that runs can be
averaged afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from atomic_usage.data.trainset import is_holdout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gcd2011_vms"
H = 12


def normalize(ctx: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalized values, mask, last value, scale and the window's own mean change, per row."""
    m = ~np.isnan(ctx)
    last = ctx[:, -1]
    d = np.abs(np.diff(ctx, axis=1))
    dm = m[:, 1:] & m[:, :-1]
    mad = np.where(dm, d, 0).sum(1) / np.maximum(dm.sum(1), 1)
    lev = np.where(m, np.abs(ctx), 0).sum(1) / np.maximum(m.sum(1), 1)
    sc = np.maximum(mad, np.maximum(1e-2 * lev, 1e-3))
    x = np.clip(np.where(m, (ctx - last[:, None]) / sc[:, None], 0), -clip, clip)
    return np.concatenate([x, m.astype(np.float64)], 1), last, sc, mad


def block_means(s: np.ndarray, ts: np.ndarray, k: int, b: int) -> np.ndarray:
    """Means of the ``k`` blocks of ``b`` steps before each origin in ``ts`` (newest first; NaN before the start)."""
    cs = np.concatenate([[0.0], np.cumsum(s)])
    out = np.full((len(ts), k), np.nan)
    for j in range(k):
        hi, lo = ts - b * j, ts - b * (j + 1)
        ok = lo >= 0
        out[ok, j] = (cs[hi[ok]] - cs[lo[ok]]) / b
    return out


def features(
    ctx: np.ndarray,
    other: np.ndarray | None,
    full: np.ndarray,
    args: argparse.Namespace,
    coarse: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The network's inputs, and last value, scale and whether the window moves."""
    x, last, sc, mad = normalize(ctx, args.clip)
    cols = [x]
    if coarse is not None:
        cm = ~np.isnan(coarse)
        cols += [
            np.clip(np.where(cm, (coarse - last[:, None]) / sc[:, None], 0), -args.clip, args.clip),
            cm.astype(np.float64),
        ]
    if args.bounds:  # distance to the bounds of a percent, in units of the window's scale
        cols.append(np.log1p(np.maximum(last, 0) / sc)[:, None])
        cols.append(np.log1p(np.maximum(100 - last, 0) / sc)[:, None])
    if args.fullscale:
        cols.append(np.log(np.maximum(mad, 1e-6) / np.maximum(full, 1e-6)).clip(-5, 5)[:, None])
    if other is not None:
        cols.append(normalize(other, args.clip)[0][:, : other.shape[1]])
    return np.concatenate(cols, 1).astype(np.float32), last, sc, mad > 0


def main() -> None:
    """Trains the networks and prints their scores as JSON."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, typ, default in [
        ("--C", int, 36),
        ("--hidden", int, 256),
        ("--layers", int, 2),
        ("--steps", int, 3000),
        ("--bs", int, 512),
        ("--lr", float, 1e-3),
        ("--cross", int, 0),
        ("--threads", int, 1),
        ("--final", int, 0),
        ("--clip", float, 30.0),
        ("--seed", int, 0),
        ("--fullscale", int, 0),
        ("--ens", int, 1),
        ("--wd", float, 1e-4),
        ("--metricw", int, 0),
        ("--coarse", int, 0),
        ("--aug", str, ""),
        ("--dropout", float, 0.0),
        ("--arch", str, "mlp"),
        ("--bounds", int, 0),
        ("--kind", int, 0),
        ("--block", int, 12),
        ("--wclip", float, 10.0),
        ("--ema", float, 0.0),
        ("--q50w", float, 1.0),
        ("--dump", str, ""),
    ]:
        ap.add_argument(name, type=typ, default=default)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    files = sorted(DATA.glob("vm_*"))
    names = [f.name for f in files]
    X = np.stack([np.loadtxt(f) for f in files]).astype(np.float64)  # (VMs, 288, 2)
    hold = np.array([is_holdout(n) for n in names])
    isval = np.array([int(hashlib.sha256((n + "#val").encode()).hexdigest(), 16) % 5 == 0 for n in names]) & ~hold
    C = a.C
    if a.final:
        train_v, end, eval_v, origins = ~hold, 240, np.ones(len(names), bool), [240, 252, 264, 276]
    else:
        train_v, end, eval_v, origins = ~hold & ~isval, 180, isval, [180, 192, 204, 216, 228]

    ctx_l, oth_l, tgt_l, full_l, co_l = [], [], [], [], []
    train_series = [(X[v, :end, mi], X[v, :end, 1 - mi]) for v in np.flatnonzero(train_v) for mi in range(2)]
    base = list(train_series)
    if "r" in a.aug:  # time reversed
        train_series += [(s[::-1].copy(), o[::-1].copy()) for s, o in base]
    if "n" in a.aug:  # mirrored in the range
        train_series += [(100.0 - s, 100.0 - o) for s, o in base]
    if "m" in a.aug:  # mean of two machines' series
        perm = rng.permutation(len(base))
        train_series += [((s + base[j][0]) / 2, (o + base[j][1]) / 2) for (s, o), j in zip(base, perm, strict=True)]
    kinds = np.tile([0, 1], len(train_series) // 2)  # cpu, memory (augmented copies keep their order)
    kind_l = []
    for (s, o), kd in zip(train_series, kinds, strict=True):
        kind_l.append(np.full(max(end - 4, 0), kd))
        if True:
            pad = np.concatenate([np.full(C, np.nan), s])
            padt = np.concatenate([s, np.full(H, np.nan)])
            pado = np.concatenate([np.full(C, np.nan), o])
            cs = np.concatenate([[0], np.cumsum(np.abs(np.diff(s)))])
            if a.coarse:
                co_l.append(block_means(s, np.arange(3, end - 1), a.coarse, a.block))
            for t in range(3, end - 1):  # origin t: the history is s[:t]
                full_l.append(cs[t - 1] / (t - 1))
                ctx_l.append(pad[t : t + C])
                oth_l.append(pado[t : t + C])
                tgt_l.append(padt[t : t + H])
    ctx, oth, tgt, full = np.array(ctx_l), np.array(oth_l), np.array(tgt_l), np.array(full_l)
    trunc = rng.random(len(ctx)) < 0.3
    keep = rng.integers(3, C + 1, len(ctx))
    cut = trunc[:, None] & (np.arange(C)[None, :] < (C - keep)[:, None])
    ctx[cut] = np.nan
    oth[cut] = np.nan
    coarse = np.concatenate(co_l) if a.coarse else None
    if coarse is not None:
        # the truncated windows lose their older history, blocks included
        coarse[trunc] = np.where(
            np.arange(a.coarse)[None, :] * a.block + a.block <= keep[trunc][:, None], coarse[trunc], np.nan
        )
    Fx, last, sc, _ = features(ctx, oth if a.cross else None, full, a, coarse)
    if a.kind:  # the metric as a one-hot input
        kind = np.concatenate(kind_l)
        Fx = np.concatenate([Fx, np.eye(2, dtype=np.float32)[kind]], 1)
    Y = (tgt - last[:, None]) / sc[:, None]
    M = (~np.isnan(Y)).astype(np.float32)
    Y = np.clip(np.nan_to_num(Y), -100, 100).astype(np.float32)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dims = [Fx.shape[1]] + [a.hidden] * a.layers
            blocks: list[torch.nn.Module] = []
            for i, j in zip(dims[:-1], dims[1:], strict=True):
                blocks += [torch.nn.Linear(i, j), torch.nn.GELU()]
                if a.dropout:
                    blocks.append(torch.nn.Dropout(a.dropout))
            self.body = torch.nn.Sequential(*blocks)
            self.head = torch.nn.Linear(dims[-1], 3 * H)
            if a.arch == "res":  # TiDE-style residual blocks with layer norm
                self.inp = torch.nn.Linear(Fx.shape[1], a.hidden)
                self.blocks = torch.nn.ModuleList(
                    torch.nn.Sequential(
                        torch.nn.Linear(a.hidden, a.hidden),
                        torch.nn.GELU(),
                        torch.nn.Dropout(a.dropout),
                        torch.nn.Linear(a.hidden, a.hidden),
                    )
                    for _ in range(a.layers)
                )
                self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(a.hidden) for _ in range(a.layers))
                del self.body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if a.arch == "res":
                h = self.inp(x)
                for blk, ln in zip(self.blocks, self.norms, strict=True):
                    h = ln(h + blk(h))
                o = self.head(h).view(-1, 3, H)
            else:
                o = self.head(self.body(x)).view(-1, 3, H)
            mid = o[:, 1]
            sp = torch.nn.functional.softplus
            return torch.stack([mid - sp(o[:, 0]), mid, mid + sp(o[:, 2])], 1)

    q = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1)
    qw = torch.tensor([1.0, a.q50w, 1.0]).view(1, 3, 1) * 3 / (2 + a.q50w)  # the p50 term's weight
    W = np.ones(len(Fx))
    if a.metricw:
        # weight each window by its scale over the metric's (the whole history's mean change), so
        # the loss is the metric's MASE/SQL up to the clip
        hist_lev = np.nanmean(np.abs(np.where(np.isnan(ctx), np.nan, ctx)), 1)
        full_eff = np.where(full > 0, full, 1e-8 + 1e-3 * np.nan_to_num(hist_lev))
        W = np.clip(sc / full_eff, 1 / a.wclip, a.wclip)
        W = W / W.mean()
    W_t = torch.from_numpy(W.astype(np.float32))
    Fx_t, Y_t, M_t = torch.from_numpy(Fx), torch.from_numpy(Y), torch.from_numpy(M)
    nets, t0 = [], time.time()
    for e in range(a.ens):
        torch.manual_seed(a.seed * 100 + e)
        rng_e = np.random.default_rng(a.seed * 100 + e)
        net = Net()
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
        avg = (
            torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema))
            if a.ema
            else None
        )
        for step in range(a.steps):
            fr = step / a.steps
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1, fr / 0.05) * 0.5 * (1 + np.cos(np.pi * fr)) + 1e-6
            idx = torch.from_numpy(rng_e.integers(0, len(Fx), a.bs))
            d = Y_t[idx][:, None, :] - net(Fx_t[idx])
            mw = M_t[idx] * W_t[idx][:, None]
            loss = (torch.maximum(q * d, (q - 1) * d) * qw * mw[:, None, :]).sum() / mw.sum() / 3
            opt.zero_grad()
            loss.backward()
            opt.step()
            if avg is not None:
                avg.update_parameters(net)
        nets.append((avg.module if avg is not None else net).eval())
    train_s = time.time() - t0

    rows, dumped = [], []
    for c in origins:
        for mi in range(2):
            vs = np.flatnonzero(eval_v)
            cx, co = np.full((len(vs), C), np.nan), np.full((len(vs), C), np.nan)
            for i, v in enumerate(vs):
                hh, oo = X[v, max(0, c - C) : c, mi], X[v, max(0, c - C) : c, 1 - mi]
                cx[i, C - len(hh) :], co[i, C - len(oo) :] = hh, oo
            fu = np.array([np.abs(np.diff(X[v, :c, mi])).mean() for v in vs])
            cz = (
                np.stack([block_means(X[v, :c, mi], np.array([c]), a.coarse, a.block)[0] for v in vs])
                if a.coarse
                else None
            )
            F, lv, s, moving = features(cx, co if a.cross else None, fu, a, cz)
            if a.kind:
                F = np.concatenate([F, np.tile(np.eye(2, dtype=np.float32)[mi], (len(F), 1))], 1)
            with torch.no_grad():
                p = np.mean([nt(torch.from_numpy(F)).numpy().astype(np.float64) for nt in nets], 0)
            fc = np.clip(np.sort(lv[:, None, None] + np.where(moving, s, 0)[:, None, None] * p, axis=1), 0, 100)
            dumped.append(fc)
            for j, v in enumerate(vs):
                h, y = X[v, :c, mi], X[v, c : c + H, mi]
                scale = np.abs(np.diff(h)).mean()
                scale = scale if scale > 0 else 1e-8 + np.abs(h).mean() * 1e-3
                f = fc[j]
                pin = [
                    np.mean(np.maximum(qq * (y - f[k]), (qq - 1) * (y - f[k]))) for k, qq in enumerate((0.1, 0.5, 0.9))
                ]
                rows.append(
                    (
                        np.abs(y - f[1]).mean() / scale,
                        np.mean(pin) * 2 / scale,
                        np.mean((y >= f[0]) & (y <= f[2])),
                        np.abs(y - np.clip(h[-1], 0, 100)).mean() / scale,
                        hold[v],
                    )
                )
    df = pd.DataFrame(rows, columns=["mase", "sql", "cov", "naive", "hold"])
    if a.dump:  # the forecasts, in the rows' order, to average runs afterwards
        np.save(a.dump, np.concatenate(dumped))
    out = {
        **vars(a),
        "train_s": round(train_s),
        "mase": round(df.mase.mean(), 4),
        "sql": round(df.sql.mean(), 4),
        "cov": round(df["cov"].mean(), 4),
        "naive": round(df.naive.mean(), 4),
        "held_out_mase": round(df[df.hold].mase.mean(), 4) if a.final else None,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
