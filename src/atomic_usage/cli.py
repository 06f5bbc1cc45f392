"""The command line: one command per job. Parses, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or usage (the message says what
and where), 3 a model, store or key problem.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from .config import MAX_HORIZON, Settings, validate_horizon
from .errors import AtomicError, DataError, ModelError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Forecast CPU, memory and storage usage of a fleet, with calibrated uncertainty.",
)
dataset_app = typer.Typer(no_args_is_help=True, help="Build training sets.")
app.add_typer(dataset_app, name="dataset")
tasks_app = typer.Typer(no_args_is_help=True, help="Inspect and recover the engine's durable tasks.")
app.add_typer(tasks_app, name="tasks")

err = Console(stderr=True, markup=False)
"""Messages on stderr: ids, paths and messages in them print as they are (``[/x]`` is text, not markup)."""
out = Console()


def _say(label: str, style: str, text: str) -> None:
    """One message on stderr: ``label`` in ``style``, then ``text`` as it is."""
    err.print(Text.assemble((label, style), " ", text), highlight=False, soft_wrap=True)


@functools.cache
def _adapter(kind: type) -> Any:
    """pydantic's reading of a number, as typer does it for an ``int`` or ``float`` option."""
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def _read_number(kind: type, value: Any) -> Any:
    """``value`` as an ``int`` or a finite ``float``, read as typer reads it (``6``, ``6.0``, `` 6``,
    ``1e3`` for a float), or None when it is not one."""
    from pydantic import ValidationError

    try:
        number = _adapter(kind).validate_python(value)
    except ValidationError:
        return None
    return number if kind is int or math.isfinite(number) else None


def _accepts(kind: type, minimum: float | None, maximum: float | None, unit: str) -> str:
    """What a numeric option accepts, worded as ``validate_horizon`` words the horizon's limit.

    >>> _accepts(int, 1, None, "rows"), _accepts(float, 0, None, "seconds"), _accepts(int, 0, 65535, "")
    ('a whole number of rows of at least 1', 'a number of seconds of at least 0', 'a whole number from 0 to 65535')
    """
    what = ("a whole number" if kind is int else "a number") + (f" of {unit}" if unit else "")
    if minimum is not None and maximum is not None:
        return f"{what} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{what} of at least {minimum}"
    return f"{what} of at most {maximum}" if maximum is not None else what


def _number_option(
    *names: str,
    kind: type = int,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    **options: Any,
) -> Any:
    """A ``typer.Option`` for a number whose bad values say what it accepts: ``--port abc`` exits 2 with
    "Invalid value for '--port': must be a whole number from 0 to 65535, not 'abc'" (typer said "Input
    should be a valid integer, unable to parse string as an integer"), and so does ``--port 70000``.

    ``min``/``max`` are passed on for the help's range; the parser checks them (typer does not
    once a parser is given).
    """
    accepts = _accepts(kind, minimum, maximum, unit)

    def parse(value: Any) -> Any:
        number = _read_number(kind, value)
        shown = value if number is None else number
        if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise typer.BadParameter(f"must be {accepts}, not {shown!r}")
        return number

    return typer.Option(*names, parser=parse, min=minimum, max=maximum, **options)


ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="Run on a Dask LocalCluster started here: local (a worker per core) or local:N. "
        "The output is then a folder of Parquet parts.",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Run on a running Dask cluster, e.g. tcp://10.0.0.5:8786. Paths must be visible to every "
        "worker. The output is then a folder of Parquet parts.",
    ),
]
ProtocolOpt = Annotated[
    str | None,
    typer.Option("--protocol", help="Dask transport: tcp | tls | ucx (default: the address's, else tcp)."),
]
RowsPerBucketOpt = Annotated[
    int,
    _number_option(
        "--rows-per-bucket", minimum=1, unit="rows", help="On a cluster: input rows per task (bounds worker memory)."
    ),
]
ForecastRowsOpt = Annotated[
    int,
    _number_option(
        "--rows-per-bucket",
        minimum=1,
        unit="rows",
        help="Input rows per task on a cluster. In one process, a file with more rows is forecast in "
        "chunks of about this many rows of whole machines (bounds memory); a smaller one is read whole.",
    ),
]
ScratchOpt = Annotated[
    Path | None,
    typer.Option(
        "--scratch",
        help="Folder for the temporary shuffle of a large file not sorted by id, or of a cluster run "
        "(default: beside --output; needs about the input's size).",
    ),
]


def _horizon(value: Any) -> int:
    """Reads a --horizon value and checks it against the one limit (config.MAX_HORIZON) before any
    data is read; a word (``abc``) gets the same sentence as a number out of range."""
    number = _read_number(int, value)
    problem = validate_horizon(value if number is None else number)
    if problem is not None:
        raise typer.BadParameter(problem)
    return int(number)


_HORIZON_HELP = f"Steps (5 min each) to forecast, 1 to {MAX_HORIZON} ({MAX_HORIZON} = 1 day)."


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Maps library errors to one-line messages and exit codes (no tracebacks)."""
    try:
        yield
    except DataError as exc:
        _say("error:", "bold red", str(exc))
        raise typer.Exit(2) from None
    except ModelError as exc:
        _say("error:", "bold red", str(exc))
        raise typer.Exit(3) from None
    except AtomicError as exc:
        _say("error:", "bold red", str(exc))
        raise typer.Exit(3 if not isinstance(exc, ValueError) else 2) from None


@contextlib.contextmanager
def _cluster_client(cluster: str | None, scheduler: str | None, protocol: str | None) -> Iterator[Any]:
    """Parses the cluster options and yields a connected Dask client."""
    try:
        from .cluster.client import connect, parse_target, require_distributed
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise typer.BadParameter(
            f"{exc}; install the cluster extra: pip install 'atomic-usage[cluster]'", param_hint="--cluster"
        ) from None
    target = parse_target(cluster, scheduler, protocol)
    # Dask logs every worker start and stop at INFO; keep them for LOG_LEVEL=DEBUG only, and its
    # warnings always. Importing distributed applies its logging config, which sets its logger to
    # INFO, so the level is set after the import (set before it, it was undone).
    require_distributed()
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with connect(target) as client:
        yield client


@contextlib.contextmanager
def _progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on a terminal; silent otherwise. Yields ``advance(n=1, **fields)``."""
    if not err.is_terminal:
        yield lambda n=1, **kw: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, note="")

        def advance(n: int = 1, **fields: Any) -> None:
            bar.update(task, advance=n, **fields)

        yield advance


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _settings() -> Settings:
    with _errors():
        s = Settings.from_env()
    _setup_logging(s)
    return s


def _refuse_input_as_output(input: Path | None, output: Path, what: str) -> None:
    """Refuses an --output that is the --input file (or a link to it), or whose temporary file
    is: the output is written to ``<output>.tmp`` and replaces the file when it is complete, and
    here either would be the history."""
    from .cluster.writer import FrameWriter

    if input is None or not input.exists():
        return
    for target, why in (
        (output, "is the --input file"),
        (FrameWriter.temporary(output), "is written first to the --input file"),
    ):
        if target.exists() and target.resolve() == input.resolve():
            shown = output if target == output else f"{output} ({target.name})"
            raise typer.BadParameter(f"{shown} {why}; write {what} to another path", param_hint="--output")


