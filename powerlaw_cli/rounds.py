"""Adaptive sweeps run on the launch machinery, round after round, in one sweep directory.

A sweep file with an ``[adaptive]`` section gives a range of LRs instead of an LR axis. Each round, under
the sweep directory's launch lock:

1. the runs of the earlier rounds are read from the manifest; if any is still queued or running, the round
   waits (on Slurm the command says so and returns, or with ``--watch`` polls every 30 s);
2. runs of earlier rounds that are lost (cancelled, preempted, ...) are launched again, as a fixed grid's
   would be, before anything new is planned;
3. otherwise ``adaptive.plan_round`` turns the records so far into the next round's runs (an LR of the
   lattice at every seed of each chosen cell), the plan is appended to ``rounds.jsonl`` (what it adds, why,
   what it costs), and the runs go out with ``launch.submit``: same run ids, records and fit as a fixed grid.

Workers keep each WSD or Power trunk's state at its last fork (``keep_trunks``), so a later round that adds
a larger budget at an LR extends the trunk instead of training it again; the cost a round is charged is
what its chains add (``round_flops``: a trunk the round extends to two budgets is charged once). On the
local executor the rounds run back to back; on Slurm each ``plsweep launch`` submits at most one round,
and is safe to run again at any time (or to leave running with ``--watch``). The stopping rules (precision, budget, rounds) may change between launches; the cells
and the LR lattice may not (they are the sweep's identity).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .adaptive import CellSpec, Observation, plan_round
from .chains import TRUNK_SCHEDULES, added_tokens, chain_tokens, fork_step, plan_chains, trunk_key
from .config import RunConfig, stable_hash
from .data_files import check_sweep_data
from .launch import LaunchResult, Prepared, run_prepared, submit
from .runstate import sweep_state
from .spec import Sweep
from .store import SweepDir, record_index
from .sweep_settings import Executor, LaunchConfig

POLL_SECONDS = 30.0  # --watch on Slurm: one batched scheduler query per poll at most


@dataclass
class Cells:
    """The cells of an adaptive sweep and, for each, its template runs (one per seed of the grid)."""

    specs: list[CellSpec]
    templates: dict[tuple, list[RunConfig]]


def cell_key(run: RunConfig) -> tuple:
    """A run's cell: every setting of its identity but the LR and the seed."""
    identity = run.identity()
    identity["optimizer"].pop("lr", None)
    identity["training"].pop("seed", None)
    return (stable_hash(identity),)


def sweep_cells(sweep: Sweep) -> Cells:
    """The cells of an adaptive sweep's grid (each grouped by its axes other than batch size and budget,
    for the laws), with their templates."""
    assert sweep.adaptive is not None, "a sweep without [adaptive] has no cells to plan"
    per_law = [a for a in sweep.axes if a not in ("training.batch_size", "training.tokens", "training.seed")]
    templates: dict[tuple, list[RunConfig]] = {}
    specs: dict[tuple, CellSpec] = {}
    for run in sweep.templates:
        key = cell_key(run)
        templates.setdefault(key, []).append(run)
        flat = run.flat()
        group = tuple((axis, flat[axis]) for axis in per_law)
        specs.setdefault(key, CellSpec(key, run.training.batch_size, run.training.tokens, group))
    return Cells(list(specs.values()), templates)


def runs_so_far(sweep_dir: SweepDir) -> list[RunConfig]:
    """The runs of the earlier rounds (the manifest's), or none before the first round."""
    if not sweep_dir.manifest_path.exists():
        return []
    shared: dict[tuple, Any] = {}
    configs = sweep_dir.manifest_configs(sweep_dir.manifest_run_ids())
    return [
        RunConfig.from_dict(config, f"{sweep_dir.manifest_path} run {run_id}", shared)
        for run_id, config in configs.items()
    ]


def observe(sweep_dir: SweepDir, runs: list[RunConfig]) -> list[Observation]:
    """Every run with a trusted record, as the policy sees it (from the record index: no record is read twice)."""
    records = record_index(sweep_dir).records
    out = []
    for run in runs:
        record = records.get(run.run_id)
        if record is not None:
            loss = record["final_val_loss"] if record["status"] == "ok" else None
            out.append(
                Observation(
                    cell_key(run),
                    run.optimizer.lr,
                    run.training.seed,
                    math.nan if loss is None else loss,
                    record["status"],
                )
            )
    return out


def kept_trunks(cells: Cells, runs: list[RunConfig], observed: list[Observation]) -> dict[str, int]:
    """The step each WSD or Power trunk is kept at (by the workers): the furthest fork of its recorded runs."""
    done = {(o.cell, o.lr, o.seed) for o in observed if o.status in ("ok", "diverged")}
    steps: dict[str, int] = {}
    for run in runs:
        if (
            run.schedule.name in TRUNK_SCHEDULES
            and (cell_key(run), run.optimizer.lr, run.training.seed) in done
        ):
            key = trunk_key(run)
            steps[key] = max(steps.get(key, 0), fork_step(run))
    return steps


def round_cost(cells: Cells, kept: dict[str, int]) -> Callable[[CellSpec, float], float]:
    """The FLOPs a (cell, LR) would add now at every seed: each trunk is extended from where it is
    ``kept``, a run of another schedule is trained in full. Summed over a round's proposals this counts a
    trunk that the round extends to two budgets twice; ``round_flops`` is the round's exact cost."""

    def cost(cell: CellSpec, lr: float) -> float:
        total = 0.0
        for template in cells.templates[cell.key]:
            run = template.replace({"optimizer.lr": lr})
            at = kept.get(trunk_key(run)) if run.schedule.name in TRUNK_SCHEDULES else None
            total += run.model.flops_per_token * added_tokens(run, at)
        return total

    return cost


