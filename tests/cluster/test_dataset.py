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


def _write(df: pd.DataFrame, path: Path) -> None:
    """A wide frame as CSV or Parquet, by the path's suffix."""
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)


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


class TestBadValues:
    """A bad value fails the distributed build as it fails build_trainset, with the same message."""

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_far_out_percent_rejected(self, client, tmp_path: Path, suffix: str) -> None:
        """A per-core sum (cpuLoad 180) is refused on both paths with the same words; the cluster
        clipped it to 100 and built the set."""
        df = generate_series(6, n_steps=40, seed=3)
        sid = df["id"].iloc[70]
        df.loc[df.index[df["id"] == sid][[3, 9]], "cpuLoad"] = 180.0
        path = (tmp_path / f"fleet{suffix}").resolve()
        _write(df, path)
        with pytest.raises(SchemaError) as one:
            build_trainset([path])
        with pytest.raises(SchemaError) as many:
            build_trainset_distributed(client, [path], tmp_path / "ts")
        assert str(many.value) == str(one.value)
        assert str(one.value).startswith(f"{path}: cpuLoad of id {sid!r} is 180.0 at ")
        assert "(2 value(s) far outside 0 to 100 (percent))" in str(one.value)
        assert not (tmp_path / "ts" / "_SUCCESS").exists()

    def test_small_overshoot_still_clipped(self, client, tmp_path: Path) -> None:
        """A percent just above 100 (monitoring overshoot) is clipped on both paths, as before."""
        df = generate_series(4, n_steps=30, seed=3)
        df.loc[df.index[:3], "cpuLoad"] = 104.0
        path = tmp_path / "fleet.csv"
        df.to_csv(path, index=False)
        build_trainset_distributed(client, [path], tmp_path / "ts")
        bank, _ = read_trainset(tmp_path / "ts")
        assert max(float(np.nanmax(bank.series(i))) for i in range(len(bank))) <= 100.0

    def test_mixed_column_fails_as_build_trainset(self, client, tmp_path: Path) -> None:
        """A column with text only in its first row group and numbers in the others: build_trainset
        refuses the text cell; the cluster ignored the column in that chunk and built the set."""
        df = generate_series(6, n_steps=40, seed=3)
        df["value"] = df["cpuLoad"].round(1).astype(str)
        df.loc[df.index[:60], "value"] = "high"
        path = (tmp_path / "fleet.parquet").resolve()
        df.to_parquet(path, row_group_size=60)
        with pytest.raises(SchemaError) as one:
            build_trainset([path])
        with pytest.raises(SchemaError) as many:
            build_trainset_distributed(client, [path], tmp_path / "ts", rows_per_bucket=60)
        assert str(many.value) == str(one.value)
        assert "holds a non-numeric value 'high' (row 1 of the file, " in str(one.value)


class TestNoRows:
    """A wide source without data rows fails the distributed build as it fails build_trainset."""

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_named(self, client, tmp_path: Path, suffix: str) -> None:
        """A header-only file: the single build names it; the cluster's split task crashed on it."""
        path = (tmp_path / f"empty{suffix}").resolve()
        df = generate_series(2, n_steps=10, seed=3).head(0)
        _write(df, path)
        with pytest.raises(SchemaError) as one:
            build_trainset([path])
        with pytest.raises(SchemaError) as many:
            build_trainset_distributed(client, [path], tmp_path / "ts")
        assert str(many.value) == str(one.value) and "holds no rows" in str(one.value)
        assert not (tmp_path / "ts" / "_SUCCESS").exists() and not (tmp_path / "ts" / "_scratch").exists()


class TestFolders:
    """The distributed build removes only what it made."""

    def test_scratch_and_output_apart_from_the_user_files(self, client, tmp_path: Path) -> None:
        """A --scratch folder of the user's keeps its files; an output folder holding the source is refused."""
        path = tmp_path / "part-00000.parquet"
        generate_series(4, n_steps=30, seed=1).to_parquet(path)
        scratch = tmp_path / "fast"
        scratch.mkdir()
        (scratch / "mine.txt").write_text("keep me")
        build_trainset_distributed(client, [path], tmp_path / "ts", scratch=scratch)
        assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"]
        with pytest.raises(SchemaError, match="holds the input file"):
            build_trainset_distributed(client, [path], tmp_path)
        assert path.exists()
