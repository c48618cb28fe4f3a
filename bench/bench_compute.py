"""Compute per answer: the same question answered by a full grid, run by run or with shared trunks, and by
an adaptive sweep; and several chains at once in one task against one at a time.

Run by hand, never by the test suite::

    python bench/bench_compute.py                      # the demo's grid, then the chains-at-once figures
    python bench/bench_compute.py --spec sweeps/demo.toml --spec bench/larger.toml --workers 2

For each sweep file (an ordinary grid with an ``optimizer.lr`` axis) it trains, on this machine with the
local executor, into fresh directories:

1. every run alone (``share_trunks = false``);
2. the full grid with shared WSD trunks (the default);
3. the adaptive sweep of the same grid: the LR axis replaced by ``[adaptive] lr_min, lr_max`` (the axis's
   ends, lattice step its ratio), everything else equal;

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


def adaptive_text(spec: Path) -> str:
    """The sweep file with its LR axis replaced by an [adaptive] section over the same range and ratio."""
    data = tomllib.loads(spec.read_text())
    lrs = load_sweep(spec).axes["optimizer.lr"]
    del data["grid"]["optimizer"]["lr"]
    if not data["grid"]["optimizer"]:
        del data["grid"]["optimizer"]
    step = math.log2(lrs[1] / lrs[0])
    data["adaptive"] = {"lr_min": min(lrs), "lr_max": max(lrs), "lr_step_log2": step, "max_rounds": 12}
    data.setdefault("sweep", {})["name"] = f"{data.get('sweep', {}).get('name', spec.stem)}-adaptive"
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


def compare(spec: Path, work: Path, workers: int) -> list[dict]:
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
    adaptive_spec = work / f"{sweep.name}-adaptive.toml"
    adaptive_spec.write_text(adaptive_text(spec))
    shutil.copy(spec, work / spec.name)  # relative data paths resolve beside it
    adaptive = load_sweep(adaptive_spec)
    out = work / adaptive.name
    started = time.monotonic()
    result = launch_adaptive(adaptive, out, "local", dataclasses.replace(adaptive.launch, workers=workers))
    rounds = SweepDir(out).rounds()
    rows.append(
        {
            "strategy": f"adaptive ({len(rounds)} rounds: {result.why[:60]})",
            "flops": sum(r["flops"] for r in rounds),
            "wall_s": time.monotonic() - started,
            "runs": len(SweepDir(out).manifest_run_ids()),
            **power_constants(out),
        }
    )
    print(rows[-1], flush=True)
    return rows


def chains_at_once(work: Path, chains: int) -> list[dict]:
    """One task of ``chains`` demo-model chains: one at a time with every thread, or one per core at once."""
    import torch

    from powerlaw_cli.launch import submit
    from powerlaw_cli.sweep_settings import LaunchConfig
    from powerlaw_cli.worker import run_task

    cores = len(os.sched_getaffinity(0))
    text = (ROOT / "sweeps" / "demo.toml").read_text()
    spec = work / "chains.toml"
    spec.write_text(text.replace('name = "demo"', 'name = "chains"'))
    sweep = load_sweep(spec)
    smallest = min(run.training.tokens for run in sweep.runs)
    sweep = dataclasses.replace(sweep, runs=[r for r in sweep.runs if r.training.tokens == smallest][:chains])
    source = SweepDir(work / "chains-source")  # one task of every chain, written but not run
    with source.launch_lock():
        submit(source, sweep, "local", LaunchConfig(runs_per_task=chains)).live.close()
    rows = []
    for at_once, threads in ((1, cores), (cores, 1)):
        copy = work / f"chains-{at_once}"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(
            source.root, copy, ignore=shutil.ignore_patterns("runs", "curves", "checkpoints", "*.index.json")
        )
        torch.set_num_threads(threads)
        cpu0, wall0 = os.times(), time.monotonic()
        run_task(copy, 0, 0, at_once=at_once, threads=threads)
        cpu1, wall = os.times(), time.monotonic() - wall0
        cpu = (cpu1.user + cpu1.system + cpu1.children_user + cpu1.children_system) - (
            cpu0.user + cpu0.system + cpu0.children_user + cpu0.children_system
        )
        rows.append(
            {
                "chains_at_once": at_once,
                "threads_each": threads,
                "runs": len(sweep.runs),
                "wall_s": wall,
                "cpu_s": cpu,
                "runs_per_cpu_s": len(sweep.runs) / cpu,
                "runs_per_wall_s": len(sweep.runs) / wall,
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
    parser.add_argument("--chains", type=int, default=12, help="chains in the chains-at-once task")
    parser.add_argument("--work", type=Path, default=Path("/tmp/plsweep-bench-compute"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    figures = {"compare": {}, "chains_at_once": []}
    for spec in args.spec or [ROOT / "sweeps" / "demo.toml"]:
        rows = compare(spec.resolve(), args.work, args.workers)
        figures["compare"][spec.name] = rows
        alone, trunks, adaptive = (row["flops"] for row in rows)
        print(
            f"{spec.name}: adaptive / every run alone = {adaptive / alone:.3f}; adaptive / full grid with "
            f"trunks = {adaptive / trunks:.3f}; trunks / alone = {trunks / alone:.3f}",
            flush=True,
        )
    figures["chains_at_once"] = chains_at_once(args.work, args.chains)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
