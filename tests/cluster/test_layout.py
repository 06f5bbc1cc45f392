"""Chunks that hold every id whole, told from Parquet footers; anything else is left to the shuffle."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from atomic_usage.cluster.layout import MERGE_LIMIT, whole_id_chunks
from atomic_usage.cluster.partitions import plan_chunks, read_chunk
from atomic_usage.data import generate_series

from .conftest import messy_frame, write_grouped


def _ids_by_chunk(chunks: list) -> list[set[str]]:
    return [set(read_chunk(c)["id"]) for c in chunks]


def _plan(path: Path | list[Path], rows: int) -> list | None:
    paths = path if isinstance(path, list) else [path]
    return whole_id_chunks(plan_chunks(paths, rows_per_chunk=rows), rows_per_chunk=rows)


class TestWholeIdChunks:
    """A Parquet input whose row groups' id ranges do not overlap is cut into chunks that share no id."""

    def test_grouped_file(self, tmp_path: Path) -> None:
        """Row groups of whole machines, rows shuffled inside: chunks of about rows_per_chunk rows, ids disjoint."""
        df = messy_frame()
        path = write_grouped(df, tmp_path / "g.parquet", 6)
        chunks = _plan(path, 2000)
        assert chunks is not None and len(chunks) > 3
        assert all(c.est_rows >= 2000 for c in chunks[:-1])
        ids = _ids_by_chunk(chunks)
        assert sum(len(s) for s in ids) == len(set().union(*ids)) == 60
        assert sum(c.est_rows for c in chunks) == len(df)
        assert sorted(g for c in chunks for g in c.row_groups) == list(range(10))

    def test_machine_cut_at_a_row_group_boundary_stays_whole(self, tmp_path: Path) -> None:
        """A file sorted by id, row groups cutting machines: neighbours that share an id stay in one chunk."""
        df = generate_series(12, n_steps=100, seed=1).sort_values(["id", "timestamp"], kind="stable")
        df.to_parquet(tmp_path / "s.parquet", row_group_size=150)  # every other boundary cuts a machine
        chunks = _plan(tmp_path / "s.parquet", 300)
        assert chunks is not None and len(chunks) > 1
        ids = _ids_by_chunk(chunks)
        assert sum(len(s) for s in ids) == len(set().union(*ids)) == 12

    def test_too_long_a_merge_gives_up(self, tmp_path: Path) -> None:
        """When every boundary cuts a machine, the merge would grow past MERGE_LIMIT chunks: shuffle."""
        df = generate_series(20, n_steps=100, seed=1).sort_values(["id", "timestamp"], kind="stable")
        df.to_parquet(tmp_path / "s.parquet", row_group_size=70)
        assert len(df) > MERGE_LIMIT * 100
        assert _plan(tmp_path / "s.parquet", 100) is None

    def test_shuffled_rows_overlap(self, messy_parquet: Path) -> None:
        """Rows in random order: every row group spans nearly all ids, so the answer is None."""
        assert _plan(messy_parquet, 2000) is None

    def test_csv_is_left_to_the_shuffle(self, tmp_path: Path) -> None:
        """A CSV file has no statistics."""
        generate_series(3, n_steps=10).to_csv(tmp_path / "a.csv", index=False)
        assert _plan(tmp_path / "a.csv", 10) is None

    def test_no_statistics(self, tmp_path: Path) -> None:
        """A Parquet file written without statistics cannot prove anything."""
        df = generate_series(4, n_steps=10)
        pq.write_table(
            pq.read_table(write_grouped(df, tmp_path / "g.parquet", 1)), tmp_path / "n.parquet", write_statistics=False
        )
        assert _plan(tmp_path / "g.parquet", 10) is not None
        assert _plan(tmp_path / "n.parquet", 10) is None

    def test_files_of_a_folder(self, tmp_path: Path) -> None:
        """Files with disjoint id ranges give chunks; an id in two files gives None."""
        df = generate_series(8, n_steps=20, seed=2)
        ids = sorted(df["id"].unique())
        (tmp_path / "p").mkdir()
        df[df["id"].isin(ids[:4])].to_parquet(tmp_path / "p" / "a.parquet")
        df[df["id"].isin(ids[4:])].to_parquet(tmp_path / "p" / "b.parquet")
        chunks = _plan(tmp_path / "p", 10**6)
        assert chunks is not None and [Path(c.path).name for c in chunks] == ["a.parquet", "b.parquet"]
        df[df["id"] == ids[0]].to_parquet(tmp_path / "p" / "c.parquet")
        assert _plan(tmp_path / "p", 10**6) is None

    def test_integer_and_string_ids_are_not_compared(self, tmp_path: Path) -> None:
        """Ids 7 (int) and "7" (str) become the same machine, so files of both types are shuffled."""
        (tmp_path / "p").mkdir()
        base = generate_series(1, n_steps=10)
        pd.DataFrame({**base, "id": 7}).to_parquet(tmp_path / "p" / "a.parquet")
        pd.DataFrame({**base, "id": "8"}).to_parquet(tmp_path / "p" / "b.parquet")
        assert _plan(tmp_path / "p", 10) is None
        pd.DataFrame({**base, "id": 8}).to_parquet(tmp_path / "p" / "b.parquet")
        assert _plan(tmp_path / "p", 10) is not None

    def test_empty_file_is_left_to_the_shuffle(self, tmp_path: Path) -> None:
        """A file without rows still has its columns validated, by the shuffle's read."""
        generate_series(1, n_steps=10).iloc[:0].to_parquet(tmp_path / "e.parquet")
        assert _plan(tmp_path / "e.parquet", 10) is None


@pytest.mark.parametrize("rows", [1, 30, 70, 10**6])
def test_id_batches_keep_ids_whole(rows: int) -> None:
    """Every id falls in one batch; a batch holds about `rows` rows (plus the rest of one id)."""
    from atomic_usage.cluster.forecast import _id_batches

    df = messy_frame(n_series=9, n_steps=20)
    batch = _id_batches(df["id"].to_numpy(), rows)
    per_id = pd.Series(batch).groupby(df["id"].to_numpy()).nunique()
    assert (per_id == 1).all()
    sizes = pd.Series(batch).value_counts()
    assert sizes.max() < rows + df["id"].value_counts().max()
