"""``plsweep fit``, ``export`` and ``demo``: the commands that turn results into laws and recommendations."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .bounds import POSITIVE, UNIT, Range
from .cli import (
    JsonOption,
    SetOption,
    app,
    console,
    err_console,
    number_option,
    out_option,
    print_json,
    rows_table,
    schedule_config,
    sweep_progress,
    user_errors,
    warn,
)
from .config import DecayShape, ScheduleName
from .export_formats import ExportFormat
from .fit_optimum import BandMode, OptimumMethod
from .fit_spec import BatchUnit

if TYPE_CHECKING:
    from .demo import DemoResult


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
        number_option(
            "band: keep points within this relative margin of the best loss (0.0025 = 0.25%)", UNIT
        ),
    ] = 0.0025,
    band_mode: Annotated[
        BandMode,
        typer.Option(
            help="with --method band, a group whose batch varies: profile (the batch profile of the cells' "
            "optima) or steplaw (Step Law's: every (LR, batch) point within --band of the group's best loss, "
            "fitted together)"
        ),
    ] = "profile",
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
    predicted_budgets: Annotated[
        str | None,
        typer.Option(
            help="comma-separated budgets (tokens) not trained: fill them with each LR's final loss predicted by the multi-power law"
        ),
    ] = None,
    out: Annotated[Path | None, out_option("output folder (default: DIR/fit or beside the table)")] = None,
    plots: Annotated[bool, typer.Option(help="write the figures")] = True,
    as_json: JsonOption = False,
) -> None:
    """Optimal LR and batch per group, laws over any variables, the loss law; writes fit/fit.json."""
    from .curves_budgets import parse_budgets
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
        band_mode=band_mode,
        min_points=min_points,
        laws=parse_law_options(law),
        robust=robust,
        weighted=weighted,
        n_boot=bootstrap,
        seed=seed,
        top_k_batches=top_k_batches,
        predicted_budgets=parse_budgets(predicted_budgets) if predicted_budgets else None,
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
    base = report.base_rows(data)
    if base:
        out.print(
            rows_table("tuned base settings (profile optimum of each, the LR at the best group; 95%)", base)
        )
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
    tokens: Annotated[float, number_option("target run length, tokens (D)", POSITIVE)],
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="target batch, sequences (default: the fit's batch law)")
    ] = None,
    params: Annotated[
        float | None, number_option("target non-embedding parameters N, for laws over N", POSITIVE)
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
    lr_max: Annotated[float, number_option("the Power schedule's cap", POSITIVE)] = 0.02,
    warmup_fraction: Annotated[
        float, number_option("warmup as a fraction of the run (whole steps)", UNIT)
    ] = 0.01,
    decay_fraction: Annotated[
        float, number_option("decay as a fraction of the run (whole steps)", UNIT)
    ] = 0.1,
    decay_shape: Annotated[DecayShape, typer.Option(help="shape of the final decay")] = "exponential",
    out: Annotated[Path | None, out_option("write the recommendation to this file instead of stdout")] = None,
    plot: Annotated[Path | None, out_option("PNG of the target schedule (default: beside fit.json)")] = None,
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


# --- curves ------------------------------------------------------------------------------------


@app.command()
@user_errors
def curves(
    source: Annotated[Path, typer.Argument(help="sweep directory, or a CSV/Parquet table of loss curves")],
    col: Annotated[
        list[str], typer.Option(help="column mapping OURS=THEIRS for run, step, lr, tokens, e.g. run=name")
    ] = [],  # noqa: B006
    loss_column: Annotated[str | None, typer.Option(help="loss column (default train_loss)")] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="comma-separated columns of one model (default: every setting but schedule, budget, seed)"
        ),
    ] = None,
    fit_on: Annotated[
        str | None,
        typer.Option(help="comma-separated runs to fit (default: all but each group's longest curves)"),
    ] = None,
    smooth: Annotated[
        int, typer.Option(min=0, help="moving mean over this many logged points before fitting (0: none)")
    ] = 0,
    bootstrap: Annotated[int, typer.Option(min=0, help="block-bootstrap refits per group")] = 50,
    seed: Annotated[int, typer.Option(min=0, help="seed of the bootstrap")] = 0,
    predict: Annotated[
        ScheduleName | None, typer.Option(help="predict this schedule (settings in -s) in every group")
    ] = None,
    tokens: Annotated[float | None, number_option("--predict: the run length, tokens", Range(1))] = None,
    set_: SetOption = [],  # noqa: B006
    out: Annotated[Path | None, out_option("output folder (default: DIR/curves or beside the table)")] = None,
    plots: Annotated[bool, typer.Option(help="write the figures")] = True,
    as_json: JsonOption = False,
) -> None:
    """Fit the multi-power law (and Tissue et al.'s) to loss curves; predict other curves and schedules."""
    from .curves import PredictSpec, report_rows, run_curves
    from .fit_data import parse_pairs
    from .fit_spec import FitError

    spec = None
    if predict is not None:
        if tokens is None:
            raise FitError("--predict needs the run length: --tokens N")
        spec = PredictSpec(schedule_config(predict, set_), tokens, dict(item.split("=", 1) for item in set_))
    elif set_ or tokens is not None:
        raise FitError("--tokens and -s/--set go with --predict SCHEDULE")
    columns = {k if k != "run_id" else "run": v for k, v in parse_pairs(col).items()}
    done = run_curves(
        source,
        columns=columns,
        loss_column=loss_column,
        group_by=group_by.split(",") if group_by else None,
        fit_on=fit_on.split(",") if fit_on else None,
        smooth=smooth,
        n_boot=bootstrap,
        seed=seed,
        predict=spec,
        out=out,
        plots=plots,
    )
    if as_json:
        print_json(done.data | {"curves_json": str(done.json_path)})
        return
    out_ = out_console()
    tables = report_rows(done.data)
    for title, rows in tables.items():
        if rows:
            out_.print(rows_table(title, rows))
    for note in done.data["notes"]:
        out_.print(f"note: {note}", highlight=False, markup=False)
    for warning in done.data["warnings"]:
        out_.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    out_.print(f"curves: {done.json_path}")
    for figure in done.figures:
        out_.print(f"figure: {figure}")


# --- demo --------------------------------------------------------------------------------------


@app.command()
@user_errors
def demo(
    quick: Annotated[
        bool, typer.Option(help="a few runs only (sweeps/demo-quick.toml), for a fast end-to-end check")
    ] = False,
    spec: Annotated[Path | None, typer.Option(help="sweep file (default: sweeps/demo.toml)")] = None,
    out: Annotated[Path | None, out_option("sweep directory (default: results/NAME)")] = None,
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
