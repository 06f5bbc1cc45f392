"""FleetHistory: per-step means in rings, equal to a plain dict of buckets whatever the order."""

from __future__ import annotations

import numpy as np

from atomic_usage.engine.history import FleetHistory
from atomic_usage.engine.payload import Observation


class TestFleetHistory:
    """The rings hold what a dict of (machine, metric, step) buckets would, window by window."""

    def test_matches_a_dict_of_buckets(self) -> None:
        """Random arrivals: next steps, jumps, repeats, late and too-old samples, new machines mid-way."""
        rng = np.random.default_rng(3)
        L, metrics = 24, ("cpuLoad", "memoryUsage", "storageUsage")
        h = FleetHistory(L)
        ref: dict[str, dict[tuple[str, int], list[float]]] = {}
        last: dict[str, int] = {}
        step = {f"m{i}": 100 for i in range(40)}
        for _ in range(3000):
            mid = f"m{int(rng.integers(0, 40))}"
            move = rng.choice([1, 1, 1, 0, 2, 5, -3, -30, 40])
            step[mid] = max(step[mid] + int(move), 0)
            b = step[mid]
            values = {m: float(rng.uniform(0, 100)) for m in metrics if rng.random() < 0.8} or {"cpuLoad": 1.0}
            h.append([Observation(0, mid, b * 300.0 + float(rng.uniform(0, 299)), values, True)])
            buckets = ref.setdefault(mid, {})
            if mid not in last or b > last[mid]:
                last[mid] = b
                for key in [k for k in buckets if k[1] <= b - L]:
                    del buckets[key]
            elif b <= last[mid] - L:
                continue
            for m, v in values.items():
                buckets.setdefault((m, b), []).append(v)
        ids = sorted(ref)
        got = h.contexts(ids, L, max_fill=0)
        for r, mid in enumerate(ids):
            want = np.full((len(metrics), L), np.nan)
            for (m, b), vs in ref[mid].items():
                want[metrics.index(m), b - (last[mid] - L + 1)] = np.mean(vs)
            np.testing.assert_allclose(got[r], want, rtol=1e-12, equal_nan=True)
        assert h.last_step(ids).tolist() == [last[m] * 300.0 for m in ids]
