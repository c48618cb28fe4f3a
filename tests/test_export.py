"""plsweep export: Power-scheduler constants against the paper's formula, written out independently here,
lm-engine's coding of the same schedule, the torch snippet, and warnings in every format."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from powerlaw_cli.export import (
    FORMATS,
    export,
    lm_engine_arguments,
    render,
    target_schedule,
    write_schedule_png,
)
from powerlaw_cli.fit import fit_sweep, read_fit, write_fit
from powerlaw_cli.fit_laws import FitError, fit_law, parse_law

PER_STEP = 1024 * 4096  # batch 1024 sequences of 4096 tokens


def make_fit(a: float = 4.6, b: float = -0.51, noise: float = 0.01, batch_law: bool = True, cells: int = 20) -> dict:
    """A fit.json-like dict whose laws were fitted to points made by a known law."""
    rng = np.random.default_rng(0)
    grid = [(B, T) for T in (1e8, 4e8, 1.6e9, 6.4e9, 2.56e10) for B in (16, 32, 64, 128)][:: 20 // cells]
    points = pd.DataFrame(grid, columns=["batch_size", "tokens"])
    points["lr_opt"] = a * points["batch_size"] * points["tokens"] ** b * np.exp(rng.normal(0, noise, len(points)))
    points["cell"] = [f"c{i}" for i in range(len(points))]
    laws = {"power": fit_law(points, parse_law("lr_opt ~ batch^1 + tokens", "power"), n_boot=200)}
    if batch_law:
        groups = pd.DataFrame({"tokens": [1e8, 4e8, 1.6e9, 6.4e9, 2.56e10]})
        groups["batch_opt"] = 0.004 * groups["tokens"] ** 0.5 * np.exp(rng.normal(0, noise, 5))
        groups["cell"] = [f"g{i}" for i in range(5)]
        laws["batch"] = fit_law(groups, parse_law("batch_opt ~ tokens", "batch"), n_boot=200)
    return {"source": "synthetic", "laws": laws, "transfer": {"status": "skipped"},
            "n_cells": {"total": cells, "used": cells, "excluded": 0}}


def power_lr(n: float, *, batch, a, b, lr_max, total, warmup, decay) -> float:
    """Shen et al. 2024, eq. 7-8, with the exponential decay to 0 of lm-engine's ExponentialScheduler."""
    def lr_power(t):
        return lr_max if t <= 0 else min(lr_max, batch * a * t**b)

    if n < warmup:
        return n / warmup * lr_power(warmup)
    if n < total - decay:
        return lr_power(n)
    p, e = (n - (total - decay)) / decay, math.e
    f = e / (e - 1) * math.exp(-p) - 1 / (e - 1)  # A exp(-p) + B with f_end = 0: 1 at p = 0, 0 at p = 1
    return f * lr_power(total - decay)


def test_peak_lr_is_the_paper_formula_and_its_own_example():
    fit = make_fit(noise=0.0)
    rec = export(fit, 1024, 1e13)
    a, b = rec["constants"]["a"]["value"], rec["constants"]["b"]["value"]
    assert a == pytest.approx(4.6, rel=1e-9) and b == pytest.approx(-0.51, rel=1e-9)
    peak = rec["recommended"]["peak_lr"]
    assert peak["value"] == pytest.approx(1024 * 4.6 * 1e13**-0.51, rel=1e-9)
    assert round(peak["value"], 4) == 0.0011  # the paper's check: batch 1024, T = 1e13
    assert rec["units"]["batch_size"] == "sequences" and rec["units"]["tokens"] == "tokens"


def test_peak_lr_interval_comes_from_the_bootstrap():
    rec = export(make_fit(noise=0.05), 64, 1e9)
    peak = rec["recommended"]["peak_lr"]
    assert peak["low"] < peak["value"] < peak["high"]
    assert peak["low"] < 64 * 4.6 * 1e9**-0.51 < peak["high"]
    assert rec["constants"]["a"]["low"] < rec["constants"]["a"]["value"] < rec["constants"]["a"]["high"]


def test_schedule_points_match_the_power_formula():
    T = PER_STEP * 100_000
    rec = export(make_fit(), 1024, T, 4096, lr_max=0.01)
    c = rec["constants"]
    assert c["warmup_tokens"] == round(0.01 * T) and c["decay_tokens"] == round(0.1 * T)
    assert c["decay_shape"] == "exponential" and c["lr_max"] == 0.01
    formula = dict(batch=1024, a=c["a"]["value"], b=c["b"]["value"], lr_max=0.01, total=T,
                   warmup=c["warmup_tokens"], decay=c["decay_tokens"])
    for point in rec["schedule"]:
        assert point["lr"] == pytest.approx(power_lr(point["tokens"], **formula), rel=1e-9, abs=1e-15)
        assert point["step"] == point["tokens"] // PER_STEP
    lrs = {p["tokens"]: p["lr"] for p in rec["schedule"]}
    assert lrs[0.0] == 0.0 and lrs[T] == pytest.approx(0.0, abs=1e-12)
    assert lrs[0.01 * T] == pytest.approx(0.01)  # the cap binds at the end of the warmup
    decay_start = T - c["decay_tokens"]
    assert lrs[decay_start] == pytest.approx(1024 * c["a"]["value"] * decay_start ** c["b"]["value"])
    schedule = target_schedule(rec)  # the same function at points of our choosing
    for n in (0.3 * c["warmup_tokens"], 0.2 * T, 0.6 * T, 0.93 * T, 0.97 * T):
        assert schedule(n) == pytest.approx(power_lr(n, **formula), rel=1e-9)


