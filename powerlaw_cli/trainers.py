"""The trainer seam: what trains a chain of runs, looked up once per chain from its runs' settings.

A trainer takes a ``ChainJob`` (the chain, where to checkpoint, where each run's folder is, the sink for
records, which runs are recorded already, the stop requests of the worker's signals) and returns when the
chain's runs are recorded, or raises ``StopRequested`` when a signal stopped it (resumable). The worker,
launch, status and collect never ask which trainer trained a run: they see records.

Registered trainers (``TRAINERS``, by name): ``proxy``, the built-in muP proxy (``runner.ChainRunner``,
the only one that imports torch); ``command`` and ``entry_point``, a user's own trainer (the sweep file's
[trainer] section, ``trainer_command``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .chains import Chain
from .control import Control


@dataclass
class ChainJob:
    """One chain to train and everything a trainer is given for it."""

    chain: Chain
    checkpoint: Path | None
    run_dir: Callable[[str], Path]
    on_result: Callable[[dict[str, Any], list[dict[str, Any]]], None]  # each run's record and curve rows
    is_recorded: Callable[[str], bool]
    control: Control
    extra: dict[str, Any] | None = None
    keep_trunk: bool = False


class Trainer(Protocol):
    """What trains a chain of runs."""

    def train(self, job: ChainJob) -> None:
        """Record every run of ``job.chain`` not yet recorded (a failed run is recorded with its error);
        raise ``StopRequested`` when ``job.control`` asked to stop before they were all recorded."""


class ProxyTrainer:
    """The built-in muP proxy: trunks, branches and WSD-S points trained in this process."""

    def train(self, job: ChainJob) -> None:
        from .runner import ChainRunner  # torch: only where the proxy trains

        ChainRunner(
            job.chain,
            job.checkpoint,
            job.on_result,
            job.is_recorded,
            job.control,
            job.extra,
            keep_trunk=job.keep_trunk,
        ).run()


class ExternalTrainer:
    """A user's trainer (a command, or a Python entry point), one run at a time."""

    def train(self, job: ChainJob) -> None:
        from .trainer_command import train_run

        for run in job.chain.runs:
            if not job.is_recorded(run.run_id):
                job.on_result(*train_run(run, job.run_dir(run.run_id), job.control, job.extra))


TRAINERS: dict[str, Trainer] = {
    "proxy": ProxyTrainer(),
    "command": ExternalTrainer(),
    "entry_point": ExternalTrainer(),
}


def trainer_name(trainer: dict[str, Any] | None) -> str:
    """The registered name of a run's trainer (its config's ``trainer``; None: the built-in proxy)."""
    if trainer is None:
        return "proxy"
    return "command" if "command" in trainer else "entry_point"


def trainer_for(chain: Chain) -> Trainer:
    """The trainer of a chain (its runs share one: a sweep file has one [trainer] section or none)."""
    return TRAINERS[trainer_name(chain.runs[0].trainer)]
