"""The whole job on one machine: launch a sweep locally, collect, fit, export for an example target.

``plsweep demo`` runs ``sweeps/demo.toml`` (``--quick``: ``sweeps/demo-quick.toml``, a few runs) with
the local executor. Interrupted and re-run, it skips the runs already recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .collect import CollectReport, collect
from .export import export
from .export_formats import write_schedule_png
from .fit import FitError, run_fit
from .launch import LaunchResult, launch
from .spec import load_sweep
from .store import SweepDir

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
PAPER_LAW = "lr_opt = batch * 4.6 * T^-0.51"
"""The Power paper's fit (Shen et al. 2024), for comparison: batch in sequences, T in tokens."""


def demo_spec(quick: bool) -> Path:
    """The demo's sweep file in this source tree."""
    path = SWEEPS / ("demo-quick.toml" if quick else "demo.toml")
    if not path.exists():
        raise FileNotFoundError(f"{path}: the demo sweep file is missing from this checkout")
    return path


@dataclass
class DemoResult:
    """Paths and numbers the demo prints."""

    sweep_dir: Path
    launched: LaunchResult
    collected: CollectReport
    fit_json: Path | None = None
    figures: list[Path] = field(default_factory=list)
    fit_error: str = ""
    recommendation: dict[str, Any] | None = None
    schedule_png: Path | None = None


def example_target(runs: list, scale: float = 10.0) -> tuple[int, int]:
    """A larger run to recommend for: the sweep's largest batch, ``scale`` x its largest budget."""
    return max(r.training.batch_size for r in runs), int(scale * max(r.training.tokens for r in runs))


def run_demo(
    spec: Path,
    out: Path,
    workers: int = 0,
    bootstrap: int = 1000,
    target: tuple[int, int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Launch ``spec`` locally into ``out`` (skipping recorded runs), then collect, fit (``fit.run_fit``,
    the pipeline ``plsweep fit`` runs) and export.

    A sweep that supports no law (``fit_json`` None) or no Power schedule (``recommendation`` None) is
    a result, not an error: ``fit_error`` says why.
    """
    sweep = load_sweep(spec)
    options = replace(sweep.launch, workers=workers) if workers else sweep.launch
    launched = launch(sweep, out, "local", options, on_progress=on_progress)
    result = DemoResult(out, launched, collect(SweepDir(out)))
    try:
        done = run_fit(out, out=out / "fit", n_boot=bootstrap)
    except FitError as err:
        result.fit_error = str(err)
        return result
    result.fit_json, result.figures = done.fit_json, done.figures
    batch, tokens = target or example_target(sweep.runs)
    seq_len = sweep.runs[0].model.seq_len
    try:
        result.recommendation = export(done.fit, batch, tokens, seq_len, law="power")
        result.schedule_png = write_schedule_png(result.recommendation, out / "fit" / "target_schedule.png")
    except FitError as err:
        result.fit_error = str(err)
    return result
