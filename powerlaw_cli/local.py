"""The local executor's worker processes: one GPU (or a share of the CPU cores) each, one log per task.

The pool's processes are spawned fresh; ``init_worker`` pins each to its GPU before torch touches
CUDA and ignores Ctrl-C (the launcher handles it and terminates the pool, which sends SIGTERM:
the running task then saves a checkpoint at its next step boundary, stops, and its process exits).

Workers die with their launcher: on Linux the kernel sends each SIGTERM when the launcher ends, however
it ends (kill -9, SIGTERM, SIGHUP of a dropped ssh session), so an orphan never trains on beside a
relaunch. Until a worker has exited it holds its launch's lock file (shared, like the launcher), so the
launch stays live (``runstate.lock_held``) and a relaunch does not take its runs while it saves them.
A task that raises (a full disk) fails the launch with one line (``TaskError``, ``why_stopped``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PlsweepError

if TYPE_CHECKING:
    import multiprocessing.pool

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_held: list[Any] = []  # this worker's handle on its launch's lock file, open until the process exits


def die_with(launcher: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ``launcher`` dies (Linux; elsewhere a
    no-op), and stop at once if it is already gone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != launcher:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def hold_shared(lock: str) -> None:
    """Hold ``lock`` (shared) for the rest of this process's life: its launch is live while it runs."""
    handle = open(lock)  # noqa: SIM115 - kept open on purpose; the kernel drops the lock at exit
    fcntl.flock(handle, fcntl.LOCK_SH)
    _held.append(handle)


def init_worker(slots: Any, threads: int, launcher: int, lock: str) -> None:
    """Die with ``launcher``, hold its launch's ``lock``, pin this process to the GPU it takes from
    ``slots`` (None: CPU) and set its thread count."""
    die_with(launcher)
    hold_shared(lock)
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
            with contextlib.suppress(OSError):  # a full disk: the task's error says so
                sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            signal.signal(signal.SIGTERM, previous)  # between tasks SIGTERM ends the worker again
            if control.stop_after_save:
                # Pool.terminate() sends SIGTERM once and then joins: the signal was spent on saving this
                # task, so end the process as the signal would have, or the launcher waits forever.
                raise SystemExit(0)


class TaskError(PlsweepError):
    """A local task stopped with an error of its machine (a full disk), not of a run; one line."""


def why_stopped(job: multiprocessing.pool.AsyncResult) -> str:
    """A failed task's error in one line, with the errno's name for an OSError (ENOSPC: a full disk)."""
    try:
        job.get(0)
    except OSError as err:
        name = errno.errorcode.get(err.errno or 0, "")
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror or err} ({name}){where}" if name else str(err)
    except Exception as err:
        return " ".join(f"{type(err).__name__}: {err}".split())
    return "no error"