def _warmed(forecaster: Any) -> Any:
    """The forecaster with its ONNX Runtime sessions open: an empty or damaged network file is an
    ArtifactError now, before the service says it is ready, not at its first request."""
    if hasattr(forecaster, "warm_up"):
        forecaster.warm_up()
    return forecaster


def _load_forecaster(model: str | None, settings: Settings, *, threads: int = 0) -> Any:
    """--model, else ATOMIC_MODEL_DIR or the bundled model (ArtifactError when it is missing or damaged)."""
    from .models.artifact import load_forecaster

    return load_forecaster(model if model is not None else settings.model_dir, threads=threads)


@app.command()
def forecast(
    horizon: Annotated[int, typer.Option("--horizon", "-H", parser=_horizon, help=_HORIZON_HELP)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Long CSV or Parquet to write.")],
    input: InputOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A model folder, or naive | seasonal_naive | predict_linear | damped_trend; default: bundled.",
        ),
    ] = None,
    prometheus: PromOpt = None,
    range_: RangeOpt = "7d",
    step: StepOpt = "5m",
    selector: SelectorOpt = None,
    mount: MountOpt = "/",
    query: QueryOpt = None,
    from_store: FromStoreOpt = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write one PNG chart per machine here.")] = None,
    cluster: ClusterOpt = None,
    scheduler: SchedulerOpt = None,
    protocol: ProtocolOpt = None,
    rows_per_bucket: ForecastRowsOpt = 1_000_000,
    scratch: ScratchOpt = None,
) -> None:
    """Forecast every series of a file; write id,timestamp,metric,mean,p10,p50,p90,model,reason.

    An id or metric that cannot be forecast gets rows with empty values, model `none` or `error`
    and a reason; it is listed on stderr, and the other ids are forecast as usual (exit 0).
    An --input file of more than --rows-per-bucket rows is forecast in chunks of whole machines,
    so memory follows the chunk, not the file; the output is the same.
    With --cluster or --scheduler, --input may also be a folder of CSV/Parquet partitions,
    and --output is a folder of part-XXXXX.parquet files (ids hash-partitioned).
    """
    settings = _settings()
    _refuse_input_as_output(input, output, "the forecast")
    if plot is not None:  # the charts' extra is checked before the forecast is made and written
        with _errors():
            from .report.charts import require_matplotlib

            require_matplotlib()
    if cluster is not None or scheduler is not None:
        if input is None:
            raise typer.BadParameter("a cluster run reads files: give --input FILE or FOLDER", param_hint="--input")
        if output.suffix.lower() == ".csv":  # a folder named out.csv, holding Parquet parts, misleads
            raise typer.BadParameter(
                f"a cluster run writes a folder of Parquet parts, not the CSV file {str(output)!r}; give a folder",
                param_hint="--output",
            )
        with _errors():  # a bad --model fails before a cluster is started
            from .models.artifact import refuse_unknown_model

            refuse_unknown_model(model)
        with _errors(), _cluster_client(cluster, scheduler, protocol) as client:
            from .cluster.forecast import forecast_distributed

            job = forecast_distributed(
                client,
                input,
                horizon,
                output,
                model=model,
                default_model_dir=settings.model_dir,
                rows_per_bucket=rows_per_bucket,
                scratch=scratch,
            )
            _say_not_forecast(job.reasons)
            err.print(_series_notes(job.summary(), job.fallback, job.missing), highlight=False, soft_wrap=True)
        return
    if input is not None and not prometheus and not from_store and _is_large(input, rows_per_bucket):
        with _errors():
            _forecast_chunked(input, horizon, output, model, rows_per_bucket, scratch, plot, settings)
        return
    with _errors():
        from .data.regularize import regularize
        from .models.base import NO_FORECAST, on_fallback

        fc_model = _load_forecaster(model, settings)  # a bad --model fails before the input is read
        issues: list[Any] = []
        frame, grid = _read_source(
            input, prometheus, range_, step, selector, mount, query, from_store, settings, issues=issues
        )
        panel, report = regularize(frame, grid)
        logging.getLogger("atomic_usage").info("%s: %s", input or prometheus or "store", report.summary())
        t = time.perf_counter()
        result = _forecast_panel(fc_model, panel, horizon, issues)
        _write_table(result, output)
        dt = time.perf_counter() - t
        firsts = result.drop_duplicates(["id", "metric"])
        missing = firsts[firsts["model"].isin(NO_FORECAST)]
        fallback = firsts[on_fallback(firsts["model"], fc_model)]
        _say_not_forecast(missing["reason"])
        line = (
            f"{len(panel)} machine{'s' if len(panel) != 1 else ''} ({len(firsts)} series: machine × metric), "
            f"{len(result)} rows in {dt:.2f}s "
            f"-> {output}"
        )
        err.print(_series_notes(line, len(fallback), len(missing)), highlight=False, soft_wrap=True)
        if plot is not None:
            _plot(plot, frame, result, settings)


def _say_not_forecast(reasons: Iterable[str]) -> None:
    """Prints the first distinct reasons of series not forecast, each once (:func:`first_reasons`)."""
    from .cluster.chunked import first_reasons

    for reason in first_reasons(reasons):
        _say("not forecast:", "yellow", reason)


def _series_notes(line: str, fallback: int, missing: int) -> str:
    """A forecast's summary line with its counts of series (machine × metric) on a fallback or not forecast."""
    return (
        line
        + (f" ({fallback} series on a fallback: see the model column)" if fallback else "")
        + (f" ({missing} series not forecast: see the reason column)" if missing else "")
    )


def _is_large(path: Path, rows: int) -> bool:
    """Whether a wide file has more than ``rows`` rows (Parquet: its footer; CSV: guessed from the size)."""
    from .cluster.partitions import estimate_rows

    return path.is_file() and estimate_rows(path) > rows


def _forecast_chunked(
    input: Path,
    horizon: int,
    output: Path,
    model: str | None,
    rows: int,
    scratch: Path | None,
    plot: Path | None,
    settings: Settings,
) -> None:
    """The single-process forecast of a large file, in chunks of whole machines (see cluster/chunked.py)."""
    from .cluster.chunked import forecast_chunked

    fc_model = _load_forecaster(model, settings)
    charts = 0
    on_chunk = None
    if plot is not None:
        directory = plot

        def on_chunk(history: Any, fc: Any) -> None:
            nonlocal charts
            from .report.charts import write_fan_charts

            charts += len(write_fan_charts(directory, history, fc, thresholds=settings.thresholds))

    with _stages() as progress:
        job = forecast_chunked(
            input,
            horizon,
            output,
            model=fc_model,
            rows_per_chunk=rows,
            scratch=scratch,
            progress=progress,
            on_chunk=on_chunk,
        )
    logging.getLogger("atomic_usage").info("%s: %s", input, job.regularize.summary())
    _say_not_forecast(job.reasons)
    err.print(_series_notes(job.summary(), job.fallback, job.missing), highlight=False, soft_wrap=True)
    if plot is not None:
        err.print(f"{charts} charts -> {plot}")


