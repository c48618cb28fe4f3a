"""What plsweep asks the Slurm controller: its limits and the states of array tasks.

All state queries are batched (one ``sacct`` and one ``squeue`` call for any number of jobs). Without
accounting (``sacct`` missing or failing) states come from ``squeue`` alone, which only knows queued
and running jobs; the caller gets ``accounting=False`` and says so once.

The limits a launch must fit under (``cluster_limits``): ``MaxArraySize`` (array indices run
0..MaxArraySize-1, so arrays are chunked), ``MaxJobCount`` (every array task counts as one job of the
controller, finished ones too until ``MinJobAge`` has passed) and, when the controller enforces
association limits, the user's ``MaxSubmitJobs`` (pending and running jobs, array tasks counted one by one).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from .errors import PlsweepError

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default, used when the controller cannot be asked

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
CRASHED_STATES = {"FAILED", "OUT_OF_MEMORY"}
"""A task that ended in one of these died while running (a non-zero exit, the memory limit): its unrecorded
runs are ``failed``. Any other end (CANCELLED, NODE_FAIL, PREEMPTED, TIMEOUT, BOOT_FAIL, DEADLINE, ...)
says nothing against the runs: they are ``lost`` and the next launch reruns them."""


class SubmitError(PlsweepError):
    """A submission was refused or cannot be made safely; the message is one line."""


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess | None:
    """A Slurm command's result, or None when it is missing, cannot start or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@dataclass
class ClusterLimits:
    """The controller's limits and current load, as far as it answered (None: unknown or unlimited)."""

    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_job_count: int | None = None
    jobs_in_controller: int | None = None
    max_submit_jobs: int | None = None
    user_jobs: int | None = None
    notes: list[str] = field(default_factory=list)

    def room(self) -> int | None:
        """How many more array tasks the controller would take now (None: no known limit)."""
        free = []
        if self.max_job_count is not None and self.jobs_in_controller is not None:
            free.append(self.max_job_count - self.jobs_in_controller)
        if self.max_submit_jobs is not None and self.user_jobs is not None:
            free.append(self.max_submit_jobs - self.user_jobs)
        return max(0, min(free)) if free else None

    def describe(self) -> str:
        parts = [f"MaxArraySize {self.max_array_size}"]
        if self.max_job_count is not None:
            parts.append(f"MaxJobCount {self.max_job_count} ({self.jobs_in_controller} jobs held now)")
        if self.max_submit_jobs is not None:
            parts.append(f"your MaxSubmitJobs {self.max_submit_jobs} ({self.user_jobs} pending or running)")
        return ", ".join(parts)


def cluster_config() -> dict[str, str]:
    """``scontrol show config`` as {key: value} ({} when the controller cannot be asked)."""
    done = _run(["scontrol", "show", "config"], timeout=30)
    if done is None or done.returncode != 0:
        return {}
    return dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", done.stdout, re.MULTILINE))


def max_array_size(config: dict[str, str] | None = None) -> int:
    """MaxArraySize (array indices run 0..MaxArraySize-1); Slurm's default 1001 when unknown."""
    config = cluster_config() if config is None else config
    return _int(config.get("MaxArraySize")) or DEFAULT_MAX_ARRAY_SIZE


def cluster_limits(account: str = "") -> ClusterLimits:
    """The limits a launch must fit under, read from scontrol, squeue and (if enforced) sacctmgr."""
    config = cluster_config()
    limits = ClusterLimits(max_array_size(config), _int(config.get("MaxJobCount")))
    if not config:
        limits.notes.append("scontrol did not answer: limits unknown (MaxArraySize taken as 1001)")
        return limits
    if limits.max_job_count is not None:
        limits.jobs_in_controller = _count_jobs(["squeue", "-h", "-r", "-t", "all", "-o", "%i"])
    if "limits" in config.get("AccountingStorageEnforce", ""):
        user = getpass.getuser()
        limits.max_submit_jobs = _max_submit(user, account)
        if limits.max_submit_jobs is not None:
            limits.user_jobs = _count_jobs(["squeue", "-h", "-r", "-u", user, "-o", "%i"])
        elif shutil.which("sacctmgr") is None:
            limits.notes.append(
                "association limits are enforced but sacctmgr is missing: MaxSubmitJobs unknown"
            )
    return limits


def _count_jobs(command: list[str]) -> int | None:
    done = _run(command)
    return None if done is None or done.returncode != 0 else len(done.stdout.split())


