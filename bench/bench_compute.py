"""Compute per answer: the same question answered by a full grid, run by run or with shared trunks, and by
an adaptive sweep; and several chains at once in one task against one at a time.

Run by hand, never by the test suite::

    python bench/bench_compute.py                      # the demo's grid, then the chains-at-once figures
    python bench/bench_compute.py --spec sweeps/demo.toml --spec bench/larger.toml --workers 2
    python bench/bench_compute.py --chains 0 --budget 0.3     # and an adaptive sweep capped at 30% of (1)

For each sweep file (an ordinary grid with an ``optimizer.lr`` axis) it trains, on this machine with the
local executor, into fresh directories:

1. every run alone (``share_trunks = false``);
2. the full grid with shared WSD trunks (the default);
3. the adaptive sweep of the same grid: the LR axis replaced by ``[adaptive] lr_min, lr_max`` (the axis's
   ends, lattice step its ratio), everything else equal; and with ``--budget F`` the same adaptive sweep
   with ``budget_flops`` = F x the FLOPs of 1;

and reports trained FLOPs (hardware-independent: for 1 and 2 from the chains that were trained, for 3 the
sum of its rounds' charges, which count each trunk's extension only), wall seconds, runs, and the Power
constants (a, b) of ``plsweep fit`` with their 95% intervals. Then it times one task of ``--chains``
demo-model chains trained one at a time with every core's threads against ``chains_at_once`` = cores with
one thread each, and prints runs per CPU-second of each. The machine is shared: FLOPs are exact, times are
not; trust ratios measured side by side more than absolute seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from powerlaw_cli.chains import chain_tokens, plan_chains  # noqa: E402
from powerlaw_cli.collect import collect  # noqa: E402
from powerlaw_cli.fit import fit_sweep, load_runs  # noqa: E402
from powerlaw_cli.launch import launch  # noqa: E402
from powerlaw_cli.rounds import launch_adaptive  # noqa: E402
from powerlaw_cli.spec import load_sweep, tomllib  # noqa: E402
from powerlaw_cli.store import SweepDir  # noqa: E402


def adaptive_text(spec: Path, budget_flops: float = 0.0) -> str:
    """The sweep file with its LR axis replaced by an [adaptive] section over the same range and ratio
    (and a compute budget, when > 0)."""
    data = tomllib.loads(spec.read_text())
    lrs = load_sweep(spec).axes["optimizer.lr"]
    del data["grid"]["optimizer"]["lr"]
    if not data["grid"]["optimizer"]:
        del data["grid"]["optimizer"]
    step = math.log2(lrs[1] / lrs[0])
    data["adaptive"] = {"lr_min": min(lrs), "lr_max": max(lrs), "lr_step_log2": step, "max_rounds": 12}
    suffix = f"-budget-{budget_flops:.3g}" if budget_flops else ""
    if budget_flops:
        data["adaptive"]["budget_flops"] = budget_flops
    data.setdefault("sweep", {})["name"] = f"{data.get('sweep', {}).get('name', spec.stem)}-adaptive{suffix}"
    return _toml(data)


def _toml(data: dict, prefix: str = "") -> str:
    """Minimal TOML writer for sweep files (tables of scalars and lists)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        if all(isinstance(v, dict) for v in value.values()):  # [grid] with dotted sections
            for sub, fields in value.items():
                out += f"\n[{name}.{sub}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
        else:
            out += f"\n[{name}]\n" + _toml(value, f"{name}.")
    return out


def power_constants(out: Path) -> dict:
    """The fitted Power law's a and b with their intervals (or why there is none)."""
    collect(SweepDir(out))
    try:
        law = fit_sweep(load_runs(out), n_boot=1000).laws["power"]
    except Exception as err:  # a fit that finds no law is a result to report
        return {"error": " ".join(str(err).split())[:120]}
    if law["status"] != "fitted":
        return {"error": law["error"]}
    return {"a": law["a"], "b": law["exponents"]["tokens"]}


def grid_flops(spec: Path, share: bool) -> float:
    sweep = load_sweep(spec)
    return sum(
        chain.runs[0].model.flops_per_token * chain_tokens(chain) for chain in plan_chains(sweep.runs, share)
    )


