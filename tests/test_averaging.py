"""Weight averagers against averages computed by hand from weight snapshots of a real model."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from powerlaw_cli.averaging import (
    AnytimeAverager,
    EMAAverager,
    TailAverager,
    build_averager,
    tail_start,
)
from powerlaw_cli.config import AveragingConfig


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2))


def _flat(model: nn.Module) -> torch.Tensor:
    """All parameters as one float64 vector (the snapshots the expected averages are built from)."""
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()


def _run(averager, model: nn.Module, steps: int) -> list[torch.Tensor]:
    """Train ``steps`` SGD steps, updating the averager after each; return [init, w_0, ..., w_{steps-1}]."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    snapshots = [_flat(model)]
    for step in range(steps):
        _train_step(model, optimizer, step)
        averager.update(model, step)
        snapshots.append(_flat(model))
    return snapshots


def _average(averager) -> torch.Tensor:
    return torch.cat([a.double().flatten() for a in averager.state_dict()["average"].values()])


def test_ema_matches_the_closed_form() -> None:
    model = _model()
    beta = math.exp(-4096 / 20_000)
    averager = build_averager(
        AveragingConfig(kind="ema", ema_tokens=20_000), model, tokens_per_step=4096, total_steps=100
    )
    assert isinstance(averager, EMAAverager)
    assert averager.beta == pytest.approx(beta)
    init, *weights = _run(averager, model, steps=12)
    n = len(weights)
    # avg_n = beta^n init + sum_t (1 - beta) beta^(n - 1 - t) w_t
    expected = beta**n * init + sum((1 - beta) * beta ** (n - 1 - t) * w for t, w in enumerate(weights))
    torch.testing.assert_close(_average(averager), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, weights[-1], atol=1e-3)  # the average is not just the last weights


def test_anytime_matches_the_product_form() -> None:
    gamma = 2.0  # small, so that the init and early steps keep a visible weight
    model = _model()
    averager = build_averager(AveragingConfig(kind="anytime", anytime_gamma=gamma), model, 4096, 100)
    assert isinstance(averager, AnytimeAverager)
    init, *weights = _run(averager, model, steps=15)
    c = [0.5 ** (gamma / (t + 1)) for t in range(len(weights))]
    # weight of w_t: (1 - c_t) * prod_{s > t} c_s; weight of the init: prod_s c_s
    expected = math.prod(c) * init
    for t, w in enumerate(weights):
        expected = expected + (1 - c[t]) * math.prod(c[t + 1 :]) * w
    torch.testing.assert_close(_average(averager), expected, rtol=0, atol=1e-6)
    assert averager.old_weight(0) == 0.25
    assert averager.old_weight(3) == pytest.approx(0.5**0.5)  # the half-life grows with t


def test_tail_is_the_uniform_mean_of_the_last_steps() -> None:
    model = _model()
    averager = build_averager(AveragingConfig(kind="tail", tail_fraction=0.3), model, 4096, total_steps=10)
    assert isinstance(averager, TailAverager)
    assert averager.start_step == 7
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    weights = []
    for step in range(10):
        _train_step(model, optimizer, step)
        averager.update(model, step)
        weights.append(_flat(model))
        assert averager.has_average == (step >= 7)
    torch.testing.assert_close(_average(averager), torch.stack(weights[7:]).mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("total_steps", "fraction", "start"),
    [(10, 0.2, 8), (10, 0.25, 8), (10, 0.7, 3), (50, 0.42, 29), (1000, 1.0, 0), (5, 0.1, 4), (1, 0.5, 0)],
)
def test_tail_start(total_steps: int, fraction: float, start: int) -> None:
    assert tail_start(total_steps, fraction) == start


def test_none_builds_nothing() -> None:
    assert build_averager(AveragingConfig(kind="none"), _model(), 4096, 100) is None


def test_average_is_kept_in_fp32_for_a_bf16_model() -> None:
    model = _model().to(torch.bfloat16)
    init = _flat(model)
    averager = EMAAverager(model, beta=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    averager.update(model, step=0)
    # 0.9 init + 0.1 w is not representable in bf16 (8 mantissa bits): fp32 keeps it to ~1e-7
    torch.testing.assert_close(_average(averager), 0.9 * init + 0.1 * _flat(model), rtol=0, atol=1e-6)


def test_swapped_into_loads_the_average_and_restores_raw_weights_bitwise() -> None:
    model = _model()
    averager = AnytimeAverager(model, gamma=3.0)
    _run(averager, model, steps=6)
    raw = [p.detach().clone() for p in model.parameters()]
    average = list(averager.state_dict()["average"].values())
    with averager.swapped_into(model) as swapped:
        assert swapped is model
        for p, a, r in zip(model.parameters(), average, raw, strict=True):
            assert torch.equal(p, a)
            assert not torch.equal(p, r)
    for p, r in zip(model.parameters(), raw, strict=True):
        assert torch.equal(p, r)

    with pytest.raises(KeyError), averager.swapped_into(model):  # restored after an error too
        raise KeyError("evaluation failed")
    for p, r in zip(model.parameters(), raw, strict=True):
        assert torch.equal(p, r)


def test_swapped_into_needs_an_average() -> None:
    model = _model()
    averager = TailAverager(model, start_step=5)
    _run(averager, model, steps=3)
    with pytest.raises(RuntimeError, match="no averaged weights"), averager.swapped_into(model):
        pass


@pytest.mark.parametrize("kind", ["ema", "anytime", "tail"])
def test_resume_continues_bit_identically(kind: str) -> None:
    cfg = AveragingConfig(kind=kind, ema_tokens=10_000, anytime_gamma=2.0, tail_fraction=0.5)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    averager = build_averager(cfg, model, tokens_per_step=4096, total_steps=12)
    for step in range(8):
        _train_step(model, optimizer, step)
        averager.update(model, step)

    buffer = io.BytesIO()
    torch.save(averager.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = build_averager(cfg, _model(seed=1), tokens_per_step=4096, total_steps=12)  # other init
    resumed.load_state_dict(state)

    for step in range(8, 12):
        _train_step(model, optimizer, step)
        averager.update(model, step)
        resumed.update(model, step)
    for a, b in zip(
        averager.state_dict()["average"].values(), resumed.state_dict()["average"].values(), strict=True
    ):
        assert torch.equal(a, b)
    assert resumed.updates == averager.updates == {"ema": 12, "anytime": 12, "tail": 6}[kind]


def test_load_state_dict_rejects_another_model() -> None:
    averager = EMAAverager(_model(), beta=0.5)
    other = EMAAverager(nn.Linear(3, 3), beta=0.5)
    with pytest.raises(ValueError, match="parameters"):
        averager.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="differ"):
        averager.update(nn.Linear(3, 3), step=0)
