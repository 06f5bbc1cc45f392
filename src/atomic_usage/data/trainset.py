"""Training sets: sources read, split honestly, and saved as Parquet.

A training set is a Parquet file with one row per (machine, metric) series::

    id: string, metric: string, start: timestamp[ns, UTC], step_s: double,
    split: string ("train" | "holdout"), values: list<float32> (NaN = missing)

Two rules keep evaluation honest. A fixed share of machines (1 in 5, chosen by a
hash of the id, so the choice never changes between runs) is marked ``holdout`` and
never trained on; and the last ``holdout_last`` of every series is cut off before
it is written, so forecasts scored there were never seen in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SchemaError
from .readers import read_gcd_dir, read_nab_dir, read_wide
from .regularize import RegularizeReport, regularize
from .windows import SeriesBank

__all__ = [
    "HOLDOUT_MODULUS",
    "build_trainset",
    "fingerprint",
    "is_holdout",
    "read_source",
    "read_trainset",
    "trainset_table",
    "write_trainset",
]

HOLDOUT_MODULUS = 5
"""One machine in HOLDOUT_MODULUS (by hash of its id) is held out of training entirely."""


def is_holdout(series_id: str) -> bool:
    """Whether a machine is in the fixed holdout share (a stable hash of its id).

    >>> is_holdout("vm_1218322450_1") in (True, False)
    True
    """
    return int(hashlib.sha256(series_id.encode()).hexdigest(), 16) % HOLDOUT_MODULUS == 0


def read_source(path: str | Path) -> pd.DataFrame:
    """Reads a data source by its shape: a GCD folder (``vm_*`` files), a NAB folder
    (``*.csv`` with ``timestamp,value``), or a wide CSV/Parquet file.

    Raises:
        SchemaError: the path does not exist or its shape is not recognised.
    """
    p = Path(path)
    if p.is_dir():
        if any(p.glob("vm_*")):
            return read_gcd_dir(p)
        if any(p.glob("*.csv")):
            return read_nab_dir(p)
        raise SchemaError(f"{p}: the folder holds neither GCD files (vm_*) nor NAB files (*.csv).", path=str(p))
    return read_wide(p)


def build_trainset(
    sources: Sequence[str | Path],
    *,
    holdout_last: Sequence[pd.Timedelta | str] = (),
    holdout_machines: Sequence[bool] = (),
    step: pd.Timedelta | str = "5min",
) -> tuple[SeriesBank, np.ndarray, list[RegularizeReport]]:
    """Reads, regularizes and splits sources into one bank of series.

    Args:
        sources: folders or files (see :func:`read_source`).
        holdout_last: per source (or one for all), how much of the end of every series to
            cut off, e.g. ``"4h"``; nothing is cut where empty.
        holdout_machines: per source (or one for all), whether its machines in the fixed
            holdout share (:func:`is_holdout`) are held out; default True for every source.
        step: the grid step.

    Returns:
        ``(bank, holdout, reports)``: the bank of series with their ends cut, a boolean per
        series saying whether its machine is in the holdout share, and the regularization
        report of each source.
    """
    for name, opt in (("--holdout-last", holdout_last), ("--holdout-machines", holdout_machines)):
        if opt and len(opt) not in (1, len(sources)):
            raise SchemaError(
                f"Give one {name} for all sources or one per source; got {len(opt)} for {len(sources)} sources."
            )
    banks, reports, holdouts = [], [], []
    for k, src in enumerate(sources):
        panel, report = regularize(read_source(src), step)
        cut = pd.Timedelta(holdout_last[k if len(holdout_last) > 1 else 0]) if holdout_last else pd.Timedelta(0)
        n_cut = int(cut / pd.Timedelta(step))
        if n_cut:
            panel = panel.truncate(np.maximum(panel.lengths - n_cut, 0))
        bank = SeriesBank.from_panel(panel)
        use = bool(holdout_machines[k if len(holdout_machines) > 1 else 0]) if holdout_machines else True
        holdouts.append(np.array([use and is_holdout(str(i)) for i in bank.ids], dtype=bool))
        banks.append(bank)
        reports.append(report)
    holdout = np.concatenate(holdouts) if holdouts else np.zeros(0, bool)
    return _concat(banks), holdout, reports


def _concat(banks: Sequence[SeriesBank]) -> SeriesBank:
    offs = [np.zeros(1, np.int64)]
    base = 0
    for b in banks:
        offs.append(b.offsets[1:] + base)
        base += int(b.offsets[-1])
    return SeriesBank(
        np.concatenate([b.values for b in banks]) if banks else np.zeros(0, np.float32),
        np.concatenate(offs),
        np.concatenate([b.ids for b in banks]) if banks else np.zeros(0, object),
        np.concatenate([b.metrics for b in banks]) if banks else np.zeros(0, object),
        np.concatenate([b.start for b in banks]) if banks else np.zeros(0, "datetime64[ns]"),
        banks[0].step_s if banks else 300.0,
    )


def trainset_table(bank: SeriesBank, holdout: np.ndarray) -> Any:
    """A bank as a pyarrow table in the training-set format (see the module docstring)."""
    import pyarrow as pa

    values = pa.ListArray.from_arrays(pa.array(bank.offsets.astype(np.int32)), pa.array(bank.values))
    return pa.table(
        {
            "id": pa.array(bank.ids.astype(str)),
            "metric": pa.array(bank.metrics.astype(str)),
            "start": pa.array(bank.start.astype("datetime64[ns]"), pa.timestamp("ns", tz="UTC")),
            "step_s": pa.array(np.full(len(bank), bank.step_s)),
            "split": pa.array(np.where(holdout, "holdout", "train")),
            "values": values,
        }
    )


def write_trainset(bank: SeriesBank, holdout: np.ndarray, path: str | Path) -> Path:
    """Writes a bank as a training-set Parquet file (see the module docstring).

    The file is written to a temporary name and moved into place, so a reader never
    sees half a file.
    """
    import pyarrow.parquet as pq

    table = trainset_table(bank, holdout)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


def read_trainset(path: str | Path) -> tuple[SeriesBank, np.ndarray]:
    """Reads a training-set Parquet file. The values are a zero-copy view of the Arrow buffer.

    Returns:
        ``(bank, holdout)`` as :func:`build_trainset` gives them.

    Raises:
        SchemaError: the file lacks a column of the training-set format.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        table = pq.read_table(p)
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{p}: cannot be read as a training set ({exc}).", path=str(p)) from None
    need = {"id", "metric", "start", "step_s", "split", "values"}
    if not need <= set(table.column_names):
        raise SchemaError(
            f"{p}: a training set needs the columns {sorted(need)}; found {table.column_names}.", path=str(p)
        )
    lists = table.column("values").combine_chunks()
    flat = lists.values.to_numpy(zero_copy_only=True)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    step = table.column("step_s").to_numpy()
    bank = SeriesBank(
        flat,
        offsets - offsets[0] if len(offsets) and offsets[0] else offsets,
        np.asarray(table.column("id").to_pylist(), object),
        np.asarray(table.column("metric").to_pylist(), object),
        table.column("start").to_numpy().astype("datetime64[ns]"),
        float(step[0]) if len(step) else 300.0,
    )
    holdout = np.asarray(table.column("split").to_pylist()) == "holdout"
    return bank, holdout


def fingerprint(bank: SeriesBank) -> str:
    """A SHA-256 over the bank's ids, metrics and values (identifies the training data)."""
    h = hashlib.sha256()
    for arr in (bank.ids.astype(str), bank.metrics.astype(str)):
        h.update("\0".join(arr.tolist()).encode())
    h.update(bank.offsets.tobytes())
    h.update(np.ascontiguousarray(bank.values).tobytes())
    return h.hexdigest()
