"""Adaptive sweeps on the real launch machinery (local executor, real tiny training): rounds, one sweep
directory, run ids on the LR lattice, kept trunks, status, plan, fit, and an interrupted sweep resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import TINY_WSD, trusted_records
from typer.testing import CliRunner

from powerlaw_cli.chains import fork_step, trunk_key
from powerlaw_cli.cli import app
from powerlaw_cli.collect import collect
from powerlaw_cli.fit import fit_sweep, load_runs
from powerlaw_cli.rounds import launch_adaptive, round_flops, sweep_cells
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir
from powerlaw_cli.sweep_settings import LaunchConfig

ADAPTIVE = (
    """[sweep]
name = "adaptive"
"""
    + TINY_WSD
    + """[training]
device = "cpu"
[grid]
training.batch_size = [8, 16]
training.tokens = [2048, 4096]
training.seed = [0, 1]
[adaptive]
lr_min = 1e-3
lr_max = 6.4e-2
max_rounds = 6
"""
)


def write_spec(folder: Path, text: str = ADAPTIVE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "adaptive.toml"
    path.write_text(text)
    return path


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


class Interrupt(Exception):
    """Raised by a round callback to stop a sweep between rounds, as a killed driver would."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, str]:
    """An adaptive sweep launched from the CLI to its end (local executor): (spec, sweep dir, stdout)."""
    root = tmp_path_factory.mktemp("adaptive")
    spec = write_spec(root)
    code, out, err = invoke("launch", spec, "--out", root / "out", "--workers", "2")
    assert code == 0, err
    return spec, root / "out", out


def test_an_adaptive_sweep_runs_rounds_until_every_cell_meets_the_precision(finished):
    spec, out, printed = finished
    sweep = load_sweep(spec)
    sweep_dir = SweepDir(out)
    rounds = sweep_dir.rounds()
    assert len(rounds) >= 3 and rounds[-1]["done"] and not any(r["done"] for r in rounds[:-1])
    assert "every cell meets the precision" in rounds[-1]["why"]
    assert rounds[0]["cells"] == {"coarse": 2, "waiting": 2}  # the cheapest budget first, at both batches
    assert f"round {len(rounds) - 1}: stop: every cell meets the precision" in printed
    records = trusted_records(sweep_dir)
    manifest = sweep_dir.manifest_run_ids()
    assert sorted(records) == sorted(manifest) == sorted(set(manifest))  # every run recorded, none twice
    assert sum(r["runs_added"] for r in rounds) == len(manifest)
    lattice = sweep.adaptive
    for record in records.values():  # every LR on the lattice
        k = math.log2(record["lr"] / lattice.lr_min) / lattice.lr_step_log2
        assert abs(k - round(k)) < 1e-9, record["lr"]
    full_grid = 4 * 7 * 2  # 4 cells x the 7 lattice LRs of [lr_min, lr_max] x 2 seeds
    assert len(manifest) < full_grid
    collect(sweep_dir)
    fit = fit_sweep(load_runs(out), n_boot=50)
    assert (fit.cells["status"] == "used").all()


def test_kept_trunks_are_extended_and_status_shows_the_rounds_and_their_disk(finished):
    _, out, _ = finished
    sweep_dir = SweepDir(out)
    records = trusted_records(sweep_dir)
    trunks = {r["trunk_id"] for r in records.values()}
    kept = list((out / "checkpoints").glob("*.pt"))
    assert {path.stem for path in kept} == trunks  # one kept state per trunk
    extended = [
        t for t in trunks if {r["tokens"] for r in records.values() if r["trunk_id"] == t} == {2048, 4096}
    ]
    assert extended  # some LR was trained at both budgets: the later round extended its trunk
    code, printed, _ = invoke("status", out)
    assert code == 0 and "round 0: " in printed and "checkpoints (kept trunks" in printed
    status = sweep_status(sweep_dir)
    assert status.checkpoint_bytes == sum(p.stat().st_size for p in kept)
    assert [r["round"] for r in status.rounds] == list(range(len(sweep_dir.rounds())))


def test_plan_shows_the_first_round(finished):
    spec, _, _ = finished
    code, printed, _ = invoke("plan", spec, "--json")
    assert code == 0
    plan = json.loads(printed)
    assert plan["runs"] == 2 * 5 * 2 and {r["tokens"] for r in plan["first_runs"]} == {2048}


def test_an_interrupted_adaptive_sweep_resumed_trains_the_same_runs(finished, tmp_path):
    spec, out, _ = finished
    sweep = load_sweep(spec)

    def stop_after_round_1(entry: dict) -> None:
        if entry["round"] == 1:
            raise Interrupt  # planned and recorded, its runs not trained: as if the driver was killed

    with pytest.raises(Interrupt):
        launch_adaptive(
            sweep, tmp_path / "out", "local", LaunchConfig(workers=2), on_round=stop_after_round_1
        )
    assert len(SweepDir(tmp_path / "out").rounds()) == 2
    resumed = launch_adaptive(sweep, tmp_path / "out", "local", LaunchConfig(workers=2))
    round_1 = SweepDir(tmp_path / "out").rounds()[1]
    assert resumed.done and resumed.launches[0].runs_launched == round_1["runs_added"] > 0  # repaired first
    assert sorted(SweepDir(tmp_path / "out").manifest_run_ids()) == sorted(SweepDir(out).manifest_run_ids())
    assert [r["runs_added"] for r in SweepDir(tmp_path / "out").rounds()] == [
        r["runs_added"] for r in SweepDir(out).rounds()
    ]


def test_an_lr_axis_in_an_adaptive_sweep_is_refused(tmp_path):
    spec = write_spec(tmp_path, ADAPTIVE.replace("[grid]\n", "[grid]\noptimizer.lr = [1e-3, 1e-2]\n"))
    code, _, err = invoke("plan", spec)
    assert code == 2 and "grid.optimizer.lr: an adaptive sweep chooses its LRs" in err


def test_a_round_is_charged_each_trunk_once_and_only_what_it_adds(tmp_path):
    sweep = load_sweep(write_spec(tmp_path))
    template = sweep_cells(sweep).templates
    short, long = (
        next(
            r
            for runs in template.values()
            for r in runs
            if r.training.tokens == t and r.training.batch_size == 8
        ).replace({"optimizer.lr": 0.004})
        for t in (2048, 4096)
    )
    per_step = short.model.flops_per_token * short.batch_tokens
    decay = {run.run_id: run.steps - fork_step(run) for run in (short, long)}
    assert trunk_key(short) == trunk_key(long) and fork_step(short) < fork_step(long)
    # both budgets in one round: one trunk to the longer fork, and both decays
    both = fork_step(long) + decay[short.run_id] + decay[long.run_id]
    assert round_flops([short, long], {}) == both * per_step
    # the longer budget a round later: the kept trunk is extended from the shorter fork
    kept = {trunk_key(short): fork_step(short)}
    assert round_flops([long], kept) == (fork_step(long) - fork_step(short) + decay[long.run_id]) * per_step
    # a budget before the kept fork starts the trunk again
    kept = {trunk_key(short): fork_step(long)}
    assert round_flops([short], kept) == short.steps * per_step
