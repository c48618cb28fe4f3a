"""What runs inside one array task (Slurm) or one local process: the chains of one task of a launch.

Workers receive paths and numbers, never objects: (sweep directory, launch number, task index). They
read the task's run ids, and the settings of those runs only, from the sweep directory, skip runs
already recorded, and write one record per run. Signals are turned into step-boundary requests:
SIGTERM (scancel, ``scontrol requeue``, preemption) saves a checkpoint and stops; submitit's timeout
signal (USR2) saves a checkpoint and then lets submitit requeue the job, whose next start resumes from
that checkpoint. Importing this module costs no torch (the launcher pickles ``SlurmTask`` by reference).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from .chains import Chain, plan_chains
from .collect import ShardWriter
from .config import RunConfig
from .store import SweepDir

if TYPE_CHECKING:
    from .train import Control


def task_configs(sweep: SweepDir, launch: int, task: int) -> list[RunConfig]:
    """The settings of the runs of one task (and of no other run), in the task's order."""
    run_ids = sweep.tasks(launch)[task]
    configs = sweep.manifest_configs(run_ids)
    return [RunConfig.from_dict(configs[run_id], f"{sweep.manifest_path} run {run_id}") for run_id in run_ids]


def is_result(sweep: SweepDir, run_id: str, redo_failed: bool = True) -> bool:
    """True when a trusted record says the run is done: ok or diverged, or failed unless ``redo_failed``."""
    record = sweep.read_result(run_id)
    return isinstance(record, dict) and (record["status"] != "failed" or not redo_failed)


SMALL_MODEL_FLOPS_PER_TOKEN = 1e8
"""Below this many training FLOPs per token a proxy is bound by per-op overhead, not arithmetic: one thread per
chain and one chain per CPU train more runs per CPU-second than every thread on one chain (bench/bench_compute.py:
22x at 2.5e5 and 6.4x at 2e7 FLOPs per token on a shared 2-core machine)."""


def chains_at_once(setting: int, cpus: int, runs: list[RunConfig]) -> int:
    """How many chains a task trains at once: ``setting`` (launch.chains_at_once) when > 0, else one per CPU
    for small models on the CPU and one for larger models or GPUs (each chain then gets cpus // n threads)."""
    if setting > 0:
        return setting
    if not runs or cpus <= 1 or runs[0].training.device == "cuda":
        return 1
    if runs[0].training.device == "auto" and _cuda_visible():
        return 1
    small = max(run.model.flops_per_token for run in runs) < SMALL_MODEL_FLOPS_PER_TOKEN
    return cpus if small else 1


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class TaskPlan:
    """One task of a launch: its options and its chains, planned from the settings of its own runs only."""

    sweep: SweepDir
    options: dict[str, Any]
    chains: list[Chain]

    @classmethod
    def read(cls, sweep: SweepDir, launch: int, task: int) -> TaskPlan:
        options = sweep.task_options(launch)
        runs = task_configs(sweep, launch, task)
        return cls(sweep, options, plan_chains(runs, share_trunks=options["share_trunks"]))


