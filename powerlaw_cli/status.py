"""``plsweep status``: counts of runs per state (``runstate``), failures with their logs, why runs were lost.

Imports neither torch nor pandas: a user's ``status`` on a login node answers in well under a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .orphans import settle
from .runstate import sweep_state
from .slurm import JobStates, SubmitError, job_states
from .store import SweepDir

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
    """Counts per state, failures, why runs were lost, untrusted records, a scheduler warning (if any), and
    the rounds of an adaptive sweep (what each added and why; without their per-run lists), and the disk
    its checkpoints take (an adaptive sweep keeps each trunk's for a later round to extend)."""

    sweep: str
    total: int
    counts: dict[str, int]
    failures: list[Failure]
    lost: dict[str, int]
    bad_records: list[str]
    warning: str = ""
    rounds: list[dict] = field(default_factory=list)
    checkpoint_bytes: int = 0
    orphans: list[str] = field(default_factory=list)  # arrays of killed launches adopted or cancelled now

    @property
    def done(self) -> bool:
        """Nothing left queued or running (or that the scheduler could not be asked about)."""
        return self.counts["running"] == self.counts["pending"] == self.counts["unknown"] == 0

    def to_dict(self) -> dict:
        return asdict(self) | {"done": self.done}


def task_log(sweep_dir: SweepDir, entry: dict, index: int) -> Path | None:
    """The log file of a task (submitit's on Slurm, the local executor's), with its stdout and stderr."""
    if entry["executor"] == "slurm":
        from submitit.core.utils import JobPaths  # only when a failure's log is wanted

        return JobPaths(sweep_dir.jobs_dir / "%j", job_id=entry["task_jobs"][index], task_id=0).stdout
    if entry["executor"] == "local":
        return sweep_dir.jobs_dir / "local" / f"launch-{entry['launch']}-task-{index}.log"
    return None


def _tail(path: Path | None) -> list[str]:
    if path is None or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]


def sweep_status(sweep_dir: SweepDir, query: Callable[[list[str]], JobStates] = job_states) -> SweepStatus:
    """The state of every run in the manifest (``query`` asks the scheduler, once, for all arrays). The
    arrays of a launch killed while submitting are settled first (``orphans.settle``) unless a launch is
    submitting now."""
    orphans, problem = [], ""
    if sweep_dir.intents():
        with sweep_dir.launch_lock(wait=False) as held:
            try:
                orphans = settle(sweep_dir) if held else []
            except SubmitError as err:
                problem = str(err)
    state = sweep_state(sweep_dir, query)
    failures = []
    for run_id, run in state.runs.items():
        if run.state == "failed":
            log = task_log(sweep_dir, run.entry, run.task) if run.entry else None
            job = run.entry["task_jobs"][run.task] if run.entry and run.entry["executor"] == "slurm" else None
            failures.append(Failure(run_id, run.reason, job, str(log) if log else None, _tail(log)))
    lost = Counter(_reason_kind(run.reason) for run in state.runs.values() if run.state == "lost")
    rounds = [{k: v for k, v in entry.items() if k not in ("added", "laws")} for entry in sweep_dir.rounds()]
    checkpoints = sweep_dir.root / "checkpoints"
    disk = sum(p.stat().st_size for p in checkpoints.glob("*.pt")) if checkpoints.exists() else 0
    return SweepStatus(
        sweep_dir.info()["name"],
        len(state.runs),
        state.counts(),
        failures,
        dict(lost),
        [str(p) for p in state.problems],
        "; ".join(filter(None, [problem, state.warning])),
        rounds,
        disk,
        orphans,
    )


def _reason_kind(reason: str) -> str:
    """A lost run's reason without its job id, so that reasons can be counted ("Slurm job ... ended CANCELLED")."""
    if reason.startswith("Slurm job "):
        return "Slurm task ended " + reason.split(" ended ", 1)[1].split(" before ")[0]
    return reason
