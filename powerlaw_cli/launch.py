"""Turn a sweep into tasks and run them: Slurm job arrays through submitit, local processes, or in-process.

A launch holds the sweep directory's launch lock from reading its state to recording what it
submitted, so two launches of one sweep never submit the same runs. It writes the spec copy and the
manifest, asks ``runstate`` which runs need work (lost ones; failed ones only with ``retry_failed``),
packs whole chains into tasks of about ``runs_per_task`` runs, and hands each task to an executor as
(sweep directory, launch, task index). On Slurm it first checks that the tasks fit under the
controller's limits, writes a write-ahead entry and sends arrays of at most MaxArraySize tasks (indices
restarting at 0), each tagged so that a launch killed while submitting leaves nothing untracked
(``orphans``), and returns at once; locally it runs the tasks with at most ``workers`` processes (which die
with it) and returns when they are done, failing with one line if a task stopped (a full disk). Nothing here imports torch (the local executor's workers do).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from .chains import Chain, plan_chains
from .config import stable_hash
from .data_files import check_sweep_data
from .orphans import array_comment, settle, write_ahead
from .runstate import sweep_state
from .slurm import ClusterLimits, SubmitError, cluster_limits
from .spec import Sweep
from .store import SweepDir
from .sweep_settings import Executor, LaunchConfig

MANIFEST_KEY = b"plsweep.manifest"  # metadata: a hash of the runs and share_trunks it was written for


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
    orphans: list[str] = field(default_factory=list)  # what was done with arrays of killed launches


def write_manifest(sweep_dir: SweepDir, sweep: Sweep, chains: list[Chain], share_trunks: bool) -> None:
    """One row per run: run_id, trunk_id, every setting as a column, and the config as JSON.

    Written on the first launch, and again only when the runs (an adaptive round adds some) or their trunk
    ids (``share_trunks``) change.
    """
    stamp = stable_hash(
        {"runs": sorted(run.run_id for run in sweep.runs), "share_trunks": share_trunks}
    ).encode()
    if (
        sweep_dir.manifest_path.exists()
        and (sweep_dir.manifest_file().schema_arrow.metadata or {}).get(MANIFEST_KEY) == stamp
    ):
        return
    trunk_of = {run.run_id: chain.trunk_id for chain in chains for run in chain.runs}
    rows = [
        {
            "run_id": run.run_id,
            "trunk_id": trunk_of[run.run_id],
            **run.flat(),
            "config": json.dumps(run.to_dict(), sort_keys=True),
        }
        for run in sweep.runs
    ]
    sweep_dir.write_manifest(pa.Table.from_pylist(rows).replace_schema_metadata({MANIFEST_KEY: stamp}))


def pack_tasks(chains: list[Chain], runs_per_task: int, needed: set[str] | None = None) -> list[list[str]]:
    """Run ids per task: whole chains, greedily packed up to ``runs_per_task`` runs (a longer chain is one task).

    With ``needed``, only chains with a needed run are packed, but whole: a WSD trunk half recorded
    keeps its chain (and so its checkpoint) and the worker skips the runs already recorded.
    """
    tasks: list[list[str]] = []
    for chain in chains:
        ids = [run.run_id for run in chain.runs]
        if needed is not None and needed.isdisjoint(ids):
            continue
        if tasks and len(tasks[-1]) + len(ids) <= runs_per_task:
            tasks[-1].extend(ids)
        else:
            tasks.append(ids)
    return tasks


def runs_per_task_to_fit(
    chains: list[Chain], needed: set[str] | None, room: int, runs_per_task: int
) -> int | None:
    """The smallest runs_per_task (>= the given one) whose tasks number at most ``room``; None if none does."""
    if room <= 0:
        return None
    tasks = len(pack_tasks(chains, runs_per_task, needed))
    candidate = max(runs_per_task, math.ceil(runs_per_task * tasks / room))
    most = sum(len(c.runs) for c in chains)
    while candidate <= most:
        if len(pack_tasks(chains, candidate, needed)) <= room:
            return candidate
        candidate = max(candidate + 1, math.ceil(candidate * 1.1))
    return most if len(pack_tasks(chains, most, needed)) <= room else None


def check_fits(
    n_tasks: int,
    limits: ClusterLimits,
    chains: list[Chain],
    runs_per_task: int,
    needed: set[str] | None = None,
) -> str:
    """ "" when ``n_tasks`` fit under the cluster's limits now, else why not and what runs_per_task would fit."""
    room = limits.room()
    if room is None or n_tasks <= room:
        return ""
    better = runs_per_task_to_fit(chains, needed, room, runs_per_task)
    hint = (
        f"launch with -s runs_per_task={better} ({len(pack_tasks(chains, better, needed))} tasks)"
        if better
        else "wait until the queue drains"
    )
    return f"{n_tasks} array tasks do not fit: {limits.describe()} leave room for {room}; {hint}"


