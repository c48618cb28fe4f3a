"""Weight averaging: an fp32 copy of a model's parameters, updated after every optimizer step.

A run reports the loss of its raw weights and of the average. After optimizer step t (t = 0 for the
first step) every averager applies

    avg <- c_t * avg + (1 - c_t) * w_t        (c_t: the old-weight coefficient)

starting from the weights the averager was built with (the init). The kinds differ only in c_t:

- ema: c_t = beta = exp(-tokens_per_step / ema_tokens), a fixed time constant in tokens.
- anytime (Meterez et al. 2026): c_t = 0.5^(gamma / (t + 1)), a half-life of about t / gamma steps
  that grows with training.
- tail: the uniform mean of the weights after steps start, start + 1, ... with
  start = ceil((1 - tail_fraction) * total_steps): c_t = n / (n + 1) after n averaged steps (c = 0 at
  the first, so the init drops out); steps before ``start`` are skipped.

Only parameters are averaged (not buffers). Build the averager after moving the model to its device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, get_args

import torch
from torch import nn

from .config import AveragingConfig, AveragingKind, ConfigError


class Averager(ABC):
    """An fp32 running average of a model's parameters; subclasses give the old-weight coefficient."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        self._names = [name for name, _ in named]
        self._average = [p.detach().float().clone() for _, p in named]
        self.updates = 0  # optimizer steps folded into the average so far

    @abstractmethod
    def old_weight(self, step: int) -> float | None:
        """c_t, the coefficient of the current average after optimizer step ``step`` (None: skip this step)."""

    @property
    def has_average(self) -> bool:
        """Whether at least one step has been averaged (False for tail before its window)."""
        return self.updates > 0

    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights after optimizer step ``step`` (0 for the first) in: avg <- c avg + (1 - c) w."""
        c = self.old_weight(step)
        if c is None:
            return
        with torch.no_grad():
            for avg, p in zip(self._average, self._parameters(model), strict=True):
                if c == 0:
                    avg.copy_(p)
                else:
                    avg.mul_(c).add_(p.detach().float(), alpha=1 - c)
        self.updates += 1

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Load the averaged weights into ``model`` for the ``with`` block; restore the raw ones bitwise after.

        ``with averager.swapped_into(model): val_loss_averaged = evaluate(model)``
        """
        if not self.has_average:
            raise RuntimeError("no averaged weights yet: no step has been averaged")
        params = self._parameters(model)
        raw = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, avg in zip(params, self._average, strict=True):
                    p.copy_(avg)
            yield model
        finally:
            with torch.no_grad():
                for p, saved in zip(params, raw, strict=True):
                    p.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        """{"average": {parameter name: fp32 tensor}, "updates": int}: loads with ``torch.load(weights_only=True)``."""
        return {
            "average": {n: a.clone() for n, a in zip(self._names, self._average, strict=True)},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``: the averager then continues exactly as the saved one would have."""
        average = state["average"]
        if list(average) != self._names:
            raise ValueError(
                f"averager state has parameters {list(average)[:3]}..., the model {self._names[:3]}..."
            )
        with torch.no_grad():
            for avg, name in zip(self._average, self._names, strict=True):
                avg.copy_(average[name])
        self.updates = int(state["updates"])

    def _parameters(self, model: nn.Module) -> list[nn.Parameter]:
        named = list(model.named_parameters())
        if [name for name, _ in named] != self._names:
            raise ValueError("the model's parameters differ from those the averager was built with")
        return [p for _, p in named]


class EMAAverager(Averager):
    """Exponential moving average with a fixed old-weight coefficient ``beta`` per step."""

    def __init__(self, model: nn.Module, beta: float) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"EMA beta must be in [0, 1), got {beta}")
        super().__init__(model)
        self.beta = beta

    def old_weight(self, step: int) -> float:
        """beta, at every step."""
        return self.beta


class AnytimeAverager(Averager):
    """The anytime EMA of Meterez et al. (2026): old-weight coefficient 0.5^(gamma / (t + 1)) at step t."""

    def __init__(self, model: nn.Module, gamma: float) -> None:
        if gamma <= 0:
            raise ValueError(f"anytime gamma must be > 0, got {gamma}")
        super().__init__(model)
        self.gamma = gamma

    def old_weight(self, step: int) -> float:
        """0.5^(gamma / (step + 1))."""
        return 0.5 ** (self.gamma / (step + 1))


class TailAverager(Averager):
    """The uniform mean of the weights after every step from ``start_step`` on (a running mean)."""

    def __init__(self, model: nn.Module, start_step: int) -> None:
        if start_step < 0:
            raise ValueError(f"tail start_step must be >= 0, got {start_step}")
        super().__init__(model)
        self.start_step = start_step

    def old_weight(self, step: int) -> float | None:
        """None before ``start_step``; n / (n + 1) after n averaged steps."""
        if step < self.start_step:
            return None
        return self.updates / (self.updates + 1)


def tail_start(total_steps: int, tail_fraction: float) -> int:
    """First averaged step: ceil((1 - tail_fraction) * total_steps), at most the last step.

    The product is rounded to 9 decimals first, so that e.g. (1 - 0.2) * 10 gives 8, not 9.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return min(math.ceil(round((1 - tail_fraction) * total_steps, 9)), total_steps - 1)


def build_averager(
    cfg: AveragingConfig, model: nn.Module, tokens_per_step: int, total_steps: int
) -> Averager | None:
    """The averager of a run from its config section; None for kind "none"."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "ema":
        return EMAAverager(model, math.exp(-tokens_per_step / cfg.ema_tokens))
    if cfg.kind == "anytime":
        return AnytimeAverager(model, cfg.anytime_gamma)
    if cfg.kind == "tail":
        return TailAverager(model, tail_start(total_steps, cfg.tail_fraction))
    raise ConfigError(f"averaging.kind: unknown {cfg.kind!r}; valid: {', '.join(get_args(AveragingKind))}")
