"""The ``plsweep`` command line: parse, call one library function, render with rich. No logic here.

Every error a user can cause, a usage error of Typer's included, ends as one line on stderr (printed
without rich markup, so brackets in messages survive) and exit status 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from .config import (
    ConfigError,
    DecayShape,
    LaunchConfig,
    Parametrization,
    RunConfig,
    ScheduleConfig,
    ScheduleName,
    section_from_dict,
)
from .errors import PlsweepError
from .export_formats import ExportFormat
from .fit_optimum import OptimumMethod
from .fit_spec import BatchUnit
from .launch import Executor

if TYPE_CHECKING:
    from .demo import DemoResult

console = Console()
err_console = Console(stderr=True)


def print_error(message: str, exit_code: int = 2) -> None:
    """One red "error:" line on stderr, the message printed as is (no markup), then exit."""
    err_console.print(Text.assemble(("error: ", "red"), " ".join(str(message).split())), soft_wrap=True)
    raise SystemExit(exit_code)


class OneLineErrors(TyperGroup):
    """Typer's usage errors (an unknown option, a value not among the choices, out of range, missing) as
    one line and exit status 2, like the project's own errors."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            print_error("aborted", 1)
        except typer.TyperException as err:
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            print_error(message, getattr(err, "exit_code", 2))
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Find the LR and batch size of a large LM run from many small muP proxy runs.",
)


