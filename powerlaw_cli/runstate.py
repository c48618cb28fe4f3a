"""Where every run of a sweep stands: the one predicate that ``status`` reports and ``launch`` acts on.

A run's state comes from its trusted record when it has one, else from every launch that took it:

- ``finished`` / ``diverged``: its record says so (results; never rerun).
- ``running`` / ``pending``: a task of some launch that took it is running / queued (Slurm, from one
  batched query) or is a live local launch, and the run has no record yet, or a failed record that
  launch is retrying.
- ``failed``: its record says the run raised, or the last task that took it ended FAILED or
  OUT_OF_MEMORY while running (the process died; rerunning as is would likely die again). Rerun only
  with ``--retry-failed``.
- ``lost``: nothing will train it: never launched, its task was cancelled (before or while running),
  preempted, lost with its node, timed out without requeue, or its local launch died; or its record
  cannot be trusted. The next ``launch`` reruns it.
- ``unknown``: its Slurm task may still be queued, but the scheduler could not be asked (neither sacct
  nor squeue answered). Never rerun on a guess: ``launch`` refuses until the scheduler answers.
"""

from __future__ import annotations

import fcntl
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .slurm import CRASHED_STATES, QUEUED_STATES, RUNNING_STATES, JobStates, job_states
from .store import RecordProblem, SweepDir, record_index

STATES = ("finished", "diverged", "failed", "running", "pending", "lost", "unknown")


@dataclass
class RunState:
    """One run's state, why (an error, or why it was lost), and the task that decided it."""

    state: str
    reason: str = ""
    entry: dict[str, Any] | None = None
    task: int = -1

    def needs_launch(self, retry_failed: bool) -> bool:
        """Should a launch submit this run? Lost runs always; failed ones with ``retry_failed``."""
        return self.state == "lost" or (retry_failed and self.state == "failed")


@dataclass
class SweepState:
    """Every run's state (manifest order), the records that cannot be trusted, and the scheduler's warning."""

    runs: dict[str, RunState]
    problems: list[RecordProblem] = field(default_factory=list)
    warning: str = ""
    scheduler_known: bool = True

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for run in self.runs.values():
            counts[run.state] += 1
        return counts


def task_is_live(entry: dict[str, Any], index: int, states: dict[str, str]) -> bool:
    """Is task ``index`` of this launch queued or running (Slurm), or is this a live local or debug launch on
    this host (its lock file is held)?"""
    if entry["executor"] == "slurm":
        return states.get(entry["task_jobs"][index], "") in QUEUED_STATES | RUNNING_STATES
    return "lock" in entry and entry.get("host") == socket.gethostname() and lock_held(entry["lock"])


def lock_held(path: str) -> bool:
    """Is this lock file held by a running local launch or one of its workers? (The kernel drops a lock when
    its holder exits or dies.)"""
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


def retries(record: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Does launch ``entry`` retry this failed run? Only if it reruns failures and the record predates it
    (a record written after it came from that launch's own attempt)."""
    if record["status"] != "failed" or not entry.get("retry_failed") or not record.get("finished_at"):
        return False
    return datetime.fromisoformat(record["finished_at"]) < datetime.fromisoformat(entry["submitted_at"])


def sweep_state(sweep_dir: SweepDir, query: Callable[[list[str]], JobStates] = job_states) -> SweepState:
    """The state of every run in the manifest. Slurm is asked once (``query``), and only about the arrays
    of launches that took a run without a result."""
    run_ids = sweep_dir.manifest_run_ids()
    indexed = record_index(sweep_dir)
    records = indexed.records
    problems = {p.path.stem: p for p in indexed.problems}
    unsettled = {r for r in run_ids if r not in records or records[r]["status"] == "failed"}
    takers: dict[str, list[tuple[dict[str, Any], int]]] = {}
    arrays: list[str] = []
    for entry in sweep_dir.launches():
        took = False
        for index, task in enumerate(sweep_dir.tasks(entry["launch"], missing_ok=True)):
            for run_id in task:
                if run_id in unsettled:
                    takers.setdefault(run_id, []).append((entry, index))
                    took = True
        if took and entry["executor"] == "slurm":
            arrays.extend(entry.get("array_ids", []))
    answer = query(arrays) if arrays else JobStates()
    result = SweepState({}, indexed.problems, answer.warning, answer.known)
    for run_id in run_ids:
        problem = problems.get(run_id)
        result.runs[run_id] = _state(
            records.get(run_id),
            takers.get(run_id, []),
            answer,
            f"record not trusted: {problem.reason}" if problem else "",
        )
    return result


def _state(
    record: dict[str, Any] | None,
    takers: list[tuple[dict[str, Any], int]],
    answer: JobStates,
    problem: str,
) -> RunState:
    states = answer.states
    if record is not None and record["status"] != "failed":
        return RunState("finished" if record["status"] == "ok" else record["status"])
    live = [
        (entry, index)
        for entry, index in takers
        if (record is None or retries(record, entry)) and task_is_live(entry, index, states)
    ]
    if live:
        running = [t for t in live if _is_running(*t, states)]
        entry, index = (running or live)[-1]
        return RunState("running" if running else "pending", "", entry, index)
    if record is not None:
        return RunState("failed", record["error"] or "", *(takers[-1] if takers else (None, -1)))
    if not takers:
        return RunState("lost", problem or "never launched")
    entry, index = takers[-1]
    if entry["executor"] != "slurm":
        return RunState(
            "lost", problem or f"its {entry['executor']} launch {entry['launch']} ended first", entry, index
        )
    job = entry["task_jobs"][index]
    state = states.get(job, "")
    if not state and not answer.known:
        return RunState("unknown", f"the scheduler could not be asked about Slurm job {job}", entry, index)
    if state in CRASHED_STATES:
        return RunState("failed", f"Slurm job {job} ended {state} before the run was recorded", entry, index)
    return RunState(
        "lost",
        problem
        or f"Slurm job {job} ended {state or 'unseen (never started, or forgotten)'} "
        "before the run was recorded",
        entry,
        index,
    )


def _is_running(entry: dict[str, Any], index: int, states: dict[str, str]) -> bool:
    return entry["executor"] != "slurm" or states.get(entry["task_jobs"][index], "") in RUNNING_STATES