def snapshot_code(sweep_dir: SweepDir) -> Path:
    """Copy this package into the sweep directory (named by a hash of its sources) for workers to import;
    returns the snapshot's absolute folder (the parent of its ``powerlaw_cli``)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    root = sweep_dir.root.resolve() / "code" / digest.hexdigest()[:12]
    if not (root / "powerlaw_cli").exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.copytree(package, tmp / "powerlaw_cli", ignore=shutil.ignore_patterns("__pycache__"))
        os.replace(tmp, root)
    return root


def local_lock(sweep_dir: SweepDir, launch_number: int) -> Path:
    """The lock file a live local launch holds: its launcher and each of its workers (``runstate.lock_held``)."""
    return sweep_dir.jobs_dir / "local" / f"launch-{launch_number}.lock"


@contextlib.contextmanager
def holding_lock(path: Path) -> Iterator[None]:
    """Hold a shared lock on ``path`` while a local launch lives; its workers hold it too until they exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


@dataclass
class Prepared:
    """A launch decided under the sweep's launch lock: what went to Slurm, or what this process runs next."""

    result: LaunchResult
    tasks: list[list[str]] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    live: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def launch(
    sweep: Sweep,
    out: Path,
    executor: Executor = "local",
    options: LaunchConfig | None = None,
    retry_failed: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> LaunchResult:
    """Launch the runs of ``sweep`` that need work into the sweep directory ``out``.

    ``on_wait`` hears once when another launch of this directory holds the lock (this one then waits).
    """
    sweep_dir = SweepDir(out)
    with sweep_dir.launch_lock(on_wait):
        prepared = submit(sweep_dir, sweep, executor, options or sweep.launch, retry_failed)
    return run_prepared(sweep_dir, prepared, options or sweep.launch, on_progress)


def submit(
    sweep_dir: SweepDir,
    sweep: Sweep,
    executor: Executor,
    options: LaunchConfig,
    retry_failed: bool = False,
    keep_trunks: bool = False,
) -> Prepared:
    """Under the caller's launch lock: write the spec and manifest, find the runs that need work, pack them,
    and submit them (Slurm) or record a live local launch of them (run them with ``run_prepared``).
    ``keep_trunks``: workers keep each trunk's state for a later round to extend (adaptive sweeps). Data that
    a worker could not load is refused first (``DataError``), before anything is written or submitted."""
    check_sweep_data(sweep.runs)
    chains = plan_chains(sweep.runs, options.share_trunks)
    sweep_dir.create(sweep.text, sweep.name, sweep.sweep_hash)
    write_manifest(sweep_dir, sweep, chains, options.share_trunks)
    orphans = settle(sweep_dir)  # arrays a killed launch left: queued (adopted) or cancelled before counting
    state = sweep_state(sweep_dir)
    if not state.scheduler_known:  # guessing "not queued" would submit queued runs a second time
        raise SubmitError(f"{sweep_dir.root}: cannot ask Slurm which tasks are still queued: {state.warning}")
    todo = {run_id for run_id, run in state.runs.items() if run.needs_launch(retry_failed)}
    counts = state.counts()
    queued = counts["pending"] + counts["running"]
    result = LaunchResult(
        sweep_dir.root,
        None,
        executor,
        len(sweep.runs),
        len(todo),
        skipped_recorded=len(sweep.runs) - len(todo) - queued,
        skipped_queued=queued,
        orphans=orphans,
    )
    if not todo:
        return Prepared(result)
    tasks = pack_tasks(chains, options.runs_per_task, todo)
    number = sweep_dir.next_launch_number()
    task_options = {
        "share_trunks": options.share_trunks,
        "retry_failed": retry_failed,
        "chains_at_once": options.chains_at_once,
        "keep_trunks": keep_trunks,
    }
    entry = {
        "launch": number,
        "executor": executor,
        "submitted_at": datetime.now().astimezone().isoformat(),
        **task_options,
        "runs": len(todo),
    }
    result.launch, result.tasks = number, len(tasks)
    if executor == "slurm":
        limits = cluster_limits(options.account)
        problem = check_fits(len(tasks), limits, chains, options.runs_per_task, todo)
        if problem:
            raise SubmitError(f"{sweep_dir.root}: {problem}")
        sweep_dir.write_tasks(number, tasks, task_options)
        code = snapshot_code(sweep_dir)
        params = slurm_parameters(options, sweep.name, code)
        intent = write_ahead(sweep_dir, entry, params["job_name"], len(tasks), limits.max_array_size, code)
        try:
            submission, error = submit_slurm(sweep_dir, intent, params)
        except SubmitError:  # refused before any sbatch (no srun here): nothing to settle later
            sweep_dir.clear_intent(number)
            raise
        submitted = len(submission["task_jobs"])
        if submitted < len(tasks):  # keep the tasks file true to what went out; the rest stay unlaunched
            sweep_dir.write_tasks(number, tasks[:submitted], task_options)
        if submitted:
            sweep_dir.append_launch(entry | submission)
        sweep_dir.clear_intent(number)
        if error:
            raise SubmitError(
                f"{sweep_dir.root}: sbatch failed after {submitted} of {len(tasks)} tasks were submitted "
                f"(those are recorded; launch again to submit the rest): {error}"
            )
        result.array_ids = submission["array_ids"]
        return Prepared(result)
    sweep_dir.write_tasks(number, tasks, task_options)
    prepared = Prepared(result, tasks, sorted(todo))
    lock = local_lock(sweep_dir, number)
    prepared.live.enter_context(holding_lock(lock))  # live before the launch lock is released
    sweep_dir.append_launch({**entry, "host": socket.gethostname(), "pid": os.getpid(), "lock": str(lock)})
    return prepared


def run_prepared(
    sweep_dir: SweepDir,
    prepared: Prepared,
    options: LaunchConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> LaunchResult:
    """Run a prepared local or debug launch here (after the launch lock is released); Slurm's ran already."""
    result = prepared.result
    if not prepared.tasks:
        if on_progress is not None and result.runs_launched == 0:
            on_progress(result.runs_total, result.runs_total)
        return result
    with prepared.live:
        if result.executor == "local":
            run_local(sweep_dir, result.launch, prepared.tasks, options.workers, on_progress)
        else:
            run_debug(sweep_dir, result.launch, len(prepared.tasks))
    result.counts = _counts_of(sweep_dir, prepared.todo)
    return result


def _counts_of(sweep_dir: SweepDir, run_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_id in run_ids:
        record = sweep_dir.read_result(run_id)
        status = record["status"] if isinstance(record, dict) else "not finished"
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- Slurm ------------------------------------------------------------------------------------


def slurm_parameters(options: LaunchConfig, name: str, code: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one array task of a sweep.

    Every value is checked (``LaunchConfig``, ``spec``) to hold no control character, and submitit
    quotes each ``#SBATCH`` value; the one shell line of our own (the snapshot on PYTHONPATH) is
    quoted here, so no sweep name, path or option can add a line or a command to the job script.
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
        "setup": [f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}"],
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


def submit_slurm(
    sweep_dir: SweepDir, intent: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Submit the ``n_tasks`` tasks of write-ahead entry ``intent`` as job arrays of at most its
    ``max_array_size`` (MaxArraySize) tasks, each tagged with its ``orphans.array_comment``.

    Returns the job ids per task of the arrays that went out, and the sbatch error that stopped the
    submission ("" when every array went out): arrays submitted before a failure are never forgotten,
    and the files submitit wrote for the refused array are removed.
    """
    import submitit
    from submitit.core.utils import FailedJobError

    from .worker import SlurmTask

    launch_number, n_tasks, array_limit = intent["launch"], intent["n_tasks"], intent["max_array_size"]
    root = str(sweep_dir.root.resolve())  # tasks do not start in this process's working directory
    try:
        executor = submitit.SlurmExecutor(folder=sweep_dir.jobs_dir / "%j", max_num_timeout=1000)
    except RuntimeError as err:  # submitit: no srun on PATH
        raise SubmitError(f"{sweep_dir.root}: cannot submit to Slurm from here: {err}") from None
    executor.update_parameters(**params)
    extra = params["additional_parameters"]
    theirs = f" {extra['comment']}" if isinstance(extra.get("comment"), str) else ""  # sbatch_extra's
    task_jobs: list[str] = []
    array_ids: list[str] = []
    error = ""
    sweep_dir.jobs_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, n_tasks, array_limit):
        indices = list(range(start, min(start + array_limit, n_tasks)))
        before = set(os.listdir(sweep_dir.jobs_dir))
        comment = array_comment(intent, start) + theirs
        executor.update_parameters(additional_parameters={**extra, "comment": comment})
        try:  # submitit prints sbatch's complaint to stderr as well as raising it: keep only the exception
            with contextlib.redirect_stderr(io.StringIO()):
                jobs = executor.map_array(
                    SlurmTask(), [root] * len(indices), [launch_number] * len(indices), indices
                )
        except (FailedJobError, OSError) as err:
            for leftover in set(os.listdir(sweep_dir.jobs_dir)) - before:  # its pickles and submission file
                path = sweep_dir.jobs_dir / leftover
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            error = " ".join(str(err).split())
            break
        task_jobs.extend(job.job_id for job in jobs)
        array_ids.append(jobs[0].job_id.split("_")[0])
    return {
        "task_jobs": task_jobs,
        "array_ids": array_ids,
        "max_array_size": array_limit,
        "code": intent["code"],
    }, error


# --- local and debug ----------------------------------------------------------------------------


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per visible GPU, else one per CPU core."""
    return len(_visible_gpus()) or cpu_cores()


def run_local(
    sweep_dir: SweepDir,
    launch_number: int,
    tasks: list[list[str]],
    workers: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run the tasks in at most ``workers`` processes (each pinned to one GPU when there are GPUs)."""
    from .local import TaskError, init_worker, local_task, why_stopped

    workers = min(workers or default_workers(), len(tasks))
    gpus = _visible_gpus()
    cores = cpu_cores()
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    total = sum(len(task) for task in tasks)
    jobs: list[multiprocessing.pool.AsyncResult] = []
    lock = str(local_lock(sweep_dir, launch_number))
    pool = context.Pool(
        workers, initializer=init_worker, initargs=(slots, max(1, cores // workers), os.getpid(), lock)
    )
    try:
        jobs = [
            pool.apply_async(local_task, (str(sweep_dir.root), launch_number, i)) for i in range(len(tasks))
        ]
        pending = jobs
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
    stopped = [job for job in jobs if not job.successful()]
    if stopped:
        raise TaskError(
            f"{sweep_dir.root}: {len(stopped)} of {len(tasks)} tasks of launch {launch_number} stopped: "
            f"{why_stopped(stopped[0])}; launch again once that is fixed (recorded runs are kept)"
        )


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
    jobs = executor.map_array(
        run_task, [str(sweep_dir.root)] * n_tasks, [launch_number] * n_tasks, list(range(n_tasks))
    )
    for job in jobs:
        job.result()