def run_chains(
    plan: TaskPlan, control: Control, shard: ShardWriter, indices: list[int] | None = None
) -> dict[str, int]:
    """Train chains ``indices`` (default: all) of one task in this process, one after the other; returns
    {status: count} of the runs recorded. Their results go to this process's ``shard`` too (written by
    the caller when the process is done)."""
    from .trainers import ChainJob, trainer_for

    sweep, options, chains = plan.sweep, plan.options, plan.chains
    info = sweep.info()
    extra = {"sweep": info["name"], "sweep_hash": info["sweep_hash"]}
    counts: dict[str, int] = {}

    def on_result(record: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        record, key, table = sweep.write_result(record, curve)  # failed if it could not be trusted
        shard.add(record, key, table)
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        print(
            f"run {record['run_id']}: {record['status']} {record.get('final_val_loss') or record.get('error') or ''}",
            flush=True,
        )

    def done(run_id: str) -> bool:
        return is_result(sweep, run_id, redo_failed=options["retry_failed"])

    for index in range(len(chains)) if indices is None else indices:
        chain = chains[index]
        control.checkpoint_seconds = chain.runs[0].training.checkpoint_seconds
        job = ChainJob(
            chain,
            sweep.checkpoint_path(chain.key),
            sweep.run_dir,
            on_result,
            done,
            control,
            extra,
            keep_trunk=options.get("keep_trunks", False),
        )
        trainer_for(chain).train(job)
    return counts


def run_task(
    sweep_dir: str | Path,
    launch: int,
    task: int,
    control: Control | None = None,
    at_once: int = 1,
    threads: int = 1,
    plan: TaskPlan | None = None,
) -> dict[str, Any]:
    """Train every run of one task; returns {status: count} of the runs it recorded.

    ``at_once`` > 1 trains that many of the task's chains at once, each in a process of its own with
    ``threads`` torch threads (the records are those of training them one after the other). ``plan``: the
    task as already read by the caller.
    """
    from .train import Control, StopRequested

    started = time.monotonic()
    control = control or Control()
    plan = plan or TaskPlan.read(SweepDir(Path(sweep_dir)), launch, task)
    sweep = plan.sweep
    chains = plan.chains
    at_once = min(at_once, len(chains))
    print(
        f"task {launch}/{task}: {len(chains)} chains, {at_once} at once, started in "
        f"{time.monotonic() - started:.2f} s",
        flush=True,
    )
    if at_once <= 1:
        shard = ShardWriter(sweep)
        try:
            counts = run_chains(plan, control, shard)
        finally:
            shard.write()
    else:
        counts = _run_in_processes(sweep, launch, task, len(chains), at_once, threads, control)
        if control.stop_after_save:
            raise StopRequested("stopped at a step boundary after saving a checkpoint")
    print(f"task {launch}/{task}: done in {time.monotonic() - started:.2f} s: {counts}", flush=True)
    return counts


def _run_in_processes(
    sweep: SweepDir, launch: int, task: int, n_chains: int, at_once: int, threads: int, control: Control
) -> dict[str, int]:
    """Chains 0..n-1 handed out to ``at_once`` spawned processes as they free up. A stop request (signal)
    of this process is passed on to them: each saves its chain's checkpoint and stops."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    work, results = context.Queue(), context.Queue()
    for index in range(n_chains):
        work.put(index)
    for _ in range(at_once):
        work.put(None)
    processes = [
        context.Process(target=chain_process, args=(str(sweep.root), launch, task, work, results, threads))
        for _ in range(at_once)
    ]
    for process in processes:
        process.start()
    forwarded = False
    while any(process.is_alive() for process in processes):
        if control.stop_after_save and not forwarded:
            for process in processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            forwarded = True
        for process in processes:
            process.join(timeout=0.2)
    counts: dict[str, int] = {}
    for _ in processes:
        for status, n in results.get().items():
            counts[status] = counts.get(status, 0) + n
    return counts


def chain_process(sweep_dir: str, launch: int, task: int, work: Any, results: Any, threads: int) -> None:
    """One of a task's chain processes: trains chains from ``work`` until it is empty or a signal asks it
    to stop (SIGTERM or USR2: save a checkpoint at the next step boundary), then reports its counts."""
    import torch

    from .train import Control, StopRequested

    torch.set_num_threads(threads)
    control = Control()

    def request_stop(signum: int, frame: Any) -> None:
        control.stop_after_save = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGUSR2, request_stop)
    counts: dict[str, int] = {}
    plan = TaskPlan.read(SweepDir(Path(sweep_dir)), launch, task)
    shard = ShardWriter(plan.sweep)
    try:
        while not control.stop_after_save and (index := work.get()) is not None:
            for status, n in run_chains(plan, control, shard, [index]).items():
                counts[status] = counts.get(status, 0) + n
    except StopRequested:
        pass
    finally:
        results.put(counts)
        shard.write()


class SlurmTask(submitit.helpers.Checkpointable):
    """The submitit callable of an array task. On requeue it is called again with the same arguments.

    It logs the path of the code it runs (the sweep's snapshot) and uses the task's CPUs
    (``--cpus-per-task``): ``chains_at_once`` chains at a time with ``cpus // chains_at_once`` threads each.
    """

    def __call__(self, sweep_dir: str, launch: int, task: int) -> dict[str, Any]:
        import torch

        from .train import Control, StopRequested

        print(f"plsweep code: {Path(__file__).resolve().parent}", flush=True)
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or torch.get_num_threads())
        plan = TaskPlan.read(SweepDir(Path(sweep_dir)), launch, task)
        runs = [run for chain in plan.chains for run in chain.runs]
        at_once = chains_at_once(plan.options.get("chains_at_once", 1), cpus, runs)
        threads = max(1, cpus // at_once)
        torch.set_num_threads(threads)  # unbound, torch would use every core of the node
        control = Control()
        requeue_handler = signal.getsignal(signal.SIGUSR2)
        reason: dict[str, int] = {}

        def request_stop(signum: int, frame: Any) -> None:
            reason["signal"] = signum
            control.stop_after_save = True

        signal.signal(signal.SIGUSR2, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            return run_task(sweep_dir, launch, task, control, at_once, threads, plan)
        except StopRequested:
            if reason.get("signal") == signal.SIGUSR2 and callable(requeue_handler):
                requeue_handler(
                    signal.SIGUSR2, None
                )  # submitit: checkpoint() and scontrol requeue, then exit
            print(f"stopped by signal {reason.get('signal')} after saving a checkpoint", flush=True)
            sys.exit(128 + reason.get("signal", signal.SIGTERM))
