"""Where every run of a sweep stands: finished, diverged, failed, running, pending or lost.

A run's state comes from its record when it has a trusted one; otherwise from the scheduler's state of
the task that last took it (one batched query for the whole sweep), or from a live local launch. A
failed run that a later launch retries is pending or running until its new record replaces the old.
Lost means neither recorded nor queued: the next ``launch`` resubmits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .launch import task_is_live
from .slurm import FAILED_STATES, QUEUED_STATES, RUNNING_STATES, JobStates, job_states
from .store import SweepDir, awaits_retry

STATES = ("finished", "diverged", "failed", "running", "pending", "lost")
LOG_TAIL_LINES = 8


@dataclass
class Failure:
    """A failed run: its error and the last lines of its task's log."""

    run_id: str
    error: str
    job: str | None
    log: str | None
    log_tail: list[str] = field(default_factory=list)


@dataclass
class SweepStatus:
    """Counts per state, failures, unreadable records, and a scheduler warning (if any)."""

    sweep: str
    total: int
    counts: dict[str, int]
    failures: list[Failure]
    bad_records: list[str]
    warning: str = ""

    @property
    def done(self) -> bool:
        """Nothing left queued or running."""
        return self.counts["running"] == 0 and self.counts["pending"] == 0

    def to_dict(self) -> dict:
        return asdict(self) | {"done": self.done}


def _task_index(sweep_dir: SweepDir) -> dict[str, tuple[dict, int]]:
    """run_id -> (launch entry, task index) of the latest launch that took the run."""
    where: dict[str, tuple[dict, int]] = {}
    for entry in sweep_dir.launches():
        for index, run_ids in enumerate(sweep_dir.tasks(entry["launch"])):
            for run_id in run_ids:
                where[run_id] = (entry, index)
    return where


def task_log(sweep_dir: SweepDir, entry: dict, index: int) -> Path | None:
    """The log file of a task (submitit's on Slurm, the local executor's), with its stdout and stderr."""
    if entry["executor"] == "slurm":
        from submitit.core.utils import JobPaths

        return JobPaths(sweep_dir.jobs_dir / "%j", job_id=entry["task_jobs"][index], task_id=0).stdout
    if entry["executor"] == "local":
        return sweep_dir.jobs_dir / "local" / f"launch-{entry['launch']}-task-{index}.log"
    return None


def _tail(path: Path | None) -> list[str]:
    if path is None or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]


def sweep_status(sweep_dir: SweepDir, query: Callable[[list[str]], JobStates] = job_states) -> SweepStatus:
    """The state of every run in the manifest (``query`` asks the scheduler, once, for all arrays)."""
    info = sweep_dir.info()
    run_ids = sweep_dir.manifest().column("run_id").to_pylist()
    records, problems = sweep_dir.records()
    where = _task_index(sweep_dir)
    arrays = [a for entry in sweep_dir.launches() if entry["executor"] == "slurm" for a in entry.get("array_ids", [])]
    states = query(arrays) if arrays else JobStates()
    counts = dict.fromkeys(STATES, 0)
    failures: list[Failure] = []
    for run_id in run_ids:
        entry, index = where.get(run_id, (None, -1))
        state, error = _state_of(run_id, records.get(run_id), entry, index, states.states)
        counts[state] += 1
        if state == "failed":
            log = task_log(sweep_dir, entry, index) if entry else None
            job = entry["task_jobs"][index] if entry and entry["executor"] == "slurm" else None
            failures.append(Failure(run_id, error, job, str(log) if log else None, _tail(log)))
    bad = [f"{p.path}: {p.reason}" for p in problems]
    return SweepStatus(info["name"], len(run_ids), counts, failures, bad, states.warning)


def _state_of(run_id: str, record: dict | None, entry: dict | None, index: int,
              states: dict[str, str]) -> tuple[str, str]:
    if record is None:
        return _task_state(entry, index, states)
    if entry and awaits_retry(record, entry):
        state, _ = _task_state(entry, index, states)
        if state in ("pending", "running"):
            return state, ""
    return ("finished" if record["status"] == "ok" else record["status"]), record.get("error") or ""


def _task_state(entry: dict | None, index: int, states: dict[str, str]) -> tuple[str, str]:
    """A run's state from the task that last took it: pending, running, failed (ended first) or lost."""
    if entry is None:
        return "lost", ""
    if entry["executor"] == "slurm":
        job = entry["task_jobs"][index]
        state = states.get(job, "")
        if state in QUEUED_STATES:
            return "pending", ""
        if state in RUNNING_STATES:
            return "running", ""
        if state in FAILED_STATES:
            return "failed", f"Slurm job {job} ended {state} before the run was recorded"
        return "lost", ""
    return ("running", "") if task_is_live(entry, index, states) else ("lost", "")