@contextlib.contextmanager
def _stages() -> Iterator[Any]:
    """A rich progress bar that follows ``progress(stage, done, total)`` calls; None off a terminal."""
    if not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("reading", total=None)
        current = ""

        def update(stage: str, done: int, total: int | None) -> None:
            nonlocal current
            if stage != current:
                current = stage
                bar.reset(task, total=total, description=stage)
            bar.update(task, completed=done, total=total)

        yield update


def _forecast_panel(fc_model: Any, panel: Any, horizon: int, issues: list[Any], chunk: int = 20_000) -> Any:
    """Forecasts a panel in chunks of ids behind a progress bar; returns the long forecast frame."""
    import pandas as pd

    from .models.base import forecast_frame

    if not len(panel):
        return forecast_frame(fc_model, panel, horizon, issues=issues)
    parts = []
    with _progress("forecasting", len(panel)) as advance:
        for a in range(0, len(panel), chunk):
            sub = panel.select(range(a, min(a + chunk, len(panel))))
            parts.append(forecast_frame(fc_model, sub, horizon, issues=issues))
            advance(len(sub))
    return pd.concat(parts, ignore_index=True)


def _write_table(df: Any, path: Path) -> None:
    """Writes a frame as CSV or Parquet (by suffix) under a temporary name, then renames it."""
    from .cluster.writer import FrameWriter

    with FrameWriter(path) as writer:
        writer.write(df)


@app.command()
def evaluate(
    dataset: Annotated[str, typer.Option("--dataset", help="gcd or nab (UsageBench v1).")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The data set's folder.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model folder (default: bundled).")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table as markdown.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores as JSON lines.")] = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="Also write MASE and SQL per model as a PNG bar chart.")
    ] = None,
    anchors: Annotated[
        bool,
        typer.Option(
            "--anchors",
            help="Also score UsageBench's anchors: statsforecast AutoETS and AutoTheta, and LightGBM "
            "(needs `pip install 'atomic-usage\\[bench]'`; minutes on gcd).",
        ),
    ] = False,
    models_opt: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated models to score instead of the default set (the model, the baselines and, "
            "with --anchors, the anchors), e.g. `atomic,naive,autotheta`; anchors named here need no --anchors.",
        ),
    ] = None,
) -> None:
    """Score the model and the baselines on UsageBench, side by side (MASE, SQL, coverage80, seconds)."""
    settings = _settings()
    with _errors():
        from .models.anchors import ANCHORS
        from .models.baselines import Naive, PredictLinear, SeasonalNaive
        from .models.evaluate import evaluate as run_eval
        from .models.evaluate import load_dataset

        makers: dict[str, Any] = {"naive": Naive, "predict_linear": PredictLinear}
        if dataset == "nab":
            makers["seasonal_naive"] = SeasonalNaive
        default = [*makers, *(ANCHORS if anchors else ())]
        makers.update(ANCHORS)
        chosen = _model_list(models_opt) or default
        series = load_dataset(dataset, data_dir)
        models: dict[str, Any] = {}
        if models_opt is None or set(chosen) - set(makers):  # our model is asked for (or a typo)
            nn = _load_forecaster(model, settings)
            models[nn.name] = nn
            chosen = [m for m in chosen if m != nn.name]
        unknown = [m for m in chosen if m not in makers]
        if unknown:
            raise typer.BadParameter(
                f"Unknown model(s) {unknown}; choose from {[*models, *makers]}.", param_hint="'--models'"
            )
        models.update((m, makers[m]()) for m in chosen)
        for m in models.values():
            if hasattr(m, "warm_up"):  # imports and first-call set-up are not timed, as in the harness
                m.warm_up()
        n_runs = len(models) * (2 if dataset == "nab" else 1)
        with _progress("evaluating", n_runs) as advance:
            results = run_eval(dataset, series, models, progress=lambda label: advance(1, note=label))
        rows = []
        for r in results:
            row = r.row()
            for name, sel in (("trained", ~r.per_window["holdout"]), ("holdout", r.per_window["holdout"])):
                if dataset == "gcd" and sel.any():
                    row[f"MASE {name}"] = float(r.per_window.loc[sel, "mase"].mean())
            rows.append(row)
        _print_scores(rows)
        if markdown:
            markdown.write_text(_markdown(rows))
        if json_out:
            json_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if chart:
            _eval_chart(rows, chart)


def _model_list(text: str | None) -> list[str] | None:
    """``--models a,b`` as a list of names (None when not given)."""
    if text is None:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise typer.BadParameter("Name at least one model, e.g. `--models naive,autotheta`.", param_hint="'--models'")
    return list(dict.fromkeys(names))


def _cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, or 3 significant digits past 1e6 (exploded anchor intervals)."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def _print_scores(rows: list[dict[str, Any]]) -> None:
    console = out if out.is_terminal else Console(width=160)
    table = Table(title="UsageBench v1 (lower is better; coverage80 should be 0.80)")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        table.add_column(c, justify="right" if c not in ("dataset", "model") else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c, "")) for c in cols])
    console.print(table)


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


_ARGV = "atomic_usage.argv"
"""Where :class:`_ArgvCommand` keeps a command's arguments as given, in ``ctx.meta``."""


class _ArgvCommand(TyperCommand):
    """A command that keeps its arguments exactly as given, before click parses them.

    Rebuilding a command line from parsed options cannot be faithful: click groups repeated
    options by name (so ``--data A --holdout-last 4h --data B --holdout-last 4d`` came back
    as ``--data A --data B --holdout-last 4h --holdout-last 4d``, which pairs them otherwise
    for a reader) and cannot tell an option given with its default value from one left out.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's (vendored) click Context
        ctx.meta[_ARGV] = list(args)
        return super().parse_args(ctx, args)


def _command_line(ctx: typer.Context) -> str:
    """The running command as given, quoted for a shell (for model.json): ``atomic-usage``, the
    subcommand, then its arguments in their given order, re-runnable from the same folder."""
    return shlex.join(["atomic-usage", *ctx.command_path.split()[1:], *ctx.meta.get(_ARGV, [])])


def _parameters(ctx: typer.Context) -> dict[str, Any]:
    """Every option's value as the command ran, defaults included (for model.json)."""

    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    return {k: [plain(x) for x in v] if isinstance(v, list | tuple) else plain(v) for k, v in ctx.params.items()}


def _build_bank(
    data: list[Path], holdout_last: list[str] | None, holdout_machines: list[str] | None
) -> tuple[Any, Any, Any]:
    from .data.trainset import build_trainset, read_trainset

    holdout_last, holdout_machines = holdout_last or [], holdout_machines or []
    if len(data) == 1 and data[0].suffix == ".parquet" and not holdout_last and not holdout_machines:
        try:
            bank, holdout = read_trainset(data[0])
            return bank, holdout, []
        except DataError:
            pass  # not a training set: read it as a wide file below
    for v in holdout_machines:
        if v not in ("yes", "no"):
            raise typer.BadParameter(f"must be yes or no, not {v!r}", param_hint="--holdout-machines")
    return build_trainset(
        [str(d) for d in data],
        holdout_last=holdout_last,
        holdout_machines=[v == "yes" for v in holdout_machines],
    )


