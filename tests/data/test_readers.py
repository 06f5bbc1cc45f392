"""Readers of the wide contract format, NAB files and GCD VM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atomic_usage.data import read_gcd, read_nab, read_source, read_wide, regularize
from atomic_usage.errors import SchemaError


class TestReadWide:
    """The wide contract format, CSV and Parquet."""

    def test_csv_round_trip(self, tmp_path: Path) -> None:
        """Ids become strings, naive timestamps are UTC, empty cells are NaN."""
        p = tmp_path / "in.csv"
        p.write_text("id,timestamp,cpuLoad,memoryUsage\n1,2024-01-01 00:00:00,10,\n1,2024-01-01T00:05:00Z,20,30\n")
        df = read_wide(p)
        assert df["id"].tolist() == ["1", "1"]
        assert str(df["timestamp"].dt.tz) == "UTC"
        assert df["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T00:00:00Z")
        assert np.isnan(df["memoryUsage"].iloc[0]) and df["memoryUsage"].iloc[1] == 30.0

    def test_parquet(self, tmp_path: Path) -> None:
        """Parquet files are read the same way."""
        p = tmp_path / "in.parquet"
        pd.DataFrame({"id": ["a"], "timestamp": ["2024-01-01T00:00:00Z"], "value": [5.0]}).to_parquet(p)
        assert read_wide(p)["value"].tolist() == [5.0]

    @pytest.mark.parametrize(
        ("text", "match"),
        [
            ("timestamp,cpuLoad\n2024-01-01,1\n", r"missing: \['id'\]"),
            ("id,cpuLoad\na,1\n", r"missing: \['timestamp'\]"),
            ("id,timestamp\na,2024-01-01\n", "No metric column"),
            ("id,timestamp,cpuLoad\na,yesterday,1\n", "not an ISO 8601 timestamp: 'yesterday'; write"),
            (  # the value as written (not np.int64(...)), and why a number is no time here
                "id,timestamp,cpuLoad\na,1767571200,1\n",
                r"timestamp: 1767571200; numbers \(epoch seconds, say\) are not read as times in files",
            ),
            ("id,timestamp,cpuLoad\na,2024-01-01,high\n", "non-numeric value 'high'"),
            ("id,timestamp,cpuLoad\na,2024-01-01,inf\n", "cpuLoad of id .a. is inf at 2024-01-01T00:00:00Z"),
        ],
    )
    def test_errors_name_the_file_and_problem(self, tmp_path: Path, text: str, match: str) -> None:
        """A bad file raises SchemaError naming the file and what is wrong."""
        p = tmp_path / "bad.csv"
        p.write_text(text)
        with pytest.raises(SchemaError, match=match) as info:
            read_wide(p)
        assert str(p) in str(info.value) and info.value.path == str(p)

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_a_file_with_no_rows_is_an_error(self, tmp_path: Path, suffix: str) -> None:
        """A header without rows (an empty export) fails naming the file, not a silent "0 machines"."""
        p = tmp_path / f"empty{suffix}"
        if suffix == ".csv":
            p.write_text("id,timestamp,cpuLoad\n")
        else:
            pd.DataFrame({"id": pd.Series([], dtype=str), "timestamp": [], "cpuLoad": []}).to_parquet(p)
        with pytest.raises(SchemaError, match=r"holds no rows \(its columns: \['id', 'timestamp', 'cpuLoad'\]\)"):
            read_wide(p)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist is a SchemaError, not an OSError traceback."""
        with pytest.raises(SchemaError, match="does not exist"):
            read_wide(tmp_path / "nope.csv")

    def test_out_of_range_percent_is_clipped_with_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Percents outside [0, 100] in files are clipped and the warning names id, field and time."""
        p = tmp_path / "in.csv"
        p.write_text("id,timestamp,cpuLoad\nvm-x,2024-01-01T00:35:00Z,-1\nvm-x,2024-01-01T00:40:00Z,101\n")
        df = read_wide(p)
        assert df["cpuLoad"].tolist() == [0.0, 100.0]
        assert "vm-x" in caplog.text and "cpuLoad" in caplog.text and "2024-01-01T00:35:00" in caplog.text


@pytest.mark.parametrize("dtype", ["int64", "Int64", "float64", "int64[pyarrow]", "double[pyarrow]"])
def test_a_timestamp_column_of_numbers_is_refused_in_any_dtype(dtype: str) -> None:
    """ensure_utc refuses numbers with its message whatever their dtype: a pyarrow-backed column
    (``pd.read_parquet(dtype_backend="pyarrow")``) raised AttributeError ('int' object has no
    attribute 'item') instead."""
    from atomic_usage.data.validation import ensure_utc

    pytest.importorskip("pyarrow")
    with pytest.raises(SchemaError, match=r"timestamp: 1767571200(\.0)?; numbers \(epoch seconds, say\)"):
        ensure_utc(pd.Series([1767571200, 1767571500], dtype=dtype))


class TestReadNab:
    """NAB files: timestamp,value with gaps and repeated timestamps."""

    def test_repeated_timestamps_and_gaps(self, tmp_path: Path) -> None:
        """Repeated timestamps are averaged, a 2-step gap is interpolated, a 5-step gap stays missing."""
        p = tmp_path / "ec2_x.csv"
        rows = [
            "timestamp,value",
            "2014-02-14 14:30:00,1",
            "2014-02-14 14:30:00,3",
            "2014-02-14 14:35:00,4",
            "2014-02-14 14:50:00,10",
            "2014-02-14 15:20:00,20",
        ]
        p.write_text("\n".join(rows) + "\n")
        df = read_nab(p)
        assert df["id"].unique().tolist() == ["ec2_x"]
        panel, report = regularize(df)
        v = panel.series(0, "value")
        assert report.duplicates == 1
        assert v[:4].tolist() == [2.0, 4.0, 6.0, 8.0]  # 14:40 and 14:45 interpolated
        assert v[4] == 10.0 and np.isnan(v[5:10]).all() and v[10] == 20.0
        assert report.filled == 2 and report.masked == 5

    def test_wrong_columns(self, tmp_path: Path) -> None:
        """A CSV without timestamp,value is refused with the columns it has."""
        p = tmp_path / "x.csv"
        p.write_text("a,b\n1,2\n")
        with pytest.raises(SchemaError, match="timestamp,value"):
            read_nab(p)


class TestEmptySources:
    """A NAB or GCD file without rows fails naming it, as a wide file does: a folder of empty exports
    built an empty training set ("0 machines", exit 0), and one empty file in a folder went unnoticed."""

    def test_nab_file_without_rows(self, tmp_path: Path) -> None:
        """A NAB folder with one header-only file: the build fails naming that file."""
        from atomic_usage.data import read_nab_dir

        (tmp_path / "a.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1.0\n")
        (tmp_path / "b.csv").write_text("timestamp,value\n")
        with pytest.raises(SchemaError, match=r"b\.csv: holds no rows \(its columns: \['timestamp', 'value'\]\)"):
            read_nab_dir(tmp_path)

    def test_gcd_file_without_rows(self, tmp_path: Path) -> None:
        """An empty GCD VM file is named as holding no rows, not as holding one column."""
        from atomic_usage.data import read_gcd

        (tmp_path / "vm_1").write_text("")
        with pytest.raises(SchemaError, match=r"vm_1: holds no rows"):
            read_gcd(tmp_path / "vm_1")


class TestReadGcd:
    """GCD VM files: two columns without header, synthetic 5-minute timestamps."""

    def test_synthetic_timestamps(self, tmp_path: Path) -> None:
        """Row k is 2011-05-01T00:00Z + 5 min * k; columns are cpuLoad and memoryUsage."""
        p = tmp_path / "vm_1_2"
        p.write_text("6.7 5.1\n7.2 5.2\n7.1 5.3\n")
        df = read_gcd(p)
        assert df["id"].iloc[0] == "vm_1_2"
        assert df["timestamp"].iloc[2] == pd.Timestamp("2011-05-01T00:10:00Z")
        assert df["cpuLoad"].tolist() == [6.7, 7.2, 7.1]

    def test_three_columns_refused(self, tmp_path: Path) -> None:
        """A file with another number of columns is refused."""
        p = tmp_path / "vm_bad"
        p.write_text("1 2 3\n")
        with pytest.raises(SchemaError, match="two columns"):
            read_gcd(p)

    def test_read_source_detects_folders(self, tmp_path: Path) -> None:
        """read_source tells a GCD folder from a NAB folder by its files."""
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / "vm_a").write_text("1 2\n3 4\n")
        (tmp_path / "n").mkdir()
        (tmp_path / "n" / "s.csv").write_text("timestamp,value\n2014-01-01 00:00:00,1\n")
        assert set(read_source(tmp_path / "g").columns) == {"id", "timestamp", "cpuLoad", "memoryUsage"}
        assert set(read_source(tmp_path / "n").columns) == {"id", "timestamp", "value"}


@pytest.mark.shared
class TestRealTraces:
    """The public traces in ../shared/data read without error and with the documented quirks."""

    def test_nab_quirks(self, shared_dir: Path) -> None:
        """NAB: 17 series, some repeated timestamps, one short series."""
        src = read_source(shared_dir / "data" / "nab_aws")
        panel, report = regularize(src)
        assert len(panel) == 17 and report.duplicates > 0
        assert panel.lengths.min() < 1300

    def test_gcd_shape(self, shared_dir: Path) -> None:
        """GCD: 1,200 VMs of 288 steps."""
        panel, _ = regularize(read_source(shared_dir / "data" / "gcd2011_vms"))
        assert len(panel) == 1200 and set(panel.lengths.tolist()) == {288}


class TestAdversarialFiles:
    """Files found by trying to break the readers."""

    def test_mixed_offsets_keep_naive_as_utc(self, tmp_path: Path) -> None:
        """A naive timestamp stays UTC even when another row carries an offset."""
        p = tmp_path / "mix.csv"
        p.write_text("id,timestamp,cpuLoad\na,2024-01-01T00:00:00-03:00,10\nb,2024-01-01T00:00:00,20\nc,2024-01-02,5\n")
        ts = read_wide(p).set_index("id")["timestamp"]
        assert ts["a"] == pd.Timestamp("2024-01-01T03:00Z") and ts["b"] == pd.Timestamp("2024-01-01T00:00Z")
        assert ts["c"] == pd.Timestamp("2024-01-02T00:00Z")

    def test_values_beyond_float32_reject_their_series(self, tmp_path: Path) -> None:
        """A count too large for the model rejects its series only, naming id and value."""
        from atomic_usage.data.validation import SeriesIssue

        p = tmp_path / "huge.csv"
        p.write_text("id,timestamp,bytes\na,2024-01-01T00:00:00Z,1e300\nb,2024-01-01T00:00:00Z,5\n")
        issues: list[SeriesIssue] = []
        df = read_wide(p, issues=issues)
        assert [(i.id, i.metric) for i in issues] == [("a", "bytes")] and "larger unit" in issues[0].message
        assert np.isnan(df.loc[df["id"] == "a", "bytes"]).all() and df.loc[df["id"] == "b", "bytes"].tolist() == [5]
