"""Nothing a Slurm launch submits goes untracked, however the launch ends.

Before its first sbatch a Slurm launch writes a write-ahead entry (``write_ahead``: the launch number, its
task count, the arrays' size and a tag unique to the launch, in ``launching/launch-N.json``) and sends every
array with the job name ``plsweep-NAME`` and ``--comment=plsweep:HASH:launch-N:first-F:TOKEN`` (F: the
array's first task). Once launches.jsonl records the launch, the entry is removed.

An entry still there when the next ``launch`` or ``status`` holds the launch lock belongs to a launch that
died while submitting (kill -9, Ctrl-C, a dropped ssh session). ``settle`` asks squeue for the arrays with
its tag and

- adopts each array whose tasks all have their submitit pickle in place: the launch is recorded with those
  arrays as if it had finished submitting, so their runs count as queued and are not submitted again (a
  healthy orphan trains; submitting its runs again would train them twice, on paid GPUs);
- cancels an array whose pickles submitit never moved into place (the launch died between sbatch and
  submitit's bookkeeping): its tasks cannot run (each would wait 60 s for its pickle and fail), so its runs
  are left to be launched again.

Arrays go out one after another and submitit places an array's pickles before the next sbatch, so the
adopted arrays are the first ones: the recorded launch keeps their tasks and drops the rest.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from .slurm import SubmitError, cancel, tagged_arrays
from .store import SweepDir

INTENT_ONLY = ("job_name", "sweep_hash", "token", "tag", "n_tasks")
"""Keys of a write-ahead entry that its launches.jsonl line does not repeat."""


def write_ahead(
    sweep_dir: SweepDir, entry: dict[str, Any], job_name: str, n_tasks: int, array_size: int, code: Path
) -> dict[str, Any]:
    """Write launch ``entry``'s write-ahead entry (before its first sbatch) and return it."""
    sweep_hash = sweep_dir.info()["sweep_hash"]
    intent = {
        **entry,
        "job_name": job_name,
        "sweep_hash": sweep_hash,
        "token": uuid.uuid4().hex[:12],
        "tag": f"plsweep:{sweep_hash}:launch-{entry['launch']}:",
        "n_tasks": n_tasks,
        "max_array_size": array_size,
        "code": str(code),
    }
    sweep_dir.write_intent(intent)
    return intent


def array_comment(intent: dict[str, Any], first: int) -> str:
    """The ``--comment`` of the array of this launch whose first task is ``first``."""
    return f"{intent['tag']}first-{first}:{intent['token']}"


def settle(sweep_dir: SweepDir) -> list[str]:
    """Adopt or cancel the arrays of every launch that died while submitting (the caller holds the launch
    lock, so the launch that wrote an entry is gone); one line for each such launch on what was done.

    Raises SubmitError when squeue cannot say which arrays such a launch left (the entry stays)."""
    messages = []
    recorded = {entry["launch"] for entry in sweep_dir.launches()}
    for intent in sweep_dir.intents():
        if intent["launch"] not in recorded:  # else it died after recording, before removing the entry
            messages.append(_settle(sweep_dir, intent))
        sweep_dir.clear_intent(intent["launch"])
    return messages


def _settle(sweep_dir: SweepDir, intent: dict[str, Any]) -> str:
    from submitit.core.utils import JobPaths

    number, size, n_tasks = intent["launch"], intent["max_array_size"], intent["n_tasks"]
    found = tagged_arrays(intent["job_name"], intent["tag"])
    if found is None:
        raise SubmitError(
            f"{sweep_dir.root}: launch {number} died while submitting and squeue cannot say which arrays it "
            "left; run plsweep status or launch again when Slurm answers"
        )
    pattern = re.compile(rf"first-(\d+):{re.escape(intent['token'])}$")
    by_first = {int(m.group(1)): array for array, comment in found.items() if (m := pattern.search(comment))}
    adopted: list[str] = []
    task_jobs: list[str] = []
    doomed: list[str] = []
    for first in range(0, n_tasks, size):
        array = by_first.pop(first, None)
        if array is None:  # never submitted (or long ended): nothing after it went out
            break
        count = min(size, n_tasks - first)
        jobs = (
            [f"{array}_{i}" for i in range(count)] if count > 1 else [array]
        )  # submitit: a lone task is a job
        placed = all(
            JobPaths(sweep_dir.jobs_dir / "%j", job_id=job).submitted_pickle.exists() for job in jobs
        )
        if placed and not doomed:
            adopted.append(array)
            task_jobs.extend(jobs)
        else:
            doomed.append(array)
    doomed.extend(
        by_first.values()
    )  # after a gap (an earlier array already left the controller): not ours to guess
    parts = []
    if adopted:
        tasks = sweep_dir.tasks(number)[: len(task_jobs)]
        sweep_dir.write_tasks(number, tasks, sweep_dir.task_options(number))
        entry = {k: v for k, v in intent.items() if k not in INTENT_ONLY}
        runs = sum(len(task) for task in tasks)
        sweep_dir.append_launch(
            entry | {"runs": runs, "task_jobs": task_jobs, "array_ids": adopted, "adopted": True}
        )
        parts.append(
            f"adopted Slurm array {', '.join(adopted)} ({len(task_jobs)} tasks, {runs} runs: queued, "
            "not submitted again)"
        )
    if doomed:
        problem = cancel(doomed)
        parts.append(
            f"{'could not cancel' if problem else 'cancelled'} Slurm array {', '.join(doomed)} (submitit's "
            f"files for its tasks were never written, so they cannot run; their runs are launched again)"
            + (f": {problem}" if problem else "")
        )
    what = "; ".join(parts) or "no array of it reached Slurm"
    return f"launch {number} died while submitting: {what}"
