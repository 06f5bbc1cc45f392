"""Distributed forecasts on a real LocalCluster: equal to the single path, whole, clear on bad input."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from atomic_usage.data import generate_series
from atomic_usage.errors import ArtifactError, SchemaError
from atomic_usage.models.baselines import Naive, PredictLinear

from .conftest import assert_same_forecast, messy_frame, single_machine, write_grouped

pytest.importorskip("distributed")

from atomic_usage.cluster import forecast_distributed  # noqa: E402


class TestEquality:
    """The cluster writes the rows the single-machine path computes, values within 1e-6."""

    @pytest.mark.parametrize("name", ["naive", "predict_linear"])
    def test_baselines(self, client, messy_parquet: Path, tmp_path: Path, name: str) -> None:
        """Messy input (shuffled rows, gaps, duplicates) split over many chunks and buckets."""
        job = forecast_distributed(client, messy_parquet, 12, tmp_path / "out", model=name, rows_per_bucket=2000)
        assert job.n_chunks > 3 and job.n_parts > 3
        got = pd.read_parquet(tmp_path / "out")
        model = Naive() if name == "naive" else PredictLinear()
        assert_same_forecast(got, single_machine(messy_parquet, model, 12))
        assert job.n_series == 60 and job.n_rows_out == len(got)

    def test_neural_model(self, client, messy_parquet: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
        """The ONNX model, loaded once per worker by the plugin, gives the single-machine numbers."""
        from atomic_usage.models.artifact import load_model

        forecast_distributed(client, messy_parquet, 30, tmp_path / "out", model=tiny_model_dir, rows_per_bucket=2000)
        got = pd.read_parquet(tmp_path / "out")
        assert set(got["model"]) == {"tiny"}
        assert_same_forecast(got, single_machine(messy_parquet, load_model(tiny_model_dir), 30))

    def test_model_loaded_once_per_worker(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """Every worker holds the plugin's model; tasks carry only its name."""
        forecast_distributed(client, messy_parquet, 3, tmp_path / "out", model="naive")
        names = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all(any(n.startswith("atomic-model-") for n in ns) for ns in names.values())

    def test_rerun_replaces_parts(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """A second run into the same folder, with other bucket counts, leaves no stale part."""
        forecast_distributed(client, messy_parquet, 6, tmp_path / "out", model="naive", rows_per_bucket=1000)
        forecast_distributed(client, messy_parquet, 6, tmp_path / "out", model="naive", rows_per_bucket=10**7)
        got = pd.read_parquet(tmp_path / "out")
        assert_same_forecast(got, single_machine(messy_parquet, Naive(), 6))
        assert (tmp_path / "out" / "_SUCCESS").is_file()
        assert not (tmp_path / "out" / "_scratch").exists()


class TestDirect:
    """An input whose row groups hold whole machines is forecast chunk by chunk, without the shuffle."""

    @pytest.mark.parametrize("name", ["naive", "predict_linear"])
    def test_equal_to_single_machine(self, client, grouped_parquet: Path, tmp_path: Path, name: str) -> None:
        """Same rows and values as the single path, one part per chunk, no scratch pieces written."""
        job = forecast_distributed(
            client, grouped_parquet, 12, tmp_path / "out", model=name, rows_per_bucket=2000, keep_scratch=True
        )
        assert job.mode == "direct" and job.n_chunks > 3 and job.n_parts == job.n_chunks
        assert "not shuffled" in job.summary()
        assert not list((tmp_path / "out" / "_scratch").rglob("*"))
        got = pd.read_parquet(tmp_path / "out")
        model = Naive() if name == "naive" else PredictLinear()
        assert_same_forecast(got, single_machine(grouped_parquet, model, 12))
        assert job.n_series == 60 and job.n_rows_out == len(got) and job.n_rows_in == len(messy_frame())
        # machines are ids, series are (id, metric) pairs; a fallback count never includes the unforecast
        assert job.n_metric_series == 180 and job.summary().startswith("60 machines (180 series: machine × metric)")
        assert job.missing == int(got.iloc[::12]["model"].isin(["none", "error"]).sum()) and job.fallback == 0

    def test_batches_inside_a_chunk(self, client, grouped_parquet: Path, tmp_path: Path) -> None:
        """A chunk larger than rows_per_bucket is forecast in batches of whole ids: same result."""
        job = forecast_distributed(client, grouped_parquet, 6, tmp_path / "out", model="naive", rows_per_bucket=300)
        assert job.mode == "direct" and job.n_parts == 10  # one row group a chunk, several batches each
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(grouped_parquet, Naive(), 6))

    def test_shuffle_always(self, client, grouped_parquet: Path, tmp_path: Path) -> None:
        """shuffle="always" takes the hashed buckets on the same input, with the same forecasts."""
        job = forecast_distributed(
            client, grouped_parquet, 6, tmp_path / "out", model="naive", rows_per_bucket=2000, shuffle="always"
        )
        assert job.mode == "shuffle"
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(grouped_parquet, Naive(), 6))
        with pytest.raises(ValueError, match="'auto' or 'always'"):
            forecast_distributed(client, grouped_parquet, 6, tmp_path / "o2", model="naive", shuffle="never")  # type: ignore[arg-type]

    def test_rerun_after_a_shuffled_run(self, client, grouped_parquet: Path, tmp_path: Path) -> None:
        """The direct run's fewer parts replace the shuffled run's parts; no stale part is read back."""
        out = tmp_path / "out"
        forecast_distributed(client, grouped_parquet, 6, out, model="naive", rows_per_bucket=500, shuffle="always")
        n_before = len(list(out.glob("part-*.parquet")))
        job = forecast_distributed(client, grouped_parquet, 6, out, model="naive", rows_per_bucket=5000)
        assert job.mode == "direct" and 2 <= job.n_parts < n_before
        assert len(list(out.glob("part-*.parquet"))) == job.n_parts
        assert_same_forecast(pd.read_parquet(out), single_machine(grouped_parquet, Naive(), 6))

    def test_fewer_chunks_than_workers_shuffle(self, client, grouped_parquet: Path, tmp_path: Path) -> None:
        """One chunk for two workers would leave one idle: the shuffle's buckets are used instead."""
        job = forecast_distributed(client, grouped_parquet, 6, tmp_path / "out", model="naive", rows_per_bucket=10**7)
        assert job.mode == "shuffle" and job.n_chunks == 1 and job.n_parts >= 2


