"""Fixtures of the cluster tests: a real LocalCluster (2 worker processes) and a messy input file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def client() -> Iterator[object]:
    """A LocalCluster of two worker processes, one thread each, shared by the cluster tests."""
    pytest.importorskip("distributed")
    from atomic_usage.cluster import connect, parse_target

    with connect(parse_target("local:2", None)) as c:
        yield c


def messy_frame(n_series: int = 60, n_steps: int = 200, seed: int = 5) -> pd.DataFrame:
    """Generated series with rows shuffled, some dropped (gaps) and some repeated (duplicates)."""
    from atomic_usage.data import generate_series

    df = generate_series(n_series, n_steps=n_steps, seed=seed)
    rng = np.random.default_rng(seed)
    df = df[rng.random(len(df)) > 0.05]  # gaps, short and long
    df = pd.concat([df, df.sample(50, random_state=seed)])  # repeated timestamps
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # every id out of order


@pytest.fixture(scope="module")
def messy_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wide Parquet file of 60 messy series in many small row groups (so many input chunks)."""
    path = tmp_path_factory.mktemp("in") / "fleet.parquet"
    messy_frame().to_parquet(path, row_group_size=1500)
    return path


def write_grouped(df: pd.DataFrame, path: Path, ids_per_group: int) -> Path:
    """Writes ``df`` to Parquet with one row group per ``ids_per_group`` ids, as a fleet export
    written machine by machine does: consecutive ids in string order, rows within a group in
    ``df``'s order (here shuffled). The row groups' id ranges are therefore disjoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(df["id"].astype(str).unique())
    group_of = {sid: k // ids_per_group for k, sid in enumerate(ids)}
    groups = df["id"].astype(str).map(group_of).to_numpy()
    table = pa.Table.from_pandas(df, preserve_index=False)
    with pq.ParquetWriter(path, table.schema) as writer:
        for g in range(max(groups) + 1):
            writer.write_table(table.filter(pa.array(groups == g)))
    return path


@pytest.fixture(scope="module")
def grouped_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 60 messy series of ``messy_parquet``, one row group per 6 machines (10 row groups)."""
    return write_grouped(messy_frame(), tmp_path_factory.mktemp("in") / "grouped.parquet", 6)


def single_machine(path: Path, model: object, horizon: int) -> pd.DataFrame:
    """The single-machine path of `atomic-usage forecast`: read_wide, regularize, forecast_frame,
    with a series that has a bad value rejected (model ``error``) and the rest forecast."""
    from atomic_usage.data import read_wide, regularize
    from atomic_usage.models.base import forecast_frame

    issues: list = []
    panel, _ = regularize(read_wide(path, issues=issues))
    return forecast_frame(model, panel, horizon, issues=issues)  # type: ignore[arg-type]


def assert_same_forecast(got: pd.DataFrame, want: pd.DataFrame, atol: float = 1e-6) -> None:
    """Same rows (id, metric, timestamp, model) and values within ``atol``; no duplicated key."""
    key = ["id", "metric", "timestamp"]
    assert not got.duplicated(key).any(), "the distributed output holds duplicated rows"
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert len(got) == len(want)
    for c in ("id", "metric", "model"):
        assert got[c].astype(str).tolist() == want[c].astype(str).tolist(), c
    assert (got["timestamp"].to_numpy() == want["timestamp"].to_numpy()).all()
    for c in ("mean", "p10", "p50", "p90"):
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=0, atol=atol, err_msg=c)
