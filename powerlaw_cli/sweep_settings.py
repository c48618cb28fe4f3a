"""The sections of a sweep file that are not settings of a run: ``[launch]`` (how a sweep runs) and
``[adaptive]`` (how an adaptive sweep chooses its LRs). Typed and documented like the run settings
(``config.setting``), parsed with ``config.section_from_dict``; the tables of docs/sweep-files.md come from them."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from .config import require, section_from_dict, setting

InitialCells = Literal["corners", "cheapest", "all"]
Executor = Literal["local", "slurm", "debug"]
"""Where a launch runs: this machine's processes, Slurm job arrays through submitit, or in-process."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """How an adaptive sweep chooses its runs: the ``[adaptive]`` section of a sweep file."""

    lr_min: float = setting(
        0.0, "lower end of the initial LR range (required); the LR lattice is anchored here", identity=False
    )
    lr_max: float = setting(
        0.0,
        "upper end of the initial LR range (required); a cell whose optimum is at an edge goes past it",
        identity=False,
    )
    precision_log2: float = setting(
        0.5, "target half-width of each cell's 95% interval of log2 lr_opt", identity=False
    )
    lr_step_log2: float = setting(
        1.0, "step of the LR lattice every run is drawn from, log2 (1: a x2 grid)", identity=False
    )
    initial_lrs: int = setting(
        5, "LRs of the first round's coarse grid, spread over [lr_min, lr_max] on the lattice", identity=False
    )
    initial_cells: InitialCells = setting(
        "cheapest",
        "cells of the first round: corners (smallest and largest batch at the smallest budget), "
        "cheapest (every batch at the smallest budget) or all",
        identity=False,
    )
    extrapolate_steps: int = setting(
        1,
        "grid steps (of batch and of budget) beyond the cells with an optimum that the law predicts",
        identity=False,
    )
    max_rounds: int = setting(10, "rounds at most", identity=False)
    budget_flops: float = setting(
        0.0, "stop once this many training FLOPs are spent (0: no limit)", identity=False
    )

    def __post_init__(self) -> None:
        for name in ("lr_min", "lr_max"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, "adaptive", name, "required, a number > 0")
        require(self.lr_max > self.lr_min, "adaptive", "lr_max", f"must be > lr_min = {self.lr_min:g}")
        for name in ("precision_log2", "lr_step_log2"):
            require(getattr(self, name) > 0, "adaptive", name, "must be > 0")
        require(self.initial_lrs >= 3, "adaptive", "initial_lrs", "must be >= 3 (a parabola needs 3 LRs)")
        require(
            self.lattice_span >= self.initial_lrs - 1,
            "adaptive",
            "initial_lrs",
            f"{self.initial_lrs} LRs need [lr_min, lr_max] to span {self.initial_lrs - 1} lattice steps "
            f"of {self.lr_step_log2:g} (log2); it spans {self.lattice_span}",
        )
        for name in ("extrapolate_steps", "max_rounds"):
            require(getattr(self, name) >= 1, "adaptive", name, "must be >= 1")
        require(self.budget_flops >= 0, "adaptive", "budget_flops", "must be >= 0")

    @property
    def lattice_span(self) -> int:
        """Lattice steps from lr_min to lr_max (lr_max rounded to the nearest lattice point)."""
        return round(math.log2(self.lr_max / self.lr_min) / self.lr_step_log2)

    def lattice_lr(self, k: int) -> float:
        """The LR of lattice point ``k`` (0 is lr_min), spelled to 12 significant digits as sweep files
        spell their ranges, so that the same point always gives the same run id."""
        return float(f"{self.lr_min * 2.0 ** (k * self.lr_step_log2):.12g}")

    def lattice_index(self, lr: float) -> float:
        """Where ``lr`` lies on the lattice (an integer for lattice points)."""
        return math.log2(lr / self.lr_min) / self.lr_step_log2

    def coarse_grid(self) -> list[int]:
        """The first round's lattice points: ``initial_lrs`` spread evenly over [lr_min, lr_max]."""
        n, span = self.initial_lrs, self.lattice_span
        return sorted({round(span * i / (n - 1)) for i in range(n)})


