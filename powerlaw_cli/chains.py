"""Chains of runs trained in one process: a lone run, a trunk with decay branches, a WSD-S main branch.

WSD runs that differ only in their budget (and decay) share everything before their decay starts, and
so do Power runs (lr = min(lr_max, a * batch * n^b) does not depend on the budget before its decay):
one trunk trains the stable phase once and forks a decay branch at each run's decay start
(branch = the run trained alone, bit for bit on the CPU). WSD-S runs of one main branch are points on
one trajectory: the run for budget D is the main branch's state at D. A chain saves its state to one
checkpoint file; killed and restarted, it skips recorded runs and resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from . import __version__
from .config import RunConfig, stable_hash
from .data import DataError, load_source
from .schedules import build_schedule
from .train import Control, Diverged, StopRequested, Trajectory, resolve_device

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


def _trunk_key(run: RunConfig) -> str:
    identity = run.identity()
    for section, names in BRANCH_SETTINGS.items():
        for name in names:
            identity[section].pop(name, None)
    return stable_hash({"trunk": identity})


def plan_chains(runs: list[RunConfig], share_trunks: bool = True) -> list[Chain]:
    """Group runs into chains, in the order of their first run. WSD-S runs of one main branch always
    share it; WSD or Power runs that differ only in budget and decay share a trunk when ``share_trunks``
    (not with tail averaging, whose window depends on the budget)."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        shareable = run.schedule.name == "wsd_s" or (
            share_trunks and run.schedule.name in TRUNK_SCHEDULES and run.averaging.kind != "tail"
        )
        key = _trunk_key(run) if shareable else run.run_id
        groups.setdefault(key, []).append(run)
    chains = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: (r.training.tokens, r.run_id))
        if members[0].schedule.name == "wsd_s":
            chains.append(Chain("wsd_s", key, members))
        elif len(members) > 1:
            chains.append(Chain("trunk", key, members))
        else:
            chains.append(Chain("single", members[0].run_id, members))
    return chains


