"""What a sweep would cost before it is launched: runs, chains, tasks, arrays, tokens, FLOPs, GPU-hours,
and whether its tasks fit under the cluster's limits. No torch: costs come from the model's shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .chains import chain_tokens, plan_chains
from .config import RunConfig
from .launch import check_fits, pack_tasks
from .slurm import ClusterLimits
from .spec import Sweep
from .sweep_settings import LaunchConfig


@dataclass
class Plan:
    """The numbers ``plsweep plan`` prints (all tokens in tokens, FLOPs in FLOPs)."""

    sweep: str
    runs: int
    duplicates_dropped: int
    chains: int
    shared_chains: int
    tasks: int
    arrays: int
    runs_per_task: int
    max_array_size: int
    cluster: str
    fits: str
    tokens_planned: int
    tokens_trained: int
    flops: float
    gpu_hours: float
    throughput_flops: float
    axes: dict[str, list[Any]]
    first_runs: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_row(run: RunConfig) -> dict[str, Any]:
    """The settings that usually vary in a sweep, for the first-runs table (a trainer run's params instead of
    the built-in proxy's schedule)."""
    row = {
        "run_id": run.run_id,
        "width": run.model.width,
        "depth": run.model.depth,
        "batch_size": run.training.batch_size,
        "tokens": run.training.tokens,
        "lr": run.optimizer.lr,
        "schedule": run.schedule.name,
        "seed": run.training.seed,
        "steps": run.steps,
    }
    if run.trainer is not None:
        del row["schedule"]
        row |= {f"params.{name}": value for name, value in run.params.items()}
    return row


def make_plan(
    sweep: Sweep, launch: LaunchConfig, limits: ClusterLimits, throughput: float, head: int = 10
) -> Plan:
    """Plan ``sweep`` as ``launch`` would submit it now under ``limits``; GPU-hours at ``throughput`` FLOP/s per GPU."""
    chains = plan_chains(sweep.runs, launch.share_trunks)
    tasks = pack_tasks(chains, launch.runs_per_task)
    tokens_trained = 0
    flops = 0.0
    for chain in chains:
        tokens = chain_tokens(chain)
        tokens_trained += tokens
        flops += chain.runs[0].model.flops_per_token * tokens
    return Plan(
        sweep=sweep.name,
        runs=len(sweep.runs),
        duplicates_dropped=sweep.duplicates,
        chains=len(chains),
        shared_chains=sum(1 for c in chains if c.kind != "single"),
        tasks=len(tasks),
        arrays=-(-len(tasks) // limits.max_array_size),
        runs_per_task=launch.runs_per_task,
        max_array_size=limits.max_array_size,
        cluster=limits.describe(),
        fits=check_fits(len(tasks), limits, chains, launch.runs_per_task) or "yes",
        tokens_planned=sum(run.training.tokens for run in sweep.runs),
        tokens_trained=tokens_trained,
        flops=flops,
        gpu_hours=flops / throughput / 3600,
        throughput_flops=throughput,
        axes=sweep.axes,
        first_runs=[run_row(run) for run in sweep.runs[:head]],
    )
