"""The single-process chunked forecast of a large file: the in-memory output, bounded memory, clean failures."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atomic_usage.cli import app
from atomic_usage.cluster import chunked
from atomic_usage.cluster.chunked import forecast_chunked
from atomic_usage.cluster.writer import FrameWriter
from atomic_usage.data import generate_series, read_wide
from atomic_usage.errors import SchemaError
from atomic_usage.models.baselines import Naive, PredictLinear

from .conftest import assert_same_forecast

runner = CliRunner()

_ROWS = 600
"""rows_per_chunk in these tests: a machine here has up to 150 rows, so most of them span chunks."""


def hard_fleet(seed: int = 7) -> pd.DataFrame:
    """Generated machines with every case the in-memory path handles, rows in file order by id.

    Short histories (1, 2 and 5 rows), gaps short and long, repeated timestamps, a metric with
    no value for one machine, a machine with no value at all, and two series rejected for values
    far out of range, with such values in several places (so in several chunks).
    """
    df = generate_series(40, n_steps=150, seed=seed)
    rng = np.random.default_rng(seed)
    df = df[rng.random(len(df)) > 0.07]  # short gaps
    df = df[~((df["id"] == "vm-003") & df["timestamp"].between("2026-01-05 03:00Z", "2026-01-05 06:00Z"))]
    df = pd.concat([df, df.sample(40, random_state=seed)])  # repeated timestamps
    for sid, keep in (("vm-010", 1), ("vm-011", 2), ("vm-012", 5)):  # short histories
        rows = df.index[df["id"] == sid]
        df = df.drop(rows[keep:])
    df.loc[df["id"] == "vm-020", "storageUsage"] = np.nan  # no data for one metric
    df.loc[df["id"] == "vm-021", ["cpuLoad", "memoryUsage", "storageUsage"]] = np.nan  # no observations
    for sid in ("vm-030", "vm-031"):  # rejected: far out of range, in several chunks
        rows = df.index[df["id"] == sid]
        df.loc[rows[[3, 60, 120]], "cpuLoad"] = 180.0 + np.arange(3)
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def shuffled(df: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """The rows in random order: every machine spread over the whole file."""
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_input(df: pd.DataFrame, path: Path) -> Path:
    """Parquet in row groups of 250 rows (machines cut across them), or CSV, maybe gzipped."""
    if path.suffix == ".parquet":
        df.to_parquet(path, row_group_size=250)
    elif path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            df.to_csv(fh, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def forecast_cli(inp: Path, out: Path, rows: int, *extra: str, model: str = "naive") -> str:
    """Runs `atomic-usage forecast`; --rows-per-bucket chooses the whole read or chunks."""
    args = ["forecast", "-i", str(inp), "-H", "12", "-o", str(out), "-m", model, "--rows-per-bucket", str(rows)]
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


# (layout, file name, expected mode)
LAYOUTS = [
    ("sorted", "in.parquet", "stream"),
    ("shuffled", "in.parquet", "shuffle"),
    ("sorted", "in.csv", "stream"),
    ("shuffled", "in.csv", "shuffle"),
    ("shuffled", "in.csv.gz", "shuffle"),
]


class TestEquality:
    """A large file forecast in chunks gives the in-memory path's file: same rows, same order, same values."""

    @pytest.mark.parametrize(("layout", "name", "mode"), LAYOUTS)
    @pytest.mark.parametrize("model", ["naive", "predict_linear"])
    def test_cli_output_equals_whole_read(self, tmp_path: Path, layout: str, name: str, mode: str, model: str) -> None:
        """Machines cut across row groups and chunks, or spread over the file, still come out whole."""
        df = hard_fleet()
        inp = write_input(df if layout == "sorted" else shuffled(df), tmp_path / name)
        suffix = ".parquet" if name.endswith(".parquet") else ".csv"
        whole, parts = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
        whole_text = forecast_cli(inp, whole, 10**9, model=model)
        text = forecast_cli(inp, parts, _ROWS, model=model)
        # both count machines (ids) and series (id x metric) alike, and say which is which
        counts = "40 machines (120 series: machine × metric)"
        assert counts in whole_text and counts in text
        assert "(6 series not forecast" in whole_text and "(6 series not forecast" in text
        assert "chunks of at most" in text and ("streamed" if mode == "stream" else "shuffled by id range") in text
        if suffix == ".csv" and model == "naive":
            assert parts.read_bytes() == whole.read_bytes()
            return
        read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
        got, want = read(parts), read(whole)
        for c in ("id", "timestamp", "metric", "model", "reason"):  # the same order, not only the same rows
            assert got[c].tolist() == want[c].tolist(), c
        if suffix == ".csv":
            # A BLAS product's last bit depends on how many series it gets at once, and %.6g can
            # round such a bit to the other side of the sixth digit.
            for c in ("mean", "p10", "p50", "p90"):
                np.testing.assert_allclose(got[c], want[c], rtol=1e-5, atol=1e-9, err_msg=c)
            return
        assert_same_forecast(got, want)
        assert (got["model"] == "error").sum() == 2 * 12 + 3 * 12  # vm-030/031 cpuLoad, vm-021 all

    @pytest.mark.parametrize(("layout", "name", "mode"), LAYOUTS)
    def test_library_equals_read_wide(self, tmp_path: Path, layout: str, name: str, mode: str) -> None:
        """forecast_chunked writes what read_wide, regularize and forecast_frame give on the whole file."""
        from atomic_usage.data import regularize
        from atomic_usage.models.base import forecast_frame

        df = hard_fleet(seed=11)
        inp = write_input(df if layout == "sorted" else shuffled(df), tmp_path / name)
        job = forecast_chunked(inp, 12, tmp_path / "out.parquet", model=PredictLinear(), rows_per_chunk=_ROWS)
        issues: list = []
        panel, report = regularize(read_wide(inp, issues=issues))
        want = forecast_frame(PredictLinear(), panel, 12, issues=issues)
        got = pd.read_parquet(tmp_path / "out.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6, rtol=0)
        assert job.mode == mode and job.n_chunks > 3
        assert job.n_series == len(panel) == 40 and job.n_rows_out == len(got) and job.n_rows_in == len(df)
        assert job.regularize == report
        firsts = want.drop_duplicates(["id", "metric"])
        gone = firsts[firsts["model"].isin(["none", "error"])]
        assert job.missing == len(gone) == 6 and list(job.reasons) == list(dict.fromkeys(gone["reason"]))
        assert job.n_metric_series == len(firsts) == 120 and job.summary().startswith("40 machines (120 series")

    def test_reasons_are_the_whole_reads_distinct_ones(self, tmp_path: Path) -> None:
        """An id with no value has one reason for all its metrics: the chunks keep the first
        MAX_REASONS distinct reasons, as the whole read prints them (they kept MAX_REASONS
        reasons, three of each id, and the CLI printed 7 where the whole read printed 20)."""
        stamps = [f"2026-01-05T00:{m:02d}:00Z" for m in range(0, 60, 5)]
        inp = tmp_path / "empty.csv"
        inp.write_text(
            "id,timestamp,cpuLoad,memoryUsage,storageUsage\n"
            + "".join(f"m{i:02d},{t},,,\n" for i in range(25) for t in stamps)
        )
        job = forecast_chunked(inp, 3, tmp_path / "out.csv", model=Naive(), rows_per_chunk=50)
        got = pd.read_csv(tmp_path / "out.csv")
        want = list(dict.fromkeys(got.drop_duplicates(["id", "metric"])["reason"]))[: chunked.MAX_REASONS]
        assert job.n_chunks > 1 and job.missing == 75
        assert list(job.reasons) == want and len(want) == chunked.MAX_REASONS

    def test_rejected_series_reason_counts_every_chunk(self, tmp_path: Path) -> None:
        """A series with far values in three chunks gets one reason, counting all three, as a whole read does."""
        inp = write_input(hard_fleet(), tmp_path / "in.parquet")
        forecast_chunked(inp, 3, tmp_path / "out.parquet", model=Naive(), rows_per_chunk=_ROWS)
        got = pd.read_parquet(tmp_path / "out.parquet")
        reason = got.loc[(got["id"] == "vm-030") & (got["metric"] == "cpuLoad"), "reason"].iloc[0]
        assert "is 180.0 at" in reason and "(3 value(s) far outside" in reason

    def test_sorted_row_groups_unsorted_rows_fall_back(self, tmp_path: Path) -> None:
        """One row group says nothing about its rows' order: the stream finds disorder and the shuffle takes over."""
        shuffled(hard_fleet()).to_parquet(tmp_path / "in.parquet")  # a single row group
        job = forecast_chunked(tmp_path / "in.parquet", 12, tmp_path / "out.csv", model=Naive(), rows_per_chunk=_ROWS)
        forecast_cli(tmp_path / "in.parquet", tmp_path / "whole.csv", 10**9)
        assert job.mode == "shuffle"
        assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # scratch removed

    def test_small_file_is_read_whole(self, tmp_path: Path) -> None:
        """At most --rows-per-bucket rows: the in-memory path, with its usual summary line."""
        inp = write_input(hard_fleet(), tmp_path / "in.parquet")
        text = forecast_cli(inp, tmp_path / "out.parquet", 10**9)
        assert "chunks" not in text and "40 machines (120 series: machine × metric)" in text


class TestMemoryBound:
    """At most one chunk of whole machines is held: checked by counting rows per call, never by timing."""

    @pytest.mark.parametrize("layout", ["sorted", "shuffled"])
    def test_rows_per_forecast_call(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
        """Every regularize/forecast call gets at most rows_per_chunk rows plus one machine, every id once."""
        df = hard_fleet()
        inp = write_input(df if layout == "sorted" else shuffled(df), tmp_path / "in.parquet")
        calls: list[pd.DataFrame] = []
        real = chunked.regularize

        def spy(frame: pd.DataFrame, *args: object, **kwargs: object) -> object:
            calls.append(frame[["id"]].copy())
            return real(frame, *args, **kwargs)  # type: ignore[arg-type]

        class CountingNaive(Naive):
            def __init__(self) -> None:
                super().__init__()
                self.series_per_call: list[int] = []

            def forecast_arrays(self, histories, horizon, bounded):  # type: ignore[no-untyped-def]
                self.series_per_call.append(len(histories))
                return super().forecast_arrays(histories, horizon, bounded)

        monkeypatch.setattr(chunked, "regularize", spy)
        model = CountingNaive()
        job = forecast_chunked(inp, 6, tmp_path / "out.parquet", model=model, rows_per_chunk=_ROWS)
        calls = [c for c in calls if len(c)]  # the empty header frame is regularized once, first
        biggest = int(df["id"].value_counts().max())
        assert len(calls) == job.n_chunks == len(model.series_per_call) > 3
        assert max(len(c) for c in calls) == job.max_rows_per_chunk <= _ROWS + biggest
        ids_per_call = [set(c["id"]) for c in calls]
        for n_series, ids in zip(model.series_per_call, ids_per_call, strict=True):
            assert n_series <= 3 * len(ids)  # the forecaster sees the (id, metric) series of this chunk only
        assert sum(len(s) for s in ids_per_call) == len(set().union(*ids_per_call)) == 40  # every id whole, once
        assert sum(len(c) for c in calls) == len(df)

    def test_shuffle_holds_one_range(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The shuffle reads back one range at a time and removes it before the next."""
        inp = write_input(shuffled(hard_fleet()), tmp_path / "in.parquet")
        on_disk: list[int] = []
        real = chunked.read_bucket

        def spy(directory: Path) -> pd.DataFrame:
            on_disk.append(sum(1 for _ in Path(directory).parent.iterdir()))
            return real(directory)

        monkeypatch.setattr(chunked, "read_bucket", spy)
        job = forecast_chunked(inp, 6, tmp_path / "out.parquet", model=Naive(), rows_per_chunk=_ROWS)
        assert job.mode == "shuffle"
        assert on_disk == list(range(len(on_disk), 0, -1))  # ranges left on disk: n, n-1, ..., 1


class TestBadInput:
    """A bad large file fails with the whole read's message, naming the file, and leaves no output."""

    def _late_bad_csv(self, tmp_path: Path, column: str, value: object) -> Path:
        df = hard_fleet().astype({column: object})
        df.iloc[len(df) - 40, df.columns.get_loc(column)] = value  # in the last chunk
        return write_input(df, tmp_path / "bad.csv")

    @pytest.mark.parametrize(
        ("column", "value", "message"),
        [
            ("id", None, r"bad\.csv: Line \d+ has no id"),
            ("timestamp", None, r"bad\.csv: Line \d+ has no timestamp"),
            ("timestamp", "yesterday", r"bad\.csv: Column 'timestamp' holds a value that is not an ISO 8601"),
        ],
    )
    def test_same_error_as_whole_read(self, tmp_path: Path, column: str, value: object, message: str) -> None:
        """The error raised in a late chunk is the whole read's, row number included; nothing is written."""
        inp = self._late_bad_csv(tmp_path, column, value)
        (tmp_path / "out.csv").write_text("an older forecast")
        with pytest.raises(SchemaError, match=message) as whole:
            read_wide(inp, issues=[])
        with pytest.raises(SchemaError) as part:
            forecast_chunked(inp, 6, tmp_path / "out.csv", model=Naive(), rows_per_chunk=_ROWS)
        assert str(part.value) == str(whole.value)
        assert (tmp_path / "out.csv").read_text() == "an older forecast"  # not replaced, not truncated
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out.csv"]  # no .tmp, no scratch

    def test_non_numeric_cell_rejects_its_series_in_every_chunk(self, tmp_path: Path) -> None:
        """A non-numeric cell in a late chunk rejects only its series, with the whole read's reason
        (file line included); the rest of the fleet is forecast, as for a far-out value."""
        inp = self._late_bad_csv(tmp_path, "cpuLoad", "n/a!")
        whole: list = []
        read_wide(inp, issues=whole)
        bad = [i for i in whole if i.raw is not None]
        assert len(bad) == 1 and bad[0].line == f"line {len(hard_fleet()) - 40 + 2}"
        forecast_chunked(inp, 3, tmp_path / "out.parquet", model=Naive(), rows_per_chunk=_ROWS)
        got = pd.read_parquet(tmp_path / "out.parquet")
        rows = got[(got["id"] == bad[0].id) & (got["metric"] == "cpuLoad")]
        assert (rows["model"] == "error").all() and rows["reason"].iloc[0] == "rejected: " + bad[0].message
        assert "'n/a!'" in bad[0].message and bad[0].line in bad[0].message
        others = got[(got["id"] == bad[0].id) & (got["metric"] != "cpuLoad")]
        assert (others["model"] == "naive").all()

    def test_cli_non_numeric_cell_exit_0(self, tmp_path: Path) -> None:
        """Through the CLI: exit code 0, the series named on stderr as not forecast, the output written."""
        inp = self._late_bad_csv(tmp_path, "cpuLoad", "n/a!")
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.parquet"), "--rows-per-bucket", "600"]
        )
        text = " ".join(res.output.split())
        assert res.exit_code == 0, text
        assert "not forecast: rejected: cpuLoad of id" in text and "'n/a!'" in text and "Traceback" not in text
        assert (tmp_path / "o.parquet").exists()

    def test_missing_column(self, tmp_path: Path) -> None:
        """A missing id column is reported before any data is read, as the whole read reports it."""
        inp = write_input(hard_fleet().drop(columns=["id"]), tmp_path / "bad.parquet")
        with pytest.raises(SchemaError, match=r"bad\.parquet: The following columns are missing: \['id'\]"):
            forecast_chunked(inp, 6, tmp_path / "o.csv", model=Naive(), rows_per_chunk=_ROWS)
        assert not (tmp_path / "o.csv").exists()

    def test_corrupt_parquet(self, tmp_path: Path) -> None:
        """A Parquet file cut short: SchemaError naming it, exit 2 from the CLI, no output."""
        good = write_input(hard_fleet(), tmp_path / "good.parquet")
        data = good.read_bytes()
        (tmp_path / "bad.parquet").write_bytes(data[: len(data) // 2] + data[-2000:])
        with pytest.raises(SchemaError, match=r"bad\.parquet: cannot be read as Parquet"):
            forecast_chunked(tmp_path / "bad.parquet", 6, tmp_path / "o.csv", model=Naive(), rows_per_chunk=_ROWS)
        assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.tmp").exists()

    @pytest.mark.parametrize("name", ["empty.csv.gz", "blank.csv", "empty.parquet"])
    def test_no_rows_names_the_file(self, tmp_path: Path, name: str) -> None:
        """A file without data rows fails as the whole read fails, naming it, whatever its size
        (a compressed header, or a header and many blank lines, were estimated as large, took the
        chunked path and forecast "0 machines" with exit 0); an older output is left as it was."""
        inp = tmp_path / name
        if name == "blank.csv":
            inp.write_text("id,timestamp,cpuLoad\n" + "\n" * 5000)
        elif name == "empty.parquet":
            hard_fleet().head(0).to_parquet(inp)
        else:
            with gzip.open(inp, "wt") as fh:
                fh.write("id,timestamp,cpuLoad\n" + "\n" * 5000)
        with pytest.raises(SchemaError) as whole:
            read_wide(inp)
        (tmp_path / "out.csv").write_text("an older forecast")
        with pytest.raises(SchemaError) as part:
            forecast_chunked(inp, 6, tmp_path / "out.csv", model=Naive(), rows_per_chunk=2)
        assert str(part.value) == str(whole.value) and f"{name}: holds no rows" in str(part.value)
        assert (tmp_path / "out.csv").read_text() == "an older forecast"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.csv"])
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.csv"), "--rows-per-bucket", "2"]
        )
        assert res.exit_code == 2 and "holds no rows" in res.output, res.output
        assert not (tmp_path / "o.csv").exists()

    def test_output_is_a_folder(self, tmp_path: Path) -> None:
        """A folder as --output is refused before anything is read."""
        inp = write_input(hard_fleet(), tmp_path / "in.parquet")
        (tmp_path / "out").mkdir()
        with pytest.raises(SchemaError, match="the output is a folder"):
            forecast_chunked(inp, 6, tmp_path / "out", model=Naive(), rows_per_chunk=_ROWS)


class TestWarningsOnce:
    """A warning every chunk meets is logged once per file, with the counts of all the chunks."""

    @pytest.mark.parametrize("name", ["in.parquet", "in.csv"])
    def test_each_warning_once(self, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
        """A text column, a misspelled metric and a series rejected in three chunks, in a shuffled file
        (a CSV is read twice: the stream finds it unsorted): each is named once, as a whole read names it."""
        df = shuffled(hard_fleet()).rename(columns={"storageUsage": "storageUsag"})
        df["note"] = "rack 4"
        inp = write_input(df, tmp_path / name)
        caplog.set_level(logging.WARNING, logger="atomic_usage")
        job = forecast_chunked(inp, 3, tmp_path / "out.parquet", model=Naive(), rows_per_chunk=_ROWS)
        assert job.n_chunks > 3
        chunked_logs = [r.getMessage() for r in caplog.records]
        caplog.clear()
        read_wide(inp, issues=[])
        whole_logs = [r.getMessage() for r in caplog.records]
        for needle in ("['note']", "'storageUsag'", "of id 'vm-030'", "of id 'vm-031'"):
            found = [m for m in chunked_logs if needle in m]
            assert found == [m for m in whole_logs if needle in m] and len(found) == 1, (needle, chunked_logs)
        assert "(3 value(s) far outside" in next(m for m in chunked_logs if "of id 'vm-030'" in m)


class TestFrameWriter:
    """The output file appears whole at the end, or not at all."""

    def test_csv_header_once(self, tmp_path: Path) -> None:
        """Two frames written: one header, then the rows of both, as one to_csv of both."""
        df = generate_series(2, n_steps=3, seed=1)
        with FrameWriter(tmp_path / "a.csv") as w:
            w.write(df.iloc[:3])
            w.write(df.iloc[3:])
        with FrameWriter(tmp_path / "b.csv") as w:
            w.write(df)
        assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
        assert w.rows == 6

    def test_error_leaves_nothing(self, tmp_path: Path) -> None:
        """An error inside the block removes the temporary file; no output appears."""
        df = generate_series(2, n_steps=3, seed=1)
        with pytest.raises(RuntimeError), FrameWriter(tmp_path / "a.parquet") as w:
            w.write(df)
            raise RuntimeError("stop")
        assert list(tmp_path.iterdir()) == []

    def test_discard_starts_again(self, tmp_path: Path) -> None:
        """discard() drops what was written; later frames make the whole file."""
        df = generate_series(2, n_steps=3, seed=1)
        with FrameWriter(tmp_path / "a.parquet") as w:
            w.write(df)
            w.discard()
            w.write(df.iloc[:2])
        assert len(pd.read_parquet(tmp_path / "a.parquet")) == 2


def test_scratch_folder_option(tmp_path: Path) -> None:
    """--scratch puts the shuffle elsewhere, and nothing is left there afterwards."""
    inp = write_input(shuffled(hard_fleet()), tmp_path / "in.parquet")
    (tmp_path / "scratch").mkdir()
    text = forecast_cli(inp, tmp_path / "out.parquet", _ROWS, "--scratch", str(tmp_path / "scratch"))
    assert "shuffled by id range" in text
    assert list((tmp_path / "scratch").iterdir()) == []
    shutil.rmtree(tmp_path / "scratch")


def test_scratch_that_is_a_file(tmp_path: Path) -> None:
    """A --scratch that is a file fails naming it (exit 2), and the output is left as it was: it
    was a FileExistsError traceback, exit 1."""
    inp = write_input(shuffled(hard_fleet()), tmp_path / "in.parquet")
    (tmp_path / "scratch").write_text("a file of the user")
    (tmp_path / "out.parquet").write_text("an older forecast")
    args = ["forecast", "-i", str(inp), "-H", "12", "-o", str(tmp_path / "out.parquet"), "-m", "naive"]
    res = runner.invoke(app, [*args, "--rows-per-bucket", str(_ROWS), "--scratch", str(tmp_path / "scratch")])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    assert "is a file, not a folder" in " ".join(res.output.split())
    assert (tmp_path / "scratch").read_text() == "a file of the user"
    assert (tmp_path / "out.parquet").read_text() == "an older forecast"


class TestCliExtras:
    """--plot and the progress bar work on the chunked path too."""

    def test_plot_one_chart_per_machine(self, tmp_path: Path) -> None:
        """Charts are drawn chunk by chunk: one PNG per machine, as from a whole read."""
        pytest.importorskip("matplotlib")
        df = generate_series(6, n_steps=150, seed=2)
        inp = write_input(shuffled(df), tmp_path / "in.parquet")
        text = forecast_cli(inp, tmp_path / "out.csv", 300, "--plot", str(tmp_path / "png"))
        assert "6 charts ->" in text
        assert sorted(p.stem for p in (tmp_path / "png").iterdir()) == sorted(df["id"].unique())

    def test_progress_bar_on_a_terminal(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal a bar follows the stages (counting ids, splitting, forecasting)."""
        import io

        from rich.console import Console

        from atomic_usage import cli

        buf = io.StringIO()
        monkeypatch.setattr(cli, "err", Console(file=buf, force_terminal=True, width=120))
        inp = write_input(shuffled(hard_fleet()), tmp_path / "in.parquet")
        forecast_cli(inp, tmp_path / "out.csv", _ROWS)
        shown = buf.getvalue()
        assert all(stage in shown for stage in ("counting ids", "splitting", "forecasting"))


def _mixed(where: str) -> pd.DataFrame:
    """Machines sorted by id with a ``value`` column of numbers, but only text (``high``) in the first
    700 rows or the last 700: every chunk of 600 rows there holds text only in that column."""
    df = generate_series(12, n_steps=150, seed=4)
    df["value"] = df["cpuLoad"].round(1).astype(object)
    rows = df.index[:700] if where == "first" else df.index[-700:]
    df.loc[rows, "value"] = "high"
    return df


class TestMixedColumn:
    """A column holding text in some chunks and numbers in others is a metric in every chunk, as in a whole
    read: its text cells reject their series. It was ignored in the text-only chunks (no rows for it)."""

    @pytest.mark.parametrize("where", ["first", "last"])
    @pytest.mark.parametrize("name", ["in.csv", "in.parquet"])
    def test_same_as_whole_read(self, tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str, name: str) -> None:
        """Text in the first or the last chunks, CSV or Parquet: the whole read's rows, and no text-column warning."""
        from atomic_usage.data import regularize
        from atomic_usage.models.base import forecast_frame

        df = _mixed(where)
        inp = tmp_path / name
        if name.endswith(".parquet"):
            df.astype({"value": str}).to_parquet(inp, row_group_size=250)
        else:
            df.to_csv(inp, index=False)
        caplog.set_level(logging.WARNING, logger="atomic_usage")
        job = forecast_chunked(inp, 6, tmp_path / "out.parquet", model=Naive(), rows_per_chunk=_ROWS)
        assert job.n_chunks > 2
        assert not [r for r in caplog.records if "['value']" in r.getMessage()]
        issues: list = []
        panel, _ = regularize(read_wide(inp, issues=issues))
        want = forecast_frame(Naive(), panel, 6, issues=issues)
        got = pd.read_parquet(tmp_path / "out.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6, rtol=0)
        assert (got.loc[got["metric"] == "value", "model"] == "error").any()