@dataset_app.command("build")
def dataset_build(
    data: Annotated[list[Path], typer.Option("--data", help="A GCD or NAB folder, or a wide CSV/Parquet file.")],
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    holdout_last: Annotated[
        list[str] | None,
        typer.Option(
            "--holdout-last",
            help="Per --data (or once for all): cut this much off every series' end, e.g. 4h.",
        ),
    ] = None,
    holdout_machines: Annotated[
        list[str] | None,
        typer.Option("--holdout-machines", help="Per --data: yes/no, hold 1 machine in 5 (by hash of its id) out."),
    ] = None,
    cluster: ClusterOpt = None,
    scheduler: SchedulerOpt = None,
    protocol: ProtocolOpt = None,
    rows_per_bucket: RowsPerBucketOpt = 1_000_000,
) -> None:
    """Read sources, regularize them, split honestly and write a training set as Parquet.

    With --cluster or --scheduler, --data may also be a folder of CSV/Parquet partitions,
    and --out is a folder of training-set parts (read back whole by `train --data FOLDER`).
    """
    _settings()
    holdout_last, holdout_machines = holdout_last or [], holdout_machines or []
    if cluster is not None or scheduler is not None:
        for v in holdout_machines:
            if v not in ("yes", "no"):
                raise typer.BadParameter(f"must be yes or no, not {v!r}", param_hint="--holdout-machines")
        with _errors(), _cluster_client(cluster, scheduler, protocol) as client:
            from .cluster.dataset import build_trainset_distributed

            job = build_trainset_distributed(
                client,
                [str(d) for d in data],
                out_path,
                holdout_last=holdout_last,
                holdout_machines=[v == "yes" for v in holdout_machines],
                rows_per_bucket=rows_per_bucket,
            )
            err.print(job.summary())
        return
    with _errors():
        from .data.trainset import write_trainset

        with _progress("reading sources", None):
            bank, holdout, reports = _build_bank(data, holdout_last, holdout_machines)
        write_trainset(bank, holdout, out_path)
        for src, r in zip(data, reports, strict=False):
            err.print(f"{src}: {r.summary()}")
        err.print(
            f"{len(set(bank.ids.tolist()))} machines, {len(bank)} series: machine × metric "
            f"({int(holdout.sum())} held out), {int(bank.lengths.sum())} steps -> {out_path}"
        )


_CANDIDATES = {"after-near": ["naive", "damped_trend"], "backtest": ["naive"]}
"""The baselines each serving selection weighs against the long network, per series: after the
first hour a damped trend too, so a filling disk's forecast keeps climbing (docs/accuracy.md)."""


