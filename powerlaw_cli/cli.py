"""The ``plsweep`` command line: parse, call one library function, render with rich. No logic here.

Every error a user can cause, a usage error of Typer's included, ends as one line on stderr (printed
without rich markup, so brackets in messages survive) and exit status 2.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from .bounds import FINITE, POSITIVE, Range
from .config import (
    ConfigError,
    Parametrization,
    RunConfig,
    ScheduleConfig,
    ScheduleName,
    section_from_dict,
)
from .errors import PlsweepError

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
    rich_markup_mode=None,  # help texts are plain text: "[adaptive]" stays "[adaptive]"
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


def number_option(help: str, rule: Range = FINITE) -> Any:
    """A number option checked by the one rule of ``bounds``: finite and within ``rule`` (shown in --help),
    so that ``inf`` and ``nan`` are refused like any number out of range."""

    def parse(text: Any) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not rule.holds(value):
            raise typer.BadParameter(f"{text} must be {rule.describe()}")
        return value

    parse.rule = rule  # type: ignore[attr-defined]  # for the test that every number option has one
    return typer.Option(parser=parse, metavar="NUMBER", help=f"{help} ({rule.describe()})")


CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def output_path(text: Any) -> Path:
    """A path the command writes to: no control characters (a newline pasted into ``--out`` would name a
    folder that no listing shows plainly)."""
    if CONTROL_CHARACTER.search(str(text)):
        raise typer.BadParameter(f"{str(text)!r} holds a control character (a newline?); give a plain path")
    return Path(text)


def out_option(help: str) -> Any:
    """An option naming a file or folder to write (see ``output_path``)."""
    return typer.Option(parser=output_path, metavar="PATH", help=help)


def plot_file(plot: Path, stem: str) -> Path:
    """Where ``--plot`` writes: the path given, or ``PLOT/STEM.png`` when it is an existing folder."""
    return plot / f"{stem}.png" if plot.is_dir() else plot


def warn(message: str) -> None:
    """One yellow "warning:" line on stderr, printed as is (no markup)."""
    err_console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def parse_assignments(items: list[str], where: str) -> dict[str, Any]:
    """["a.b=1e-3", "c.d=wsd"] -> {"a.b": 0.001, "c.d": "wsd"}: values are TOML, else plain strings."""
    from .spec import InvalidToml, parse_toml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = parse_toml(f"v = {raw}", f"{where} {key.strip()}")["v"]
        except InvalidToml:
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
    out: Annotated[Path | None, out_option("output folder (default: results/train/RUN_ID)")] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (training.compile; helps on GPUs)")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train one proxy run; write record.json and curve.arrow (resumes from OUT/checkpoint.pt)."""
    from .runner import train_standalone
    from .spec import parse_toml

    data = parse_toml(config.read_text(), str(config)) if config is not None else {}
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

MAX_POINTS = 10_000
"""Rows of a ``plsweep schedule`` table at most (a table, not a data set: use --plot for a curve)."""


def schedule_config(name: str, set_: list[str]) -> ScheduleConfig:
    """The schedule section of a schedule name and its ``--set KEY=VALUE`` settings (``schedule``, ``curves``)."""
    return section_from_dict(ScheduleConfig, {"name": name, **parse_assignments(set_, "--set")}, "schedule")


@app.command()
@user_errors
def schedule(
    name: Annotated[ScheduleName, typer.Argument(help="the schedule")],
    lr: Annotated[float, number_option("peak LR (power: the cap lr_max)", POSITIVE)] = 3e-3,
    tokens: Annotated[float, number_option("run length, tokens", Range(1))] = 1e9,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences per step (power's batch)")] = 256,
    set_: SetOption = [],  # noqa: B006
    points: Annotated[int, typer.Option(min=2, max=MAX_POINTS, help="rows of the table")] = 11,
    plot: Annotated[
        Path | None, out_option("write a PNG of the schedule here (a folder: FOLDER/NAME.png)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a table (or write a PNG) of any LR schedule. Schedule settings go in --set, e.g. -s warmup_tokens=1e7."""
    from .schedules import build_schedule, sample

    sched = build_schedule(schedule_config(name, set_), lr, int(tokens), batch_size)
    rows = sample(sched, tokens, points)
    if plot is not None:
        from .plots import plot_schedule

        plot = plot_schedule(
            {name: sample(sched, tokens, 512)}, plot_file(plot, name), title=f"{name}, peak {lr:g}"
        )
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
        number_option("LR of the check (default: the calibrated one, larger than training)", POSITIVE),
    ] = None,
    tolerance: Annotated[
        float, number_option("allowed growth of activations per doubling of width", Range(1))
    ] = 1.2,
    plot: Annotated[
        Path | None,
        out_option("write a PNG of activations against width here (a folder: FOLDER/coord_check.png)"),
    ] = None,
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
    df = cc.coord_check(width_list, parametrization, steps=steps, **({"lr": lr} if lr is not None else {}))
    result = cc.verdict(df, tolerance)
    if plot is not None:
        from .plots import plot_coord_check

        plot = plot_coord_check(df, plot_file(plot, "coord_check"))
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


# The commands of the other modules register themselves on ``app`` when imported (in --help order).
from . import cli_sweep, cli_fit  # noqa: E402, F401, I001
