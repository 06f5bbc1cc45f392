"""The command line end to end: forecast, evaluate, train, tasks, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atomic_usage.cli import app
from atomic_usage.data import generate_series
from atomic_usage.models.base import FRAME_COLUMNS

runner = CliRunner()


def write_fleet(path: Path, n: int = 4, steps: int = 60) -> Path:
    generate_series(n, n_steps=steps, seed=5).to_csv(path, index=False)
    return path


class TestForecast:
    """`atomic-usage forecast` through the file contract."""

    @pytest.mark.parametrize("model", ["naive", "predict_linear", "seasonal_naive"])
    def test_baselines(self, tmp_path: Path, model: str) -> None:
        """Every id and metric gets H rows of id,timestamp,metric,mean,p10,p50,p90,model."""
        inp = write_fleet(tmp_path / "in.csv")
        out = tmp_path / "out.csv"
        res = runner.invoke(
            app, ["forecast", "--input", str(inp), "--horizon", "6", "--output", str(out), "--model", model]
        )
        assert res.exit_code == 0, res.output
        df = pd.read_csv(out)
        assert list(df.columns) == list(FRAME_COLUMNS)
        # 60 steps are shorter than a day and 2: seasonal naive serves them by their last value, and says so
        served = "naive(short-season)" if model == "seasonal_naive" else model
        assert len(df) == 4 * 3 * 6 and set(df["model"]) == {served}
        assert (df["p10"] <= df["p50"]).all() and (df["p50"] <= df["p90"]).all()
        assert df["timestamp"].iloc[0] == "2026-01-05T05:00:00Z"

    def test_neural_model_and_short_series(self, tmp_path: Path, tiny_model_dir: Path) -> None:
        """A model folder serves; a series too short for it is forecast and flagged in the model column."""
        df = generate_series(2, n_steps=60, seed=1)
        short = df[df["id"] == "vm-001"].tail(2)
        inp = tmp_path / "in.parquet"
        pd.concat([df[df["id"] == "vm-000"], short]).to_parquet(inp)
        out = tmp_path / "out.parquet"
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "12", "-o", str(out), "-m", str(tiny_model_dir)])
        assert res.exit_code == 0, res.output
        got = pd.read_parquet(out)
        models = got.groupby("id")["model"].first().to_dict()
        assert models == {"vm-000": "tiny", "vm-001": "naive(short-history)"}
        # machines are ids, series are (id, metric) pairs: 3 of vm-001's on the fallback
        line = " ".join(res.output.split())
        assert "2 machines (6 series: machine × metric)" in line and "(3 series on a fallback" in line

    @pytest.mark.parametrize("command", ["forecast", "report"])
    def test_output_that_is_the_input_is_refused(self, tmp_path: Path, command: str) -> None:
        """-o naming the --input file (or a link to it) exits 2 and leaves the history as it was;
        report too, which wrote its HTML page over the history (exit 0)."""
        inp = write_fleet(tmp_path / "in.csv")
        before = inp.read_bytes()
        (tmp_path / "link.csv").symlink_to(inp)
        for out in (inp, tmp_path / "link.csv"):
            res = runner.invoke(app, [command, "-i", str(inp), "-H", "3", "-o", str(out), "-m", "naive"])
            assert res.exit_code == 2 and "is the --input file" in _flat(res.output)
        assert inp.read_bytes() == before
        # the output is written first to <output>.tmp, which must not be the history either
        staged = write_fleet(tmp_path / "out.csv.tmp")
        before = staged.read_bytes()
        res = runner.invoke(
            app, [command, "-i", str(staged), "-H", "3", "-o", str(tmp_path / "out.csv"), "-m", "naive"]
        )
        assert res.exit_code == 2 and "is written first to the --input file" in _flat(res.output)
        assert staged.read_bytes() == before and not (tmp_path / "out.csv").exists()

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("timestamp,cpuLoad\n2024-01-01,1\n", "missing: ['id']"),
            ("id,cpuLoad\na,1\n", "missing: ['timestamp']"),
            ("id,timestamp\na,2024-01-01\n", "No metric column"),
            ("\x00\x01garbage", "columns are missing"),
        ],
    )
    def test_bad_files_exit_2_with_one_message(self, tmp_path: Path, content: str, message: str) -> None:
        """Unreadable files and missing columns exit 2 with a message naming the file, no traceback."""
        inp = tmp_path / "bad.csv"
        inp.write_text(content)
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.csv"), "-m", "naive"])
        assert res.exit_code == 2
        text = " ".join(res.output.split())
        assert message in text and "bad.csv" in text and "Traceback" not in text

    def test_an_id_without_values_is_named_once(self, tmp_path: Path) -> None:
        """An id with no value in any metric has one "not forecast" line, not one per metric."""
        inp = tmp_path / "in.csv"
        inp.write_text(
            "id,timestamp,cpuLoad,memoryUsage,requests\n"
            "empty,2026-01-05T00:00:00Z,,,\nempty,2026-01-05T00:05:00Z,,,\n"
            "a,2026-01-05T00:00:00Z,5,6,7\na,2026-01-05T00:05:00Z,6,7,8\na,2026-01-05T00:10:00Z,7,8,9\n"
        )
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.csv"), "-m", "naive"])
        assert res.exit_code == 0, res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("not forecast:")]
        assert len(lines) == 1 and "id 'empty'" in lines[0]
        assert "(3 series not forecast" in _flat(res.output)

    def test_a_missing_extra_is_named_before_any_work(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """forecast --plot without matplotlib, and collect without psutil, name their extra before they
        write or announce anything (forecast wrote its table, then failed; collect first printed
        'collecting every ...')."""
        import sys

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
        for module in ("matplotlib", "matplotlib.figure", "psutil"):
            monkeypatch.setitem(sys.modules, module, None)  # import fails, as without the extra
        inp, out = write_fleet(tmp_path / "in.csv"), tmp_path / "o.csv"
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(out), "-m", "naive", "--plot", str(tmp_path / "c")]
        )
        assert res.exit_code == 2 and "atomic-usage[report]" in _flat(res.output) and not out.exists()
        res = runner.invoke(app, ["report", "-i", str(tmp_path / "absent.csv"), "-o", str(tmp_path / "r.html")])
        assert res.exit_code == 2 and "atomic-usage[report]" in _flat(res.output) and "absent.csv" not in res.output
        res = runner.invoke(app, ["collect", "--count", "1", "--interval", "5s"])
        assert res.exit_code == 2 and "psutil" in res.output and "collecting every" not in res.output

    def test_a_cluster_output_is_a_folder(self, tmp_path: Path) -> None:
        """--cluster with --output out.csv is refused before a cluster starts: it wrote a folder named
        out.csv holding Parquet parts."""
        inp = write_fleet(tmp_path / "in.csv")
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "out.csv"), "--cluster", "local:2"]
        )
        assert res.exit_code == 2 and "a folder of Parquet parts" in _flat(res.output)
        assert not (tmp_path / "out.csv").exists()

    def test_missing_model_folder_exits_3(self, tmp_path: Path) -> None:
        """A model folder that does not exist is a clear error naming the baselines, and an empty one
        names the missing file."""
        inp = write_fleet(tmp_path / "in.csv")
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.csv"), "-m", str(tmp_path / "nomodel")]
        )
        text = " ".join(res.output.split())
        assert res.exit_code == 3 and "is neither a baseline (damped_trend, naive," in text and "nomodel" in text
        (tmp_path / "empty").mkdir()
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o.csv"), "-m", str(tmp_path / "empty")]
        )
        assert res.exit_code == 3 and "model.json is missing" in " ".join(res.output.split())

    def test_a_misspelled_baseline_is_named_before_the_input_is_read(self, tmp_path: Path) -> None:
        """--model NAIVE says which baseline was meant, before reading the input (an unreadable input
        is not what it reports), instead of 'NAIVE: model.json is missing' after reading it whole."""
        res = runner.invoke(
            app,
            ["forecast", "-i", str(tmp_path / "absent.csv"), "-H", "3", "-o", str(tmp_path / "o.csv"), "-m", "NAIVE"],
        )
        text = " ".join(res.output.split())
        assert res.exit_code == 3 and "did you mean 'naive'?" in text and "absent.csv" not in text

    @pytest.mark.parametrize(
        "extra", [["--rows-per-bucket", "1"], ["--cluster", "local:1"]], ids=["chunked", "cluster"]
    )
    def test_a_misspelled_baseline_is_named_on_every_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
    ) -> None:
        """--model NAIVE gets the same message in chunks and on a cluster, before any cluster starts:
        a cluster run started one, then said '<cwd>/NAIVE: model.json is missing'."""
        from atomic_usage import cli as cli_module

        def no_cluster(*_: object) -> None:
            raise AssertionError("a cluster was started for a --model that names nothing")

        monkeypatch.setattr(cli_module, "_cluster_client", no_cluster)
        inp = tmp_path / "in.csv"
        inp.write_text("id,timestamp,cpuLoad\n" + "".join(f"a,2026-01-05T00:{m:02d}:00Z,5\n" for m in range(0, 30, 5)))
        res = runner.invoke(
            app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path / "o"), "-m", "NAIVE", *extra]
        )
        text = " ".join(res.output.split())
        assert res.exit_code == 3 and "did you mean 'naive'?" in text, text


class TestForecastOddColumns:
    """One bad cell or an extra column never blocks the fleet: it is named and the rest is forecast."""

    ROWS = [("a", "abc", "x"), ("a", "5", "y"), ("a", "6", "y"), ("b", "7", "z"), ("b", "8", "z"), ("b", "9", "z")]

    def _run(self, tmp_path: Path, header: str, rows: list[tuple[str, ...]]) -> tuple[object, pd.DataFrame]:
        inp = tmp_path / "in.csv"
        lines = [header] + [f"{r[0]},2026-01-01T00:{5 * (k % 3):02d}:00Z,{','.join(r[1:])}" for k, r in enumerate(rows)]
        inp.write_text("\n".join(lines) + "\n")
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "2", "-o", str(tmp_path / "o.csv"), "-m", "naive"])
        return res, pd.read_csv(tmp_path / "o.csv", keep_default_na=False) if res.exit_code == 0 else pd.DataFrame()

    def test_non_numeric_cell_rejects_only_its_series(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """The user's file: ``id,timestamp,cpuLoad`` with ``a,...,abc`` on line 2 was refused whole
        ("Column 'cpuLoad' holds a non-numeric value 'abc' (row 1, id a)"). Now series a/cpuLoad is
        rejected, naming id, field, timestamp and the file line, and b is forecast."""
        caplog.set_level(logging.INFO, logger="atomic_usage")
        res, out = self._run(tmp_path, "id,timestamp,cpuLoad", [r[:2] for r in self.ROWS])
        text = " ".join(res.output.split())
        assert res.exit_code == 0, text
        a, b = out[out["id"] == "a"], out[out["id"] == "b"]
        assert (a["model"] == "error").all() and (b["model"] == "naive").all() and (b["p50"] == "9").all()
        reason = a["reason"].iloc[0]
        assert reason.startswith("rejected: cpuLoad of id 'a' is 'abc' at 2026-01-01T00:00:00Z (line 2)")
        assert "not forecast: " + reason in text
        assert any("'abc'" in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
        # the rejected series' values are not "left missing": it is reported as not forecast
        summary = [r.getMessage() for r in caplog.records if "left missing" in r.getMessage()]
        assert summary and summary[0].endswith(" 0 left missing")

    def test_text_column_is_ignored_with_a_warning(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """An extra label column ``note`` is not a metric: it is ignored, with a warning naming it."""
        res, out = self._run(
            tmp_path, "id,timestamp,cpuLoad,note", [(r[0], str(5 + k), r[2]) for k, r in enumerate(self.ROWS)]
        )
        assert res.exit_code == 0, res.output
        assert set(out["metric"]) == {"cpuLoad"} and (out["model"] == "naive").all()
        assert any("['note']" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize(("column", "meant"), [("cpuload", "cpuLoad"), ("memUsage", "memoryUsage")])
    def test_misspelled_metric_is_named(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str, meant: str
    ) -> None:
        """A misspelled metric (``cpuload``, ``memUsage``) is still forecast as a count, as DESIGN allows
        any named numeric column, but a warning names it and the metric it looks like."""
        res, out = self._run(
            tmp_path, f"id,timestamp,{column}", [(r[0], str(150 + k)) for k, r in enumerate(self.ROWS)]
        )
        assert res.exit_code == 0, res.output
        assert set(out["metric"]) == {column} and (out["p50"].astype(float) > 100).all()  # a count: not clipped
        warned = [r.getMessage() for r in caplog.records if repr(column) in r.getMessage()]
        assert warned and f"did you mean {meant!r}" in warned[0]


class TestTrainAndDataset:
    """`dataset build` and `train` write what they promise."""

    def test_dataset_build_and_train(self, tmp_path: Path) -> None:
        """A training set is written as Parquet; training on it writes a loadable model folder."""
        pytest.importorskip("torch")
        inp = write_fleet(tmp_path / "fleet.csv", n=6, steps=120)
        ts = tmp_path / "train.parquet"
        res = runner.invoke(app, ["dataset", "build", "--data", str(inp), "--holdout-last", "1h", "--out", str(ts)])
        assert res.exit_code == 0, res.output
        assert pd.read_parquet(ts)["values"].map(len).eq(120 - 12).all()
        out = tmp_path / "model"
        res = runner.invoke(
            app,
            [
                "train",
                "--data",
                str(ts),
                "--out",
                str(out),
                "--steps",
                "5",
                "--batch-size",
                "16",
                "--context",
                "24",
                "--horizon",
                "12",
                "--near-context",
                "12",
                "--near-horizon",
                "6",
                "--near-steps",
                "5",
            ],
        )
        assert res.exit_code == 0, res.output
        from atomic_usage.models.artifact import load_model, read_card
        from atomic_usage.models.neural import SplitHorizon

        card = read_card(out)
        assert card.training["command"].startswith("atomic-usage train") and card.context_length == 24
        # train calibrates the served interval on the ends of its training series
        assert len(card.serving["interval_scale"]) == 12 and card.serving["calibration"]["windows"] > 0
        # the short network serves the first steps; after them the long network or naive, per series
        assert card.serving["selection"] == "after-near"
        served = load_model(out)
        assert served.interval_scale.tolist() == card.serving["interval_scale"]  # type: ignore[attr-defined]
        # the short network serves the first 6 steps, from its own file
        assert card.near["file"] == "near.onnx" and (out / "near.onnx").is_file()
        raw = load_model(out, raw=True)
        assert isinstance(raw, SplitHorizon) and raw.near.spec.context == 12 and raw.near.spec.horizon == 6
        from atomic_usage.models.ensemble import BacktestSelector

        split = served.candidates[0]  # type: ignore[attr-defined]
        assert isinstance(split, SplitHorizon) and isinstance(split.far, BacktestSelector)
        assert [c.name for c in split.far.candidates] == ["atomic", "naive", "damped_trend"]
        assert split.spec.context == 24
        ramp = np.linspace(10, 40, 60)
        fc = served.forecast_arrays([ramp], 12, np.array([True]))
        assert fc.shape == (1, 3, 12) and (np.diff(fc, axis=1) >= 0).all()
        # calibrate redoes it in place, recording its own command
        res = runner.invoke(app, ["calibrate", "--model", str(out), "--data", str(ts)])
        assert res.exit_code == 0, res.output
        again = read_card(out)
        assert again.serving["calibration"]["command"].startswith("atomic-usage calibrate")
        assert again.version == card.version  # the network is untouched
        res = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "nowhere"), "--data", str(ts)])
        assert res.exit_code != 0 and "model.json is missing" in res.output
        assert load_model(out).forecast_arrays(
            [pd.Series(range(30), dtype=float).to_numpy()], 12, pd.Series([True]).to_numpy()
        ).shape == (1, 3, 12)


class TestTrainingCommand:
    """model.json records the train and calibrate commands exactly as given, so they run again."""

    def test_command_as_given_and_rerunnable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Paired --data/--holdout-* options keep their order, an option given at its default stays."""
        pytest.importorskip("torch")
        import shlex

        from atomic_usage.models.artifact import read_card

        monkeypatch.chdir(tmp_path)
        write_fleet(tmp_path / "a.csv", n=4, steps=120)
        write_fleet(tmp_path / "b b.csv", n=3, steps=100)
        args = [
            "train",
            "--data",
            "a.csv",
            "--holdout-last",
            "1h",
            "--holdout-machines",
            "yes",
            "--data",
            "b b.csv",
            "--holdout-last",
            "2h",
            "--holdout-machines",
            "no",
            "--seed",
            "0",  # the default, given: it stays in the record
            "--steps=3",
            "--batch-size",
            "16",
            "--context",
            "24",
            *("--horizon", "12", "--near-context", "12", "--near-horizon", "6", "--near-steps", "3"),
            *("--out", "m"),
        ]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        card = read_card(tmp_path / "m")
        command = card.training["command"]
        assert command == shlex.join(["atomic-usage", *args])
        assert "--data a.csv --holdout-last 1h --holdout-machines yes --data 'b b.csv' --holdout-last 2h" in command
        assert card.serving["calibration"]["command"] == command
        # every option's value, the defaults too
        params = card.training["parameters"]
        assert params["data"] == ["a.csv", "b b.csv"] and params["seed"] == 0 and params["selection"] == "after-near"
        # the record runs again, to the same data
        again = runner.invoke(app, shlex.split(command)[1:-1] + ["m2"])
        assert again.exit_code == 0, again.output
        assert read_card(tmp_path / "m2").training["data_fingerprint"] == card.training["data_fingerprint"]
        res = runner.invoke(app, ["calibrate", "--model", "m", "--data", "a.csv", "--holdout-last", "1h"])
        assert res.exit_code == 0, res.output
        assert read_card(tmp_path / "m").serving["calibration"]["command"] == (
            "atomic-usage calibrate --model m --data a.csv --holdout-last 1h"
        )