@app.callback(invoke_without_command=True)
def _show_help(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


SetOption = Annotated[
    list[str], typer.Option("--set", "-s", help="SECTION.FIELD=VALUE (TOML value), repeatable")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]


def user_errors(func):
    """Bad input ends with one red line and exit status 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PlsweepError as err:  # the project's errors: a setting, a file, a table, the cluster
            print_error(str(err))
        except OSError as err:  # a file that cannot be read or written: name it
            print_error(f"{err.filename or ''}: {err.strerror or err}" if err.filename else str(err))

    return wrapper


def warn(message: str) -> None:
    """One yellow "warning:" line on stderr, printed as is (no markup)."""
    err_console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def parse_assignments(items: list[str], where: str) -> dict[str, Any]:
    """["a.b=1e-3", "c.d=wsd"] -> {"a.b": 0.001, "c.d": "wsd"}: values are TOML, else plain strings."""
    from .spec import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def print_json(data: Any) -> None:
    from .store import json_ready

    sys.stdout.write(json.dumps(json_ready(data), indent=2, default=str) + "\n")


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- train -------------------------------------------------------------------------------------


@app.command()
@user_errors
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="TOML file with model, data, optimizer, schedule, training and averaging sections"
        ),
    ] = None,
    set_: SetOption = [],  # noqa: B006 - typer needs a literal default
    out: Annotated[Path | None, typer.Option(help="output folder (default: results/train/RUN_ID)")] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (training.compile; helps on GPUs)")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train one proxy run; write record.json and curve.arrow (resumes from OUT/checkpoint.pt)."""
    from .runner import train_standalone
    from .spec import tomllib

    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(config.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{config}: invalid TOML: {err}") from None
    overrides = parse_assignments(set_, "--set") | ({"training.compile": True} if compile_ else {})
    run = RunConfig.from_dict(data, str(config or "defaults")).replace(overrides, "--set")
    out = out or Path("results") / "train" / run.run_id
    record = train_standalone(run, out)
    if as_json:
        print_json(record)
        return
    keys = (
        "run_id",
        "status",
        "final_val_loss",
        "final_val_loss_averaged",
        "final_train_loss",
        "diverged_at_tokens",
        "error",
        "tokens_seen",
        "steps",
        "params_non_embedding",
        "flops",
        "wall_seconds",
        "resumes",
        "device",
    )
    console.print(kv_table(f"run {run.run_id}", {k: record.get(k) for k in keys} | {"output": out}))


# --- schedule ----------------------------------------------------------------------------------


@app.command()
@user_errors
def schedule(
    name: Annotated[ScheduleName, typer.Argument(help="the schedule")],
    lr: Annotated[float, typer.Option(help="peak LR (power: the cap lr_max), > 0")] = 3e-3,
    tokens: Annotated[float, typer.Option(min=1, help="run length, tokens")] = 1e9,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences per step (power's batch)")] = 256,
    set_: SetOption = [],  # noqa: B006
    points: Annotated[int, typer.Option(min=2, help="rows of the table")] = 11,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of the schedule here")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a table (or write a PNG) of any LR schedule. Schedule settings go in --set, e.g. -s warmup_tokens=1e7."""
    from .schedules import build_schedule, sample

    fields = {"name": name, **parse_assignments(set_, "--set")}
    cfg = section_from_dict(ScheduleConfig, fields, "schedule")
    sched = build_schedule(cfg, lr, int(tokens), batch_size)
    rows = sample(sched, tokens, points)
    if plot is not None:
        from .plots import plot_schedule

        plot_schedule({name: sample(sched, tokens, 512)}, plot, title=f"{name}, peak {lr:g}")
    if as_json:
        print_json({"schedule": name, "points": [{"tokens": t, "lr": v} for t, v in rows]})
        return
    table = Table(title=f"{name} schedule (tokens -> LR)", title_justify="left")
    table.add_column("tokens", justify="right")
    table.add_column("lr", justify="right")
    for t, v in rows:
        table.add_row(f"{t:.4g}", f"{v:.4g}")
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot}")


# --- coord-check -------------------------------------------------------------------------------


@app.command("coord-check")
@user_errors
def coord_check(
    widths: Annotated[str, typer.Option(help="comma-separated widths, at least two")] = "64,128,256,512,1024",
    parametrization: Annotated[Parametrization, typer.Option(help="the parametrization to check")] = "mup",
    steps: Annotated[int, typer.Option(min=1, help="Adam steps to record")] = 4,
    lr: Annotated[
        float | None,
        typer.Option(help="LR of the check, > 0 (default: the calibrated one, larger than training)"),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(min=1, help="allowed growth of activations per doubling of width")
    ] = 1.2,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of activations against width here")] = None,
    as_json: JsonOption = False,
) -> None:
    """The muP coordinate check: exit status 1 when activations drift with width beyond the tolerance."""
    from . import coord_check as cc

    try:
        width_list = sorted({int(w) for w in widths.split(",") if w.strip()})
    except ValueError:
        raise ConfigError(f"--widths: {widths!r} must be comma-separated integers") from None
    if len(width_list) < 2 or width_list[0] < 1:
        raise ConfigError(f"--widths: {widths!r} needs at least two different positive widths")
    if lr is not None and lr <= 0:
        raise ConfigError(f"--lr: {lr} must be > 0")
    df = cc.coord_check(width_list, parametrization, steps=steps, **({"lr": lr} if lr is not None else {}))
    result = cc.verdict(df, tolerance)
    if plot is not None:
        from .plots import plot_coord_check

        plot_coord_check(df, plot)
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(coord_table(result))
        colour = "green" if result.passed else "red"
        console.print(f"[{colour}]{result.summary()}[/{colour}]")
        if plot is not None:
            console.print(f"plot: {plot}")
    if not result.passed:
        raise typer.Exit(1)


def coord_table(result: Any) -> Table:
    table = Table(title="growth of mean |activation| per doubling of width (last step)", title_justify="left")
    for column in ("module", "growth", "ok"):
        table.add_column(column)
    for row in result.rows():
        table.add_row(row["module"], f"{row['growth']:.3f}", "yes" if row["ok"] else "[red]NO[/red]")
    return table


# --- plan, launch, status, collect -------------------------------------------------------------


def launch_options(sweep_launch: LaunchConfig, items: list[str], workers: int | None) -> LaunchConfig:
    """The sweep file's [launch] section with command-line overrides, validated like the file."""
    import dataclasses

    values = dataclasses.asdict(sweep_launch) | parse_assignments(items, "--set")
    if workers is not None:
        values["workers"] = workers
    return section_from_dict(LaunchConfig, values, "launch")


LAUNCH_KEYS = ", ".join(f.name for f in __import__("dataclasses").fields(LaunchConfig))


@app.command()
@user_errors
def plan(
    spec: Annotated[Path, typer.Argument(help="sweep file (TOML)")],
    set_: Annotated[
        list[str],
        typer.Option("--set", "-s", help=f"override a launch setting KEY=VALUE; keys: {LAUNCH_KEYS}"),
    ] = [],  # noqa: B006
    throughput: Annotated[
        float, typer.Option(min=1, help="sustained training FLOP/s per GPU, for GPU-hours")
    ] = 1e14,
    max_array_size: Annotated[
        int | None, typer.Option(min=1, help="default: the cluster's MaxArraySize (1001 if unknown)")
    ] = None,
    head: Annotated[int, typer.Option(min=0, help="how many runs to list")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Runs, tasks and arrays a sweep would submit, whether they fit the cluster's limits; tokens, FLOPs, GPU-hours."""
    import dataclasses

    from .plan import make_plan
    from .slurm import cluster_limits
    from .spec import load_sweep

    sweep = load_sweep(spec)
    if sweep.adaptive is not None:  # what its first round launches: later rounds depend on its results
        from .rounds import first_round

        sweep = dataclasses.replace(sweep, runs=first_round(sweep))
    options = launch_options(sweep.launch, set_, None)
    limits = cluster_limits(options.account)
    if max_array_size is not None:
        limits = dataclasses.replace(limits, max_array_size=max_array_size)
    result = make_plan(sweep, options, limits, throughput, head)
    if as_json:
        print_json(result.to_dict())
        return
    summary = {k: v for k, v in result.to_dict().items() if k not in ("axes", "first_runs")}
    console.print(kv_table(f"plan of sweep {sweep.name} ({spec})", summary))
    axes = Table(title="grid axes", title_justify="left")
    axes.add_column("setting")
    axes.add_column("values")
    for key, values in result.axes.items():
        axes.add_row(key, ", ".join(_fmt(v) for v in values))
    console.print(axes)
    console.print(rows_table(f"first {len(result.first_runs)} of {result.runs} runs", result.first_runs))


def rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """A table of ``rows``: the columns are the union of their keys, a key first seen in a later row placed
    right after the key before it in that row, and every value goes under its own key's header; a row
    without a key leaves that cell empty."""
    columns: list[str] = []
    for row in rows:
        previous = None
        for key in row:
            if key not in columns:
                columns.insert(columns.index(previous) + 1 if previous is not None else len(columns), key)
            previous = key
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_fmt(row.get(column))) for column in columns))  # values are text, never markup
    return table


@app.command()
@user_errors
def launch(
    spec: Annotated[Path, typer.Argument(help="sweep file (TOML)")],
    executor: Annotated[
        Executor, typer.Option(help="local: this machine; slurm: submitit job arrays; debug: in-process")
    ] = "local",
    out: Annotated[Path | None, typer.Option(help="sweep directory (default: results/NAME)")] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, help="local: runs at once (default: one per GPU, else CPU cores)")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="also rerun failed runs (diverged runs are results)")
    ] = False,
    set_: Annotated[
        list[str],
        typer.Option("--set", "-s", help=f"override a launch setting KEY=VALUE; keys: {LAUNCH_KEYS}"),
    ] = [],  # noqa: B006
    watch: Annotated[
        bool,
        typer.Option(
            help="slurm: stay until the sweep is done (an adaptive sweep: plan and submit every round)"
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Launch a sweep: runs without a record (and not queued) are submitted; finished ones are skipped.
    An adaptive sweep ([adaptive]) runs round after round (on Slurm, one round per launch unless --watch)."""
    from .spec import load_sweep

    sweep = load_sweep(spec)
    options = launch_options(sweep.launch, set_, workers)
    out = out or Path("results") / sweep.name
    if sweep.adaptive is not None:
        launch_rounds(sweep, out, executor, options, retry_failed, watch, as_json)
        return
    from .launch import launch as do_launch

    with sweep_progress(executor == "local" and not as_json, f"sweep {sweep.name}") as on_progress:
        result = do_launch(sweep, out, executor, options, retry_failed, on_progress, on_wait=warn)
    if as_json:
        print_json(result.__dict__)
    else:
        print_launch(sweep.name, result)
    if watch and executor == "slurm":
        wait_for_sweep(out)


def print_launch(name: str, result: Any) -> None:
    console.print(
        f"sweep [bold]{name}[/bold]: {result.runs_total} runs; {result.skipped_recorded} already "
        f"recorded, {result.skipped_queued} queued; launching {result.runs_launched} in {result.tasks} tasks"
    )
    out = result.sweep_dir
    if result.array_ids:
        console.print(f"submitted Slurm arrays {', '.join(result.array_ids)} to {out}")
    elif result.counts:
        console.print("results: " + ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())))
    console.print(f"next: plsweep status {out}" + ("" if result.array_ids else f"  |  plsweep fit {out}"))


def launch_rounds(
    sweep: Any,
    out: Path,
    executor: Any,
    options: LaunchConfig,
    retry_failed: bool,
    watch: bool,
    as_json: bool,
) -> None:
    """An adaptive sweep: each round's plan as it is made, then where the sweep stands."""
    from .rounds import launch_adaptive

    def on_round(entry: dict) -> None:
        if not as_json:
            console.print(Text(round_line(entry)))

    with sweep_progress(executor == "local" and not as_json, f"sweep {sweep.name}") as on_progress:
        result = launch_adaptive(
            sweep, out, executor, options, retry_failed, watch, on_progress, warn, on_round
        )
    if as_json:
        print_json(result.__dict__ | {"launches": [launch.__dict__ for launch in result.launches]})
        return
    console.print(Text(("done: " if result.done else "") + result.why))
    console.print(f"next: plsweep status {out}  |  plsweep fit {out}")


def round_line(entry: dict) -> str:
    """One line per adaptive round: what it added and why, or why the sweep stops."""
    head = f"round {entry['round']}: "
    if entry["done"]:
        return head + f"stop: {entry['why']}"
    return head + f"{entry['runs_added']} runs ({entry['flops']:.3g} FLOPs): {entry['why']}"


def wait_for_sweep(out: Path) -> None:
    """Poll a Slurm sweep (at most every 30 s) until nothing is queued or running."""
    from .status import sweep_status
    from .store import SweepDir

    while not sweep_status(SweepDir(out)).done:
        time.sleep(30.0)


class sweep_progress:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar fed by the local executor's (done, total) callback; silent when disabled."""

    def __init__(self, enabled: bool, label: str):
        self.enabled, self.label = enabled, label
        self.progress: Progress | None = None

    def __enter__(self):
        if not self.enabled:
            return None
        self.progress = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.progress.start()
        task = self.progress.add_task("runs", total=None)
        return lambda done, total: self.progress.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


@app.command()
@user_errors
def status(
    sweep_dir: Annotated[Path, typer.Argument(help="sweep directory")],
    watch: Annotated[bool, typer.Option(help="refresh until nothing is queued or running")] = False,
    interval: Annotated[
        float, typer.Option(min=0, help="seconds between polls with --watch (at least 30 on Slurm)")
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Counts of finished, diverged, failed, running, pending and lost runs; failures with their logs."""
    from .status import sweep_status
    from .store import SweepDir

    sweep = SweepDir(sweep_dir)
    warned = False
    while True:
        result = sweep_status(sweep)
        if result.warning and not warned:
            warn(result.warning)
            warned = True
        if as_json:
            print_json(result.to_dict())
        else:
            render_status(result)
        if not watch or result.done:
            return
        slurm = any(e["executor"] == "slurm" for e in sweep.launches())
        time.sleep(max(interval, 30.0) if slurm else interval)


def render_status(result: Any) -> None:
    counts = result.counts
    done = counts["finished"] + counts["diverged"] + counts["failed"]
    width = 40
    filled = round(width * done / max(result.total, 1))
    console.print(
        f"sweep [bold]{result.sweep}[/bold]: {done}/{result.total} done  "
        f"[green]{'#' * filled}[/green]{'.' * (width - filled)}"
    )
    table = Table(show_header=True)
    for state in counts:
        table.add_column(state, justify="right")
    table.add_row(*(str(n) for n in counts.values()))
    console.print(table)
    for failure in result.failures[:20]:
        job = f" (job {failure.job})" if failure.job else ""
        console.print(Text.assemble(("failed", "red"), f" {failure.run_id}: {failure.error}{job}"))
        for line in failure.log_tail:
            console.print(f"    {line}", highlight=False, markup=False)
    for entry in result.rounds:
        console.print(Text(round_line(entry)))
    if result.checkpoint_bytes:
        console.print(
            f"checkpoints (kept trunks and unfinished runs): {result.checkpoint_bytes / 1e6:.3g} MB"
        )
    for reason, n in sorted(result.lost.items(), key=lambda kv: -kv[1]):
        console.print(Text.assemble(("lost", "yellow"), f" {n}: {reason} (launch again to rerun)"))
    for bad in result.bad_records:
        console.print(Text.assemble(("untrusted record", "yellow"), f" {bad}"))


@app.command()
@user_errors
def collect(
    sweep_dir: Annotated[Path, typer.Argument(help="sweep directory")],
    as_json: JsonOption = False,
) -> None:
    """Gather records into runs.parquet and curves into curves.parquet (incremental)."""
    from .store import SweepDir
    from .store import collect as do_collect

    report = do_collect(SweepDir(sweep_dir))
    data = {
        "runs": report.runs,
        "new": report.new,
        "runs_path": report.runs_path,
        "curves_path": report.curves_path,
        "problems": [str(p) for p in report.problems],
        "unreadable_curves": report.unreadable_curves,
    }
    if as_json:
        print_json(data)
        return
    console.print(
        f"collected {report.runs} runs ({report.new} new) into {report.runs_path} and {report.curves_path}"
    )
    for problem in data["problems"]:
        warn(f"left out {problem} (counts as not finished)")
    for problem in report.unreadable_curves:
        warn(f"curve left out: {problem}")


# --- fit and export ----------------------------------------------------------------------------


def out_console() -> Console:
    """Where tables go: the terminal's console, or, when stdout is a pipe or a file, one so wide that
    no row is wrapped or cut ("…") and every number is printed whole."""
    return console if console.is_terminal else Console(width=100_000, highlight=False)


@app.command()
@user_errors
def fit(
    source: Annotated[Path, typer.Argument(help="sweep directory, or a CSV/Parquet table of runs")],
    col: Annotated[
        list[str],
        typer.Option(help="column mapping OURS=THEIRS, e.g. lr=peak_lr, batch=bs, N=params, D=tokens"),
    ] = [],  # noqa: B006
    loss_column: Annotated[str | None, typer.Option(help="loss column (default final_val_loss)")] = None,
    batch_unit: Annotated[BatchUnit, typer.Option(help="unit of the batch column")] = "sequences",
    seq_len: Annotated[
        int | None,
        typer.Option(
            min=1, help="sequence length: converts a batch in tokens, and gives batch laws in tokens"
        ),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(help="comma-separated group columns (default: every setting but lr, batch and seed)"),
    ] = None,
    method: Annotated[
        OptimumMethod,
        typer.Option(
            help="optimum per LR curve and per batch profile: parabola (centred 3-point), band, argmin, parabola_grid"
        ),
    ] = "parabola",
    window: Annotated[
        int, typer.Option(min=1, help="parabola: neighbours on each side of the best point")
    ] = 1,
    band: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="band: keep points within this relative margin of the best loss (0.0025 = 0.25%)",
        ),
    ] = 0.0025,
    min_points: Annotated[
        int, typer.Option(min=3, help="fewest finite LRs per cell (and usable batches per group)")
    ] = 3,
    law: Annotated[
        list[str],
        typer.Option(
            help="a law, repeatable: 'lr_opt ~ N + D', 'batch_opt ~ D', 'loss ~ N + D', or NAME='...' (var^1 fixes an exponent)"
        ),
    ] = [],  # noqa: B006
    robust: Annotated[bool, typer.Option(help="Huber loss instead of least squares for power laws")] = False,
    weighted: Annotated[
        bool, typer.Option(help="weight power-law points by 1 / sigma^2 of their optimum")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="bootstrap resamples of cells or groups (and draws per group)")
    ] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="seed of the bootstrap")] = 0,
    top_k_batches: Annotated[
        int | None,
        typer.Option(
            min=1, help="fit the power law the paper's way: gamma over the k best batches per group"
        ),
    ] = None,
    predict: Annotated[
        list[str], typer.Option(help="print every law at e.g. N=7e9 D=1.4e12 (repeat per variable)")
    ] = [],  # noqa: B006
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: DIR/fit or beside the table)")
    ] = None,
    plots: Annotated[bool, typer.Option(help="write the figures")] = True,
    as_json: JsonOption = False,
) -> None:
    """Optimal LR and batch per group, laws over any variables, the loss law; writes fit/fit.json."""
    from .fit import predict_all, run_fit
    from .fit_data import parse_pairs, parse_values
    from .fit_spec import parse_law_options

    values = parse_values(predict)
    done = run_fit(
        source,
        columns=parse_pairs(col),
        loss_column=loss_column,
        batch_unit=batch_unit,
        seq_len=seq_len,
        out=out,
        plots=plots,
        group_by=group_by.split(",") if group_by else None,
        method=method,
        window=window,
        band=band,
        min_points=min_points,
        laws=parse_law_options(law),
        robust=robust,
        weighted=weighted,
        n_boot=bootstrap,
        seed=seed,
        top_k_batches=top_k_batches,
    )
    predictions = predict_all(done.fit, values) if values else {}
    if as_json:
        print_json(
            done.fit
            | {
                "fit_json": str(done.fit_json),
                "figures": [str(p) for p in done.figures],
                "predictions": {
                    k: (v._asdict() if hasattr(v, "_asdict") else v) for k, v in predictions.items()
                },
            }
        )
        return
    render_fit(done.fit, done.fit_json, done.figures, predictions)


def render_fit(data: dict, path: Path | None, figures: list[Path], predictions: dict) -> None:
    from . import fit_report as report

    out = out_console()
    power, loss = report.power_law_rows(data), report.loss_law_rows(data)
    if power:
        out.print(
            rows_table("power laws y = a * prod x^e_x (95% intervals: bootstrap over cells or groups)", power)
        )
    if loss:
        out.print(
            rows_table(
                "loss laws L = E + sum A_x * x^-alpha_x (Huber on ln L, L-BFGS; 95% bootstrap intervals)",
                loss,
            )
        )
    groups = report.group_rows(data)
    if groups:
        used = sum(g["status"] == "used" for g in groups)
        out.print(rows_table(f"groups (joint LR x batch optimum): {used} used of {len(groups)}", groups))
    n = data["n_cells"]
    if data["mode"] == "sweep" and groups:
        out.print(f"cells: {n['used']} used of {n['total']} (one LR curve per batch; each in fit.json)")
    elif data["mode"] == "sweep":
        out.print(rows_table(f"cells: {n['used']} used of {n['total']}", report.cell_rows(data)))
    else:
        g = data["n_groups"]
        out.print(f"table of final losses: {g['used']} of {g['total']} settings used (no LR sweep)")
    if data["mode"] == "sweep":
        out.print(rows_table("muP transfer across widths", report.transfer_rows(data)))
    out.print("units: " + "\n       ".join(report.units_lines(data)), highlight=False, markup=False)
    for warning in data["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    for name, value in predictions.items():
        text = value if isinstance(value, str) else report.interval(value._asdict())
        out.print(f"predict {name}: {text}", highlight=False, markup=False)
    if path is not None:
        out.print(f"fit: {path}")
    for figure in figures:
        out.print(f"figure: {figure}")


@app.command()
@user_errors
def export(
    fit_path: Annotated[
        Path, typer.Argument(metavar="FIT", help="fit.json, or a folder holding fit/fit.json")
    ],
    tokens: Annotated[float, typer.Option(min=0, help="target run length, tokens (D)")],
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="target batch, sequences (default: the fit's batch law)")
    ] = None,
    params: Annotated[
        float | None, typer.Option(min=0, help="target non-embedding parameters N, for laws over N")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option(min=1, help="target sequence length (steps; needed for lm-engine and torch)")
    ] = None,
    format_: Annotated[ExportFormat, typer.Option("--format", help="output format")] = "json",
    law: Annotated[
        str, typer.Option(help="lr_opt law for the peak LR (auto: the one using most of the target)")
    ] = "auto",
    batch_law: Annotated[
        str, typer.Option(help="batch_opt law when no --batch-size (auto: as --law)")
    ] = "auto",
    loss_law: Annotated[
        str, typer.Option(help="loss law for the expected loss (auto: any that fits the target)")
    ] = "auto",
    lr_max: Annotated[float, typer.Option(min=0, help="the Power schedule's cap")] = 0.02,
    warmup_fraction: Annotated[
        float, typer.Option(min=0, max=1, help="warmup as a fraction of the run (whole steps)")
    ] = 0.01,
    decay_fraction: Annotated[
        float, typer.Option(min=0, max=1, help="decay as a fraction of the run (whole steps)")
    ] = 0.1,
    decay_shape: Annotated[DecayShape, typer.Option(help="shape of the final decay")] = "exponential",
    out: Annotated[
        Path | None, typer.Option(help="write the recommendation to this file instead of stdout")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG of the target schedule (default: beside fit.json)")
    ] = None,
) -> None:
    """Recommended peak LR, batch size and loss for a target (batch, tokens) or (N, D), with intervals;
    the Power-scheduler constants and schedule when the LR law has the Power form."""
    from . import export_formats as formats
    from .export import export as recommend
    from .fit import find_fit, read_fit

    data = read_fit(fit_path)
    rec = recommend(
        data,
        batch_size,
        tokens,
        seq_len,
        params=params,
        law=law,
        batch_law=batch_law,
        loss_law=loss_law,
        lr_max=lr_max,
        warmup_fraction=warmup_fraction,
        decay_fraction=decay_fraction,
        decay_shape=decay_shape,
    )
    text = formats.render(rec, format_)
    png = None
    if rec["constants"] is not None:
        default = find_fit(fit_path).parent / f"schedule_B{rec['target']['batch_size']}_T{tokens:.3g}.png"
        png = formats.write_schedule_png(rec, plot or default)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    for warning in rec["warnings"]:
        warn(warning)
    notes = ([f"schedule plot: {png}"] if png else [rec["schedule_note"]]) + (
        [f"recommendation: {out}"] if out else []
    )
    err_console.print("; ".join(notes), highlight=False, soft_wrap=True, markup=False)


# --- demo --------------------------------------------------------------------------------------


@app.command()
@user_errors
def demo(
    quick: Annotated[
        bool, typer.Option(help="a few runs only (sweeps/demo-quick.toml), for a fast end-to-end check")
    ] = False,
    spec: Annotated[Path | None, typer.Option(help="sweep file (default: sweeps/demo.toml)")] = None,
    out: Annotated[Path | None, typer.Option(help="sweep directory (default: results/NAME)")] = None,
    workers: Annotated[int, typer.Option(min=0, help="runs at once (0: one per CPU core)")] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples of the fit")] = 1000,
) -> None:
    """The whole job on this machine: launch the demo sweep locally, collect, fit, export; re-run to resume."""
    from .demo import demo_spec, run_demo
    from .spec import load_sweep

    spec = spec or demo_spec(quick)
    name = load_sweep(spec).name
    out = out or Path("results") / name
    started = time.monotonic()
    with sweep_progress(True, f"sweep {name}") as on_progress:
        result = run_demo(spec, out, workers, bootstrap, on_progress=on_progress)
    launched = result.launched
    console.print(
        f"sweep [bold]{name}[/bold] in {out}: {launched.runs_total} runs, {launched.skipped_recorded} "
        f"were already recorded; collected {result.collected.runs}"
    )
    print_demo(result)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")


def print_demo(result: DemoResult) -> None:
    """The demo's findings: laws, Power constants, the example target, paths. A sweep that supports no
    law or no Power schedule is a finding too: it is said in yellow, and the command still succeeds."""
    from .demo import PAPER_LAW
    from .fit import read_fit
    from .fit_report import power_law_rows

    out = out_console()
    if result.fit_json is None:
        out.print(f"[yellow]no fitted law:[/yellow] {escape(result.fit_error)}", highlight=False)
        return
    fit = read_fit(result.fit_json)
    n = fit["n_cells"]
    out.print(f"cells with an interior LR optimum: {n['used']} of {n['total']}")
    keep = ("law", "a", "e_B", "e_D", "R2", "n")
    rows = [{k: row[k] for k in keep if k in row} for row in power_law_rows(fit) if row["law"] in fit["laws"]]
    out.print(rows_table("fitted laws (95% intervals: bootstrap over cells or groups)", rows))
    for law in fit["laws"].values():
        if law["status"] != "fitted":
            out.print(
                f"law {law['name']} not fitted: {law['error']}", style="dim", highlight=False, markup=False
            )
    out.print(
        f"paper (Shen et al. 2024; batch in sequences of 4096 tokens, T in tokens): {PAPER_LAW}",
        highlight=False,
    )
    rec = result.recommendation
    if rec is None:
        out.print(
            f"[yellow]no Power schedule to export:[/yellow] {escape(result.fit_error)}", highlight=False
        )
    else:
        c, peak, target = rec["constants"], rec["recommended"]["peak_lr"], rec["target"]
        out.print(
            f"Power scheduler: lr = min(lr_max, a * batch * n^b) with a = {c['a']['value']:.4g} "
            f"[{c['a']['low']:.4g}, {c['a']['high']:.4g}], b = {c['b']['value']:.4g} "
            f"[{c['b']['low']:.4g}, {c['b']['high']:.4g}], lr_max = {c['lr_max']}"
        )
        out.print(
            f"example target (batch {target['batch_size']} sequences, {target['tokens']:.3g} tokens): "
            f"peak LR {peak['value']:.4g} [{peak['low']:.4g}, {peak['high']:.4g}]"
        )
        for warning in rec["warnings"]:
            out.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    out.print(f"fit: {result.fit_json}")
    for path in [*result.figures, *([result.schedule_png] if result.schedule_png else [])]:
        out.print(f"figure: {path}")
