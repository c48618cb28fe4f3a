"""Turn a sweep into tasks and run them: Slurm job arrays through submitit, local processes, or in-process.

A launch writes the sweep directory (spec copy, manifest), finds the runs that still need work (no
record, not queued; failed ones only with ``retry_failed``), packs whole chains into tasks of about
``runs_per_task`` runs, and hands each task to an executor as (sweep directory, launch, task index).
On Slurm, tasks go out as arrays of at most MaxArraySize tasks (indices restarting at 0) and
``launch`` returns at once; locally it runs them with at most ``workers`` processes and returns when done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from .chains import plan_chains
from .config import LaunchConfig, RunConfig
from .slurm import QUEUED_STATES, RUNNING_STATES, SubmitError, job_states, max_array_size
from .spec import Sweep
from .store import SweepDir, awaits_retry

Executor = Literal["local", "slurm", "debug"]


@dataclass
class LaunchResult:
    """What a launch did: its number, tasks, runs, skipped runs and (Slurm) job ids."""

    sweep_dir: Path
    launch: int | None
    executor: str
    runs_total: int
    runs_launched: int
    skipped_recorded: int
    skipped_queued: int
    tasks: int = 0
    array_ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def write_manifest(sweep_dir: SweepDir, sweep: Sweep, share_trunks: bool) -> None:
    """One row per run: run_id, trunk_id, every setting as a column, and the config as JSON."""
    trunk_of = {run.run_id: chain.trunk_id for chain in plan_chains(sweep.runs, share_trunks) for run in chain.runs}
    rows = [{"run_id": run.run_id, "trunk_id": trunk_of[run.run_id], **run.flat(),
             "config": json.dumps(run.to_dict(), sort_keys=True)} for run in sweep.runs]
    sweep_dir.write_manifest(pa.Table.from_pylist(rows))


def recorded_statuses(sweep_dir: SweepDir) -> dict[str, str]:
    """run_id -> status of every trusted record."""
    records, _ = sweep_dir.records()
    return {run_id: record["status"] for run_id, record in records.items()}


def queued_run_ids(sweep_dir: SweepDir) -> set[str]:
    """Runs that a task still queued or running (Slurm), or a live local launch on this host, has yet to
    train: not recorded, or failed before that launch took them for a retry."""
    launches = sweep_dir.launches()
    arrays = [a for e in launches if e["executor"] == "slurm" for a in e.get("array_ids", [])]
    answer = job_states(arrays)
    if arrays and not answer.known:  # guessing "not queued" would submit queued runs a second time
        raise SubmitError(f"{sweep_dir.root}: cannot ask Slurm which tasks are still queued: {answer.warning}")
    states = answer.states
    records, _ = sweep_dir.records()
    busy: set[str] = set()
    for entry in launches:
        for index, run_ids in enumerate(sweep_dir.tasks(entry["launch"])):
            if task_is_live(entry, index, states):
                busy.update(r for r in run_ids if r not in records or awaits_retry(records[r], entry))
    return busy


def task_is_live(entry: dict[str, Any], index: int, states: dict[str, str]) -> bool:
    """Is task ``index`` of this launch queued or running?"""
    if entry["executor"] == "slurm":
        return states.get(entry["task_jobs"][index], "") in QUEUED_STATES | RUNNING_STATES
    return entry["executor"] == "local" and entry.get("host") == socket.gethostname() and _lock_held(entry["lock"])


def _lock_held(path: str) -> bool:
    """Is this lock file held by a running local launch? (The kernel drops the lock when it exits or dies.)"""
    try:
        handle = open(path)  # noqa: SIM115 - closed below, after the lock test
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def holding_lock(path: Path):
    """Hold an exclusive lock on ``path`` for the duration of a local launch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def pack_tasks(runs: list[RunConfig], runs_per_task: int, share_trunks: bool,
               needed: set[str] | None = None) -> list[list[str]]:
    """Run ids per task: whole chains, greedily packed up to ``runs_per_task`` runs (a longer chain is one task).

    With ``needed``, only chains with a needed run are packed, but whole: a WSD trunk half recorded
    keeps its chain (and so its checkpoint) and the worker skips the runs already recorded.
    """
    tasks: list[list[str]] = []
    for chain in plan_chains(runs, share_trunks):
        ids = [run.run_id for run in chain.runs]
        if needed is not None and needed.isdisjoint(ids):
            continue
        if tasks and len(tasks[-1]) + len(ids) <= runs_per_task:
            tasks[-1].extend(ids)
        else:
            tasks.append(ids)
    return tasks