class TestSeveralInputs:
    """Several input files are one fleet: every series of every file is forecast, each id whole in one part."""

    def test_two_files_every_id(self, client, tmp_path: Path) -> None:
        """Two CSV files with their own ids, and one id in both: the output holds each id once, whole,
        as the single path gives it on the two files' rows together (half the ids were lost: the
        second file's parts overwrote the first's, their names being the bucket number alone)."""
        a = generate_series(12, n_steps=60, seed=1, id_prefix="a-")
        b = generate_series(12, n_steps=60, seed=2, id_prefix="b-")
        shared = generate_series(1, n_steps=80, seed=3, id_prefix="both-")
        a = pd.concat([a, shared.iloc[:40]], ignore_index=True)
        b = pd.concat([b, shared.iloc[40:]], ignore_index=True)
        paths = [tmp_path / "a.csv", tmp_path / "b.csv"]
        a.to_csv(paths[0], index=False)
        b.to_csv(paths[1], index=False)
        job = forecast_distributed(client, paths, 6, tmp_path / "out", model="naive", rows_per_bucket=500)
        got = pd.read_parquet(tmp_path / "out")
        assert set(got["id"]) == set(a["id"]) | set(b["id"]) and job.n_series == 25
        one = tmp_path / "one.csv"
        pd.concat([a, b], ignore_index=True).to_csv(one, index=False)
        assert_same_forecast(got, single_machine(one, Naive(), 6))

    def test_two_parquet_files_direct(self, client, tmp_path: Path) -> None:
        """Two Parquet files holding whole machines are forecast where they are read, without a shuffle."""
        df = generate_series(8, n_steps=50, seed=4)
        ids = sorted(df["id"].unique())
        paths = [tmp_path / "p1.parquet", tmp_path / "p2.parquet"]
        df[df["id"].isin(ids[:4])].to_parquet(paths[0])
        df[df["id"].isin(ids[4:])].to_parquet(paths[1])
        job = forecast_distributed(client, paths, 6, tmp_path / "out", model="naive")
        assert job.mode == "direct" and job.n_series == 8
        df.to_parquet(tmp_path / "one.parquet")
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(tmp_path / "one.parquet", Naive(), 6))