SLURM_NAME = re.compile(r"[A-Za-z0-9_.,+-]*")
SLURM_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,+&|!*()\[\]:-]*")
SBATCH_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?:=[^\x00-\x1f\x7f]*)?")
SBATCH_OWN = frozenset({"array", "chdir", "error", "job-name", "open-mode", "output", "signal", "wrap"})


@dataclass(frozen=True)
class LaunchConfig:
    """How a sweep runs: the ``[launch]`` section of a sweep file, every field overridable by ``plsweep launch``."""

    partition: str = setting("", "Slurm partition (empty: the cluster's default)", identity=False)
    account: str = setting("", "Slurm account", identity=False)
    qos: str = setting("", "Slurm quality of service", identity=False)
    time_minutes: int = setting(60, "time limit of one array task, minutes", identity=False)
    gpus_per_task: int = setting(1, "GPUs per array task", identity=False)
    cpus_per_task: int = setting(4, "CPUs per array task", identity=False)
    mem_gb: float = setting(0.0, "memory per array task, GB (0: the cluster's default)", identity=False)
    constraint: str = setting("", "Slurm --constraint (node features)", identity=False)
    array_parallelism: int = setting(256, "array tasks of one array running at once", identity=False)
    runs_per_task: int = setting(1, "runs packed into one array task, run one after another", identity=False)
    sbatch_extra: list[str] = setting(
        [], 'extra sbatch options, e.g. ["--exclude=node7", "--reservation=big"]', identity=False
    )
    signal_seconds: int = setting(
        120, "seconds before the time limit at which workers checkpoint and requeue", identity=False
    )
    share_trunks: bool = setting(
        True,
        "train WSD or Power runs that differ only in tokens as one trunk with decay branches",
        identity=False,
    )
    workers: int = setting(
        0, "local executor: runs at once (0: one per GPU, else one per CPU core)", identity=False
    )
    chains_at_once: int = setting(
        0,
        "Slurm: chains an array task trains at once, each in a process of its own with cpus_per_task / N threads "
        "(0: one per CPU for small models on the CPU, else 1); the local executor's workers already are N",
        identity=False,
    )
    max_runs: int = setting(
        1_000_000,
        "refuse a sweep whose grid has more runs than this (counted from the axes, before anything is expanded)",
        identity=False,
    )

    def __post_init__(self) -> None:
        for name in ("time_minutes", "cpus_per_task", "array_parallelism", "runs_per_task", "max_runs"):
            require(getattr(self, name) > 0, "launch", name, "must be > 0")
        for name in ("gpus_per_task", "workers", "signal_seconds", "chains_at_once"):
            require(getattr(self, name) >= 0, "launch", name, "must be >= 0")
        require(self.mem_gb >= 0, "launch", "mem_gb", "must be >= 0")
        # These values become #SBATCH lines of the job script: a restricted alphabet, never a control character.
        for name in ("partition", "account", "qos"):
            require(
                SLURM_NAME.fullmatch(getattr(self, name)) is not None,
                "launch",
                name,
                f"{getattr(self, name)!r} may hold only letters, digits and . _ , + -",
            )
        require(
            SLURM_CONSTRAINT.fullmatch(self.constraint) is not None,
            "launch",
            "constraint",
            f"{self.constraint!r} may hold only letters, digits and . _ , + - & | ! * ( ) [ ] :",
        )
        for line in self.sbatch_extra:
            match = SBATCH_OPTION.fullmatch(line)
            require(
                match is not None,
                "launch",
                "sbatch_extra",
                f"{line!r} must be an option --key or --key=value without control characters",
            )
            require(
                match.group(1) not in SBATCH_OWN,
                "launch",
                "sbatch_extra",
                f"{line!r}: plsweep sets --{match.group(1)} itself",
            )


def override_launch(launch: LaunchConfig, overrides: dict[str, Any]) -> LaunchConfig:
    """``launch`` with command-line overrides ({setting: value}), validated like the file's section."""
    return section_from_dict(LaunchConfig, dataclasses.asdict(launch) | overrides, "launch")
