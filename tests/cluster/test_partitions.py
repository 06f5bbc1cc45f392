"""Input chunks, CSV byte ranges, the id hash, and unreadable partition files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atomic_usage.data import generate_series
from atomic_usage.errors import SchemaError

pytest.importorskip("distributed")

from atomic_usage.cluster.partitions import bucket_of, plan_chunks, read_chunk  # noqa: E402


class TestPlanChunks:
    """Inputs are cut into chunks from Parquet footers and CSV sizes, without reading the data."""

    def test_parquet_row_groups_are_grouped(self, tmp_path: Path) -> None:
        """Row groups are grouped up to rows_per_chunk, and every group is read exactly once."""
        df = generate_series(10, n_steps=100, seed=1)
        df.to_parquet(tmp_path / "a.parquet", row_group_size=100)
        chunks = plan_chunks([tmp_path / "a.parquet"], rows_per_chunk=300)
        assert [c.row_groups for c in chunks] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
        back = pd.concat([read_chunk(c) for c in chunks], ignore_index=True)
        assert len(back) == len(df)

    def test_csv_byte_ranges_cut_no_line(self, tmp_path: Path) -> None:
        """Byte ranges of any size give back every row once, in order."""
        df = generate_series(7, n_steps=50, seed=2)
        df.to_csv(tmp_path / "a.csv", index=False)
        for block in (97, 1000, 4096, 10**9):
            chunks = plan_chunks([tmp_path / "a.csv"], csv_block_bytes=block)
            back = pd.concat([read_chunk(c) for c in chunks], ignore_index=True)
            assert back["id"].tolist() == df["id"].tolist(), block
            np.testing.assert_allclose(back["cpuLoad"], df["cpuLoad"], rtol=1e-12)

    def test_folder_of_partitions_in_name_order(self, tmp_path: Path) -> None:
        """A folder is read recursively in name order; hidden and underscore files are skipped."""
        df = generate_series(4, n_steps=10, seed=3)
        (tmp_path / "p").mkdir()
        df.iloc[:20].to_parquet(tmp_path / "p" / "part-1.parquet")
        df.iloc[20:].to_csv(tmp_path / "p" / "part-2.csv", index=False)
        (tmp_path / "p" / "_SUCCESS").write_text("{}")
        chunks = plan_chunks([tmp_path / "p"])
        assert [Path(c.path).name for c in chunks] == ["part-1.parquet", "part-2.csv"]

    def test_corrupt_parquet_is_named(self, tmp_path: Path) -> None:
        """A partition that is not Parquet fails at planning, naming the file."""
        (tmp_path / "p").mkdir()
        generate_series(2, n_steps=5).to_parquet(tmp_path / "p" / "a.parquet")
        (tmp_path / "p" / "b.parquet").write_bytes(b"not parquet at all")
        with pytest.raises(SchemaError, match=r"b\.parquet: cannot be read as Parquet") as info:
            plan_chunks([tmp_path / "p"])
        assert info.value.path is not None and info.value.path.endswith("b.parquet")

    def test_missing_input(self, tmp_path: Path) -> None:
        """A path that does not exist is a SchemaError naming it."""
        with pytest.raises(SchemaError, match="nope.csv: the file does not exist"):
            plan_chunks([tmp_path / "nope.csv"])


class TestReadChunkIssues:
    """A chunk's rejected series name the file and the row counted from the file's start."""

    def test_parquet_row_of_the_file(self, tmp_path: Path) -> None:
        """A bad cell in the third row group is named by its row in the file, not in the chunk
        (the chunk's rows were numbered from 0, so it was "row 51 of the file")."""
        df = generate_series(10, n_steps=30, seed=1).astype({"cpuLoad": str})
        df.iloc[250, df.columns.get_loc("cpuLoad")] = "n/a!"
        df.to_parquet(tmp_path / "a.parquet", row_group_size=100)
        chunks = plan_chunks([tmp_path / "a.parquet"], rows_per_chunk=100)
        issues: list = []
        warnings: list = []
        back = read_chunk(chunks[2], out_of_range="reject", issues=issues, warnings=warnings)
        assert back["cpuLoad"][back["id"] == df["id"].iloc[250]].isna().all() and warnings == []
        (issue,) = issues
        path = str((tmp_path / "a.parquet").resolve())
        assert issue.path == path and issue.line == "row 251 of the file" and issue.row == 250
        assert issue.message.startswith(f"{path}: cpuLoad of id {df['id'].iloc[250]!r} is 'n/a!' at ")

    def test_strict_without_issues(self, tmp_path: Path) -> None:
        """Without an issues list (dataset build) a bad cell still fails the chunk, naming the file."""
        df = generate_series(2, n_steps=10, seed=1).astype({"cpuLoad": object})
        df.iloc[3, df.columns.get_loc("cpuLoad")] = "high"
        df.to_csv(tmp_path / "a.csv", index=False)
        (chunk,) = plan_chunks([tmp_path / "a.csv"])
        with pytest.raises(SchemaError, match=r"a\.csv: Column 'cpuLoad' holds a non-numeric value 'high'"):
            read_chunk(chunk)


class TestReadChunkLines:
    """An error in a CSV byte range names the line of the file, not the row within the range."""

    def _csv(self, tmp_path: Path, column: str, row: int, value: object) -> Path:
        df = generate_series(6, n_steps=40, seed=1).astype({column: object})
        df.iloc[row, df.columns.get_loc(column)] = value
        df.to_csv(tmp_path / "a.csv", index=False)
        return (tmp_path / "a.csv").resolve()

    @pytest.mark.parametrize(
        ("column", "message"),
        [
            # it was "Row 25", within the range
            ("id", "Line 202 has no id; give every row an id."),
            # it was read as NaT, which put the grid's start in 1677 and its end in 2262
            ("timestamp", "Line 202 has no timestamp; give every row one, written like 2014-02-17T14:30:00Z."),
        ],
    )
    def test_missing_id_or_timestamp(self, tmp_path: Path, column: str, message: str) -> None:
        """A row without id or timestamp in a later range is refused naming its file line."""
        path = self._csv(tmp_path, column, 200, None)
        chunks = plan_chunks([path], csv_block_bytes=2048)
        late = [c for c in chunks if c.byte_range is not None and c.byte_range[0] > 0]
        errors = []
        for c in late:
            try:
                read_chunk(c, out_of_range="reject", issues=[], warnings=[])
            except SchemaError as exc:
                errors.append(str(exc))
        assert errors == [f"{path}: {message}"]

    def test_non_numeric_strict(self, tmp_path: Path) -> None:
        """Without an issues list (dataset build), a bad cell in a later range names its file line."""
        path = self._csv(tmp_path, "cpuLoad", 150, "high")
        chunks = plan_chunks([path], csv_block_bytes=2048)
        errors = []
        for c in chunks:
            try:
                read_chunk(c)
            except SchemaError as exc:
                errors.append(str(exc))
        assert len(errors) == 1 and "'high' (line 152, id " in errors[0], errors

    def test_blank_lines_not_counted(self, tmp_path: Path) -> None:
        """Blank lines are skipped as a whole read skips them, so the line is the one read_wide names."""
        from atomic_usage.data import read_wide

        df = generate_series(6, n_steps=40, seed=1)
        lines = df.to_csv(index=False).splitlines()
        lines[150] = "," + lines[150].split(",", 1)[1]  # no id
        text = "\n".join(lines[:40] + [""] + lines[40:]) + "\n"  # a blank line in the first range
        (tmp_path / "a.csv").write_text(text)
        path = (tmp_path / "a.csv").resolve()
        with pytest.raises(SchemaError) as whole:
            read_wide(path)
        errors = []
        for c in plan_chunks([path], csv_block_bytes=1024):
            try:
                read_chunk(c, out_of_range="reject", issues=[], warnings=[])
            except SchemaError as exc:
                errors.append(str(exc))
        assert errors == [str(whole.value)]


class TestWritePieces:
    """Rows are written to their buckets' folders; a chunk without rows writes nothing."""

    def test_no_rows(self, tmp_path: Path) -> None:
        """An empty chunk (blank lines only, an empty row group) writes no piece and counts nothing;
        it raised "zip() argument 2 is longer than argument 1"."""
        from atomic_usage.cluster.partitions import write_pieces

        df = generate_series(2, n_steps=5, seed=1).head(0)
        assert write_pieces(df, np.zeros(0, np.int64), tmp_path, 0, 0) == {}
        assert not list(tmp_path.iterdir())


class TestBucketOf:
    """The bucket of an id is the same in every process and run."""

    def test_stable_and_in_range(self) -> None:
        """Known values pin the hash: a change would scatter ids of existing outputs."""
        ids = np.array([f"vm-{i}" for i in range(1000)], object)
        b = bucket_of(ids, 16)
        assert b.min() >= 0 and b.max() < 16
        assert (b == bucket_of(ids.copy(), 16)).all()
        assert len(np.unique(b)) == 16
        assert bucket_of(np.array(["vm-001", "vm-002", "web-1"], object), 8).tolist() == [5, 0, 2]