def fork_step(run: RunConfig) -> int:
    """The last step a run shares with its trunk: before it, its LR does not depend on its budget."""
    decay_start = run.training.tokens - run.schedule.decay_length(run.training.tokens)
    return max(0, decay_start // run.batch_tokens)


def _schedule(run: RunConfig) -> Callable[[float], float]:
    return build_schedule(run.schedule, run.optimizer.lr, run.training.tokens, run.training.batch_size)


def _eval_interval(run: RunConfig) -> int:
    every = run.training.eval_every_tokens
    return max(1, round(every / run.batch_tokens)) if every else 0


def _env_info(device: torch.device) -> dict[str, Any]:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
    name = f"cuda:{device.index}" if device.type == "cuda" else device.type
    return {"device": name, "host": socket.gethostname(), "slurm_job_id": job,
            "plsweep_version": __version__, "torch_version": torch.__version__}


def make_record(run: RunConfig, traj: Trajectory | None, status: str, *, trunk_id: str | None,
                error: str | None = None, val: tuple[float, float | None] | None = None,
                diverged_at: int | None = None, started_at: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's record: the fields of the runs table (schema.py)."""
    m, t, s = run.model, run.training, run.schedule
    steps = traj.step if traj is not None else 0
    tokens_seen = steps * run.batch_tokens
    model = traj.model if traj is not None else None
    record: dict[str, Any] = {
        "run_id": run.run_id, "status": status, "error": error,
        "parametrization": m.parametrization, "width": m.width, "depth": m.depth, "n_heads": m.n_heads,
        "base_width": m.base_width, "seq_len": m.seq_len, "vocab_size": m.vocab_size,
        "params_non_embedding": model.params_non_embedding if model is not None else None,
        "batch_size": t.batch_size, "batch_tokens": run.batch_tokens, "tokens": t.tokens,
        "tokens_seen": tokens_seen, "steps": steps, "lr": run.optimizer.lr, "schedule": s.name,
        "warmup_tokens": s.warmup_tokens,
        "decay_tokens": s.decay_length(t.tokens) if s.name in ("wsd", "wsd_s", "power") else 0,
        "decay_shape": s.decay_shape, "weight_decay": run.optimizer.weight_decay,
        "averaging": run.averaging.kind, "seed": t.seed,
        "data": run.data.source + (f":{run.data.path}" if run.data.path else ""),
        "final_val_loss": val[0] if val else None,
        "final_val_loss_averaged": val[1] if val else None,
        "final_train_loss": traj.curve[-1]["train_loss"] if traj is not None and traj.curve else None,
        "diverged_at_tokens": diverged_at,
        "flops": model.flops_per_token * tokens_seen if model is not None else 0.0,
        "wall_seconds": traj.wall_seconds if traj is not None else 0.0,
        "resumes": traj.resumes if traj is not None else 0,
        "trunk_id": trunk_id, "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "config": run.to_dict(),
        "sweep": None, "sweep_hash": None,
    }
    record.update(_env_info(traj.device if traj is not None else torch.device("cpu")))
    record.update(extra or {})
    return record


ResultSink = Callable[[dict[str, Any], list[dict[str, Any]]], None]


@dataclass
class ChainRunner:
    """Runs one chain: skips recorded runs, resumes from the checkpoint, reports each run's result."""

    chain: Chain
    checkpoint: Path | None
    on_result: ResultSink
    is_recorded: Callable[[str], bool]
    control: Control
    extra: dict[str, Any] | None = None

    def run(self) -> None:
        pending = [r for r in self.chain.runs if not self.is_recorded(r.run_id)]
        if not pending:
            self._remove_checkpoint()
            return
        started = datetime.now(timezone.utc).isoformat()
        try:
            first = self.chain.runs[-1] if self.chain.kind == "wsd_s" else pending[0]
            source = load_source(first.data, first.model.vocab_size, first.model.seq_len)
            device = resolve_device(first.training.device)
            if self.chain.kind == "trunk":
                self._run_trunk(pending, source, device, started)
            else:
                self._run_line(pending, source, device, started)
        except StopRequested:
            raise  # preempted: the checkpoint is saved and the runs are not finished
        except Exception as err:  # a failed run is data: record it and go on with the next chain
            message = _one_line(err)
            if not isinstance(err, DataError):
                traceback.print_exc()
            for run in pending:
                if not self.is_recorded(run.run_id):
                    self.on_result(make_record(run, None, "failed", trunk_id=self.chain.trunk_id, error=message,
                                               started_at=started, extra=self.extra), [])
        self._remove_checkpoint()

    # --- a lone run, or the points of a WSD-S main branch -------------------------------

    def _run_line(self, pending: list[RunConfig], source, device, started: str) -> None:
        last = self.chain.runs[-1]
        traj = Trajectory(last, source, _schedule(last), device)
        state = self._load()
        if state is not None:
            traj.load_state_dict(state["trunk"])
            traj.resumes += 1
        self.control.save = lambda: self._save({"trunk": traj.state_dict(), "branch": None})
        dead: Diverged | None = None
        for run in pending:
            if dead is None:
                try:
                    traj.advance(run.steps, self.control, _eval_interval(last))
                except Diverged as div:
                    dead = div
            if dead is None:
                self._record_ok(run, traj, started)
            else:  # a WSD-S budget after the main branch diverged diverged with it
                self._record_diverged(run, traj, dead, started)

    # --- a trunk with one decay branch per run ----------------------------------------

    def _run_trunk(self, pending: list[RunConfig], source, device, started: str) -> None:
        ordered = sorted(pending, key=lambda r: (fork_step(r), r.training.tokens))
        trunk = Trajectory(ordered[0], source, _schedule(ordered[0]), device)
        state = self._load()
        branch_state = None
        if state is not None and all(fork_step(r) >= state["trunk"]["step"] or
                                     (state["branch"] or {}).get("run_id") == r.run_id for r in ordered):
            trunk.load_state_dict(state["trunk"])
            trunk.resumes += 1
            branch_state = state["branch"]
        dead: Diverged | None = None
        for run in ordered:
            trunk.cfg, trunk.schedule = run, _schedule(run)  # identical to the trunk before this run's decay
            self.control.save = lambda: self._save({"trunk": trunk.state_dict(), "branch": None})
            if dead is None:
                try:
                    trunk.advance(fork_step(run), self.control, _eval_interval(run))
                except Diverged as div:
                    dead = div
            if dead is not None:  # the trunk diverged before this run's decay: so did the run
                self._record_diverged(run, trunk, dead, started)
                continue
            branch = trunk.fork(run, _schedule(run))
            if branch_state is not None and branch_state["run_id"] == run.run_id:
                branch.load_state_dict(branch_state["state"])
                branch.resumes += 1
            branch_state = None
            self.control.save = lambda b=branch, r=run: self._save(
                {"trunk": trunk.state_dict(), "branch": {"run_id": r.run_id, "state": b.state_dict()}})
            try:
                branch.advance(run.steps, self.control, _eval_interval(run))
            except Diverged as div:
                self._record_diverged(run, branch, div, started)
                continue
            self._record_ok(run, branch, started)

    # --- results ------------------------------------------------------------------------

    def _record_ok(self, run: RunConfig, traj: Trajectory, started: str) -> None:
        val = traj.evaluate()
        curve = [dict(row) for row in traj.curve[: run.steps]]
        self.on_result(make_record(run, traj, "ok", trunk_id=self.chain.trunk_id, val=val,
                                   started_at=started, extra=self.extra), curve)

    def _record_diverged(self, run: RunConfig, traj: Trajectory, div: Diverged, started: str) -> None:
        self.on_result(make_record(run, traj, "diverged", trunk_id=self.chain.trunk_id, diverged_at=div.tokens,
                                   started_at=started, extra=self.extra), [dict(row) for row in traj.curve])

    # --- checkpoint file ----------------------------------------------------------------

    def _save(self, state: dict[str, Any]) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.{os.getpid()}.tmp")
        torch.save({"chain": self.chain.key, **state}, tmp)
        os.replace(tmp, self.checkpoint)

    def _load(self) -> dict[str, Any] | None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file: start over rather than trust it
            print(f"ignoring unreadable checkpoint {self.checkpoint}: {_one_line(err)}", flush=True)
            return None
        return state if state.get("chain") == self.chain.key else None

    def _remove_checkpoint(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.unlink(missing_ok=True)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def record_json(record: dict[str, Any]) -> str:
    """A record as indented JSON (NaN written as null)."""
    return json.dumps(record, indent=1, sort_keys=True, default=str)


def train_standalone(run: RunConfig, out: Path, control: Control | None = None) -> dict[str, Any]:
    """Train one run into ``out`` (record.json, curve.parquet; checkpoint.pt while unfinished).

    A wsd_s run trains its main branch up to its budget. Restarted after a kill, it resumes from
    ``out/checkpoint.pt``. Returns the record.
    """
    import pyarrow as pa

    from .schema import CURVES_SCHEMA
    from .store import atomic_write_bytes, atomic_write_table, json_ready

    (chain,) = plan_chains([run])
    results: list[dict[str, Any]] = []

    def on_result(record: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        rows = [{**row, "run_id": record["run_id"]} for row in curve]
        atomic_write_table(out / "curve.parquet", pa.Table.from_pylist(rows, schema=CURVES_SCHEMA))
        atomic_write_bytes(out / "record.json", record_json(json_ready(record)).encode())
        results.append(record)

    control = control or Control()
    control.checkpoint_seconds = run.training.checkpoint_seconds
    out.mkdir(parents=True, exist_ok=True)
    ChainRunner(chain, out / "checkpoint.pt", on_result, lambda run_id: False, control).run()
    return results[-1]