def _max_submit(user: str, account: str) -> int | None:
    """The smallest MaxSubmitJobs of the user's associations (of ``account`` if given) and of their QOS."""
    query = ["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", "format=Account,MaxSubmit,QOS"]
    done = _run(query)
    if done is None or done.returncode != 0:
        return None
    values, qos_names = [], set()
    for line in done.stdout.splitlines():
        acct, max_submit, qos = (line.split("|") + ["", "", ""])[:3]
        if account and acct != account:
            continue
        values.append(_int(max_submit))
        qos_names.update(q for q in qos.split(",") if q)
    if qos_names:
        done = _run(["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU"])
        if done is not None and done.returncode == 0:
            for line in done.stdout.splitlines():
                name, _, max_submit = line.partition("|")
                if name in qos_names:
                    values.append(_int(max_submit))
    known = [v for v in values if v is not None]
    return min(known) if known else None


@dataclass
class JobStates:
    """State of each array task, keyed "ARRAYID_INDEX"; ``accounting`` is False when sacct failed,
    ``queue`` when squeue did; with neither, nobody knows which tasks are still queued."""

    states: dict[str, str] = field(default_factory=dict)
    accounting: bool = True
    queue: bool = True
    warning: str = ""

    @property
    def known(self) -> bool:
        return self.accounting or self.queue


def _expand(job_id: str) -> list[str]:
    """'12_[0-3,7%2]' -> ['12_0', ..., '12_3', '12_7']; plain ids unchanged."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    out = []
    for part in match.group(2).split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{match.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def _parse(lines: str) -> dict[str, str]:
    states: dict[str, str] = {}
    for line in lines.splitlines():
        parts = line.strip().split("|") if "|" in line else line.split()
        if len(parts) < 2 or "." in parts[0]:  # job steps (12_0.batch) repeat their job's state
            continue
        state = parts[1].split()[0].rstrip("+")  # "CANCELLED by 0" -> CANCELLED
        for job in _expand(parts[0]):
            states[job] = state
    return states


def job_states(array_ids: list[str]) -> JobStates:
    """States of every task of the given array jobs: sacct for history, squeue for the live queue."""
    result = JobStates()
    if not array_ids:
        return result
    ids = ",".join(sorted(set(array_ids)))
    sacct = _run(["sacct", "-j", ids, "--parsable2", "--noheader", "-o", "JobID,State"])
    if sacct is not None and sacct.returncode == 0:
        result.states.update(_parse(sacct.stdout))
    else:
        result.accounting = False
        why = (
            "not found or no answer"
            if sacct is None
            else " ".join((sacct.stderr or f"exit {sacct.returncode}").split())[:120]
        )
        result.warning = f"sacct unavailable ({why}); states from squeue and records only"
    squeue = _run(["squeue", "-h", "-r", "-t", "all", "-j", ids, "-o", "%i|%T"])
    # One id that left the controller's memory is an error to squeue ("Invalid job id"), not to us.
    if squeue is not None and (squeue.returncode == 0 or "Invalid job id" in squeue.stderr):
        result.states.update(_parse(squeue.stdout))  # the live queue is authoritative for queued/running
    else:
        result.queue = False
        why = (
            "not found or no answer"
            if squeue is None
            else " ".join((squeue.stderr or f"exit {squeue.returncode}").split())[:120]
        )
        problem = f"squeue failed ({why})"
        result.warning = f"{result.warning}; {problem}" if result.warning else problem
    return result


def tagged_arrays(job_name: str, prefix: str) -> dict[str, str] | None:
    """{array job id: comment} of this user's jobs named ``job_name`` whose ``--comment`` starts with
    ``prefix``, queued, running or recently ended (what the controller still holds); None when squeue fails."""
    done = _run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-n", job_name, "-o", "%F|%k"])
    if done is None or done.returncode != 0:
        return None
    found = {}
    for line in done.stdout.splitlines():
        array, _, comment = line.strip().partition("|")
        if comment.startswith(prefix):
            found[array] = comment
    return found


def cancel(job_ids: list[str]) -> str:
    """scancel these jobs (whole arrays for array ids); "" when it worked, else why not (one line)."""
    done = _run(["scancel", *job_ids])
    if done is None:
        return "scancel not found or no answer"
    return "" if done.returncode == 0 else " ".join((done.stderr or f"exit {done.returncode}").split())[:200]