class TestEngineCommands:
    """`tasks` and `stats` read the durable store."""

    def test_tasks_list_show(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A processed payload shows up as a done task whose results open."""
        from atomic_usage import Settings
        from atomic_usage.engine.predictor import UsagePredictor
        from atomic_usage.models.baselines import Naive

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path))
        with UsagePredictor(Settings.from_env(), model=Naive()) as p:
            r = p.process({"usageData": [{"id": "a", "cpuLoad": 5}]}, request_id="cli-1")
        res = runner.invoke(app, ["tasks", "list", "--json"])
        assert res.exit_code == 0 and "cli-1" in res.output
        res = runner.invoke(app, ["tasks", "show", r["taskId"]])
        assert res.exit_code == 0 and '"status": "done"' in res.output and '"cpuLoad"' in res.output
        res = runner.invoke(app, ["tasks", "show", "missing"])
        assert res.exit_code != 0 and "No task has the id" in " ".join(res.output.split())
        res = runner.invoke(app, ["stats", "--json"])
        assert res.exit_code == 0 and '"done": 1' in res.output

    @pytest.mark.parametrize("command", [["tasks", "list"], ["tasks", "show", "x"], ["stats"], ["tasks", "recover"]])
    def test_a_folder_without_a_store(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
    ) -> None:
        """The commands on the stored tasks name a data folder that holds no store and create nothing
        there (a mistyped ATOMIC_DATA_DIR got a new empty store and an empty table; tasks recover, a
        new store and keyring there and 'resumed 0 task(s)')."""
        folder = tmp_path / "typo"
        monkeypatch.setenv("ATOMIC_DATA_DIR", str(folder))
        res = runner.invoke(app, command, terminal_width=400)
        assert res.exit_code == 2
        assert "no task store in" in res.output and str(folder) in res.output and "ATOMIC_DATA_DIR" in res.output
        assert not folder.exists()

    def test_recover_says_what_a_lease_still_holds(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Right after a crash, `tasks recover` resumes nothing (the dead process's lease still runs) and
        says so, with the way to resume now; it said only 'resumed 0 task(s)' while a task stayed running."""
        from atomic_usage import Settings
        from atomic_usage.engine.store import STORE_FILENAME, TaskStore

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path))
        store = TaskStore(Settings.from_env().data_dir / STORE_FILENAME)
        payload = {"usageData": [{"id": "a", "cpuLoad": 5}]}
        store.accept(payload, request_id="crashed", owner="a-dead-process", claim=True)
        store.close()
        res = runner.invoke(app, ["tasks", "recover"], terminal_width=400)
        assert res.exit_code == 0, res.output
        assert "resumed 0 task(s)" in res.output
        assert "1 task(s) still unfinished under a lease of 30 s" in res.output and "--force" in res.output
        res = runner.invoke(app, ["tasks", "recover", "--force"], terminal_width=400)
        assert res.exit_code == 0 and "resumed 1 task(s)" in res.output and "still unfinished" not in res.output

    @pytest.mark.parametrize("width", [60, 80, 120])
    def test_tasks_list_never_cuts_ids(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
        """On any terminal width every task and request id is shown whole (folded if need be), never cut."""
        from rich.console import Console

        from atomic_usage import Settings
        from atomic_usage import cli as cli_module
        from atomic_usage.engine.predictor import UsagePredictor
        from atomic_usage.models.baselines import Naive

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path))
        monkeypatch.setattr(cli_module, "out", Console(width=width))
        requests = ["batch-2026-12-04-fleet-eu-west-1-0042-retry-of-the-night-run", "short", None]
        with UsagePredictor(Settings.from_env(), model=Naive()) as p:
            tasks = [p.process({"usageData": [{"id": "a", "cpuLoad": 5}]}, request_id=r) for r in requests]
        res = runner.invoke(app, ["tasks", "list"])
        assert res.exit_code == 0, res.output
        lines = res.output.splitlines()
        assert "…" not in res.output and all(len(ln) <= width for ln in lines)
        body = [ln.split("│") for ln in lines if ln.startswith("│")]
        shown = ["".join(cells[k].strip() for cells in body) for k in (1, 2)]
        newest_first = tasks[::-1]
        assert shown == ["".join(t["taskId"] for t in newest_first), "".join(t["requestId"] for t in newest_first)]
        if width >= 120:  # room enough: a task id keeps one line, ready to copy
            assert all(any(t["taskId"] in ln for ln in lines) for t in tasks)

    def test_bad_setting_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad environment variable exits 2 naming it."""
        monkeypatch.setenv("ATOMIC_HORIZON", "soon")
        res = runner.invoke(app, ["stats"])
        assert res.exit_code == 2 and "ATOMIC_HORIZON='soon'" in res.output


@pytest.mark.shared
class TestEvaluateOnRealTraces:
    """`evaluate` on the NAB traces (small, so quick) shows every model side by side."""

    def test_nab_table(self, shared_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
        """The table lists the model and the baselines for both horizons."""
        md = tmp_path / "scores.md"
        res = runner.invoke(
            app,
            [
                "evaluate",
                "--dataset",
                "nab",
                "--data-dir",
                str(shared_dir / "data" / "nab_aws"),
                "--model",
                str(tiny_model_dir),
                "--markdown",
                str(md),
            ],
        )
        assert res.exit_code == 0, res.output
        text = md.read_text()
        for name in ("tiny", "naive", "predict_linear", "seasonal_naive"):
            assert f"| {name} |" in text
        assert text.count("| nab | 288 |") == 4


class TestOutputErrors:
    """An output path that cannot be written is a clear error, not a traceback."""

    def test_output_is_a_folder(self, tmp_path: Path) -> None:
        """Exit 2 naming the folder."""
        inp = write_fleet(tmp_path / "in.csv")
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "3", "-o", str(tmp_path), "-m", "naive"])
        assert res.exit_code == 2 and "the output is a folder" in " ".join(res.output.split())


def _numeric_options() -> list[tuple[tuple[str, ...], str, type, float | None, float | None]]:
    """Every option of every command that takes a number: (command path, option, int or float, min, max)."""
    import typer.main

    found: list[tuple[tuple[str, ...], str, type, float | None, float | None]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        subs = getattr(command, "commands", None)
        if subs is not None:
            for name, sub in subs.items():
                walk(sub, (*path, name))
            return
        for p in command.params:  # type: ignore[attr-defined]
            if p.type_descriptor.annotation in (int, float):
                found.append((path, p.opts[0], p.type_descriptor.annotation, p.min, p.max))

    walk(typer.main.get_command(app), ())
    return found


NUMERIC = _numeric_options()


def _flat(text: str) -> str:
    """Console output with rich's box drawing and line breaks taken out."""
    return " ".join(text.translate(str.maketrans("│╭╮╰╯─", "      ")).split())