def compare(spec: Path, work: Path, workers: int, budget_fractions: list[float]) -> list[dict]:
    """Rows of the three strategies, then one adaptive sweep per fraction of every run alone's FLOPs given
    as its ``budget_flops``."""
    sweep = load_sweep(spec)
    rows = []
    for label, share in (("every run alone", False), ("full grid, shared trunks", True)):
        out = work / f"{sweep.name}-{'trunks' if share else 'alone'}"
        options = dataclasses.replace(sweep.launch, share_trunks=share, workers=workers)
        started = time.monotonic()
        launch(sweep, out, "local", options)
        rows.append(
            {
                "strategy": label,
                "flops": grid_flops(spec, share),
                "wall_s": time.monotonic() - started,
                "runs": len(sweep.runs),
                **power_constants(out),
            }
        )
        print(rows[-1], flush=True)
    shutil.copy(spec, work / spec.name)  # relative data paths resolve beside it
    for fraction in [0.0, *budget_fractions]:
        budget = fraction * rows[0]["flops"]
        adaptive_spec = work / f"{sweep.name}-adaptive-{len(rows)}.toml"
        adaptive_spec.write_text(adaptive_text(spec, budget))
        adaptive = load_sweep(adaptive_spec)
        out = work / adaptive.name
        started = time.monotonic()
        options = dataclasses.replace(adaptive.launch, workers=workers)
        result = launch_adaptive(adaptive, out, "local", options)
        rounds = SweepDir(out).rounds()
        label = f", budget {fraction:.0%} of every run alone" if fraction else ""
        rows.append(
            {
                "strategy": f"adaptive{label} ({len(rounds)} rounds: {result.why[:60]})",
                "flops": sum(r["flops"] for r in rounds),
                "wall_s": time.monotonic() - started,
                "runs": len(SweepDir(out).manifest_run_ids()),
                **power_constants(out),
            }
        )
        print(rows[-1], flush=True)
    return rows


SHAPES = {  # model shapes of the chains-at-once figures, and a budget that takes seconds per run here
    "width 32, 2 blocks (the demo's)": {"training.tokens": 65536},
    "width 256, 4 blocks": {
        "model.width": 256,
        "model.depth": 4,
        "model.n_heads": 4,
        "training.tokens": 32768,
    },
}


def chains_at_once(work: Path, chains: int) -> list[dict]:
    """One task of ``chains`` chains of each shape: one at a time with every core's threads, or one chain
    per core at once with one thread each; runs per CPU-second and per wall second of each."""
    import torch

    from powerlaw_cli.launch import submit
    from powerlaw_cli.sweep_settings import LaunchConfig
    from powerlaw_cli.worker import run_task

    cores = len(os.sched_getaffinity(0))
    base = load_sweep(ROOT / "sweeps" / "demo.toml")
    rows = []
    for shape, overrides in SHAPES.items():
        smallest = min(run.training.tokens for run in base.runs)
        runs = [r.replace(overrides) for r in base.runs if r.training.tokens == smallest][:chains]
        sweep = dataclasses.replace(base, name="chains", runs=runs)
        source = SweepDir(work / f"chains-{len(rows)}")  # one task of every chain, written but not run
        with source.launch_lock():
            submit(source, sweep, "local", LaunchConfig(runs_per_task=chains)).live.close()
        for at_once, threads in ((1, cores), (cores, 1)):
            copy = work / f"chains-{len(rows)}-{at_once}"
            shutil.copytree(
                source.root,
                copy,
                ignore=shutil.ignore_patterns("runs", "curves", "checkpoints", "*.index.json"),
            )
            torch.set_num_threads(threads)
            cpu0, wall0 = os.times(), time.monotonic()
            run_task(copy, 0, 0, at_once=at_once, threads=threads)
            cpu1, wall = os.times(), time.monotonic() - wall0
            cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user, system, children's user and system
            flops = runs[0].model.flops_per_token
            rows.append(
                {
                    "shape": shape,
                    "flops_per_token": flops,
                    "chains_at_once": at_once,
                    "threads_each": threads,
                    "runs": len(runs),
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "runs_per_cpu_s": len(runs) / cpu,
                    "runs_per_wall_s": len(runs) / wall,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", type=Path, action="append", help="sweep files to compare (default: the demo)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers")
    parser.add_argument(
        "--chains", type=int, default=8, help="chains in the chains-at-once task (0: skip it)"
    )
    parser.add_argument("--no-compare", action="store_true", help="only the chains-at-once figures")
    parser.add_argument(
        "--budget",
        type=float,
        action="append",
        default=[],
        help="also an adaptive sweep with budget_flops = this fraction of every run alone's FLOPs",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/plsweep-bench-compute"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    figures = {"compare": {}, "chains_at_once": []}
    for spec in [] if args.no_compare else args.spec or [ROOT / "sweeps" / "demo.toml"]:
        rows = compare(spec.resolve(), args.work, args.workers, args.budget)
        figures["compare"][spec.name] = rows
        alone, trunks = rows[0]["flops"], rows[1]["flops"]
        for row in rows[2:]:
            print(
                f"{spec.name}: {row['strategy']}: / every run alone = {row['flops'] / alone:.3f}; / full "
                f"grid with trunks = {row['flops'] / trunks:.3f}; trunks / alone = {trunks / alone:.3f}",
                flush=True,
            )
    if args.chains:
        figures["chains_at_once"] = chains_at_once(args.work, args.chains)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