def snapshot_code(sweep_dir: SweepDir) -> Path:
    """Copy this package into the sweep directory (named by a hash of its sources) for workers to import;
    returns the snapshot's absolute folder (the parent of its ``powerlaw_cli``)."""
    package = Path(__file__).resolve().parent
    sources = sorted(package.rglob("*.py"))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    root = sweep_dir.root.resolve() / "code" / digest.hexdigest()[:12]
    if not (root / "powerlaw_cli").exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.copytree(package, tmp / "powerlaw_cli", ignore=shutil.ignore_patterns("__pycache__"))
        os.replace(tmp, root)
    return root


def launch(sweep: Sweep, out: Path, executor: Executor = "local", options: LaunchConfig | None = None,
           retry_failed: bool = False, on_progress: Callable[[int, int], None] | None = None) -> LaunchResult:
    """Launch the runs of ``sweep`` that still need work into the sweep directory ``out``."""
    options = options or sweep.launch
    sweep_dir = SweepDir(out)
    sweep_dir.create(sweep.text, sweep.name, sweep.sweep_hash)
    write_manifest(sweep_dir, sweep, options.share_trunks)
    statuses = recorded_statuses(sweep_dir)
    redo = {"failed"} if retry_failed else set()
    candidates = [r for r in sweep.runs if r.run_id not in statuses or statuses[r.run_id] in redo]
    queued = queued_run_ids(sweep_dir) if candidates else set()  # ask the scheduler only when it matters
    todo = [r for r in candidates if r.run_id not in queued]
    result = LaunchResult(out, None, executor, len(sweep.runs), len(todo),
                          skipped_recorded=sum(1 for r in sweep.runs if r.run_id in statuses and statuses[r.run_id] not in redo),
                          skipped_queued=sum(1 for r in sweep.runs if r.run_id in queued))
    if not todo:
        if on_progress is not None:
            on_progress(len(sweep.runs), len(sweep.runs))
        return result
    number = sweep_dir.next_launch_number()
    tasks = pack_tasks(sweep.runs, options.runs_per_task, options.share_trunks, {r.run_id for r in todo})
    task_options = {"share_trunks": options.share_trunks, "retry_failed": retry_failed}
    sweep_dir.write_tasks(number, tasks, task_options)
    result.launch, result.tasks = number, len(tasks)
    entry = {"launch": number, "executor": executor, "submitted_at": datetime.now().astimezone().isoformat(),
             **task_options, "runs": len(todo)}
    if executor == "slurm":
        submission, error = submit_slurm(sweep_dir, number, len(tasks), options, sweep.name)
        submitted = len(submission["task_jobs"])
        if submitted < len(tasks):  # keep the tasks file true to what went out; the rest stay unlaunched
            sweep_dir.write_tasks(number, tasks[:submitted], task_options)
        if submitted:
            sweep_dir.append_launch(entry | submission)
        if error:
            raise SubmitError(f"{out}: sbatch failed after {submitted} of {len(tasks)} tasks were submitted "
                              f"(those are recorded; launch again to submit the rest): {error}")
        result.array_ids = submission["array_ids"]
    elif executor == "local":
        lock = sweep_dir.jobs_dir / "local" / f"launch-{number}.lock"
        with holding_lock(lock):
            sweep_dir.append_launch({**entry, "host": socket.gethostname(), "pid": os.getpid(), "lock": str(lock)})
            run_local(sweep_dir, number, tasks, options.workers, on_progress)
    else:
        sweep_dir.append_launch(entry)
        run_debug(sweep_dir, number, len(tasks))
    result.counts = _counts_of(sweep_dir, [r.run_id for r in todo])
    return result


def _counts_of(sweep_dir: SweepDir, run_ids: list[str]) -> dict[str, int]:
    statuses = recorded_statuses(sweep_dir)
    counts: dict[str, int] = {}
    for run_id in run_ids:
        status = statuses.get(run_id, "not finished")
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- Slurm ------------------------------------------------------------------------------------

