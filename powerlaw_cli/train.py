"""One training trajectory: AdamW steps with the LR from a schedule, evaluation, divergence, state.

A ``Trajectory`` is the state of one model being trained (model, optimizer, averager, step, curve).
It can be advanced to a step, evaluated, forked (a WSD decay branch starts as a copy of its trunk),
and saved/restored exactly: on the CPU a run restored from its state ends with the same loss, bit for
bit, as one never interrupted, because batches are a pure function of (seed, step).
``chains.py`` strings trajectories together into runs, WSD trunks and WSD-S main branches.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from .averaging import build_averager
from .config import RunConfig
from .control import Control, StopRequested  # noqa: F401 - StopRequested: re-exported, where it was
from .data import TokenSource
from .model import GPT, cross_entropy


class Diverged(Exception):
    """The loss became non-finite or exceeded divergence_factor times the initial loss."""

    def __init__(self, tokens: int, loss: float):
        super().__init__(f"diverged at {tokens} tokens (train loss {loss:.4g})")
        self.tokens, self.loss = tokens, loss


def resolve_device(setting: str) -> torch.device:
    """``auto``: the first visible CUDA device when there is one, else the CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("training.device = 'cuda' but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Trajectory:
    """The state of one model being trained under ``cfg`` with LR ``schedule`` (tokens -> LR)."""

    def __init__(
        self, cfg: RunConfig, source: TokenSource, schedule: Callable[[float], float], device: torch.device
    ):
        self.cfg, self.source, self.schedule, self.device = cfg, source, schedule, device
        self.model = GPT(cfg.model, seed=cfg.training.seed).to(device)
        self.forward = torch.compile(self.model) if cfg.training.compile else self.model
        fused = device.type == "cuda"
        opt = cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(opt), betas=(opt.beta1, opt.beta2), eps=opt.eps, fused=fused or None
        )
        self.averager = build_averager(cfg.averaging, self.model, cfg.batch_tokens, cfg.steps)
        self.step = 0
        self.initial_loss: float | None = None
        self.curve: list[dict[str, Any]] = []
        self.wall_seconds = 0.0
        self.resumes = 0

    @property
    def tokens_seen(self) -> int:
        return self.step * self.cfg.batch_tokens

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> float:
        """One optimizer step (gradient accumulation over micro-batches); returns the batch's mean loss."""
        cfg = self.cfg.training
        lr = self.schedule(self.tokens_seen)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]
        inputs, targets = self.source.train_batch(cfg.seed, self.step, cfg.batch_size)
        micro = cfg.micro_batch_size or cfg.batch_size
        total = torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        for start in range(0, cfg.batch_size, micro):
            x = inputs[start : start + micro].to(self.device, non_blocking=True)
            y = targets[start : start + micro].to(self.device, non_blocking=True)
            with self._autocast():
                loss = cross_entropy(self.forward(x), y) * (x.shape[0] / cfg.batch_size)
            loss.backward()
            total += loss.detach()
        if self.cfg.optimizer.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.cfg.optimizer.grad_clip, foreach=True
            )
        self.optimizer.step()
        self.step += 1
        if self.averager is not None:
            self.averager.update(self.model, self.step - 1)
        loss_value = float(total)
        self.curve.append(
            {
                "step": self.step,
                "tokens": self.tokens_seen,
                "lr": lr,
                "train_loss": loss_value,
                "val_loss": None,
                "val_loss_averaged": None,
            }
        )
        return loss_value

    def check_divergence(self, loss: float) -> None:
        """Raise Diverged on a non-finite loss or one above divergence_factor x the initial loss."""
        if self.initial_loss is None and math.isfinite(loss):
            self.initial_loss = loss
        limit = self.cfg.training.divergence_factor * (self.initial_loss or math.inf)
        if not math.isfinite(loss) or loss > limit:
            raise Diverged(self.tokens_seen, loss)

    def advance(
        self, to_step: int, control: Control | None = None, evaluate_every: int = 0, end_of_run: bool = True
    ) -> None:
        """Train until ``self.step == to_step``, evaluating every ``evaluate_every`` steps (0: never).

        ``end_of_run``: ``to_step`` ends a run, whose record evaluates it, so it is not evaluated here; a
        trunk advancing to a fork (not the end of a run) evaluates there too when it is due, so that a branch
        has the evaluation points of the run trained alone.
        """
        started = time.monotonic()
        try:
            while self.step < to_step:
                if control is not None:
                    self.wall_seconds += time.monotonic() - started
                    started = time.monotonic()
                    control.at_step_boundary()
                self.check_divergence(self.train_step())
                if (
                    evaluate_every
                    and self.step % evaluate_every == 0
                    and (self.step < to_step or not end_of_run)
                ):
                    self.evaluate()
        finally:
            self.wall_seconds += time.monotonic() - started

    @torch.no_grad()
    def _val_loss(self) -> float:
        self.model.eval()
        training = self.cfg.training
        # No activations are kept for a backward pass, so evaluation can take larger batches than training.
        batch = training.micro_batch_size or max(training.batch_size, 64)
        total, count = 0.0, 0
        for x, y in self.source.val_batches(batch):
            with self._autocast():
                loss = cross_entropy(self.forward(x.to(self.device)), y.to(self.device))
            total += float(loss) * y.numel()
            count += y.numel()
        self.model.train()
        return total / count

    def evaluate(self) -> tuple[float, float | None]:
        """Validation loss of the raw and of the averaged weights; noted on the curve's last row."""
        raw = self._val_loss()
        averaged = None
        if self.averager is not None and self.averager.has_average:
            with self.averager.swapped_into(self.model):
                averaged = self._val_loss()
        if self.curve:
            self.curve[-1]["val_loss"], self.curve[-1]["val_loss_averaged"] = raw, averaged
        return raw, averaged

    def fork(self, cfg: RunConfig, schedule: Callable[[float], float]) -> Trajectory:
        """A copy of this state that continues under another run's config and schedule (a WSD branch)."""
        branch = Trajectory(cfg, self.source, schedule, self.device)
        branch.load_state_dict(copy.deepcopy(self.state_dict()))
        return branch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; only tensors and plain data (weights_only loadable)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "averager": self.averager.state_dict() if self.averager is not None else None,
            "step": self.step,
            "initial_loss": self.initial_loss,
            "curve": self.curve,
            "wall_seconds": self.wall_seconds,
            "resumes": self.resumes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.averager is not None and state["averager"] is not None:
            self.averager.load_state_dict(state["averager"])
        self.step, self.initial_loss = state["step"], state["initial_loss"]
        self.curve = [dict(row) for row in state["curve"]]
        self.wall_seconds, self.resumes = state["wall_seconds"], state["resumes"]
