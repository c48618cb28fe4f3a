"""LR schedules as pure functions of tokens seen.

A schedule maps ``t``, the tokens seen *before* a step, to that step's absolute LR: step k (counted
from 0, like PyTorch's ``LambdaLR``) uses ``t = k * tokens_per_step``. Lengths are tokens, never
steps, so one schedule serves every batch size. Warmup is linear from 0 everywhere:
``lr = peak * t / warmup_tokens`` for ``t < warmup_tokens`` (no warmup when ``warmup_tokens == 0``).

Only ``lambda_lr`` needs torch (imported there), so a user's own trainer can import this module::

    schedule = WSDSchedule(3e-3, total_tokens=10**9, warmup_tokens=10**7, decay_tokens=10**8)
    scheduler = lambda_lr(optimizer, schedule, tokens_per_step=batch_size * seq_len)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, get_args

from .config import ConfigError, DecayShape, ScheduleConfig, ScheduleName

if TYPE_CHECKING:
    import torch


class Schedule(Protocol):
    """What every schedule offers: the LR at ``tokens`` seen, and the peak the LR is relative to."""

    @property
    def peak_lr(self) -> float: ...

    def __call__(self, tokens: float) -> float: ...


def decay_factor(shape: DecayShape, progress: float, final_ratio: float) -> float:
    """The decay multiplier at ``progress`` p in [0, 1]: 1 at p = 0, ``final_ratio`` r at p = 1.

    linear: 1 - (1 - r) p;  cosine: r + (1 - r) (1 + cos(pi p)) / 2;  1-sqrt: r + (1 - r) (1 - sqrt(p));
    exponential (lm-engine's ExponentialScheduler): A exp(-p) + B, A = (1 - r) e / (e - 1), B = (r e - 1) / (e - 1).
    """
    if not 0 <= progress <= 1:
        raise ValueError(f"decay progress must be in [0, 1], got {progress}")
    p, r = progress, final_ratio
    if shape == "linear":
        return 1 - (1 - r) * p
    if shape == "cosine":
        return r + (1 - r) * (1 + math.cos(math.pi * p)) / 2
    if shape == "1-sqrt":
        return r + (1 - r) * (1 - math.sqrt(p))
    if shape == "exponential":
        e = math.e
        return (1 - r) * e / (e - 1) * math.exp(-p) + (r * e - 1) / (e - 1)
    raise ValueError(f"unknown decay shape {shape!r}; valid: {', '.join(get_args(DecayShape))}")


def _decay(tokens: float, start: float, length: float, shape: DecayShape, final_ratio: float) -> float:
    """Multiplier of a decay over [start, start + length): 1 before it, ``final_ratio`` from its end on."""
    if tokens < start:
        return 1.0
    if tokens >= start + length:
        return final_ratio
    return decay_factor(shape, (tokens - start) / length, final_ratio)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_common(peak_lr: float, warmup_tokens: float, final_ratio: float = 0.0) -> None:
    require(peak_lr > 0, f"peak LR must be > 0, got {peak_lr}")
    require(warmup_tokens >= 0, f"warmup_tokens must be >= 0, got {warmup_tokens}")
    require(0 <= final_ratio <= 1, f"final_ratio must be in [0, 1], got {final_ratio}")


def _check_shape(shape: str) -> None:
    require(
        shape in get_args(DecayShape),
        f"unknown decay shape {shape!r}; valid: {', '.join(get_args(DecayShape))}",
    )


@dataclass(frozen=True)
class ConstantSchedule:
    """lr = peak after the warmup."""

    peak_lr: float
    warmup_tokens: float = 0

    def __post_init__(self) -> None:
        _check_common(self.peak_lr, self.warmup_tokens)

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        return self.peak_lr


@dataclass(frozen=True)
class CosineSchedule:
    """After warmup w: lr = peak * (r + (1 - r) (1 + cos(pi p)) / 2), p = (t - w) / (total - w); r * peak after total."""

    peak_lr: float
    total_tokens: float
    warmup_tokens: float = 0
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.peak_lr, self.warmup_tokens, self.final_ratio)
        require(
            self.warmup_tokens < self.total_tokens,
            f"warmup_tokens ({self.warmup_tokens}) must be below total_tokens ({self.total_tokens})",
        )

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        length = self.total_tokens - self.warmup_tokens
        return self.peak_lr * _decay(tokens, self.warmup_tokens, length, "cosine", self.final_ratio)


@dataclass(frozen=True)
class CyclicCosineSchedule:
    """After warmup w: cosine from peak to r * peak over each cycle, restarting at peak every ``cycle_tokens``.

    lr = peak * (r + (1 - r) (1 + cos(pi p)) / 2), p = ((t - w) mod cycle) / cycle.
    """

    peak_lr: float
    cycle_tokens: float
    warmup_tokens: float = 0
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.peak_lr, self.warmup_tokens, self.final_ratio)
        require(self.cycle_tokens > 0, f"cycle_tokens must be > 0, got {self.cycle_tokens}")

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        progress = (tokens - self.warmup_tokens) % self.cycle_tokens / self.cycle_tokens
        return self.peak_lr * decay_factor("cosine", progress, self.final_ratio)


@dataclass(frozen=True)
class InverseSqrtSchedule:
    """After warmup w: lr = peak * sqrt(alpha / (t - w + alpha)) (Meterez et al. 2026; alpha in tokens)."""

    peak_lr: float
    alpha_tokens: float
    warmup_tokens: float = 0

    def __post_init__(self) -> None:
        _check_common(self.peak_lr, self.warmup_tokens)
        require(self.alpha_tokens > 0, f"alpha_tokens must be > 0, got {self.alpha_tokens}")

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        return self.peak_lr * math.sqrt(self.alpha_tokens / (tokens - self.warmup_tokens + self.alpha_tokens))


@dataclass(frozen=True)
class WSDSchedule:
    """Warmup, stable at peak, decay over the last ``decay_tokens`` (MiniCPM, Hu et al. 2024).

    With s = total - decay: lr = peak for w <= t < s; peak * decay_factor(shape, (t - s) / decay, r) for
    s <= t < total; r * peak from total on. The stable phase does not depend on ``total_tokens``.
    """

    peak_lr: float
    total_tokens: float
    warmup_tokens: float
    decay_tokens: float
    decay_shape: DecayShape = "linear"
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.peak_lr, self.warmup_tokens, self.final_ratio)
        _check_shape(self.decay_shape)
        require(self.decay_tokens >= 0, f"decay_tokens must be >= 0, got {self.decay_tokens}")
        require(
            self.warmup_tokens + self.decay_tokens <= self.total_tokens,
            f"warmup_tokens ({self.warmup_tokens}) + decay_tokens ({self.decay_tokens}) "
            f"exceed total_tokens ({self.total_tokens})",
        )

    @property
    def decay_start(self) -> float:
        """Tokens at which the decay starts: total_tokens - decay_tokens."""
        return self.total_tokens - self.decay_tokens

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        return self.peak_lr * _decay(
            tokens, self.decay_start, self.decay_tokens, self.decay_shape, self.final_ratio
        )


@dataclass(frozen=True)
class WSDSSchedule:
    """WSD-S (Wen et al. 2024): one main branch that decays in place before every budget.

    For budget D_i with decay length L_i: lr = peak * decay_factor(shape, (t - (D_i - L_i)) / L_i, r) on
    [D_i - L_i, D_i); from D_i on the LR is back at peak at once (no re-warmup); peak elsewhere after warmup.
    The model after D_i tokens is that budget's result.
    """

    peak_lr: float
    decay_points: Sequence[float]
    decay_lengths: Sequence[float]
    warmup_tokens: float = 0
    decay_shape: DecayShape = "linear"
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay_points", tuple(self.decay_points))
        object.__setattr__(self, "decay_lengths", tuple(self.decay_lengths))
        _check_common(self.peak_lr, self.warmup_tokens, self.final_ratio)
        _check_shape(self.decay_shape)
        require(len(self.decay_points) > 0, "WSD-S needs at least one decay point")
        require(
            len(self.decay_points) == len(self.decay_lengths),
            f"{len(self.decay_points)} decay_points but {len(self.decay_lengths)} decay_lengths",
        )
        previous, previous_name = self.warmup_tokens, f"the warmup end ({self.warmup_tokens})"
        for point, length in zip(self.decay_points, self.decay_lengths, strict=True):
            require(length > 0, f"decay length of budget {point} must be > 0, got {length}")
            require(
                point - length >= previous,
                f"the decay window [{point - length}, {point}) of budget {point} starts before {previous_name}",
            )
            previous, previous_name = point, f"the previous budget ({point})"

    @property
    def decay_windows(self) -> list[tuple[float, float]]:
        """[(start, end)] of every in-place decay, tokens; end is the budget."""
        return [
            (point - length, point)
            for point, length in zip(self.decay_points, self.decay_lengths, strict=True)
        ]

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        for start, end in self.decay_windows:
            if start <= tokens < end:
                return self.peak_lr * decay_factor(
                    self.decay_shape, (tokens - start) / (end - start), self.final_ratio
                )
        return self.peak_lr


@dataclass(frozen=True)
class PowerSchedule:
    """The Power scheduler (Shen et al. 2024, eq. 7-8); ``batch_size`` in sequences, tokens n.

    lr_power(n) = min(lr_max, a * batch_size * n^b) (lr_max at n = 0). Warmup: (t / N_warmup) * lr_power(N_warmup);
    stable: lr_power(t); over the last N_decay tokens: decay_factor(shape, p, r) * lr_power(N - N_decay);
    r * lr_power(N - N_decay) from N on.
    """

    lr_max: float
    a: float
    b: float
    batch_size: int
    total_tokens: float
    warmup_tokens: float
    decay_tokens: float
    decay_shape: DecayShape = "exponential"
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.lr_max, self.warmup_tokens, self.final_ratio)
        _check_shape(self.decay_shape)
        require(self.a > 0, f"a must be > 0, got {self.a}")
        require(self.b < 0, f"b must be < 0, got {self.b}")
        require(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        require(self.decay_tokens >= 0, f"decay_tokens must be >= 0, got {self.decay_tokens}")
        require(
            self.warmup_tokens + self.decay_tokens <= self.total_tokens,
            f"warmup_tokens ({self.warmup_tokens}) + decay_tokens ({self.decay_tokens}) "
            f"exceed total_tokens ({self.total_tokens})",
        )

    @property
    def peak_lr(self) -> float:
        """The cap lr_max: the LR the optimizer is built with."""
        return self.lr_max

    @property
    def decay_start(self) -> float:
        """Tokens at which the decay starts: total_tokens - decay_tokens."""
        return self.total_tokens - self.decay_tokens

    def lr_power(self, tokens: float) -> float:
        """min(lr_max, a * batch_size * n^b), lr_max at n = 0."""
        if tokens <= 0:
            return self.lr_max
        return min(self.lr_max, self.a * self.batch_size * tokens**self.b)

    def __call__(self, tokens: float) -> float:
        if tokens < self.warmup_tokens:
            return tokens / self.warmup_tokens * self.lr_power(self.warmup_tokens)
        if tokens < self.decay_start:
            return self.lr_power(tokens)
        factor = _decay(tokens, self.decay_start, self.decay_tokens, self.decay_shape, self.final_ratio)
        return factor * self.lr_power(self.decay_start)

    def lm_engine_arguments(self, seq_len: int) -> dict[str, float]:
        """lm-engine's ``PowerScheduler`` arguments (its ``extra_lr_scheduler_args``) for this schedule.

        lm-engine codes lr = min(lr_max, a_coded * (step * c)^b) with a_coded = batch_size * a and
        c = tokens per step = batch_size * seq_len; its optimizer LR is lr_max. Its linear warmup
        (in steps) has our form; it has no decay phase.
        """
        return {"a": self.batch_size * self.a, "b": self.b, "c": self.batch_size * seq_len}


def build_schedule(cfg: ScheduleConfig, lr: float, total_tokens: int, batch_size: int) -> Schedule:
    """The schedule of a run from its config section; ``lr`` is the peak (the cap lr_max for power).

    Decay lengths come from ``cfg.decay_length``; wsd_s decays before every budget in ``cfg.decay_points``
    that is <= ``total_tokens``. Impossible settings raise ``ConfigError`` (a ``ValueError``).
    """
    try:
        return _build(cfg, lr, total_tokens, batch_size)
    except ValueError as err:
        raise ConfigError(f"schedule ({cfg.name}, {total_tokens} tokens): {err}") from None


def _build(cfg: ScheduleConfig, lr: float, total_tokens: int, batch_size: int) -> Schedule:
    w, r, shape = cfg.warmup_tokens, cfg.final_lr_ratio, cfg.decay_shape
    decay = cfg.decay_length(total_tokens)
    if cfg.name == "constant":
        return ConstantSchedule(lr, w)
    if cfg.name == "cosine":
        return CosineSchedule(lr, total_tokens, w, r)
    if cfg.name == "cyclic_cosine":
        return CyclicCosineSchedule(lr, cfg.cycle_tokens, w, r)
    if cfg.name == "inverse_sqrt":
        return InverseSqrtSchedule(lr, cfg.alpha_tokens, w)
    if cfg.name == "wsd":
        return WSDSchedule(lr, total_tokens, w, decay, shape, r)
    if cfg.name == "wsd_s":
        points = [p for p in cfg.decay_points if p <= total_tokens]
        require(len(points) > 0, f"no decay_points {cfg.decay_points} <= total_tokens")
        return WSDSSchedule(lr, points, [cfg.decay_length(p) for p in points], w, shape, r)
    if cfg.name == "power":
        return PowerSchedule(lr, cfg.power_a, cfg.power_b, batch_size, total_tokens, w, decay, shape, r)
    raise ValueError(f"unknown schedule {cfg.name!r}; valid: {', '.join(get_args(ScheduleName))}")


def lambda_lr(
    optimizer: torch.optim.Optimizer, schedule: Schedule, tokens_per_step: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with factor(step) = schedule(step * tokens_per_step) / schedule.peak_lr.

    Build the optimizer with lr = ``schedule.peak_lr`` (per-group multipliers such as muP's 1/m are
    kept: every group's LR is its own initial LR times the factor)::

        schedule = build_schedule(cfg.schedule, cfg.optimizer.lr, cfg.training.tokens, cfg.training.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.peak_lr)
        scheduler = lambda_lr(optimizer, schedule, tokens_per_step=batch_size * seq_len)
        for step in range(steps):  # step k trains with schedule(k * tokens_per_step)
            loss(model, batch).backward()
            optimizer.step()
            scheduler.step()

    The factor is a plain closure, so ``scheduler.state_dict()`` holds only its step counter.
    """
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return schedule(step * tokens_per_step) / schedule.peak_lr

    return LambdaLR(optimizer, factor)


def sample(schedule: Schedule, total_tokens: float, points: int = 256) -> list[tuple[float, float]]:
    """(tokens, lr) at ``points`` evenly spaced token counts from 0 to ``total_tokens``, both included."""
    require(points >= 2, f"points must be >= 2, got {points}")
    return [(t, schedule(t)) for t in (total_tokens * i / (points - 1) for i in range(points))]