@app.command(cls=_ArgvCommand)
def train(
    ctx: typer.Context,
    data: Annotated[
        list[Path], typer.Option("--data", help="Sources (GCD/NAB folders, wide files) or a training set.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    holdout_last: Annotated[list[str] | None, typer.Option("--holdout-last", help="As in `dataset build`.")] = None,
    holdout_machines: Annotated[
        list[str] | None, typer.Option("--holdout-machines", help="As in `dataset build`.")
    ] = None,
    steps: Annotated[int, _number_option(minimum=1, unit="optimizer steps", help="Optimizer steps.")] = 3000,
    batch_size: Annotated[int, _number_option(minimum=8, unit="windows", help="Windows per step.")] = 512,
    seed: Annotated[int, _number_option(help="Random seed.")] = 0,
    time_budget: Annotated[
        float,
        _number_option(kind=float, unit="seconds", help="Stop training after this many seconds (0: no limit)."),
    ] = 0.0,
    context: Annotated[int, _number_option(minimum=12, unit="steps", help="Steps of history the network reads.")] = 288,
    horizon: Annotated[int, _number_option(minimum=1, unit="steps", help="Steps the network forecasts.")] = 288,
    name: Annotated[str, typer.Option(help="The model's name in forecasts.")] = "atomic",
    selection: Annotated[
        str,
        typer.Option(
            help="after-near: the short network serves the first steps, and after them each series gets the "
            "long network or naive, whichever did best on its own recent history; none: the networks serve every "
            "series; backtest: the whole forecast is the networks' or naive's, per series. The served band is "
            "calibrated in every case."
        ),
    ] = "after-near",
    near_context: Annotated[
        int,
        _number_option(
            minimum=0,
            unit="steps",
            help="Context of the short network that forecasts the first --near-horizon steps (0: none).",
        ),
    ] = 36,
    near_horizon: Annotated[
        int, _number_option(minimum=1, unit="steps", help="Steps the short network forecasts.")
    ] = 12,
    near_steps: Annotated[
        int, _number_option(minimum=1, unit="optimizer steps", help="Optimizer steps of the short network.")
    ] = 4000,
    near_time_budget: Annotated[
        float,
        _number_option(
            kind=float, unit="seconds", help="Stop the short network's training after this many seconds (0: no limit)."
        ),
    ] = 0.0,
) -> None:
    """Train the neural forecaster (PyTorch, CPU), export it to ONNX and write the model folder.

    Two networks are trained: the long one (--context, --horizon) and, unless --near-context
    is 0, a short-context one that serves the first --near-horizon steps.
    """
    _settings()
    from .models.artifact import SELECTIONS

    if selection not in SELECTIONS:
        raise typer.BadParameter(f"must be one of {', '.join(SELECTIONS)}, not {selection!r}", param_hint="--selection")
    if near_context and near_horizon >= horizon:
        raise typer.BadParameter(
            f"must be below --horizon ({horizon}), not {near_horizon}", param_hint="--near-horizon"
        )
    with _errors():
        import datetime as dt
        import hashlib

        try:
            from .models.export import to_onnx
            from .models.train import TrainConfig, near_config, near_spec, train_neural
        except ImportError as exc:  # pragma: no cover
            raise ModelError(f"{exc}; install the train extra: pip install 'atomic-usage[train]'") from None
        from .data.trainset import fingerprint
        from .models.artifact import ModelCard, save_artifact
        from .models.neural import NeuralSpec

        bank, holdout, _ = _build_bank(data, holdout_last, holdout_machines)
        spec = NeuralSpec(context=context, horizon=horizon)
        config = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, time_budget_s=time_budget)
        with _progress("training", steps) as advance:
            result = train_neural(
                bank, holdout, spec, config, progress=lambda s, n, loss: advance(1, note=f"loss {loss:.4f}")
            )
        onnx_bytes = to_onnx(result.network, result.spec)
        near: dict[str, Any] = {}
        near_bytes = None
        if near_context:
            n_spec = near_spec(near_context, near_horizon)
            n_config = near_config(steps=near_steps, seed=seed, time_budget_s=near_time_budget)
            with _progress("training the short network", near_steps) as advance:
                n_result = train_neural(
                    bank, holdout, n_spec, n_config, progress=lambda s, n, loss: advance(1, note=f"loss {loss:.4f}")
                )
            near_bytes = to_onnx(n_result.network, n_result.spec)
            near = {
                "file": "near.onnx",
                "version": hashlib.sha256(near_bytes).hexdigest()[:12],
                "spec": n_result.spec.to_dict(),
                "training": {
                    "seconds": round(n_result.seconds, 1),
                    "config": {
                        "steps": near_steps,
                        "batch_size": n_config.batch_size,
                        "lr": n_config.lr,
                        "seed": seed,
                        "loss_weight": n_config.loss_weight,
                        "weight_clip": n_config.weight_clip,
                    },
                },
                "validation": json.loads(json.dumps(n_result.validation, default=float)),
            }
        version_of = hashlib.sha256(onnx_bytes + (near_bytes or b""))
        card = ModelCard(
            name=name,
            version=version_of.hexdigest()[:12],
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            context_length=result.spec.context,
            horizon=result.spec.horizon,
            quantiles=list(result.spec.quantiles),
            step_s=bank.step_s,
            metrics=sorted(set(bank.metrics.astype(str))),
            normalization="per window: minus the last observed value, divided by the mean absolute one-step change "
            "(floored at 1% of the mean level); missing steps masked",
            spec=result.spec.to_dict(),
            training={
                "command": _command_line(ctx),
                "parameters": _parameters(ctx),
                "data_fingerprint": fingerprint(bank),
                "sources": [str(d) for d in data],
                "series": len(bank),
                "holdout_series": int(holdout.sum()),
                "seconds": round(result.seconds, 1),
                "config": {"steps": steps, "batch_size": batch_size, "seed": seed},
            },
            validation=json.loads(json.dumps(result.validation, default=float)),
            near=near,
            serving={"selection": selection, "k": 3, "backtest_max": 12, "candidates": _CANDIDATES[selection]}
            if selection != "none"
            else {"selection": "none"},
        )
        save_artifact(out_dir, onnx_bytes, card, near_bytes=near_bytes)
        err.print(f"trained in {result.seconds:.0f}s; model {card.version} -> {out_dir}")
        _calibrate_served(out_dir, bank, holdout, _command_line(ctx))


def _calibrate_served(model_dir: Path, bank: Any, holdout: Any, command: str) -> None:
    """Fits the served interval's factors (models/calibrate.py) and rewrites model.json."""
    from .models.artifact import SELECTIONS, load_model, read_card, read_networks, save_artifact
    from .models.calibrate import served_interval_scale

    card = read_card(model_dir)
    if card.serving.get("selection") not in SELECTIONS:
        raise ModelError(
            f"{model_dir}: model.json says nothing of how it is served (serving.selection); "
            "retrain it with `atomic-usage train`."
        )
    serving = {k: v for k, v in card.serving.items() if k not in ("interval_scale", "calibration")}
    bare = card.model_copy(update={"serving": serving})
    tmp_card = Path(tempfile.mkdtemp(prefix=".calibrate-"))
    try:
        onnx_bytes, near_bytes = read_networks(model_dir)
        save_artifact(tmp_card, onnx_bytes, bare, near_bytes=near_bytes)
        with err.status("calibrating the served interval"):
            factors, report = served_interval_scale(load_model(tmp_card), bank, holdout, card.horizon)
    finally:
        shutil.rmtree(tmp_card, ignore_errors=True)
    serving["interval_scale"] = [round(float(f), 4) for f in factors]
    serving["calibration"] = {"command": command, **report}
    save_artifact(model_dir, onnx_bytes, card.model_copy(update={"serving": serving}), near_bytes=near_bytes)
    err.print(
        f"served interval calibrated on {report.get('windows', 0)} windows: coverage80 "
        f"{report.get('cov80_before', {}).get('all')} -> {report.get('cov80_after', {}).get('all')}"
    )


@app.command(cls=_ArgvCommand)
def calibrate(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Option("--model", help="Model folder to calibrate (rewritten in place).")],
    data: Annotated[list[Path], typer.Option("--data", help="The sources the model was trained on.")],
    holdout_last: Annotated[list[str] | None, typer.Option("--holdout-last", help="As in `train`.")] = None,
    holdout_machines: Annotated[list[str] | None, typer.Option("--holdout-machines", help="As in `train`.")] = None,
) -> None:
    """Calibrate a model's served p10-p90 band on the ends of its training series (train does this too)."""
    _settings()
    with _errors():
        bank, holdout, _ = _build_bank(data, holdout_last, holdout_machines)
        _calibrate_served(model_dir, bank, holdout, _command_line(ctx))


def _near_summary(near: dict[str, Any]) -> str:
    spec = near.get("spec", {})
    return (
        f"{near.get('file')} {near.get('version', '?')}: context {spec.get('context')} / horizon {spec.get('horizon')}"
    )


@app.command()
def info() -> None:
    """Show the settings in force, the data folder and the model served."""
    settings = _settings()
    with _errors():
        from .models.artifact import default_model_dir, read_card

        d = settings.model_dir or default_model_dir()
        card = read_card(d)
        table = Table(show_header=False)
        for k, v in [
            ("data dir", settings.data_dir),
            ("persistence", not settings.skip_persistence),
            ("model", f"{card.name} {card.version} ({d})"),
            ("context / horizon", f"{card.context_length} / {card.horizon}"),
            *([("first steps", _near_summary(card.near))] if card.near else []),
            ("serving", card.serving.get("selection", "none")),
            ("trained by", card.training.get("command", "?")),
            ("log level", settings.log_level),
            ("thresholds", settings.thresholds),
            ("workers", settings.n_workers),
        ]:
            table.add_row(k, escape(str(v)))
        out.print(table)


