"""``plsweep plan``, ``launch``, ``status`` and ``collect``: the commands that run and follow a sweep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .bounds import NON_NEGATIVE, Range
from .cli import (
    JsonOption,
    _fmt,
    app,
    console,
    kv_table,
    number_option,
    out_option,
    parse_assignments,
    print_json,
    rows_table,
    sweep_progress,
    user_errors,
    warn,
)
from .sweep_settings import Executor, LaunchConfig


def launch_overrides(items: list[str], workers: int | None) -> dict[str, Any]:
    """The command line's [launch] settings (``--set KEY=VALUE``, ``--workers``), for ``load_sweep``."""
    return parse_assignments(items, "--set") | ({"workers": workers} if workers is not None else {})


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
        float, number_option("sustained training FLOP/s per GPU, for GPU-hours", Range(1))
    ] = 1e14,
    max_array_size: Annotated[
        int | None, typer.Option(min=1, help="default: the cluster's MaxArraySize (1001 if unknown)")
    ] = None,
    head: Annotated[int, typer.Option(min=0, help="how many runs to list")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Runs, tasks and arrays a sweep would submit, whether they fit the cluster's limits; tokens, FLOPs, GPU-hours."""
    import dataclasses

    from .data_files import check_sweep_data
    from .plan import make_plan
    from .slurm import cluster_limits
    from .spec import load_sweep

    sweep = load_sweep(spec, launch_overrides(set_, None))
    if sweep.adaptive is not None:  # what its first round launches: later rounds depend on its results
        from .rounds import first_round

        sweep = dataclasses.replace(sweep, runs=first_round(sweep))
    options = sweep.launch
    check_sweep_data(sweep.runs)  # data a worker could not load: refused here, as launch refuses it
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


@app.command()
@user_errors
def launch(
    spec: Annotated[Path, typer.Argument(help="sweep file (TOML)")],
    executor: Annotated[
        Executor, typer.Option(help="local: this machine; slurm: submitit job arrays; debug: in-process")
    ] = "local",
    out: Annotated[Path | None, out_option("sweep directory (default: results/NAME)")] = None,
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

    sweep = load_sweep(spec, launch_overrides(set_, workers))
    options = sweep.launch
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
    for line in result.orphans:
        console.print(Text(line))
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


@app.command()
@user_errors
def status(
    sweep_dir: Annotated[Path, typer.Argument(help="sweep directory")],
    watch: Annotated[bool, typer.Option(help="refresh until nothing is queued or running")] = False,
    interval: Annotated[
        float, number_option("seconds between polls with --watch (at least 30 on Slurm)", NON_NEGATIVE)
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
    for line in result.orphans:
        console.print(Text(line))
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
    if counts["unknown"]:
        console.print(
            Text.assemble(
                ("unknown", "yellow"),
                f" {counts['unknown']}: the scheduler could not be asked whether their tasks are still queued "
                "(they may be: do not relaunch them; plsweep status again when it answers)",
            )
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
    from .collect import collect as do_collect
    from .store import SweepDir

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
