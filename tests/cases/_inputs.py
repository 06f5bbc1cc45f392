"""The case inputs of ../shared/cases/README.md, generated here so the tests run without ../shared.

Each function returns the text of one case file, row for row as the shared copy
(5-minute steps from 2026-11-30T00:00:00Z; an empty cell is missing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

T0 = pd.Timestamp("2026-11-30T00:00:00Z")
STEP = pd.Timedelta(minutes=5)
HEADER = "id,timestamp,cpuLoad,memoryUsage,storageUsage"


def _ts(k: int) -> str:
    return (T0 + STEP * k).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(v: float | None) -> str:
    return "" if v is None else repr(round(float(v), 6))


def _rows(sid: str, steps: Iterable[int], f: Callable[[int], Sequence[float | None]]) -> list[str]:
    return [",".join([sid, _ts(k), *(_cell(v) for v in f(k))]) for k in steps]


def _csv(*blocks: list[str]) -> str:
    return "\n".join([HEADER, *(r for b in blocks for r in b)]) + "\n"


def c01() -> str:
    return _csv(
        _rows("vm-const", range(36), lambda k: (12.5, 42.0, 63.0)),
        _rows("vm-zero", range(36), lambda k: (0.0, 0.0, 0.0)),
    )


def _wave(k: int, mid: float, amp: float, phase: float = 0.0) -> float:
    return mid + amp * float(np.sin(2 * np.pi * k / 12 + phase))


def c03() -> str:
    a = _rows("vm-a", range(36), lambda k: (_wave(k, 40, 10), _wave(k, 55, 3, 2.1), 70 + 0.05 * k))
    b = _rows("vm-b", range(36), lambda k: (_wave(k, 25, 5, 1.0), 34.0 + 0.5 * float(np.cos(k)), 45.6))
    new = [f"vm-new,{_ts(34)},88.0,20.0,10.0", f"vm-new,{_ts(35)},0.0,20.0,10.0"]
    return _csv(a, b, new)


def c04() -> str:
    four = [(10.0, 40.0, 60.0), (12.0, 41.0, 60.0), (11.0, 42.0, 60.0), (13.0, 43.0, 60.0)]
    return _csv([f"vm-one,{_ts(0)},33.0,51.0,70.0"], _rows("vm-four", range(4), lambda k: four[k]))


def c05() -> str:
    return _csv(
        _rows("vm-nostore", range(24), lambda k: (_wave(k, 30, 5), _wave(k, 60, 2, 1.5), None)),
        _rows("vm-empty", range(6), lambda k: (None, None, None)),
    )


def c06() -> str:
    def f(k: int) -> tuple[float | None, ...]:
        if 20 <= k <= 25:
            return (None, None, None)
        return (19.0 if k % 2 == 0 else 21.0, 50 + 0.5 * k, 60.0)

    return _csv(_rows("vm-gap", range(48), f))


def c07() -> str:
    rows = _rows("vm-dup", range(24), lambda k: (30.0, 50 + 0.1 * k, 55.0))
    rows.insert(11, f"vm-dup,{_ts(10)},90.0,51.0,55.0")
    rows.insert(17, f"vm-dup,{_ts(15)},30.0,80.0,55.0")
    return _csv(rows)


def c08(seed: int = 8) -> str:
    rows = _rows("vm-sort", range(24), lambda k: (25.0 + k % 4, 45.0, 40 + 0.5 * k))
    order = np.random.default_rng(seed).permutation(len(rows))
    return _csv([rows[i] for i in order])


def c10() -> str:
    multi = _rows("vm-multicore", range(24), lambda k: (180.0 + 9 * k + 5 * (k % 2), 55.0, 40.0))
    mem = {7: -1.0, 16: 101.0}
    bad = _rows("vm-badmem", range(24), lambda k: (20.0, mem.get(k, 65 + 0.1 * k), 40.0))
    return _csv(multi, bad)


def c11() -> str:
    return _csv(
        _rows("vm-idle", range(24), lambda k: (6.0 - 0.25 * k, 30.0, 50.0)),
        _rows("vm-filling", range(24), lambda k: (40.0, 50.0, 90 + 0.4 * k)),
    )


def c13() -> str:
    return _csv(
        _rows("vm-flat", range(48), lambda k: (30.0, 50.0, 70.0)),
        _rows("vm-shrink", range(48), lambda k: (30.0, 50.0, 70.0 - 0.1 * k)),
    )


def c16(seed: int = 16) -> str:
    rng = np.random.default_rng(seed)
    cpu = np.clip(50 + 25 * rng.standard_normal(72), 1, 99)
    mem = np.clip(60 + 15 * rng.standard_normal(72), 1, 99)
    sto = 70 + 0.4 * rng.standard_normal(72)
    return _csv(_rows("vm-noisy", range(72), lambda k: (cpu[k], mem[k], sto[k])))


def c18() -> str:
    return json.dumps(
        {
            "usageData": [
                {"id": "vm-1", "cpuLoad": "NaN", "memoryUsage": 45.2, "storageUsage": 61.0},
                {"id": "vm-2", "cpuLoad": 12.0, "memoryUsage": "45.2", "storageUsage": None},
                {"id": "vm-3", "cpuLoad": "high", "memoryUsage": 30.0, "storageUsage": 20.0},
                {"id": "vm-4", "cpuLoad": 15.0, "memoryUsage": 31.0, "storageUsage": 22.0},
            ]
        },
        indent=2,
    )


def c20() -> str:
    return json.dumps(
        {
            "usageData": [
                {"id": f"vm-{i}", "cpuLoad": 10.0 + i, "memoryUsage": 40.0 + i, "storageUsage": 50.0 + i}
                for i in range(1, 6)
            ]
        },
        indent=2,
    )


CSV_CASES = {
    "C01": c01,
    "C03": c03,
    "C04": c04,
    "C05": c05,
    "C06": c06,
    "C07": c07,
    "C08": c08,
    "C10": c10,
    "C11": c11,
    "C13": c13,
    "C16": c16,
}
JSON_CASES = {"C18": c18, "C20": c20}
