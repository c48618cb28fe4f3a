"""What the experiment scripts share: run a sweep file with the package's own launch/collect/fit, and
write tables, figures and results into docs/figures/.

Every experiment goes through the same functions a user's sweep does (``spec.load_sweep``,
``launch.launch`` with the local executor, ``collect.collect``, ``fit_data.load_runs``, and the fit
pipeline ``fit.run_fit`` that ``plsweep fit`` runs), so a re-run skips the runs already recorded in its
sweep directory (``results/experiments/NAME`` by default).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from powerlaw_cli.collect import collect
from powerlaw_cli.fit_data import load_runs
from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.store import SweepDir, json_ready

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = ROOT / "docs" / "figures"
console = Console()


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every experiment takes: where sweep directories go, how many local workers, where
    outputs go. The caller may add its own before ``parse_args()``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "results" / "experiments",
        help="parent folder of the experiment's sweep directories",
    )
    parser.add_argument("--workers", type=int, default=0, help="runs at once (0: one per CPU core)")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where tables, figures and results go")
    return parser


def run_sweep(spec: Path, out: Path, workers: int = 0) -> pd.DataFrame:
    """Launch ``spec`` locally into ``out`` (recorded runs are skipped), collect, and return the runs table."""
    sweep = load_sweep(spec)
    options = replace(sweep.launch, workers=workers) if workers else sweep.launch
    started = time.monotonic()
    with Progress(
        TextColumn(f"sweep {sweep.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("runs", total=None)
        result = launch(
            sweep,
            out,
            "local",
            options,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    collect(SweepDir(out))
    console.print(
        f"{sweep.name}: {result.runs_total} runs ({result.skipped_recorded} already recorded) in "
        f"{time.monotonic() - started:.0f} s -> {out}"
    )
    return load_runs(out)


def curves(out: Path) -> pd.DataFrame:
    """The collected loss curves of a sweep directory."""
    return pd.read_parquet(SweepDir(out).curves_table_path)


def fmt(value: float, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    """``0.0123 [0.0101, 0.0150]``; a missing value is a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}g}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` (dicts with the same keys, already formatted as text)."""
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(name: str, figures_dir: Path, table: str, results: dict[str, Any]) -> None:
    """``NAME.md`` (the table) and ``NAME.json`` (the numbers) into ``figures_dir``."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    (figures_dir / f"{name}.md").write_text(table)
    (figures_dir / f"{name}.json").write_text(json.dumps(json_ready(results), indent=1, default=str) + "\n")
    console.print(table)
    console.print(f"wrote {figures_dir / (name + '.md')} and {figures_dir / (name + '.json')}")