def slurm_parameters(options: LaunchConfig, name: str, code: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one array task of a sweep.

    Tasks start in the code snapshot's folder: submitit runs ``python -m``, which puts the working
    directory ahead of PYTHONPATH on sys.path, so started elsewhere (say, in a checkout of this
    package) a task would import that code instead of the snapshot.
    """
    params: dict[str, Any] = {
        "job_name": f"plsweep-{name}",
        "time": options.time_minutes,
        "cpus_per_task": options.cpus_per_task,
        "array_parallelism": options.array_parallelism,
        "signal_delay_s": options.signal_seconds,
        "setup": [f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "stderr_to_stdout": True,  # one log per task, as on the local executor: progress, failures, tracebacks
    }
    if options.gpus_per_task:
        params["gpus_per_task"] = options.gpus_per_task
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key):
            params[key] = getattr(options, key)
    if options.mem_gb:
        params["mem"] = f"{int(options.mem_gb * 1024)}M"
    extra: dict[str, Any] = {"chdir": str(code)}
    for line in options.sbatch_extra:
        key, _, value = line[2:].partition("=")
        extra[key] = value if value else True
    params["additional_parameters"] = extra
    return params


def submit_slurm(sweep_dir: SweepDir, launch_number: int, n_tasks: int, options: LaunchConfig,
                 name: str) -> tuple[dict[str, Any], str]:
    """Submit ``n_tasks`` tasks as job arrays of at most MaxArraySize.

    Returns the job ids per task of the arrays that went out, and the sbatch error that stopped the
    submission ("" when every array went out): arrays submitted before a failure are never forgotten.
    """
    import submitit
    from submitit.core.utils import FailedJobError

    from .worker import SlurmTask

    code = snapshot_code(sweep_dir)
    root = str(sweep_dir.root.resolve())  # tasks do not start in this process's working directory
    limit = max_array_size()
    executor = submitit.SlurmExecutor(folder=sweep_dir.jobs_dir / "%j", max_num_timeout=1000)
    executor.update_parameters(**slurm_parameters(options, name, code))
    task_jobs: list[str] = []
    array_ids: list[str] = []
    error = ""
    for start in range(0, n_tasks, limit):
        indices = list(range(start, min(start + limit, n_tasks)))
        try:
            jobs = executor.map_array(SlurmTask(), [root] * len(indices), [launch_number] * len(indices), indices)
        except FailedJobError as err:
            error = " ".join(str(err).split())
            break
        task_jobs.extend(job.job_id for job in jobs)
        array_ids.append(jobs[0].job_id.split("_")[0])
    return {"task_jobs": task_jobs, "array_ids": array_ids, "max_array_size": limit, "code": str(code)}, error


# --- local and debug ----------------------------------------------------------------------------

def cpu_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per visible GPU, else one per CPU core."""
    return len(_visible_gpus()) or cpu_cores()


def run_local(sweep_dir: SweepDir, launch_number: int, tasks: list[list[str]], workers: int,
              on_progress: Callable[[int, int], None] | None = None) -> None:
    """Run the tasks in at most ``workers`` processes (each pinned to one GPU when there are GPUs)."""
    from .local import init_worker, local_task

    workers = min(workers or default_workers(), len(tasks))
    gpus = _visible_gpus()
    cores = cpu_cores()
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    total = sum(len(task) for task in tasks)
    pool = context.Pool(workers, initializer=init_worker, initargs=(slots, max(1, cores // workers)))
    try:
        pending = [pool.apply_async(local_task, (str(sweep_dir.root), launch_number, i)) for i in range(len(tasks))]
        while pending:
            pending = [job for job in pending if not job.ready()]
            if on_progress is not None:
                on_progress(sum(recorded_in(sweep_dir, task) for task in tasks), total)
            if pending:
                time.sleep(0.5)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C: workers save a checkpoint on SIGTERM where they can; records stay
        raise
    finally:
        pool.join()


def recorded_in(sweep_dir: SweepDir, run_ids: list[str]) -> int:
    """How many of these runs have a record file (cheap: no parsing)."""
    return sum(1 for run_id in run_ids if sweep_dir.record_path(run_id).exists())


def _visible_gpus() -> list[str]:
    """The ids of the GPUs this process sees (as CUDA_VISIBLE_DEVICES names them), one worker each."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d for d in visible.split(",") if d] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_debug(sweep_dir: SweepDir, launch_number: int, n_tasks: int) -> None:
    """Run every task in this process through submitit's DebugExecutor (for breakpoints)."""
    import submitit

    from .worker import run_task

    executor = submitit.DebugExecutor(folder=sweep_dir.jobs_dir / "debug")
    jobs = executor.map_array(run_task, [str(sweep_dir.root)] * n_tasks, [launch_number] * n_tasks, list(range(n_tasks)))
    for job in jobs:
        job.result()

