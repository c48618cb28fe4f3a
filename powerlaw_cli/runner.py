"""Train a chain of runs (``chains.Chain``) in this process and report one record per run.

A ``ChainRunner`` skips recorded runs, resumes from the chain's checkpoint, trains a lone run, a WSD or
Power trunk with a decay branch per run, or a WSD-S main branch, and hands each run's record and curve
to a sink (the sweep directory's writer, or ``train_standalone``'s folder). A failed run is data: it is
recorded with its error and the next chain goes on.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .chains import Chain, fork_step, plan_chains
from .config import RunConfig
from .data import DataError, load_source
from .schedules import build_schedule
from .schema import setting_values
from .store import LARGE_MAX_BYTES, atomic_write, inside, write_run_files
from .train import Control, Diverged, StopRequested, Trajectory, resolve_device

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""A write failed for want of disk space or quota: the machine's problem, not the run's."""


def _schedule(run: RunConfig) -> Callable[[float], float]:
    return build_schedule(run.schedule, run.optimizer.lr, run.training.tokens, run.training.batch_size)


def _eval_interval(run: RunConfig) -> int:
    every = run.training.eval_every_tokens
    return max(1, round(every / run.batch_tokens)) if every else 0


def _env_info(device: torch.device) -> dict[str, Any]:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
    name = f"cuda:{device.index}" if device.type == "cuda" else device.type
    return {
        "device": name,
        "host": socket.gethostname(),
        "slurm_job_id": job,
        "plsweep_version": __version__,
        "torch_version": torch.__version__,
    }


