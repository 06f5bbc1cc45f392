"""Scores a model on validation windows that end before UsageBench's cutoffs.

Run: ``PYTHONPATH=src python benchmarks/validation_scores.py MODEL [--raw]`` where MODEL is a
model folder, ``bundled`` or a baseline name (``naive``...). ``--raw`` serves the networks
without the folder's serving rules (selection and served band).

The windows (docs/accuracy.md, "Validation"):

* ``gcd``: forecast origins 180, 192, 204, 216 and 228 of every VM (H = 12); the VMs that
  training holds out (one in five, by hash) are reported apart. Their outcomes end at step
  240, the first UsageBench cutoff.
* ``nab``: cutoffs n - 8 d, n - 7 d, n - 6 d, n - 5 d (H = 12 and 288), the four days before
  UsageBench's first cutoff.

A model judged here must be trained on data that ends before these windows:
``atomic-usage train --data .../gcd2011_vms --holdout-last 9h --holdout-machines yes
--data .../nab_aws --holdout-last 8d2h --holdout-machines no ...``. Scores follow the
protocol (MASE, SQL and coverage80, means over windows).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atomic_usage._types import BOUNDED_METRICS
from atomic_usage.models.artifact import load_forecaster, load_model
from atomic_usage.models.base import Forecaster
from atomic_usage.models.evaluate import Window, load_dataset, score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DAY = 288
GCD_ORIGINS = (180, 192, 204, 216, 228)
NAB_DAYS_BACK = (8, 7, 6, 5)


def run(model: Forecaster, dataset: str, cutoffs: Callable[[int], list[int]], horizon: int) -> str:
    """One line of scores for ``model`` on ``dataset`` at ``cutoffs(series length)``."""
    folder = DATA / ("gcd2011_vms" if dataset == "gcd" else "nab_aws")
    series = load_dataset(dataset, folder)
    wins = [
        Window(s, c, horizon, rank)
        for s in series
        for rank, c in enumerate(cutoffs(len(s.values)))
        if c >= 2 and c + horizon <= len(s.values)
    ]
    bounded = np.array([w.series.metric in BOUNDED_METRICS for w in wins])
    pw = score(wins, model.forecast_arrays([w.history for w in wins], horizon, bounded))
    # Only GCD holds machines out of training; every NAB series is trained on (before the windows).
    seen, held = (pw[~pw["holdout"]], pw[pw["holdout"]]) if dataset == "gcd" else (pw, pw.iloc[:0])
    line = (
        f"{dataset} H={horizon}: MASE {seen.mase.mean():.3f}  SQL {seen.sql.mean():.3f}  cov80 {seen.cov80.mean():.3f}"
    )
    if dataset == "gcd" and len(held):
        line += (
            f"  | held-out VMs: MASE {held.mase.mean():.3f}  SQL {held.sql.mean():.3f}  cov80 {held.cov80.mean():.3f}"
        )
    return line


def main() -> None:
    """Prints the validation scores of one model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model folder, 'bundled', or a baseline name")
    ap.add_argument("--raw", action="store_true", help="the networks alone, without the serving rules")
    args = ap.parse_args()
    ref = None if args.model == "bundled" else args.model
    model = load_model(ref, raw=True) if args.raw else load_forecaster(ref)
    print(run(model, "gcd", lambda n: list(GCD_ORIGINS), 12), flush=True)
    for horizon in (12, 288):
        print(run(model, "nab", lambda n: [n - k * DAY for k in NAB_DAYS_BACK], horizon), flush=True)


if __name__ == "__main__":
    main()
