"""What a sweep would cost before it is launched: runs, chains, tasks, arrays, tokens, FLOPs, GPU-hours."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from .chains import Chain, fork_step, plan_chains
from .config import LaunchConfig, ModelConfig, RunConfig
from .launch import pack_tasks
from .spec import Sweep


@functools.lru_cache(maxsize=256)
def model_costs(model: ModelConfig) -> tuple[int, int]:
    """(params_non_embedding, flops_per_token) of a model shape, built once per shape on the meta device
    (shapes only, no memory), so planning a sweep of large proxies costs nothing."""
    import torch

    from .model import GPT

    with torch.device("meta"):
        gpt = GPT(model)
    return gpt.params_non_embedding, gpt.flops_per_token


def chain_tokens(chain: Chain) -> int:
    """Tokens actually trained for a chain: a trunk trains its stable phase once."""
    if chain.kind == "single":
        run = chain.runs[0]
        return run.steps * run.batch_tokens
    if chain.kind == "wsd_s":
        return max(run.steps * run.batch_tokens for run in chain.runs)
    stable = max(fork_step(run) * run.batch_tokens for run in chain.runs)
    return stable + sum((run.steps - fork_step(run)) * run.batch_tokens for run in chain.runs)


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
    """The settings that usually vary in a sweep, for the first-runs table."""
    return {"run_id": run.run_id, "width": run.model.width, "depth": run.model.depth,
            "batch_size": run.training.batch_size, "tokens": run.training.tokens, "lr": run.optimizer.lr,
            "schedule": run.schedule.name, "seed": run.training.seed, "steps": run.steps}


def make_plan(sweep: Sweep, launch: LaunchConfig, max_array_size: int, throughput: float, head: int = 10) -> Plan:
    """Plan ``sweep`` as ``launch`` would submit it; GPU-hours at ``throughput`` FLOP/s per GPU."""
    chains = plan_chains(sweep.runs, launch.share_trunks)
    tasks = pack_tasks(sweep.runs, launch.runs_per_task, launch.share_trunks)
    flops = 0.0
    tokens_trained = 0
    for chain in chains:
        tokens = chain_tokens(chain)
        tokens_trained += tokens
        flops += model_costs(chain.runs[0].model)[1] * tokens
    return Plan(
        sweep=sweep.name, runs=len(sweep.runs), duplicates_dropped=sweep.duplicates, chains=len(chains),
        shared_chains=sum(1 for c in chains if c.kind != "single"), tasks=len(tasks),
        arrays=-(-len(tasks) // max_array_size), runs_per_task=launch.runs_per_task, max_array_size=max_array_size,
        tokens_planned=sum(run.training.tokens for run in sweep.runs), tokens_trained=tokens_trained,
        flops=flops, gpu_hours=flops / throughput / 3600, throughput_flops=throughput,
        axes=sweep.axes, first_runs=[run_row(run) for run in sweep.runs[:head]],
    )