def make_record(
    run: RunConfig,
    traj: Trajectory | None,
    status: str,
    *,
    trunk_id: str | None,
    error: str | None = None,
    val: tuple[float, float | None] | None = None,
    diverged_at: int | None = None,
    started_at: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's record: the columns of the runs table (``schema.RUN_COLUMNS``), settings included."""
    steps = traj.step if traj is not None else 0
    tokens_seen = steps * run.batch_tokens
    record: dict[str, Any] = {
        "run_id": run.run_id,
        "sweep": None,
        "sweep_hash": None,
        "status": status,
        "error": error,
        **setting_values(run),
        "params_non_embedding": run.model.params_non_embedding,
        "batch_tokens": run.batch_tokens,
        "tokens_seen": tokens_seen,
        "steps": steps,
        "final_val_loss": val[0] if val else None,
        "final_val_loss_averaged": val[1] if val else None,
        "final_train_loss": traj.curve[-1]["train_loss"] if traj is not None and traj.curve else None,
        "diverged_at_tokens": diverged_at,
        "flops": float(run.model.flops_per_token * tokens_seen),
        "wall_seconds": traj.wall_seconds if traj is not None else 0.0,
        "resumes": traj.resumes if traj is not None else 0,
        "trunk_id": trunk_id,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "config": run.to_dict(),
    }
    record.update(_env_info(traj.device if traj is not None else torch.device("cpu")))
    record.update(extra or {})
    return record


ResultSink = Callable[[dict[str, Any], list[dict[str, Any]]], None]


@dataclass
class ChainRunner:
    """Runs one chain: skips recorded runs, resumes from the checkpoint, reports each run's result.

    ``keep_trunk``: once a trunk's runs are recorded, keep its state at its last fork in the checkpoint
    file instead of removing it, so that a later round that adds a larger budget at the same LR extends
    the trunk from there (bit for bit what training it to the end at once gives) instead of starting over.
    """

    chain: Chain
    checkpoint: Path | None
    on_result: ResultSink
    is_recorded: Callable[[str], bool]
    control: Control
    extra: dict[str, Any] | None = None
    keep_trunk: bool = False

    def run(self) -> None:
        pending = [r for r in self.chain.runs if not self.is_recorded(r.run_id)]
        if not pending:
            if not self.keep_trunk:
                self._remove_checkpoint()
            return
        import torch._dynamo  # noqa: F401 - what torch.optim imports at a process's first optimizer (~1 s): once, before a run starts

        started = datetime.now(timezone.utc).isoformat()
        try:
            first = self.chain.runs[-1] if self.chain.kind == "wsd_s" else pending[0]
            source = load_source(first.data, first.model.vocab_size, first.model.seq_len)
            device = resolve_device(first.training.device)
            if self.chain.kind == "trunk":
                trunk = self._run_trunk(pending, source, device, started)
                if self.keep_trunk and trunk is not None:
                    self._save({"trunk": trunk.state_dict(), "branch": None, "kept": True})
                    return
            else:
                self._run_line(pending, source, device, started)
        except StopRequested:
            raise  # preempted: the checkpoint is saved and the runs are not finished
        except Exception as err:  # a failed run is data: record it and go on with the next chain
            if isinstance(err, OSError) and err.errno in NO_SPACE:
                raise  # not the run's failure: the task stops, the launch names it, a relaunch resumes
            message = _one_line(err)
            if not isinstance(err, DataError):
                traceback.print_exc()
            for run in pending:
                if not self.is_recorded(run.run_id):
                    self.on_result(
                        make_record(
                            run,
                            None,
                            "failed",
                            trunk_id=self.chain.trunk_id,
                            error=message,
                            started_at=started,
                            extra=self.extra,
                        ),
                        [],
                    )
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

    def _run_trunk(self, pending: list[RunConfig], source, device, started: str) -> Trajectory | None:
        """Train the trunk to each pending run's fork and the run's decay branch from there; returns the
        trunk at its last fork (None if it diverged). A kept trunk (``keep_trunk``) is extended, not resumed."""
        ordered = sorted(pending, key=lambda r: (fork_step(r), r.training.tokens))
        trunk = Trajectory(ordered[0], source, _schedule(ordered[0]), device)
        state = self._load()
        branch_state = None
        if state is not None and all(
            fork_step(r) >= state["trunk"]["step"] or (state["branch"] or {}).get("run_id") == r.run_id
            for r in ordered
        ):
            trunk.load_state_dict(state["trunk"])
            trunk.resumes += 0 if state.get("kept") else 1
            branch_state = state["branch"]
        dead: Diverged | None = None
        for run in ordered:
            trunk.cfg, trunk.schedule = run, _schedule(run)  # identical to the trunk before this run's decay
            self.control.save = lambda: self._save({"trunk": trunk.state_dict(), "branch": None})
            if dead is None:
                try:
                    trunk.advance(fork_step(run), self.control, _eval_interval(run), end_of_run=False)
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
                {"trunk": trunk.state_dict(), "branch": {"run_id": r.run_id, "state": b.state_dict()}}
            )
            try:
                branch.advance(run.steps, self.control, _eval_interval(run))
            except Diverged as div:
                self._record_diverged(run, branch, div, started)
                continue
            self._record_ok(run, branch, started)
        return None if dead is not None else trunk

    # --- results ------------------------------------------------------------------------

    def _record_ok(self, run: RunConfig, traj: Trajectory, started: str) -> None:
        val = traj.evaluate()
        curve = [dict(row) for row in traj.curve[: run.steps]]
        self.on_result(
            make_record(
                run, traj, "ok", trunk_id=self.chain.trunk_id, val=val, started_at=started, extra=self.extra
            ),
            curve,
        )

    def _record_diverged(self, run: RunConfig, traj: Trajectory, div: Diverged, started: str) -> None:
        self.on_result(
            make_record(
                run,
                traj,
                "diverged",
                trunk_id=self.chain.trunk_id,
                diverged_at=div.tokens,
                started_at=started,
                extra=self.extra,
            ),
            [dict(row) for row in traj.curve],
        )

    # --- checkpoint file ----------------------------------------------------------------

    def _save(self, state: dict[str, Any]) -> None:
        """Write the checkpoint atomically. torch.save goes to memory first: writing into the file itself, it
        turns a full disk into a RuntimeError that does not say so."""
        if self.checkpoint is None:
            return
        buffer = io.BytesIO()
        torch.save({"chain": self.chain.key, **state}, buffer)
        atomic_write(self.checkpoint, buffer.getvalue())

    def _load(self) -> dict[str, Any] | None:
        if self.checkpoint is None or not os.path.lexists(self.checkpoint):
            return None
        try:  # a regular file inside its folder only (no FIFO to hang on, no symlink out of it)
            path = inside(self.checkpoint, self.checkpoint.parent, LARGE_MAX_BYTES)
            state = torch.load(path, map_location="cpu", weights_only=True)
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


def train_standalone(run: RunConfig, out: Path, control: Control | None = None) -> dict[str, Any]:
    """Train one run into ``out`` (record.json, curve.arrow; checkpoint.pt while unfinished).

    A wsd_s run trains its main branch up to its budget. Restarted after a kill, it resumes from
    ``out/checkpoint.pt``. Returns the record.
    """
    (chain,) = plan_chains([run])
    results: list[dict[str, Any]] = []

    def on_result(record: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        write_run_files(out / "record.json", out / "curve.arrow", record, curve)
        results.append(record)

    control = control or Control()
    control.checkpoint_seconds = run.training.checkpoint_seconds
    out.mkdir(parents=True, exist_ok=True)
    ChainRunner(chain, out / "checkpoint.pt", on_result, lambda run_id: False, control).run()
    return results[-1]