class TestBadInput:
    """A partition or option the job cannot use at all fails it, naming what; nothing is marked complete."""

    def test_missing_model_folder(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """A wrong --model folder fails on the client, before any task runs."""
        with pytest.raises(ArtifactError):
            forecast_distributed(client, messy_parquet, 6, tmp_path / "out", model=tmp_path / "nope")

    def test_missing_id_names_the_file_line(self, client, tmp_path: Path, small_ranges: None) -> None:
        """A row without id in a late byte range of a CSV file is named by its line in the file."""
        df = generate_series(8, n_steps=60, seed=1).astype({"id": object})
        df.iloc[400, df.columns.get_loc("id")] = None
        path = (tmp_path / "fleet.csv").resolve()
        df.to_csv(path, index=False)
        with pytest.raises(SchemaError) as info:
            forecast_distributed(client, path, 6, tmp_path / "out", model="naive")
        assert str(info.value) == f"{path}: Line 402 has no id; give every row an id."
        assert not (tmp_path / "out" / "_SUCCESS").exists()

    @pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
    def test_file_without_rows_is_named(self, client, tmp_path: Path, suffix: str) -> None:
        """A partition holding a header and no rows, next to a good one, fails the job with the
        whole read's message naming it (a split task crashed on it: "zip() argument 2 is longer
        than argument 1", exit 1); no part, no scratch and no _SUCCESS are left."""
        from atomic_usage.data import read_wide

        folder = tmp_path / "in"
        folder.mkdir()
        df = generate_series(4, n_steps=30, seed=1)
        df.to_csv(folder / "a.csv", index=False)
        empty = (folder / f"b{suffix}").resolve()
        if suffix == ".parquet":
            df.head(0).to_parquet(empty)
        else:
            df.head(0).to_csv(empty, index=False)
        with pytest.raises(SchemaError) as one:
            read_wide(empty)
        for inputs in (folder, [folder / "a.csv", empty], empty):
            with pytest.raises(SchemaError) as many:
                forecast_distributed(client, inputs, 6, tmp_path / "out", model="naive")
            assert str(many.value) == str(one.value) and "holds no rows" in str(many.value)
            assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    def test_blank_lines_at_the_end(self, client, tmp_path: Path, small_ranges: None) -> None:
        """Blank lines filling the last byte ranges of a CSV file hold no rows, and that is no error:
        the file's rows are forecast as the single path forecasts them."""
        df = generate_series(4, n_steps=30, seed=1)
        path = tmp_path / "fleet.csv"
        path.write_text(df.to_csv(index=False) + "\n" * 6000)
        job = forecast_distributed(client, path, 6, tmp_path / "out", model="naive")
        assert job.n_series == 4
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(path, Naive(), 6))

    def test_quoted_newlines_in_a_split_csv(self, client, tmp_path: Path, small_ranges: None) -> None:
        """A text column whose quoted cells hold line breaks (a multi-line note) is valid CSV, which
        one process reads; cut into byte ranges by lines, a range began inside a quoted cell and
        the job failed ("' with comma\"' is not an ISO 8601 timestamp"), or could read a cell's
        tail as a row. Such a file is read whole by one task: the forecast is the single path's."""
        df = generate_series(6, n_steps=60, seed=1)
        df["note"] = ["line one\nline two, with comma" if i % 7 == 0 else "ok" for i in range(len(df))]
        path = tmp_path / "quoted.csv"
        df.to_csv(path, index=False)
        job = forecast_distributed(client, path, 6, tmp_path / "out", model="naive")
        assert job.n_series == 6
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(path, Naive(), 6))

    def test_scratch_folder_of_the_user_is_kept(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """--scratch names a folder to work in, not one to own: the job removed the whole folder
        (``--scratch /tmp`` would have emptied /tmp), at its start and at its end. The job works in
        a folder of its own inside it and removes only that, after a failure too."""
        scratch = tmp_path / "fast"
        scratch.mkdir()
        (scratch / "mine.txt").write_text("keep me")
        forecast_distributed(
            client, messy_parquet, 6, tmp_path / "out", model="naive", scratch=scratch, shuffle="always"
        )
        assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"]
        with pytest.raises(SchemaError):
            forecast_distributed(client, tmp_path / "nope.csv", 6, tmp_path / "out", model="naive", scratch=scratch)
        assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"]

    def test_scratch_that_is_a_file(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """A --scratch that is a file fails naming it before anything is written or removed: it was
        "the cluster failed during the job (FileExistsError ...); run it again" (exit 3), after the
        parts of the output's earlier run were deleted."""
        (tmp_path / "scratch").write_text("a file of the user")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "part-00000.parquet").write_bytes(b"an earlier run's part")
        with pytest.raises(SchemaError, match=r"scratch: is a file, not a folder"):
            forecast_distributed(
                client, messy_parquet, 6, tmp_path / "out", model="naive", scratch=tmp_path / "scratch"
            )
        assert (tmp_path / "scratch").read_text() == "a file of the user"
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-00000.parquet"]

    def test_output_folder_holding_the_input(self, client, tmp_path: Path) -> None:
        """An output folder that holds input files (Spark's part-*.parquet) is refused before anything
        is removed: its parts of an earlier run were removed first, the input's among them."""
        folder = tmp_path / "parts"
        folder.mkdir()
        generate_series(4, n_steps=30, seed=1).to_parquet(folder / "part-00000.parquet")
        with pytest.raises(SchemaError, match="holds the input file"):
            forecast_distributed(client, folder, 6, folder, model="naive")
        assert (folder / "part-00000.parquet").exists()
        forecast_distributed(client, folder, 6, tmp_path / "out", model="naive")  # apart: as before

    def test_output_is_a_file(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """The output of a cluster job is a folder; an existing file is refused, not replaced."""
        (tmp_path / "out.csv").write_text("keep me")
        with pytest.raises(SchemaError, match="give a folder path"):
            forecast_distributed(client, messy_parquet, 6, tmp_path / "out.csv", model="naive")
        assert (tmp_path / "out.csv").read_text() == "keep me"


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _without(df: pd.DataFrame, sid: str, metric: str) -> pd.DataFrame:
    """The forecast rows of every series but (sid, metric)."""
    return df[~((df["id"] == sid) & (df["metric"] == metric))]


def _csv_partitions(folder: Path, df: pd.DataFrame) -> list[Path]:
    """The rows of ``df`` in two CSV files, the first half and the second: every id is in both."""
    folder.mkdir()
    half = len(df) // 2
    paths = [folder / "p1.csv", folder / "p2.csv"]
    df.iloc[:half].to_csv(paths[0], index=False)
    df.iloc[half:].to_csv(paths[1], index=False)
    return paths


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV files cut into byte ranges of 2 KB, so one file is read by several split tasks."""
    from atomic_usage.cluster import forecast as forecast_module
    from atomic_usage.cluster.partitions import plan_chunks

    monkeypatch.setattr(forecast_module, "plan_chunks", functools.partial(plan_chunks, csv_block_bytes=2048))


class TestBadCell:
    """A cell that is not a number rejects only its series, as on the single-machine path: the reason
    names file, line, id and column, and every other series is forecast as in a run without it."""

    def test_shuffled_csv_partitions(self, client, tmp_path: Path, small_ranges: None) -> None:
        """The user's case on a cluster: one ``12,5%`` late in the second of two CSV files (each file
        in several byte ranges, each id in both files) failed the whole job with a SchemaError."""
        df = generate_series(8, n_steps=60, seed=1).sample(frac=1.0, random_state=2).reset_index(drop=True)
        clean = _csv_partitions(tmp_path / "clean", df)
        bad = df.astype({"cpuLoad": object})
        k = len(df) - 30  # a row of the second file's last byte range
        bad.iloc[k, bad.columns.get_loc("cpuLoad")] = "12,5%"
        paths = _csv_partitions(tmp_path / "in", bad)
        sid, ts, line = bad["id"].iloc[k], _iso(bad["timestamp"].iloc[k]), k - len(df) // 2 + 2
        job = forecast_distributed(client, tmp_path / "in", 6, tmp_path / "out", model="naive")
        assert job.n_chunks > 4 and (tmp_path / "out" / "_SUCCESS").is_file()
        got = pd.read_parquet(tmp_path / "out")
        rows = got[(got["id"] == sid) & (got["metric"] == "cpuLoad")]
        assert len(rows) == 6 and (rows["model"] == "error").all() and rows["p50"].isna().all()
        reason = rows["reason"].iloc[0]
        assert reason.startswith(
            f"rejected: {paths[1].resolve()}: cpuLoad of id {sid!r} is '12,5%' at {ts} (line {line}), not a number"
        ), reason
        assert job.missing == 1 and list(job.reasons) == [reason]
        assert (got.loc[got["id"] == sid, "model"] != "error").sum() == 2 * 6  # its other metrics are forecast
        # the single-machine path on the same rows in one file gives the same forecasts and models
        one = tmp_path / "one.csv"
        bad.to_csv(one, index=False)
        assert_same_forecast(got, single_machine(one, Naive(), 6))
        # and every other series is what a run without the bad cell gives
        forecast_distributed(client, tmp_path / "clean", 6, tmp_path / "out-clean", model="naive")
        want = pd.read_parquet(tmp_path / "out-clean")
        assert_same_forecast(_without(got, sid, "cpuLoad"), _without(want, sid, "cpuLoad"))
        assert clean[0].read_text() == paths[0].read_text()

    def test_direct_parquet_partitions(self, client, tmp_path: Path) -> None:
        """Whole machines per file, forecast where they are read (no shuffle): the same rule, the row named."""
        df = generate_series(6, n_steps=50, seed=1)
        ids = sorted(df["id"].unique())
        for name, frame in (("clean", df), ("in", df.astype({"cpuLoad": str}))):
            (tmp_path / name).mkdir()
            frame[frame["id"].isin(ids[:3])].to_parquet(tmp_path / name / "p1.parquet")
            second = frame[frame["id"].isin(ids[3:])].reset_index(drop=True)
            if name == "in":  # a string column, as a CSV export gives
                second.iloc[7, second.columns.get_loc("cpuLoad")] = "12,5%"
                sid, ts = second["id"].iloc[7], _iso(second["timestamp"].iloc[7])
            second.to_parquet(tmp_path / name / "p2.parquet")
        job = forecast_distributed(client, tmp_path / "in", 6, tmp_path / "out", model="naive")
        assert job.mode == "direct" and job.missing == 1
        got = pd.read_parquet(tmp_path / "out")
        reason = got.loc[(got["id"] == sid) & (got["metric"] == "cpuLoad"), "reason"].iloc[0]
        p2 = (tmp_path / "in" / "p2.parquet").resolve()
        assert reason.startswith(f"rejected: {p2}: cpuLoad of id {sid!r} is '12,5%' at {ts} (row 8 of the file)")
        mine = got[got["id"].isin(ids[3:])]
        assert_same_forecast(mine, single_machine(p2, Naive(), 6))
        forecast_distributed(client, tmp_path / "clean", 6, tmp_path / "out-clean", model="naive")
        want = pd.read_parquet(tmp_path / "out-clean")
        assert_same_forecast(_without(got, sid, "cpuLoad"), _without(want, sid, "cpuLoad"))

    def test_far_out_value_rejects_its_series(self, client, tmp_path: Path) -> None:
        """A percent far out of range (a per-core sum) rejects its series, as read_wide does; it was clipped."""
        df = messy_frame()
        sid = df["id"].iloc[0]
        df.loc[df.index[df["id"] == sid][[5, 40]], "cpuLoad"] = 180.0
        path = tmp_path / "fleet.parquet"
        df.to_parquet(path, row_group_size=1500)
        job = forecast_distributed(client, path, 6, tmp_path / "out", model="naive", rows_per_bucket=2000)
        got = pd.read_parquet(tmp_path / "out")
        assert_same_forecast(got, single_machine(path, Naive(), 6))
        reason = got.loc[(got["id"] == sid) & (got["metric"] == "cpuLoad"), "reason"].iloc[0]
        assert f"{path.resolve()}: cpuLoad of id {sid!r} is 180.0" in reason and "(2 value(s) far outside" in reason
        assert job.missing == 1


def test_reasons_are_distinct(client, tmp_path: Path) -> None:
    """A cluster job keeps the first MAX_REASONS distinct not-forecast reasons, as the whole read
    prints them: an id with no value has one reason for its three metrics, and the job kept
    MAX_REASONS reasons with each three times (the CLI printed 7 of them)."""
    from atomic_usage.cluster.chunked import MAX_REASONS

    stamps = [f"2026-01-05T00:{m:02d}:00Z" for m in range(0, 60, 5)]
    inp = tmp_path / "empty.csv"
    inp.write_text(
        "id,timestamp,cpuLoad,memoryUsage,storageUsage\n"
        + "".join(f"m{i:02d},{t},,,\n" for i in range(25) for t in stamps)
    )
    job = forecast_distributed(client, inp, 3, tmp_path / "out", model="naive")
    assert job.missing == 75
    assert len(job.reasons) == len(set(job.reasons)) == MAX_REASONS


class TestMixedColumn:
    """A column with text in some chunks of a file and numbers in others is a metric throughout, as on the
    single-machine path: its text cells reject their series. The chunks with text only ignored it."""

    def _frame(self) -> pd.DataFrame:
        df = generate_series(8, n_steps=60, seed=1)
        df["value"] = df["cpuLoad"].round(1).astype(object)
        df.loc[df.index[:120], "value"] = "high"  # text only in the first byte ranges, or row group
        return df

    def test_shuffled_csv(self, client, tmp_path: Path, small_ranges: None) -> None:
        """A CSV file in byte ranges of 2 KB: the forecasts and models of the single-machine path."""
        path = tmp_path / "in.csv"
        self._frame().to_csv(path, index=False)
        job = forecast_distributed(client, path, 6, tmp_path / "out", model="naive")
        assert job.n_chunks > 4
        got = pd.read_parquet(tmp_path / "out")
        assert_same_forecast(got, single_machine(path, Naive(), 6))
        assert (got.loc[got["metric"] == "value", "model"] == "error").any()

    def test_direct_parquet(self, client, tmp_path: Path) -> None:
        """Row groups of whole machines, forecast where they are read: the same rule, parts rewritten."""
        path = write_grouped(self._frame().astype({"value": str}), tmp_path / "in.parquet", 2)
        job = forecast_distributed(client, path, 6, tmp_path / "out", model="naive", rows_per_bucket=100)
        assert job.mode == "direct" and job.n_parts == 4
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(path, Naive(), 6))


class TestWarningsOnce:
    """A warning every chunk meets (a text column, a misspelled metric, values clipped) is logged once
    per job, by the client, with the counts of all the chunks; the workers log none of them."""

    def _run(self, client, folder: Path, out: Path, caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
        from ._worker_logs import kept, start_keeping

        caplog.set_level(logging.WARNING, logger="atomic_usage")
        client.run(start_keeping)
        forecast_distributed(client, folder, 6, out, model="naive", rows_per_bucket=2000)
        on_workers = [m for ms in client.run(kept).values() for m in ms]
        return [r.getMessage() for r in caplog.records if r.name.startswith("atomic_usage")], on_workers

    def test_text_column_and_misspelled_metric(
        self, client, tmp_path: Path, caplog: pytest.LogCaptureFixture, small_ranges: None
    ) -> None:
        """Two CSV files in many byte ranges, with a ``note`` column and ``memUsage``: one warning each."""
        df = generate_series(8, n_steps=60, seed=1).rename(columns={"memoryUsage": "memUsage"})
        df["note"] = "maintenance"
        _csv_partitions(tmp_path / "in", df)
        logged, on_workers = self._run(client, tmp_path / "in", tmp_path / "out", caplog)
        assert on_workers == []
        text = [m for m in logged if "['note']" in m]
        assert len(text) == 1 and "ignored" in text[0], logged
        assert text[0].startswith(f"{(tmp_path / 'in' / 'p1.csv').resolve()} (and 1 other file): ")
        close = [m for m in logged if "'memUsage'" in m]
        assert len(close) == 1 and "did you mean 'memoryUsage'" in close[0], logged
        got = pd.read_parquet(tmp_path / "out")
        assert set(got["metric"]) == {"cpuLoad", "memUsage", "storageUsage"}

    def test_clipped_values_counted_over_chunks(
        self, client, tmp_path: Path, caplog: pytest.LogCaptureFixture, small_ranges: None
    ) -> None:
        """Small overshoots in 3 machines, spread over every chunk: one warning counting all 9 values."""
        df = generate_series(8, n_steps=60, seed=1).sample(frac=1.0, random_state=2).reset_index(drop=True)
        for sid in ("vm-001", "vm-004", "vm-006"):
            rows = df.index[df["id"] == sid]
            df.loc[rows[[2, 30, 58]], "cpuLoad"] = 103.0
        _csv_partitions(tmp_path / "in", df)
        logged, on_workers = self._run(client, tmp_path / "in", tmp_path / "out", caplog)
        assert on_workers == []
        clipped = [m for m in logged if "clipped into range" in m]
        assert len(clipped) == 1 and "(9 such value(s) in 3 series)" in clipped[0], logged

    def test_rejected_series_once(self, client, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """A series rejected in several chunks is named once, with the count of all its bad values."""
        df = messy_frame()
        sid = df["id"].iloc[0]
        df.loc[df.index[df["id"] == sid][[5, 60, 120]], "cpuLoad"] = 180.0  # rows in several row groups
        df.to_parquet(tmp_path / "fleet.parquet", row_group_size=1500)
        logged, on_workers = self._run(client, tmp_path / "fleet.parquet", tmp_path / "out", caplog)
        assert on_workers == []
        named = [m for m in logged if f"of id {sid!r}" in m]
        assert len(named) == 1 and "(3 value(s) far outside" in named[0], logged


class TestCli:
    """`atomic-usage forecast --scheduler/--cluster` writes parts equal to the plain command's file."""

    def test_scheduler_option(self, client, messy_parquet: Path, tmp_path: Path) -> None:
        """Same input, same model, a running scheduler: the parts hold the rows of the single-file output."""
        from atomic_usage.cli import app

        runner = CliRunner()
        base = ["forecast", "--input", str(messy_parquet), "--horizon", "6", "--model", "naive"]
        address = client.scheduler.address
        r1 = runner.invoke(app, [*base, "--output", str(tmp_path / "one.parquet")])
        r2 = runner.invoke(app, [*base, "--output", str(tmp_path / "parts"), "--scheduler", address])
        assert r1.exit_code == 0, r1.output
        assert r2.exit_code == 0, r2.output
        assert_same_forecast(pd.read_parquet(tmp_path / "parts"), pd.read_parquet(tmp_path / "one.parquet"))

    def test_bad_cell_exit_0(self, client, tmp_path: Path) -> None:
        """A non-numeric cell on the cluster: exit 0, the series named as not forecast, the parts written."""
        from atomic_usage.cli import app

        df = generate_series(6, n_steps=50, seed=1).astype({"cpuLoad": object})
        df.iloc[200, df.columns.get_loc("cpuLoad")] = "high"
        _csv_partitions(tmp_path / "in", df)
        args = ["forecast", "-i", str(tmp_path / "in"), "-H", "3", "-o", str(tmp_path / "parts"), "-m", "naive"]
        r = CliRunner().invoke(app, [*args, "--scheduler", client.scheduler.address])
        text = " ".join(r.output.split())
        assert r.exit_code == 0, text
        assert f"not forecast: rejected: {(tmp_path / 'in' / 'p2.csv').resolve()}: cpuLoad of id" in text
        assert "'high'" in text and "(1 series not forecast" in text
        assert (tmp_path / "parts" / "_SUCCESS").is_file()

    def test_dask_info_not_shown(self, tmp_path: Path) -> None:
        """`forecast --cluster local:2` in a fresh process: stderr shows our summary and warnings and
        Dask's warnings, not Dask's INFO lines (the scheduler's and nannies' start and stop were shown,
        since importing distributed set its loggers back to INFO after the command had quieted them)."""
        import subprocess
        import sys

        import atomic_usage

        df = generate_series(6, n_steps=40, seed=1)
        df["note"] = "maintenance"  # a text column: our warning, which must still show
        df.to_csv(tmp_path / "in.csv", index=False)
        script = (
            "import logging, sys\n"
            "from atomic_usage.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "logging.getLogger('distributed.scheduler').warning('a warning from Dask')\n"
            "sys.exit(code)\n"
        )
        args = ["forecast", "-i", str(tmp_path / "in.csv"), "-H", "3", "-o", str(tmp_path / "out"), "-m", "naive"]
        env = {**os.environ, "PYTHONPATH": str(Path(atomic_usage.__file__).parents[1]), "LOG_LEVEL": "INFO"}
        r = subprocess.run(
            [sys.executable, "-c", script, *args, "--cluster", "local:2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        lines = r.stderr.splitlines()
        assert r.returncode == 0, r.stderr
        assert [x for x in lines if x.startswith("INFO distributed")] == [], r.stderr
        assert any(x.startswith("6 machines (18 series") for x in lines), r.stderr
        assert any(x.startswith("WARNING atomic_usage.data:") and "['note']" in x for x in lines), r.stderr
        assert "WARNING distributed.scheduler: a warning from Dask" in lines, r.stderr

    def test_bad_cluster_value_exit_code(self, messy_parquet: Path, tmp_path: Path) -> None:
        """A malformed --cluster is a usage error (exit 2) with the expected form in the message."""
        from atomic_usage.cli import app

        r = CliRunner().invoke(
            app,
            ["forecast", "-i", str(messy_parquet), "-H", "3", "-o", str(tmp_path / "o"), "--cluster", "yarn"],
        )
        assert r.exit_code == 2 and "local or local:N" in r.output

    @pytest.mark.parametrize("failure", ["task", "model plugin"])
    def test_failure_on_a_worker_is_one_line(self, tmp_path: Path, failure: str) -> None:
        """`forecast --cluster local:2` where a task fails on a worker (a row without id) or the model
        cannot load there (a model.onnx ONNX Runtime refuses): stderr holds the cause once, in the
        CLI's one error line, and no traceback (the workers, writing to the same stderr, logged Dask's
        "Compute Failed ... Traceback:" or the plugin's set-up traceback, and the client printed
        onnxruntime's InvalidArgument as a traceback)."""
        import shutil
        import subprocess
        import sys

        import atomic_usage

        df = generate_series(8, n_steps=60, seed=1).astype({"id": object})
        model = "naive"
        if failure == "task":
            df.iloc[400, df.columns.get_loc("id")] = None
            message, status = f"error: {(tmp_path / 'in.csv').resolve()}: Line 402 has no id", 2
        else:
            folder = tmp_path / "model"
            shutil.copytree(Path(atomic_usage.__file__).parent / "models" / "_default", folder)
            (folder / "model.onnx").write_bytes(b"")
            model = str(folder)
            message, status = f"error: {folder / 'model.onnx'}: ONNX Runtime cannot load the network", 3
        df.to_csv(tmp_path / "in.csv", index=False)
        args = ["forecast", "-i", str(tmp_path / "in.csv"), "-H", "3", "-o", str(tmp_path / "out"), "-m", model]
        env = {**os.environ, "PYTHONPATH": str(Path(atomic_usage.__file__).parents[1])}
        r = subprocess.run(
            [sys.executable, "-m", "atomic_usage.cli", *args, "--cluster", "local:2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert r.returncode == status, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert [line for line in r.stderr.splitlines() if line.startswith(message)] != [], r.stderr
        assert r.stderr.count(message.removeprefix("error: ")) == 1, r.stderr


def _kill_one_worker_mid_job(path: Path, out: Path) -> tuple[object, int]:
    """Runs a slow forecast of ``path`` on two workers and SIGKILLs one once the first part is
    written; returns the finished job and how many parts there were at the kill."""
    from atomic_usage.cluster import connect, parse_target

    from ._models import SlowNaive

    with connect(parse_target("local:2", None)) as client:
        pids = client.run(os.getpid)
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["job"] = forecast_distributed(client, path, 12, out, model=SlowNaive(0.5), rows_per_bucket=600)
            except BaseException as exc:  # reported by the main thread
                box["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        parts_at_kill = len(list(out.glob("part-*.parquet")))
        assert thread.is_alive() and parts_at_kill >= 1
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        thread.join(120)
        assert "error" not in box, box.get("error")
        return box["job"], parts_at_kill


class TestWorkerKilled:
    """A worker killed mid-job: Dask re-runs its tasks; the output is complete, without duplicates."""

    @pytest.mark.slow
    def test_kill_one_worker_during_forecasts(self, tmp_path: Path) -> None:
        """SIGKILL one of two worker processes once the first part is written; the job still finishes."""
        from ._models import SlowNaive

        path = tmp_path / "fleet.parquet"
        messy_frame(n_series=80, n_steps=120, seed=9).to_parquet(path, row_group_size=2000)
        out = tmp_path / "out"
        job, parts_at_kill = _kill_one_worker_mid_job(path, out)
        assert parts_at_kill < job.n_parts  # type: ignore[attr-defined]
        got = pd.read_parquet(out)
        assert_same_forecast(got, single_machine(path, SlowNaive(0.0), 12))
        assert not list(out.glob(".*.tmp"))

    @pytest.mark.slow
    def test_kill_one_worker_during_direct_forecasts(self, tmp_path: Path) -> None:
        """The same kill without a shuffle: the dead worker's chunks are read and forecast again."""
        from ._models import SlowNaive

        path = write_grouped(messy_frame(n_series=80, n_steps=120, seed=9), tmp_path / "fleet.parquet", 5)
        out = tmp_path / "out"
        job, parts_at_kill = _kill_one_worker_mid_job(path, out)
        assert job.mode == "direct" and parts_at_kill < job.n_parts  # type: ignore[attr-defined]
        assert_same_forecast(pd.read_parquet(out), single_machine(path, SlowNaive(0.0), 12))
        assert not list(out.glob(".*.tmp"))


class TestTls:
    """The tls transport: a LocalCluster with throw-away certificates gives the same forecasts."""

    @pytest.mark.slow
    def test_local_tls_cluster(self, messy_parquet: Path, tmp_path: Path) -> None:
        """`--cluster local:2 --protocol tls`: every comm is TLS, the output equals the tcp one."""
        from atomic_usage.cluster import connect, parse_target

        with connect(parse_target("local:2", None, "tls")) as client:
            assert client.scheduler.address.startswith("tls://")
            assert all(a.startswith("tls://") for a in client.scheduler_info(n_workers=-1)["workers"])
            forecast_distributed(client, messy_parquet, 6, tmp_path / "out", model="naive")
        assert_same_forecast(pd.read_parquet(tmp_path / "out"), single_machine(messy_parquet, Naive(), 6))