def round_flops(new: list[RunConfig], kept: dict[str, int]) -> float:
    """The FLOPs a round's runs add, chain by chain as the workers train them: a trunk from where it is
    kept when every new fork lies beyond it (else from the start) to its last new fork, plus each run's
    decay; any other chain in full."""
    total = 0.0
    for chain in plan_chains(new):
        run, start = chain.runs[0], 0
        if chain.kind == "trunk" and kept.get(chain.key, 0) <= min(fork_step(r) for r in chain.runs):
            start = kept.get(chain.key, 0)
        total += run.model.flops_per_token * (chain_tokens(chain) - start * run.batch_tokens)
    return total


@dataclass
class AdaptiveResult:
    """What a launch of an adaptive sweep did: the rounds it planned, the launches, and where it stands."""

    sweep_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    launches: list[LaunchResult] = field(default_factory=list)
    done: bool = False
    why: str = ""


def launch_adaptive(
    sweep: Sweep,
    out: Path,
    executor: Executor = "local",
    options: LaunchConfig | None = None,
    retry_failed: bool = False,
    watch: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> AdaptiveResult:
    """Run an adaptive sweep into ``out``: rounds back to back locally, one round per call on Slurm
    (every round with ``watch``, asking the scheduler every ``poll_seconds``). ``on_round`` hears each
    round's plan as it is made."""
    options = options or sweep.launch
    check_sweep_data(sweep.templates)  # every round trains on the data of its templates: refuse it first
    sweep_dir = SweepDir(out)
    cells = sweep_cells(sweep)
    result = AdaptiveResult(sweep_dir.root)
    while True:
        with sweep_dir.launch_lock(on_wait):
            sweep_dir.create(sweep.text, sweep.name, sweep.sweep_hash)
            step, prepared, entry = _next_step(sweep_dir, sweep, cells, executor, options, retry_failed)
        if entry is not None:
            result.rounds.append(entry)
            if on_round is not None:
                try:
                    on_round(entry)
                except (
                    BaseException
                ):  # the round's runs stay lost (its local launch ends here); a relaunch repairs
                    if prepared is not None:
                        prepared.live.close()
                    raise
        if step == "done":
            result.done, result.why = True, entry["why"]
            return result
        if step == "busy":
            if executor != "slurm" or not watch:
                result.why = "the last round is still queued or running; launch again when it has finished"
                return result
            time.sleep(poll_seconds)
            continue
        result.launches.append(run_prepared(sweep_dir, prepared, options, on_progress))
        if executor == "slurm" and not watch:
            result.why = (
                "round submitted; launch again when it has finished (or use --watch) to plan the next"
            )
            return result


def _next_step(
    sweep_dir: SweepDir,
    sweep: Sweep,
    cells: Cells,
    executor: Executor,
    options: LaunchConfig,
    retry_failed: bool,
) -> tuple[str, Prepared | None, dict[str, Any] | None]:
    """Under the launch lock: wait for, repair, finish or plan-and-submit a round (see the module docstring)."""
    runs = runs_so_far(sweep_dir)
    if runs:
        states = sweep_state(sweep_dir).runs.values()
        if any(s.state in ("pending", "running", "unknown") for s in states):
            return "busy", None, None
        if any(s.needs_launch(retry_failed) for s in states):
            prepared = submit(
                sweep_dir,
                dataclasses.replace(sweep, runs=runs),
                executor,
                options,
                retry_failed,
                keep_trunks=True,
            )
            return "repair", prepared, None
    observed = observe(sweep_dir, runs)
    kept = kept_trunks(cells, runs, observed)
    earlier = sweep_dir.rounds()
    spent = sum(entry.get("flops", 0.0) for entry in earlier)
    plan = plan_round(cells.specs, observed, sweep.adaptive, len(earlier), spent, round_cost(cells, kept))
    new = [
        template.replace({"optimizer.lr": p.lr})
        for p in plan.proposals
        for template in cells.templates[p.cell]
    ]
    statuses = Counter(cell["status"] for cell in plan.cells)
    entry = {
        "round": plan.round,
        "planned_at": datetime.now().astimezone().isoformat(),
        "done": plan.done,
        "runs_added": len(new),
        "cell_lrs_added": len(plan.proposals),
        "flops": round_flops(new, kept),
        "runs_total": len(runs) + len(new),
        "cells": dict(statuses),
        "why": plan.why,
        "added": [{"cell": _label(cells, p.cell), "lr": p.lr, "reason": p.reason} for p in plan.proposals],
        "laws": plan.laws,
    }
    sweep_dir.append_round(
        entry
    )  # the decision, before its runs go out: a failed submission leaves them lost
    if plan.done:
        return "done", None, entry
    prepared = submit(
        sweep_dir,
        dataclasses.replace(sweep, runs=runs + new),
        executor,
        options,
        retry_failed,
        keep_trunks=True,
    )
    return "round", prepared, entry


def _label(cells: Cells, key: tuple) -> str:
    return next(spec.label for spec in cells.specs if spec.key == key)


def first_round(sweep: Sweep) -> list[RunConfig]:
    """The runs an adaptive sweep's first round would launch (what ``plsweep plan`` shows and costs)."""
    cells = sweep_cells(sweep)
    plan = plan_round(cells.specs, [], sweep.adaptive, 0, 0.0, round_cost(cells, {}))
    return [
        template.replace({"optimizer.lr": p.lr})
        for p in plan.proposals
        for template in cells.templates[p.cell]
    ]