@app.command()
def demo(
    machines: Annotated[
        int, _number_option(minimum=1, maximum=1000, unit="machines", help="Machines in the generated fleet.")
    ] = 12,
    seed: Annotated[int, _number_option(help="Seed of the generated fleet.")] = 7,
    hours: Annotated[
        int, _number_option(minimum=1, maximum=MAX_HORIZON // 12, unit="hours", help="Hours ahead to forecast.")
    ] = 6,
) -> None:
    """Forecast a generated sample fleet with the bundled model and show what is coming."""
    settings = _settings().replace(skip_persistence=True)
    with _errors():
        from .data.synthetic import generate_series
        from .engine.predictor import UsagePredictor

        fleet = generate_series(machines, n_steps=2 * 288, seed=seed)
        last = fleet.groupby("id").tail(1)
        history = fleet.drop(last.index)
        predictor = UsagePredictor(settings)
        predictor.observe(history)
        records = [
            {
                "id": r.id,
                "timestamp": r.timestamp.isoformat(),
                "cpuLoad": r.cpuLoad,
                "memoryUsage": r.memoryUsage,
                "storageUsage": r.storageUsage,
            }
            for r in last.itertuples()
        ]
        result = predictor.process({"usageData": records}, horizon=hours * 12)
        predictor.close()
        now = {(r["id"], m): float(r[m]) for r in records for m in ("cpuLoad", "memoryUsage", "storageUsage")}
        _print_demo(result, now, machines, seed, hours)


def _fmt_eta(th: dict[str, Any] | None) -> str:
    if th is None:
        return "[dim]—[/]"
    s = th["secondsFromNow"]
    return f"[bold red]{s / 60:.0f} min[/]" if s <= 3600 else f"[yellow]{s / 3600:.1f} h[/]"


_SHORT = {"cpuLoad": "cpu", "memoryUsage": "mem", "storageUsage": "disk"}


def _print_demo(
    result: dict[str, Any], now: dict[tuple[str, str], float], machines: int, seed: int, hours: int
) -> None:
    console = out if out.is_terminal else Console(width=110)
    console.print(
        f"[bold]ATOMIC demo[/]: {machines} generated machines (2 days of 5-minute samples, seed {seed}: "
        f"daily cycles, noise, bursts, filling disks), forecast {hours} h ahead by the bundled model "
        f"{result['model']['name']} {result['model']['version']}."
    )
    table = Table(
        title=f"In {hours} h, per machine and metric (percent); trend/h = slope of the last hour, "
        "an arrow only where it stands out of the noise"
    )
    for c in ("machine", "metric", "now", f"p50 +{hours}h", "p10–p90", "trend/h", "≥90% at p90", "model"):
        table.add_column(c, justify="left" if c in ("machine", "metric", "model") else "right", no_wrap=True)
    arrows = {"rising": "[red]↑[/]", "falling": "[green]↓[/]", "flat": "→"}
    for r in result["results"]:
        for m, f in r["forecasts"].items():
            if f is None:
                continue
            last = f["steps"][-1]
            th = next((t for t in f["thresholds"] if t["level"] == 90.0), None)
            eta = "—" if th is None else "[bold red]now[/]" if th["alreadyAbove"] else _fmt_eta(th["p90"])
            table.add_row(
                r["id"] if m == "cpuLoad" else "",
                _SHORT.get(m, m),
                f"{now[(r['id'], m)]:.1f}",
                f"{last['p50']:.1f}",
                f"{last['p10']:.1f}–{last['p90']:.1f}",
                f"{arrows[f['trend']['direction']]} {f['trend']['slopePerHour']:+.1f}",
                eta,
                f["model"],
            )
        table.add_section()
    console.print(table)
    console.print(
        "Your own data: [bold]atomic-usage forecast --input FILE.csv --horizon 12 --output out.csv[/]; "
        "the library: [bold]UsagePredictor().process({'usageData': [...]})[/]."
    )


def _store(settings: Settings) -> Any:
    """The task store, for the commands that only read it (see :func:`_need_store`)."""
    from .engine.store import open_store

    _need_store(settings, "show")
    return open_store(settings)


def _need_store(settings: Settings, verb: str) -> None:
    """Refuses a data folder without a task store, for the commands on stored tasks: nothing is
    created there (a mistyped ATOMIC_DATA_DIR showed an empty store, or recovered one)."""
    from .engine.store import STORE_FILENAME

    if settings.skip_persistence:
        raise typer.BadParameter(f"SKIP_PERSISTENCE is set, so there is no stored task to {verb}; unset it.")
    path = Path(settings.data_dir) / STORE_FILENAME
    if not path.is_file():
        raise typer.BadParameter(
            f"there is no task store in {str(settings.data_dir)!r} ({STORE_FILENAME} is missing): nothing was "
            "stored there yet; set ATOMIC_DATA_DIR to the folder the service or process() uses",
            param_hint="ATOMIC_DATA_DIR",
        )


_TASK_TABLE_REST = 66
"""Columns the tasks table needs besides the task id: borders and padding (19), and 47 for the
request, status, attempts, created and error columns at their narrowest readable widths."""


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="accepted, running, done or failed.")] = None,
    limit: Annotated[int, _number_option(minimum=1, unit="tasks", help="Tasks to show at most (newest first).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List stored tasks, newest first."""
    settings = _settings()
    with _errors():
        from .engine.status import TaskStatus

        try:
            st = TaskStatus(status) if status else None
        except ValueError:
            raise typer.BadParameter(
                f"{status!r} is not one of accepted, running, done, failed", param_hint="--status"
            ) from None
        store = _store(settings)
        tasks = store.list_tasks(status=st, limit=limit)
        counts = store.counts()
        store.close()
        if as_json:  # JSON lines: one task per line
            for t in tasks:
                print(json.dumps(t.as_dict()))
            return
        table = Table(title="tasks: " + ", ".join(f"{k.value} {v}" for k, v in counts.items()))
        # Nothing is ever cut (ids are what `tasks show` and GET /v1/tasks take): every column
        # folds onto more lines rather than end in an ellipsis, and where the terminal has room
        # for it the task id keeps one line. (A min_width would make rich crop the table's right
        # side on a narrow terminal instead.)
        longest = max((len(t.task_id) for t in tasks), default=4)
        fixed = longest if out.width >= longest + _TASK_TABLE_REST else None
        table.add_column("task", width=fixed, overflow="fold")
        for c in ("request", "status", "attempts", "created", "error"):
            table.add_column(c, overflow="fold")
        for t in tasks:
            table.add_row(
                t.task_id,
                escape(t.request_id),
                t.status.value,
                str(t.attempts),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.created_at)),
                escape(t.error or ""),
            )
        out.print(table)


@tasks_app.command("show")
def tasks_show(task_id: Annotated[str, typer.Argument(help="The task id.")]) -> None:
    """Show one task and, once done, its results (opened with the keyring)."""
    settings = _settings()
    with _errors():
        from .engine.status import TaskStatus
        from .security import load_or_create_keyring, open_result

        store = _store(settings)
        task = store.get(task_id)
        info = task.as_dict(with_payload=True)
        if task.status is TaskStatus.DONE:
            ring, _ = load_or_create_keyring(settings, path=settings.keyring_path)
            info["results"] = [open_result(b, keyring=ring, task_id=task_id) for b in store.results(task_id)]
        store.close()
        out.print_json(json.dumps(info))


