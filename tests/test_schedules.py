"""LR schedules against their formulas, written out independently here."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from powerlaw_cli.config import ConfigError, ScheduleConfig, ScheduleName
from powerlaw_cli.plots import plot_schedule
from powerlaw_cli.schedules import (
    ConstantSchedule,
    CosineSchedule,
    CyclicCosineSchedule,
    InverseSqrtSchedule,
    PowerSchedule,
    WSDSchedule,
    WSDSSchedule,
    build_schedule,
    decay_factor,
    lambda_lr,
    sample,
)

PEAK = 3e-3


# --- decay_factor -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
@pytest.mark.parametrize("r", [0.0, 0.1])
def test_decay_factor_ends(shape: str, r: float) -> None:
    assert decay_factor(shape, 0.0, r) == pytest.approx(1.0, abs=1e-12)
    assert decay_factor(shape, 1.0, r) == pytest.approx(r, abs=1e-12)


def test_decay_factor_midpoints() -> None:
    assert decay_factor("linear", 0.25, 0.1) == pytest.approx(0.775)  # 1 - 0.9 * 0.25
    assert decay_factor("cosine", 0.5, 0.1) == pytest.approx(0.55)  # halfway between 1 and 0.1
    assert decay_factor("cosine", 0.25, 0.0) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert decay_factor("1-sqrt", 0.25, 0.2) == pytest.approx(0.6)  # 0.2 + 0.8 * 0.5
    # exponential with r = 0: (e^(1-p) - 1) / (e - 1); at p = 1/2 that is 1 / (sqrt(e) + 1)
    assert decay_factor("exponential", 0.5, 0.0) == pytest.approx(1 / (math.sqrt(math.e) + 1))
    # with r: r + (1 - r) * (e^(1-p) - 1) / (e - 1)
    assert decay_factor("exponential", 0.3, 0.1) == pytest.approx(
        0.1 + 0.9 * (math.e**0.7 - 1) / (math.e - 1)
    )


def test_decay_factor_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="progress"):
        decay_factor("linear", 1.5, 0.0)
    with pytest.raises(ValueError, match="1-sqrt"):  # the message lists the valid shapes
        decay_factor("step", 0.5, 0.0)


# --- each schedule at chosen points -----------------------------------------------------------------------


def test_constant() -> None:
    s = ConstantSchedule(PEAK, warmup_tokens=1000)
    assert s(0) == 0
    assert s(250) == pytest.approx(PEAK / 4)
    assert s(1000) == PEAK
    assert s(10**9) == PEAK
    assert ConstantSchedule(PEAK)(0) == PEAK  # no warmup


def test_cosine() -> None:
    s = CosineSchedule(PEAK, total_tokens=11_000, warmup_tokens=1000, final_ratio=0.1)
    assert s(500) == pytest.approx(PEAK / 2)
    assert s(1000) == pytest.approx(PEAK)
    assert s(6000) == pytest.approx(PEAK * 0.55)  # halfway: (1 + 0.1) / 2
    assert s(3500) == pytest.approx(PEAK * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
    assert s(11_000) == pytest.approx(PEAK * 0.1)
    assert s(50_000) == pytest.approx(PEAK * 0.1)  # flat after the end


def test_cyclic_cosine() -> None:
    s = CyclicCosineSchedule(PEAK, cycle_tokens=4000, warmup_tokens=1000, final_ratio=0.0)
    assert s(500) == pytest.approx(PEAK / 2)
    for k in range(4):
        start = 1000 + 4000 * k
        assert s(start) == pytest.approx(PEAK)  # every cycle restarts at the peak
        assert s(start + 2000) == pytest.approx(PEAK / 2)
        assert s(start + 1000) == pytest.approx(PEAK * (1 + math.cos(math.pi / 4)) / 2)
        assert s(start + 3999) < PEAK * 1e-5


def test_inverse_sqrt() -> None:
    s = InverseSqrtSchedule(PEAK, alpha_tokens=10_000, warmup_tokens=2000)
    assert s(1000) == pytest.approx(PEAK / 2)
    assert s(2000) == pytest.approx(PEAK)
    assert s(2000 + 30_000) == pytest.approx(PEAK / 2)  # sqrt(alpha / 4 alpha)
    assert s(2000 + 80_000) == pytest.approx(PEAK / 3)


@pytest.mark.parametrize(
    ("shape", "mid"),  # the factor halfway through the decay with r = 0.2, written out
    [
        ("linear", 0.6),
        ("cosine", 0.6),
        ("1-sqrt", 0.2 + 0.8 * (1 - math.sqrt(0.5))),
        ("exponential", 0.2 + 0.8 * (math.sqrt(math.e) - 1) / (math.e - 1)),
    ],
)
def test_wsd(shape: str, mid: float) -> None:
    s = WSDSchedule(
        PEAK,
        total_tokens=100_000,
        warmup_tokens=10_000,
        decay_tokens=20_000,
        decay_shape=shape,
        final_ratio=0.2,
    )
    assert s.decay_start == 80_000
    assert s(2500) == pytest.approx(PEAK / 4)
    assert s(10_000) == PEAK
    assert s(79_999) == PEAK
    assert s(80_000) == pytest.approx(PEAK)
    assert s(90_000) == pytest.approx(PEAK * mid)
    assert s(99_999) == pytest.approx(PEAK * 0.2, rel=1e-3)
    assert s(100_000) == pytest.approx(PEAK * 0.2)
    assert s(200_000) == pytest.approx(PEAK * 0.2)


def test_wsd_stable_phase_does_not_depend_on_the_budget() -> None:
    short = WSDSchedule(PEAK, total_tokens=50_000, warmup_tokens=5000, decay_tokens=5000)
    long = WSDSchedule(PEAK, total_tokens=500_000, warmup_tokens=5000, decay_tokens=50_000)
    assert [short(t) for t in range(0, 45_000, 997)] == [long(t) for t in range(0, 45_000, 997)]


def test_wsd_s_decays_in_place_and_jumps_back_to_peak() -> None:
    s = WSDSSchedule(
        PEAK,
        decay_points=[10_000, 30_000],
        decay_lengths=[2000, 4000],
        warmup_tokens=1000,
        decay_shape="linear",
        final_ratio=0.1,
    )
    assert s(500) == pytest.approx(PEAK / 2)
    assert s(7999) == PEAK
    assert s(8000) == pytest.approx(PEAK)
    assert s(9000) == pytest.approx(PEAK * 0.55)  # halfway down to 0.1
    assert s(9999) == pytest.approx(PEAK * (1 - 0.9 * 1999 / 2000))
    assert s(10_000) == PEAK  # right after the budget: back at the peak, no re-warmup
    assert s(10_001) == PEAK
    assert s(26_000) == pytest.approx(PEAK)
    assert s(29_000) == pytest.approx(PEAK * (1 - 0.9 * 0.75))
    assert s(30_000) == PEAK
    assert s(10**7) == PEAK  # the main branch goes on at the peak


def test_power_paper_example() -> None:
    # Shen et al. 2024: batch 1024, a = 4.6, b = -0.51, T = 1e13 tokens gives lr ~ 0.0011
    s = PowerSchedule(
        lr_max=0.02, a=4.6, b=-0.51, batch_size=1024, total_tokens=2e13, warmup_tokens=0, decay_tokens=0
    )
    assert s(1e13) == pytest.approx(0.0011, rel=0.01)
    assert s.peak_lr == 0.02


def test_power_phases() -> None:
    lr_max, a, b, batch = 0.02, 4.0, -0.51, 16
    total, warm, decay = 4e9, 1e8, 4e8

    def lr_power(n: float) -> float:
        return min(lr_max, a * batch * n**b)

    s = PowerSchedule(lr_max, a, b, batch, total, warm, decay, decay_shape="exponential", final_ratio=0.0)
    assert lr_power(warm) < lr_max  # so that the checks below see the power law, not the cap
    assert s(0) == 0
    assert s(warm / 4) == pytest.approx(lr_power(warm) / 4)
    assert s(warm) == pytest.approx(lr_power(warm))
    assert s(1e9) == pytest.approx(a * batch * 1e9**b)
    assert s.decay_start == total - decay
    assert s(total - decay) == pytest.approx(lr_power(total - decay))
    mid = (math.sqrt(math.e) - 1) / (math.e - 1)  # exponential to 0, halfway
    assert s(total - decay / 2) == pytest.approx(mid * lr_power(total - decay))
    assert s(total - 1) == pytest.approx(0, abs=1e-6 * lr_max)
    assert s(total) == pytest.approx(0, abs=1e-12)


def test_power_is_capped_at_lr_max() -> None:
    s = PowerSchedule(0.02, 4.0, -0.51, 512, total_tokens=1e12, warmup_tokens=0, decay_tokens=0)
    assert s(0) == 0.02
    assert s(1e8) == 0.02  # 4 * 512 * 1e8^-0.51 ~ 0.17, capped
    assert s(1e11) == pytest.approx(4.0 * 512 * 1e11**-0.51)  # ~ 0.0052, below the cap


# --- continuity -------------------------------------------------------------------------------------------


def _largest_jump(schedule, at: float, width: float, points: int = 2001) -> float:
    """Largest change between neighbouring samples of [at - width, at + width]."""
    ts = [at - width + 2 * width * i / (points - 1) for i in range(points)]
    lrs = [schedule(t) for t in ts]
    return max(abs(x - y) for x, y in zip(lrs, lrs[1:], strict=False))


CONTINUOUS = [
    (ConstantSchedule(PEAK, 1000), [1000]),
    (CosineSchedule(PEAK, 20_000, 1000, 0.1), [1000, 20_000]),
    (CyclicCosineSchedule(PEAK, 5000, 1000, 0.1), [1000, 3500]),
    (InverseSqrtSchedule(PEAK, 5000, 1000), [1000]),
    *[
        (WSDSchedule(PEAK, 20_000, 1000, 4000, shape, 0.1), [1000, 16_000, 20_000])
        for shape in ["linear", "cosine", "1-sqrt", "exponential"]
    ],
    (WSDSSchedule(PEAK, [10_000, 20_000], [1000, 2000], 1000, "cosine", 0.1), [1000, 9000, 18_000]),
    (PowerSchedule(0.02, 4.0, -0.51, 16, 4e9, 1e8, 4e8, "exponential", 0.0), [1e8, 3.6e9, 4e9]),
]


@pytest.mark.parametrize(("schedule", "boundaries"), CONTINUOUS)
def test_continuous_at_phase_boundaries(schedule, boundaries: list[float]) -> None:
    for at in boundaries:
        # 2e-3 allows 1-sqrt's infinite slope at the decay start; a restart jumps by most of the peak
        assert _largest_jump(schedule, at, width=at * 1e-4) < 2e-3 * schedule.peak_lr, f"jump at {at}"


def test_jumps_where_the_schedule_restarts() -> None:
    wsd_s = WSDSSchedule(PEAK, [10_000, 20_000], [1000, 2000], 1000, "linear", 0.1)
    assert _largest_jump(wsd_s, 10_000, 10) > 0.8 * PEAK
    cyclic = CyclicCosineSchedule(PEAK, 5000, 1000, 0.1)
    assert _largest_jump(cyclic, 6000, 10) > 0.8 * PEAK


# --- torch and lm-engine ----------------------------------------------------------------------------------


def test_lambda_lr_drives_a_torch_optimizer() -> None:
    tokens_per_step = 1000
    schedule = WSDSchedule(
        PEAK,
        total_tokens=40_000,
        warmup_tokens=5000,
        decay_tokens=10_000,
        decay_shape="cosine",
        final_ratio=0.1,
    )
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": PEAK}, {"params": model[1].parameters(), "lr": PEAK / 4}]
    )  # a muP-like multiplier
    scheduler = lambda_lr(optimizer, schedule, tokens_per_step)
    for step in range(40):
        expected = schedule(step * tokens_per_step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(expected / 4, rel=1e-12, abs=1e-15)
        model(torch.randn(2, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(PEAK * 0.1)  # step 40 = 40_000 tokens: the end


def test_lm_engine_coding_equals_ours() -> None:
    lr_max, a, b, batch, seq_len = 0.02, 4.0, -0.51, 32, 2048
    tokens_per_step = batch * seq_len
    warmup_steps = 100
    s = PowerSchedule(
        lr_max,
        a,
        b,
        batch,
        total_tokens=10**6 * tokens_per_step,
        warmup_tokens=warmup_steps * tokens_per_step,
        decay_tokens=0,
    )
    args = s.lm_engine_arguments(seq_len)
    assert args["c"] == tokens_per_step

    def lm_engine_lr(step: int) -> float:  # lm-engine's PowerScheduler, written out from its source
        if step <= warmup_steps:
            top = min(1, args["a"] / lr_max * (warmup_steps * args["c"]) ** args["b"])
            return lr_max * top * step / warmup_steps
        return lr_max * min(1, args["a"] / lr_max * (step * args["c"]) ** args["b"])

    for step in [0, 1, 37, 100, 101, 1000, 54_321, 999_999]:
        assert s(step * tokens_per_step) == pytest.approx(lm_engine_lr(step), rel=1e-12), step


# --- build_schedule ---------------------------------------------------------------------------------------

TOTAL = 1_000_000


def _config(name: str, **overrides) -> ScheduleConfig:
    extra = {"cyclic_cosine": {"cycle_tokens": 100_000}, "wsd_s": {"decay_points": [250_000, TOTAL]}}
    return ScheduleConfig(name=name, **{"warmup_tokens": 10_000, **extra.get(name, {}), **overrides})


@pytest.mark.parametrize("name", get_args(ScheduleName))
def test_build_schedule_builds_every_name(name: str) -> None:
    expected = {
        "constant": ConstantSchedule,
        "cosine": CosineSchedule,
        "cyclic_cosine": CyclicCosineSchedule,
        "inverse_sqrt": InverseSqrtSchedule,
        "wsd": WSDSchedule,
        "wsd_s": WSDSSchedule,
        "power": PowerSchedule,
    }
    schedule = build_schedule(_config(name), lr=0.01, total_tokens=TOTAL, batch_size=16)
    assert isinstance(schedule, expected[name])
    assert schedule.peak_lr == 0.01
    assert schedule(5000) == pytest.approx(schedule(10_000) / 2)  # the configured warmup


def test_build_schedule_uses_the_config() -> None:
    wsd = build_schedule(
        _config("wsd", decay_fraction=0.2, decay_shape="1-sqrt", final_lr_ratio=0.1), 0.01, TOTAL, 16
    )
    assert wsd.decay_start == 800_000
    assert wsd(900_000) == pytest.approx(0.01 * (0.1 + 0.9 * (1 - math.sqrt(0.5))))
    fixed = build_schedule(_config("wsd", decay_tokens=50_000), 0.01, TOTAL, 16)
    assert fixed.decay_start == TOTAL - 50_000

    power = build_schedule(_config("power", power_a=3.0, power_b=-0.5), 0.02, TOTAL, 8)
    assert power(400_000) == pytest.approx(min(0.02, 3.0 * 8 * 400_000**-0.5))

    wsd_s = build_schedule(_config("wsd_s", decay_fraction=0.1), 0.01, 250_000, 16)
    assert wsd_s.decay_points == (250_000,)  # budgets past the run are left out
    assert wsd_s(237_500) == pytest.approx(0.005)  # halfway through the last 25_000 tokens of the budget
    both = build_schedule(_config("wsd_s", decay_fraction=0.1), 0.01, TOTAL, 16)
    assert both.decay_windows == [(225_000, 250_000), (900_000, TOTAL)]
    assert both(250_000) == 0.01


@pytest.mark.parametrize(
    ("cfg", "total", "match"),
    [
        (_config("wsd", decay_tokens=2 * TOTAL), TOTAL, "exceed total_tokens"),
        (_config("power", decay_tokens=995_000), TOTAL, "exceed total_tokens"),
        (_config("cosine", warmup_tokens=TOTAL), TOTAL, "below total_tokens"),
        (
            _config("wsd_s", decay_points=[100_000, 105_000], decay_tokens=10_000),
            TOTAL,
            "starts before the previous",
        ),
        (_config("wsd_s", decay_points=[15_000], decay_tokens=10_000), TOTAL, "starts before the warmup"),
        (_config("wsd_s", decay_points=[2 * TOTAL]), TOTAL, "no decay_points"),
    ],
)
def test_build_schedule_rejects_impossible_settings(cfg: ScheduleConfig, total: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_schedule(cfg, lr=0.01, total_tokens=total, batch_size=16)


# --- sample and plot --------------------------------------------------------------------------------------


def test_sample_and_plot(tmp_path) -> None:
    schedule = CosineSchedule(PEAK, total_tokens=10_000)
    points = sample(schedule, 10_000, points=11)
    assert [t for t, _ in points] == [1000.0 * i for i in range(11)]
    assert points[5][1] == pytest.approx(PEAK / 2)
    single = plot_schedule(points, tmp_path / "one.png")
    overlay = plot_schedule(
        {"cosine": points, "constant": sample(ConstantSchedule(PEAK), 10_000)},
        tmp_path / "sub dir" / "two.png",
        title="schedules",
    )
    for path in (single, overlay):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
