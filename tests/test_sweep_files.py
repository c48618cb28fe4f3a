"""The shipped sweep files (sweeps/ and experiments/) load and plan; the quick demo runs end to end."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY_MODEL
from typer.testing import CliRunner

from powerlaw_cli.chains import plan_chains
from powerlaw_cli.cli import app
from powerlaw_cli.launch import pack_tasks
from powerlaw_cli.plan import make_plan
from powerlaw_cli.rounds import first_round
from powerlaw_cli.slurm import ClusterLimits
from powerlaw_cli.spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted([*ROOT.glob("sweeps/*.toml"), *ROOT.glob("experiments/**/*.toml")])


def test_the_demo_and_every_experiment_ship_a_sweep_file():
    names = {path.relative_to(ROOT).as_posix() for path in SWEEP_FILES}
    assert {"sweeps/demo.toml", "sweeps/demo-quick.toml"} <= names
    assert any(name.startswith("experiments/") for name in names)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_sweep_file_loads_and_plans(path):
    sweep = load_sweep(path)
    if sweep.adaptive is not None:  # its runs come in rounds: plan the first one
        assert not sweep.runs and sweep.templates
        sweep = dataclasses.replace(sweep, runs=first_round(sweep))
    assert sweep.runs and sweep.duplicates == 0
    plan = make_plan(sweep, sweep.launch, ClusterLimits(max_array_size=1001), throughput=1e14)
    assert plan.runs == len(sweep.runs) and plan.tasks >= 1
    assert plan.tokens_planned == sum(run.training.tokens for run in sweep.runs)
    assert plan.tokens_trained <= plan.tokens_planned
    per_token = [
        run.model.flops_per_token for run in sweep.runs
    ]  # every trained token costs its model's FLOPs
    assert min(per_token) * plan.tokens_trained <= plan.flops <= max(per_token) * plan.tokens_trained


def test_plan_says_when_a_launch_cannot_fit_and_the_smallest_runs_per_task_that_would():
    sweep = load_sweep(ROOT / "sweeps" / "power-paper.toml")
    options = dataclasses.replace(sweep.launch, runs_per_task=1)
    chains = plan_chains(sweep.runs, options.share_trunks)
    crowded = ClusterLimits(max_array_size=1001, max_job_count=1000, jobs_in_controller=950)  # room for 50
    plan = make_plan(sweep, options, crowded, throughput=1e14)
    assert plan.tasks == len(chains) > 50 and "do not fit" in plan.fits and "leave room for 50" in plan.fits
    suggested = int(plan.fits.split("runs_per_task=")[1].split()[0])
    assert len(pack_tasks(chains, suggested)) <= 50 < len(pack_tasks(chains, suggested - 1))
    assert (
        make_plan(sweep, options, ClusterLimits(max_job_count=1000, jobs_in_controller=0), 1e14).fits == "yes"
    )
    full = ClusterLimits(max_job_count=1000, jobs_in_controller=1000)
    assert "wait until the queue drains" in make_plan(sweep, options, full, 1e14).fits


def test_full_demo_has_interior_grid_room():
    """Every cell of the demo has LRs on both sides of the range where its optimum was found (0.006..0.04)."""
    sweep = load_sweep(ROOT / "sweeps" / "demo.toml")
    lrs = sweep.axes["optimizer.lr"]
    assert min(lrs) < 0.006 and max(lrs) > 0.04
    assert len(sweep.axes["training.batch_size"]) >= 2 and len(sweep.axes["training.tokens"]) >= 2


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path):
    """``plsweep demo --quick``: launch -> collect -> fit -> export through the CLI; a re-run redoes nothing."""
    out = tmp_path / "demo quick"  # a space on purpose
    args = ["demo", "--quick", "--out", str(out), "--bootstrap", "200", "--workers", "2"]
    first = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    n_runs = len(load_sweep(ROOT / "sweeps" / "demo-quick.toml").runs)
    assert len(list((out / "runs").glob("*/*.json"))) == n_runs
    assert (out / "runs.parquet").exists()
    fit = json.loads((out / "fit" / "fit.json").read_text())
    power = fit["laws"]["power"]
    assert power["status"] == "fitted"
    assert power["exponents"]["tokens"]["value"] < 0, "the quick demo's lr_opt no longer falls with tokens"
    assert "Power scheduler: lr = min(lr_max, a * batch * n^b)" in first.output
    assert "peak LR" in first.output and (out / "fit" / "target_schedule.png").exists()
    assert "figure:" in first.output and (out / "fit" / "cells.png").exists()

    again = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"{n_runs} were already recorded" in again.output


def test_ctrl_c_stops_the_demo_promptly_and_keeps_its_records(tmp_path):
    """Ctrl-C during the local launch: the workers save and exit, the command ends, records stay."""
    out = tmp_path / "interrupted"
    demo = subprocess.Popen(
        [sys.executable, "-m", "powerlaw_cli", "demo", "--quick", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("runs/*/*.json")) and time.monotonic() < deadline and demo.poll() is None:
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) != 0  # before the fix, Pool.terminate() waited forever on the workers
    finally:
        demo.kill()
    assert list(out.glob("runs/*/*.json"))


FLAT_SWEEP = (
    """
[sweep]
name = "flat"
"""
    + TINY_MODEL
    + """[data]
val_tokens = 1024
[schedule]
name = "wsd"
warmup_tokens = 256
[grid]
optimizer.lr = [1e-3, 2e-3]
training.batch_size = [8]
training.tokens = [2048]
"""
)


def test_demo_explains_a_sweep_that_supports_no_law(tmp_path):
    """One cell with two LRs cannot give a law: the demo still exits 0 and says why, with nothing to export."""
    spec = tmp_path / "flat.toml"
    spec.write_text(FLAT_SWEEP)
    out = tmp_path / "flat"
    result = CliRunner().invoke(
        app, ["demo", "--spec", str(spec), "--out", str(out), "--bootstrap", "50"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "no fitted law" in result.output and "usable cells" in result.output
    assert len(list((out / "runs").glob("*/*.json"))) == 2
    assert not (out / "fit" / "fit.json").exists()
