"""Reproducible synthetic fleets: daily cycles, noise, bursts and disks that fill up.

The demo, the tests and the benchmarks use these so that the project ships no one
else's data. Every value is generated from the seed; nothing is sampled from real traces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["generate_series"]

_DAY = 288  # 5-minute steps per day


def generate_series(
    n_series: int,
    *,
    n_steps: int = 2 * _DAY,
    seed: int = 0,
    start: str = "2026-01-05T00:00:00Z",
    step: str = "5min",
    id_prefix: str = "vm-",
) -> pd.DataFrame:
    """A wide frame of ``n_series`` machines with cpuLoad, memoryUsage and storageUsage (percent).

    CPU follows a daily cycle with noise and occasional bursts; memory drifts slowly with a
    weaker cycle; storage grows steadily (some disks fill within a day, some never) with
    small clean-ups. Values lie in [0, 100].

    Args:
        n_series: machines to generate.
        n_steps: steps per machine.
        seed: random seed; the same seed gives the same frame.
        start: UTC timestamp of the first step.
        step: the step.
        id_prefix: ids are ``f"{id_prefix}{i:03d}"``.

    Returns:
        Columns ``id, timestamp, cpuLoad, memoryUsage, storageUsage``; ``n_series * n_steps`` rows.

    >>> df = generate_series(2, n_steps=3, seed=1)
    >>> list(df.columns), len(df)
    (['id', 'timestamp', 'cpuLoad', 'memoryUsage', 'storageUsage'], 6)
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)
    phase = rng.uniform(0, 2 * np.pi, (n_series, 1))
    day = np.sin(2 * np.pi * t / _DAY + phase)

    cpu_base = rng.uniform(5, 60, (n_series, 1))
    cpu_amp = rng.uniform(0, 25, (n_series, 1))
    cpu = cpu_base + cpu_amp * day + rng.normal(0, 1, (n_series, n_steps)) * rng.uniform(0.5, 6, (n_series, 1))
    bursts = rng.random((n_series, n_steps)) < 0.01
    # A burst lasts about 30 minutes: widen each burst start over the next 6 steps.
    burst_mask = np.zeros_like(bursts)
    for k in range(min(6, n_steps)):
        burst_mask[:, k:] |= bursts[:, : n_steps - k]
    cpu = np.where(burst_mask, cpu + rng.uniform(15, 40, (n_series, 1)), cpu)

    mem_base = rng.uniform(20, 80, (n_series, 1))
    mem_drift = rng.normal(0, 0.004, (n_series, 1))
    mem = mem_base + mem_drift * t + 3 * day + np.cumsum(rng.normal(0, 0.15, (n_series, n_steps)), axis=1)

    sto_base = rng.uniform(10, 70, (n_series, 1))
    # A third of disks fill (3 to 12 points a day, some reach 90 % within the series), the rest
    # creep or stay flat.
    fast = rng.random((n_series, 1)) < 0.33
    rate = np.where(fast, rng.uniform(0.01, 0.04, (n_series, 1)), rng.uniform(0, 0.003, (n_series, 1)))
    sto_base = np.where(fast, rng.uniform(50, 88, (n_series, 1)), sto_base)
    cleanup = np.cumsum(rng.random((n_series, n_steps)) < 0.002, axis=1) * rng.uniform(0, 5, (n_series, 1))
    sto = sto_base + rate * t - cleanup + rng.normal(0, 0.05, (n_series, n_steps))

    ts = pd.Timestamp(start) + pd.Timedelta(step) * t
    return pd.DataFrame(
        {
            "id": np.repeat([f"{id_prefix}{i:03d}" for i in range(n_series)], n_steps),
            "timestamp": np.tile(ts, n_series),
            "cpuLoad": np.clip(cpu, 0, 100).ravel().round(3),
            "memoryUsage": np.clip(mem, 0, 100).ravel().round(3),
            "storageUsage": np.clip(sto, 0, 100).ravel().round(3),
        }
    )