@tasks_app.command("recover")
def tasks_recover(
    force: Annotated[bool, typer.Option(help="Also take over tasks whose lease has not run out.")] = False,
) -> None:
    """Resume tasks left accepted or running by a process that stopped; each ends done or failed."""
    settings = _settings()
    _need_store(settings, "recover")
    with _errors():
        from .engine.predictor import UsagePredictor
        from .engine.store import DEFAULT_LEASE_S

        with UsagePredictor(settings, recover=False) as predictor:
            report = predictor.recover(force=force)
            counts = {k.value: v for k, v in predictor.store.counts().items()}
        err.print(f"resumed {report['resumed']} task(s), failed {report['failed']} that had used their attempts")
        held = counts.get("accepted", 0) + counts.get("running", 0)
        if held and not force:
            # Left under a lease: a live server's, or one that stopped less than a lease ago.
            err.print(
                f"{held} task(s) still unfinished under a lease of {DEFAULT_LEASE_S:g} s: a running server works "
                "on them, or resumes them once the lease of one that stopped runs out; with no server on this "
                "store, `atomic-usage tasks recover --force` resumes them now."
            )


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Show the engine's stored tasks, counted by status."""
    settings = _settings()
    with _errors():
        store = _store(settings)
        counts = {k.value: v for k, v in store.counts().items()}
        store.close()
        data = {"data_dir": str(settings.data_dir), "tasks": counts}
        if as_json:
            out.print_json(json.dumps(data))
            return
        table = Table(title=f"engine store in {settings.data_dir}")
        table.add_column("tasks")
        table.add_column("count", justify="right")
        for k, v in counts.items():
            table.add_row(k, str(v))
        out.print(table)


