"""The local executor's worker processes: one GPU (or a share of the CPU cores) each, one log per task.

The pool's processes are spawned fresh; ``init_worker`` pins each to its GPU before torch touches
CUDA and ignores Ctrl-C (the launcher handles it and terminates the pool, which sends SIGTERM:
the running task then saves a checkpoint at its next step boundary, stops, and its process exits).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def init_worker(slots: Any, threads: int) -> None:
    """Pin this process to the GPU it takes from ``slots`` (None: CPU) and set its thread count."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)


def local_task(sweep_dir: str, launch: int, task: int) -> dict[str, int]:
    """Run one task with its stdout and stderr in ``jobs/local/launch-L-task-T.log``."""
    from .train import Control, StopRequested
    from .worker import run_task

    log = Path(sweep_dir) / "jobs" / "local" / f"launch-{launch}-task-{task}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    control = Control()

    def request_stop(signum: int, frame: Any) -> None:
        control.stop_after_save = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    with open(log, "a") as handle:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(handle.fileno(), 1), os.dup2(handle.fileno(), 2)
        try:
            return run_task(sweep_dir, launch, task, control)
        except StopRequested:
            return {}
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            signal.signal(signal.SIGTERM, previous)  # between tasks SIGTERM ends the worker again
            if control.stop_after_save:
                # Pool.terminate() sends SIGTERM once and then joins: the signal was spent on saving this
                # task, so end the process as the signal would have, or the launcher waits forever.
                raise SystemExit(0)
