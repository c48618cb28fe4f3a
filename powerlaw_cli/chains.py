"""Chains of runs trained in one process, as planned (no torch here): a lone run, a trunk with decay
branches, a WSD-S main branch.

WSD runs that differ only in their budget (and decay) share everything before their decay starts, and
so do Power runs (lr = min(lr_max, a * batch * n^b) does not depend on the budget before its decay):
one trunk trains the stable phase once and forks a decay branch at each run's decay start
(branch = the run trained alone, bit for bit on the CPU). WSD-S runs of one main branch are points on
one trajectory: the run for budget D is the main branch's state at D. ``runner.ChainRunner`` trains a
chain; planning, packing and costing sweeps use only this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import RunConfig, stable_hash

# Settings that may differ between the runs of one trunk: the budget and the decay.
BRANCH_SETTINGS = {
    "training": ("tokens",),
    "schedule": ("decay_tokens", "decay_fraction", "decay_shape", "final_lr_ratio"),
}


# Schedules whose LR before the decay does not depend on the budget (warmup in tokens, not a fraction).
TRUNK_SCHEDULES = ("wsd", "power")


@dataclass
class Chain:
    """Runs trained together. ``kind``: single, trunk (WSD or Power, with decay forks) or wsd_s
    (points on one branch)."""

    kind: Literal["single", "trunk", "wsd_s"]
    key: str
    runs: list[RunConfig]

    @property
    def trunk_id(self) -> str | None:
        return None if self.kind == "single" else self.key


def trunk_key(run: RunConfig) -> str:
    """The key of the trunk a WSD or Power run shares with the runs that differ from it only in budget and decay."""
    identity = run.identity()
    for section, names in BRANCH_SETTINGS.items():
        for name in names:
            identity[section].pop(name, None)
    return stable_hash({"trunk": identity})


def plan_chains(runs: list[RunConfig], share_trunks: bool = True) -> list[Chain]:
    """Group runs into chains, in the order of their first run. WSD-S runs of one main branch always
    share it; WSD or Power runs that differ only in budget and decay share a trunk when ``share_trunks``
    (not with tail averaging, whose window depends on the budget). A trunk may hold one run: a later
    round that adds a budget at its LR then extends the same trunk."""
    groups: dict[tuple[str, str], list[RunConfig]] = {}
    for run in runs:
        if run.trainer is not None:  # a user's trainer trains each run alone: it shares no trunks
            kind = "single"
        elif run.schedule.name == "wsd_s":
            kind = "wsd_s"
        elif share_trunks and run.schedule.name in TRUNK_SCHEDULES and run.averaging.kind != "tail":
            kind = "trunk"
        else:
            kind = "single"
        groups.setdefault((kind, run.run_id if kind == "single" else trunk_key(run)), []).append(run)
    return [
        Chain(kind, key, sorted(members, key=lambda r: (r.training.tokens, r.run_id)))
        for (kind, key), members in groups.items()
    ]


def fork_step(run: RunConfig) -> int:
    """The last step a run shares with its trunk: before it, its LR does not depend on its budget."""
    decay_start = run.training.tokens - run.schedule.decay_length(run.training.tokens)
    return max(0, decay_start // run.batch_tokens)


def chain_tokens(chain: Chain) -> int:
    """Tokens actually trained for a chain: a trunk trains its stable phase once, a WSD-S branch its longest budget."""
    if chain.kind == "single":
        run = chain.runs[0]
        return run.steps * run.batch_tokens
    if chain.kind == "wsd_s":
        return max(run.steps * run.batch_tokens for run in chain.runs)
    stable = max(fork_step(run) * run.batch_tokens for run in chain.runs)
    return stable + sum((run.steps - fork_step(run)) * run.batch_tokens for run in chain.runs)


def added_tokens(run: RunConfig, trunk_step: int | None = None) -> int:
    """Tokens training ``run`` adds now. A trunk kept at step ``trunk_step`` (its furthest fork so far) is
    extended from there to the run's fork when the fork is not before it; otherwise the run trains from the
    start. Either way it trains its own decay."""
    start = trunk_step if trunk_step is not None and trunk_step <= fork_step(run) else 0
    return (run.steps - start) * run.batch_tokens