class TestNumericOptions:
    """Every numeric option says what it accepts, as the horizon's message does, for a word or a value out of range."""

    def test_every_numeric_option_is_checked(self) -> None:
        """The walk finds the options of every command (so the tests below cover each one)."""
        names = {(" ".join(c), o) for c, o, _, _, _ in NUMERIC}
        assert {("forecast", "--horizon"), ("forecast", "--rows-per-bucket"), ("serve", "--port")} <= names
        assert {("train", "--time-budget"), ("demo", "--hours"), ("tasks list", "--limit")} <= names
        assert len(names) >= 20

    @pytest.mark.parametrize(
        ("command", "option", "kind", "low", "high"), NUMERIC, ids=[f"{' '.join(n[0])} {n[1]}" for n in NUMERIC]
    )
    def test_not_a_number(
        self, command: tuple[str, ...], option: str, kind: type, low: float | None, high: float | None
    ) -> None:
        """``--port abc`` exits 2 saying what --port accepts (typer said "Input should be a valid integer,
        unable to parse string as an integer"); a value out of range gets the same sentence."""
        res = runner.invoke(app, [*command, option, "abc"])
        text = _flat(res.output)
        assert res.exit_code == 2, text
        assert f"Invalid value for '{option}'" in text and "Input should" not in text, text
        accepts = text.split(": must be ", 1)[1].split(", not ")[0]
        assert text.endswith(f"must be {accepts}, not 'abc'") and accepts.startswith(("a whole number", "a number"))
        for value, bound in ((low, "from" if high is not None else "at least"), (high, "to")):
            if value is None:
                continue
            outside = kind(value - 1 if bound != "to" else value + 1)
            res = runner.invoke(app, [*command, option, str(outside)])
            assert res.exit_code == 2 and _flat(res.output).endswith(f"must be {accepts}, not {outside!r}"), res.output
            assert f"{bound} {value}" in accepts

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["serve", "--port", "abc"], "must be a whole number from 0 to 65535, not 'abc'"),
            (["forecast", "--rows-per-bucket", "x"], "must be a whole number of rows of at least 1, not 'x'"),
            (["serve", "--graceful-s", "soon"], "must be a number of seconds of at least 0, not 'soon'"),
            (["train", "--time-budget", "nan"], "must be a number of seconds, not 'nan'"),
            (["demo", "--seed", "1.5"], "must be a whole number, not '1.5'"),
        ],
    )
    def test_wording(self, args: list[str], message: str) -> None:
        """The sentence names the kind of number, its unit and its range."""
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and _flat(res.output).endswith(message), res.output

    def test_numbers_still_accepted(self, tmp_path: Path) -> None:
        """What typer accepted before still works: ``6``, ``6.0`` and `` 6`` for a whole number."""
        inp = write_fleet(tmp_path / "in.csv")
        for h in ("6", "6.0", " 6"):
            res = runner.invoke(
                app, ["forecast", "-i", str(inp), "-H", h, "-o", str(tmp_path / "o.csv"), "-m", "naive"]
            )
            assert res.exit_code == 0, res.output
            assert len(pd.read_csv(tmp_path / "o.csv")) == 4 * 3 * 6


class TestSquareBrackets:
    """Ids and paths are printed as they are: ``[...]`` in them is text, never console markup
    (``[/x]`` crashed the CLI after writing its output; ``[b]`` vanished from the message)."""

    def test_ids_in_not_forecast_lines(self, tmp_path: Path) -> None:
        inp = tmp_path / "in.csv"
        rows = [
            f"{i},2026-01-01T00:{5 * k:02d}:00Z,{v}"
            for i, v in (("[/x]vm", "abc"), ("[b]vm", "oops"))
            for k in range(3)
        ]
        inp.write_text("id,timestamp,cpuLoad\n" + "\n".join(rows) + "\n")
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "2", "-o", str(tmp_path / "o.csv"), "-m", "naive"])
        text = " ".join(res.output.split())
        assert res.exit_code == 0, text
        assert "id '[/x]vm'" in text and "id '[b]vm'" in text

    def test_path_in_an_error(self, tmp_path: Path) -> None:
        missing = tmp_path / "a[/b].csv"
        res = runner.invoke(app, ["forecast", "-i", str(missing), "-H", "2", "-o", str(tmp_path / "o.csv")])
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert res.exit_code not in (0, 1)
        assert "a[/b].csv" in " ".join(res.output.split())
