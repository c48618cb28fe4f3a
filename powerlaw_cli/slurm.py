"""What plsweep asks the Slurm controller: its array size limit and the states of array tasks.

All queries are batched (one ``sacct`` and one ``squeue`` call for any number of jobs). Without
accounting (``sacct`` missing or failing) states come from ``squeue`` alone, which only knows queued
and running jobs; the caller gets ``accounting=False`` and says so once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field


class SubmitError(RuntimeError):
    """sbatch refused a submission (the arrays submitted before it are recorded)."""


DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default, used when the controller cannot be asked

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
FAILED_STATES = {"FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (array indices run 0..MaxArraySize-1)."""
    if shutil.which("scontrol") is None:
        return DEFAULT_MAX_ARRAY_SIZE
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


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
    try:
        sacct = subprocess.run(["sacct", "-j", ids, "--parsable2", "--noheader", "-o", "JobID,State"],
                               capture_output=True, text=True, timeout=60)
        if sacct.returncode != 0:
            raise OSError(sacct.stderr.strip() or f"sacct exited {sacct.returncode}")
        result.states.update(_parse(sacct.stdout))
    except (OSError, subprocess.TimeoutExpired) as err:
        result.accounting = False
        result.warning = f"sacct unavailable ({' '.join(str(err).split())[:120]}); states from squeue and records only"
    try:
        squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", ids, "-o", "%i|%T"],
                                capture_output=True, text=True, timeout=60)
        # One id that left the controller's memory is an error to squeue ("Invalid job id"), not to us.
        if squeue.returncode != 0 and "Invalid job id" not in squeue.stderr:
            raise OSError(squeue.stderr.strip() or f"squeue exited {squeue.returncode}")
        result.states.update(_parse(squeue.stdout))  # the live queue is authoritative for queued/running
    except (OSError, subprocess.TimeoutExpired) as err:
        result.queue = False
        problem = f"squeue failed ({' '.join(str(err).split())[:120]})"
        result.warning = f"{result.warning}; {problem}" if result.warning else problem
    return result