def _check_tls(cert: Path, key: Path) -> None:
    """Loads the certificate chain and its key as the server will, so that a missing, unreadable
    or mismatched file is an exit-2 message naming it instead of a traceback from uvicorn."""
    import ssl

    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise typer.BadParameter(f"{str(path)!r} is not a file", param_hint=option)
        try:
            path.open("rb").close()
        except OSError as exc:
            raise typer.BadParameter(f"{str(path)!r} cannot be read ({exc.strerror})", param_hint=option) from None
    try:
        # An encrypted key gets an empty password (and fails here) instead of a prompt at the terminal.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password="")
    except ssl.SSLError as exc:
        raise typer.BadParameter(
            f"{str(cert)!r} and {str(key)!r} are not a PEM certificate chain and its unencrypted private key"
            + (f" ({exc.reason})" if exc.reason else ""),
            param_hint="--tls-cert/--tls-key",
        ) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, _number_option(minimum=0, maximum=65535, help="Port to listen on.")] = 8000,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate chain: serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    workers: Annotated[
        int | None,
        _number_option(minimum=0, unit="threads", help="Engine worker threads (ATOMIC_WORKERS; 0: one per core)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model folder or naive|seasonal_naive|predict_linear|damped_trend."),
    ] = None,
    graceful_s: Annotated[
        float,
        _number_option(
            "--graceful-s", kind=float, minimum=0, unit="seconds", help="Seconds in-flight requests get at shutdown."
        ),
    ] = 30.0,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level (default: LOG_LEVEL).")] = None,
    processes: Annotated[
        int | None,
        _number_option(
            minimum=1,
            unit="processes",
            help="Serving processes over the one store, each with its own engine (ATOMIC_PROCESSES; default 1).",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (POST /v1/predict, GET /v1/tasks/{id}, /metrics, /healthz, /readyz).

    One process by default. With --processes N, N processes share the listening socket and
    the store: each keeps the fleet's history in memory and reads the observations the others
    accepted before it forecasts; any of them answers /v1/tasks and /metrics for all. SIGTERM
    or Ctrl-C stops accepting, lets in-flight requests finish for --graceful-s, then closes
    the engine(s); tasks still open then resume at the next start.
    """
    settings = _settings()
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert")
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    if workers is not None:
        settings = settings.replace(workers=workers)
    if processes is not None:
        settings = settings.replace(processes=processes)
    if settings.processes > 1 and settings.skip_persistence:
        raise typer.BadParameter(
            "several processes share the store on disk; unset SKIP_PERSISTENCE or serve one process",
            param_hint="--processes",
        )
    with _errors():
        try:
            import uvicorn

            from .service.app import create_app
        except ImportError as exc:
            _say(
                "error:",
                "bold red",
                f"serving needs the service extra ({exc.name} is missing); "
                "install it with `pip install 'atomic-usage[service]'`.",
            )
            raise typer.Exit(3) from None
        from .engine.predictor import SESSION_THREADS

        options: dict[str, Any] = dict(
            host=host,
            port=port,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            log_level=(log_level or settings.log_level).lower(),
            access_log=False,
            timeout_graceful_shutdown=int(graceful_s) or None,
            lifespan="on",
        )
        if settings.processes > 1:
            from .service.auth import TokenVerifier
            from .service.supervisor import serve_processes

            # What every serving process would refuse, refused once here, before the store is made
            # (each printed a traceback): a --model that names nothing, a missing or damaged model
            # folder, no token. Each process then loads its own model. Warmed up here, a network
            # file ONNX Runtime cannot load is refused too, not at the first request.
            _warmed(_load_forecaster(model, settings, threads=SESSION_THREADS))
            TokenVerifier.from_settings(settings)
            status = serve_processes(settings, model, options)
            if status:
                raise typer.Exit(status)
            return
        from .service.supervisor import STARTUP_FAILURE, address_problem

        problem = address_problem(host, port)  # before the engine opens the store: no "service ready"
        if problem is not None:
            _say("error:", "bold red", problem)
            raise typer.Exit(STARTUP_FAILURE)
        # Loaded here, not by the engine at start-up, so that a missing or damaged model folder
        # (ATOMIC_MODEL_DIR too) is one error line, not uvicorn's traceback; as the predictor
        # loads its default model, with one ONNX Runtime thread per worker's session.
        api = create_app(settings, model=_warmed(_load_forecaster(model, settings, threads=SESSION_THREADS)))
        from .service.server import Server

        Server(uvicorn.Config(api, **options)).run()  # exits 0 after a clean SIGTERM shutdown


@app.command("token-hash")
def token_hash(
    token: Annotated[str, typer.Argument(help="The token; '-' reads it from stdin.")] = "-",
) -> None:
    """Print the line to put in ATOMIC_API_TOKENS_FILE for a token (its SHA-256, never the token)."""
    from .service.auth import hash_token

    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise typer.BadParameter("the token is empty", param_hint="TOKEN")
    out.print(hash_token(token), highlight=False)


def _register_security() -> None:
    from .security.cli import keys_app, open_command

    app.add_typer(keys_app, name="keys", help="Manage the keyring that seals results.")
    app.command("open", help="Open sealed results (a JSON envelope or a list of them).")(open_command)


_register_security()


# --- Sources, collector, pictures (issue 9) ---------------------------------------------------------
InputOpt = Annotated[Path | None, typer.Option("--input", "-i", help="Wide CSV or Parquet: id,timestamp,<metric>...")]
PromOpt = Annotated[
    str | None,
    typer.Option(
        "--prometheus",
        help="Read from this Prometheus server (e.g. http://localhost:9090) instead of a file.",
    ),
]
RangeOpt = Annotated[str, typer.Option("--range", help="With --prometheus: how far back to read, e.g. 7d.")]
StepOpt = Annotated[str, typer.Option("--step", help="With --prometheus: the query step, e.g. 5m.")]
SelectorOpt = Annotated[
    str | None, typer.Option("--selector", help="With --prometheus: label matchers, e.g. '{job=\"node\"}'.")
]
MountOpt = Annotated[str, typer.Option("--mount", help="The mount point whose storage is measured.")]
QueryOpt = Annotated[
    list[str] | None,
    typer.Option("--query", help="With --prometheus: METRIC=PROMQL replacing or adding a metric's query."),
]
FromStoreOpt = Annotated[
    bool,
    typer.Option(
        "--from-store", help="Read the history gathered by `atomic-usage collect` (not the service's task store)."
    ),
]


def _queries(query: list[str] | None) -> dict[str, str]:
    out = {}
    for q in query or []:
        metric, sep, promql = q.partition("=")
        if not sep or not metric.strip():
            raise typer.BadParameter(f"write METRIC=PROMQL, e.g. cpuLoad='...'; got {q!r}", param_hint="--query")
        out[metric.strip()] = promql.strip()
    return out


def _pull(url: str, range_: str, step: str, selector: str | None, mount: str, query: list[str] | None) -> Any:
    from .data.prometheus import build_queries, page_ranges, parse_duration, pull

    queries = _queries(query)
    rng, stp = parse_duration(range_, name="range"), parse_duration(step, name="step")
    import pandas as pd

    now = pd.Timestamp.now(tz="UTC").floor(stp)
    total = len(page_ranges(now - rng, now, stp)) * len(build_queries(selector=selector, queries=queries))
    with _progress("pulling", total) as advance:
        return pull(
            url,
            range=rng,
            step=stp,
            end=now,
            selector=selector,
            mount=mount,
            queries=queries,
            progress=lambda metric: advance(1, note=metric),
        )


def _read_source(
    input: Path | None,
    prometheus: str | None,
    range_: str,
    step: str,
    selector: str | None,
    mount: str,
    query: list[str] | None,
    from_store: bool,
    settings: Settings,
    *,
    issues: list[Any] | None = None,
) -> tuple[Any, Any]:
    """The wide frame from one of --input, --prometheus, --from-store, and the step to regularize at."""
    given = [n for n, v in (("--input", input), ("--prometheus", prometheus), ("--from-store", from_store)) if v]
    if len(given) != 1:
        raise typer.BadParameter(
            f"give exactly one of --input FILE, --prometheus URL or --from-store (got {', '.join(given) or 'none'})",
            param_hint="--input",
        )
    from .data.regularize import DEFAULT_STEP

    if prometheus:
        from .data.prometheus import parse_duration

        return _pull(prometheus, range_, step, selector, mount, query), parse_duration(step, name="step")
    if from_store:
        from .data.collector import read_collected

        return read_collected(settings), DEFAULT_STEP
    from .data.readers import read_wide

    assert input is not None
    return read_wide(input, issues=issues), DEFAULT_STEP


def _plot(directory: Path, frame: Any, result: Any, settings: Settings) -> None:
    from .report.charts import write_fan_charts

    with _progress("charts", int(result["id"].nunique())) as advance:
        paths = write_fan_charts(directory, frame, result, thresholds=settings.thresholds, progress=advance)
    err.print(f"{len(paths)} charts -> {directory}")


def _eval_chart(rows: list[dict[str, Any]], path: Path) -> None:
    from .report.charts import eval_chart, figure_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(eval_chart(rows)))
    err.print(f"chart -> {path}")


@app.command()
def pull(
    prometheus: Annotated[str, typer.Option("--prometheus", help="The Prometheus server, e.g. http://localhost:9090.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Wide CSV or Parquet to write.")],
    range_: RangeOpt = "7d",
    step: StepOpt = "5m",
    selector: SelectorOpt = None,
    mount: MountOpt = "/",
    query: QueryOpt = None,
) -> None:
    """Read CPU, memory and storage history from Prometheus (node_exporter) into a wide file."""
    _settings()
    with _errors():
        frame = _pull(prometheus, range_, step, selector, mount, query)
        _write_table(frame, output)
        err.print(f"{frame['id'].nunique()} machines, {len(frame)} rows, {list(frame.columns[2:])} -> {output}")


@app.command()
def collect(
    interval: Annotated[str, typer.Option("--interval", help="Time between samples, e.g. 5m.")] = "5m",
    count: Annotated[
        int | None,
        _number_option(
            "--count", minimum=1, unit="samples", help="Stop after this many samples (default: until Ctrl-C)."
        ),
    ] = None,
    mount: MountOpt = "/",
    machine_id: Annotated[str | None, typer.Option("--id", help="The id to record (default: host name).")] = None,
) -> None:
    """Sample this machine's CPU, memory and storage into the local history (see forecast --from-store)."""
    settings = _settings()
    with _errors():
        from .data.collector import collect as run_collect
        from .data.collector import collector_path, require_psutil
        from .data.prometheus import parse_duration

        every = parse_duration(interval, name="interval").total_seconds()
        require_psutil()
        n = [0]

        def show(sample: dict[str, Any]) -> None:
            n[0] += 1
            err.print(
                f"{sample['timestamp']} {sample['id']}: cpu {sample['cpuLoad']:.1f}%, "
                f"memory {sample['memoryUsage']:.1f}%, storage {sample['storageUsage']:.1f}%",
                highlight=False,
            )

        err.print(f"collecting every {interval} into {collector_path(settings)} (Ctrl-C stops)")
        try:
            run_collect(settings, interval_s=every, count=count, mount=mount, machine_id=machine_id, on_sample=show)
        except KeyboardInterrupt:
            err.print(f"stopped after {n[0]} samples")


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
    input: InputOpt = None,
    from_store: FromStoreOpt = False,
    prometheus: PromOpt = None,
    range_: RangeOpt = "7d",
    step: StepOpt = "5m",
    selector: SelectorOpt = None,
    mount: MountOpt = "/",
    query: QueryOpt = None,
    horizon: Annotated[int, typer.Option("--horizon", "-H", parser=_horizon, help=_HORIZON_HELP)] = MAX_HORIZON,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="As in forecast; default: the bundled model.")
    ] = None,
    top: Annotated[
        int, _number_option("--top", minimum=1, unit="machines", help="Machines in the table and charts.")
    ] = 20,
) -> None:
    """Write one self-contained HTML page: machines closest to exhausting a resource, with charts."""
    settings = _settings()
    _refuse_input_as_output(input, output, "the report")
    with _errors():
        from .data.regularize import regularize
        from .report.charts import require_matplotlib
        from .report.html import write_report

        require_matplotlib()  # the charts' extra and a bad --model fail before the input is read
        fc_model = _load_forecaster(model, settings)
        issues: list[Any] = []
        frame, grid = _read_source(
            input, prometheus, range_, step, selector, mount, query, from_store, settings, issues=issues
        )
        panel, _ = regularize(frame, grid)
        result = _forecast_panel(fc_model, panel, horizon, issues)
        with _progress("charts", min(top, int(result["id"].nunique()))) as advance:
            write_report(
                output,
                frame,
                result,
                thresholds=settings.thresholds,
                top=top,
                model=getattr(fc_model, "name", None),
                progress=advance,
            )
        shown = min(top, len(panel))
        err.print(f"{len(panel)} machine{'s' if len(panel) != 1 else ''}, {shown} shown -> {output}")


def main() -> None:
    """Entry point of the ``atomic-usage`` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