def test_lm_engine_coding_gives_our_lr_at_every_step():
    T = PER_STEP * 100_000
    rec = export(make_fit(), 1024, T, 4096)
    args = lm_engine_arguments(rec)
    coded = args["extra_lr_scheduler_args"]
    assert coded["a"] == pytest.approx(1024 * rec["constants"]["a"]["value"])
    assert coded["c"] == PER_STEP and coded["b"] == rec["constants"]["b"]["value"]
    assert args["num_warmup_steps"] == 1000 and args["num_decay_steps"] == 10_000
    ours = target_schedule(rec)

    def lm_engine_lr(step):  # lr = min(max_lr, a * (step * c)^b) after a linear warmup in steps
        power = min(args["max_lr"], coded["a"] * (step * coded["c"]) ** coded["b"])
        if step < args["num_warmup_steps"]:
            return step / args["num_warmup_steps"] * lm_engine_lr(args["num_warmup_steps"])
        return power

    for step in (1, 500, 999, 1000, 2000, 10_000, 50_000, 89_999):
        assert lm_engine_lr(step) == pytest.approx(ours(step * PER_STEP), rel=1e-9), step


def test_torch_snippet_builds_the_same_schedule():
    T = PER_STEP * 2000
    rec = export(make_fit(), 1024, T, 4096)
    snippet = render(rec, "torch")
    namespace = {"model": torch.nn.Linear(2, 2)}
    exec(snippet, namespace)
    optimizer, scheduler, schedule = namespace["optimizer"], namespace["scheduler"], target_schedule(rec)
    seen = {}
    for step in range(2000):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step in (0, 7, 19, 20, 500, 1799, 1800, 1900, 1999):
        assert seen[step] == pytest.approx(schedule(step * PER_STEP), rel=1e-9, abs=1e-15)


def test_recommended_batch_from_the_batch_law_or_the_given_one():
    rec = export(make_fit(noise=0.0), 256, 1e9)
    batch = rec["recommended"]["batch_size"]
    assert batch["value"] == pytest.approx(0.004 * 1e9**0.5, rel=1e-6)
    assert batch["source"].startswith("batch law")
    given = export(make_fit(batch_law=False), 256, 1e9)["recommended"]["batch_size"]
    assert given["value"] == 256 and given["source"].startswith("given")


def test_clean_fit_has_no_warnings():
    rec = export(make_fit(), 64, 1e9, 2048)
    assert rec["warnings"] == [] and rec["flagged"] is False
    assert "WARNING" not in render(rec, "yaml") + render(rec, "lm-engine") + render(rec, "torch")


def test_poorly_determined_law_warns_in_every_format():
    fit = make_fit(noise=0.6, cells=4)  # 4 noisy cells: a wide interval for b, and few points
    rec = export(fit, 64, 1e9, 2048)
    assert rec["flagged"] and any("poorly determined" in w for w in rec["warnings"])
    assert json.loads(render(rec, "json"))["warnings"] == rec["warnings"]
    for fmt in ("yaml", "lm-engine", "torch"):
        text = render(rec, fmt)
        assert text.startswith("# WARNING: law power:"), fmt
    assert yaml.safe_load(render(rec, "yaml"))["flagged"] is True
    far = export(make_fit(), 1024, 1e13, 4096)
    assert any("outside the fitted range" in w for w in far["warnings"])


def test_export_refuses_what_it_cannot_do():
    fit = make_fit()
    fit["laws"]["free"] = fit_law(pd.DataFrame({"lr_opt": [1e-3, 2e-3, 3e-3, 5e-3], "batch_size": [16, 32, 64, 128],
                                                "tokens": [1e8, 3e8, 1e8, 3e8]}), parse_law("lr_opt ~ batch + tokens"),
                                  n_boot=10, id_column="none")
    with pytest.raises(FitError, match="export needs lr_opt = a \\* batch_size\\^1 \\* tokens\\^b"):
        export(fit, 64, 1e9, law="free")
    with pytest.raises(FitError, match="needs the target's sequence length"):
        render(export(fit, 64, 1e9), "lm-engine")
    with pytest.raises(FitError, match="unknown format 'toml'"):
        render(export(fit, 64, 1e9), "toml")
    rising = copy.deepcopy(fit)
    rising["laws"]["power"]["exponents"]["tokens"].update(value=0.07, low=-0.2, high=0.3)
    with pytest.raises(FitError, match="b = 0.07 .* is not negative"):
        export(rising, 64, 1e9)
    fit["laws"]["power"] = {"name": "power", "status": "failed", "error": "too few cells"}
    with pytest.raises(FitError, match="not fitted \\(too few cells\\)"):
        export(fit, 64, 1e9)


def test_from_a_real_fit_json_to_every_format(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for T in (1e8, 4e8, 1.6e9):
        for B in (16, 32, 64):
            lr_opt = 4.6 * B * T**-0.51
            for lr in 2.0 ** np.arange(-14, 0):
                dx = math.log2(lr / lr_opt)
                rows.append({"batch_size": B, "tokens": T, "lr": lr, "status": "ok" if dx < 2 else "diverged",
                             "final_val_loss": 3 + 0.01 * dx**2 + rng.normal(0, 0.002) if dx < 2 else math.nan})
    write_fit(fit_sweep(pd.DataFrame(rows), n_boot=100), tmp_path / "fit")
    rec = export(read_fit(tmp_path), 64, 1e9, 1024)
    assert rec["recommended"]["peak_lr"]["value"] == pytest.approx(64 * 4.6 * 1e9**-0.51, rel=0.15)
    for fmt in FORMATS:
        assert render(rec, fmt)
    png = write_schedule_png(rec, tmp_path / "schedule.png")
    assert png.stat().st_size > 5000
