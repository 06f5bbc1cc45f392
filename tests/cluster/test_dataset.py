"""Distributed `dataset build`: the same training set as the single-machine build, as parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atomic_usage.data import build_trainset, generate_series, read_trainset
from atomic_usage.errors import SchemaError

pytest.importorskip("distributed")

from atomic_usage.cluster import build_trainset_distributed  # noqa: E402


def _rows(bank, holdout) -> pd.DataFrame:
    return (
        pd.DataFrame(
            {
                "id": bank.ids.astype(str),
                "metric": bank.metrics.astype(str),
                "start": bank.start,
                "holdout": holdout,
                "values": [bank.series(i) for i in range(len(bank))],
            }
        )
        .sort_values(["id", "metric"])
        .reset_index(drop=True)
    )


class TestTrainsetEquality:
    """Series, starts, values, holdout flags and cuts match build_trainset's."""

    def test_two_sources_with_options(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """A Parquet and a CSV source, a per-source cut and holdout choice, read back as one set."""
        csv = tmp_path / "other.csv"
        generate_series(15, n_steps=100, seed=8, id_prefix="db-").to_csv(csv, index=False)
        sources = [str(messy_parquet), str(csv)]
        opts = {"holdout_last": ["1h", "30min"], "holdout_machines": [True, False]}
        job = build_trainset_distributed(client, sources, tmp_path / "ts", rows_per_bucket=2000, **opts)
        bank, holdout = read_trainset(tmp_path / "ts")
        want_bank, want_holdout, reports = build_trainset(sources, **opts)
        got, want = _rows(bank, holdout), _rows(want_bank, want_holdout)
        assert got[["id", "metric", "holdout"]].equals(want[["id", "metric", "holdout"]])
        assert (got["start"].to_numpy() == want["start"].to_numpy()).all()
        for a, b in zip(got["values"], want["values"], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert job.n_series == len(want_bank) and job.n_holdout == int(want_holdout.sum())
        assert job.reports[0]["duplicates"] == reports[0].duplicates
        assert job.reports[0]["unsorted_ids"] == reports[0].unsorted_ids

    def test_option_count_checked(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """Two --holdout-last values for one source is refused, as in the single-machine build."""
        with pytest.raises(SchemaError, match="one per source"):
            build_trainset_distributed(client, [messy_parquet], tmp_path / "ts", holdout_last=["1h", "2h"])
