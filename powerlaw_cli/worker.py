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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from .chains import plan_chains
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


def run_task(sweep_dir: str | Path, launch: int, task: int, control: Control | None = None) -> dict[str, Any]:
    """Train every run of one task; returns {status: count} of the runs it recorded."""
    from .runner import ChainRunner
    from .train import Control

    started = time.monotonic()
    sweep = SweepDir(Path(sweep_dir))
    info = sweep.info()
    runs = task_configs(sweep, launch, task)
    options = sweep.task_options(launch)
    control = control or Control()
    extra = {"sweep": info["name"], "sweep_hash": info["sweep_hash"]}
    counts: dict[str, int] = {}

    def on_result(record: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        sweep.write_result(record, curve)
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        print(
            f"run {record['run_id']}: {record['status']} {record.get('final_val_loss') or record.get('error') or ''}",
            flush=True,
        )

    def done(run_id: str) -> bool:
        return is_result(sweep, run_id, redo_failed=options["retry_failed"])

    print(
        f"task {launch}/{task}: {len(runs)} runs, started in {time.monotonic() - started:.2f} s", flush=True
    )
    for chain in plan_chains(runs, share_trunks=options["share_trunks"]):
        control.checkpoint_seconds = chain.runs[0].training.checkpoint_seconds
        ChainRunner(chain, sweep.checkpoint_path(chain.key), on_result, done, control, extra).run()
    print(f"task {launch}/{task}: done in {time.monotonic() - started:.2f} s: {counts}", flush=True)
    return counts


class SlurmTask(submitit.helpers.Checkpointable):
    """The submitit callable of an array task. On requeue it is called again with the same arguments.

    It logs the path of the code it runs (the sweep's snapshot) and trains with as many threads as
    the task has CPUs (``--cpus-per-task``).
    """

    def __call__(self, sweep_dir: str, launch: int, task: int) -> dict[str, Any]:
        import torch

        from .train import Control, StopRequested

        print(f"plsweep code: {Path(__file__).resolve().parent}", flush=True)
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # unbound, torch would use every core of the node
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        control = Control()
        requeue_handler = signal.getsignal(signal.SIGUSR2)
        reason: dict[str, int] = {}

        def request_stop(signum: int, frame: Any) -> None:
            reason["signal"] = signum
            control.stop_after_save = True

        signal.signal(signal.SIGUSR2, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            return run_task(sweep_dir, launch, task, control)
        except StopRequested:
            if reason.get("signal") == signal.SIGUSR2 and callable(requeue_handler):
                requeue_handler(
                    signal.SIGUSR2, None
                )  # submitit: checkpoint() and scontrol requeue, then exit
            print(f"stopped by signal {reason.get('signal')} after saving a checkpoint", flush=True)
            sys.exit(128 + reason.get("signal", signal.SIGTERM))
