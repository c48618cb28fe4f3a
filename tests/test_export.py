"""plsweep export: Power-scheduler constants against the paper's formula, written out independently here;
every format's schedule evaluated at every step by an independent reading of that format (the paper's
formula for json/yaml, lm-engine's own PowerScheduler code for lm-engine, the generated snippet run
through torch); (N, D) targets; warnings in every format; refusals."""

from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from powerlaw_cli.export import export
from powerlaw_cli.export_formats import lm_engine_arguments, render, target_schedule, write_schedule_png
from powerlaw_cli.fit import fit_sweep, read_fit, write_fit
from powerlaw_cli.fit_laws import FitError, fit_law, parse_law

PER_STEP = 1024 * 4096  # batch 1024 sequences of 4096 tokens


def make_fit(
    a: float = 4.6, b: float = -0.51, noise: float = 0.01, batch_law: bool = True, cells: int = 20
) -> dict:
    """A fit.json-like dict whose laws were fitted to points made by a known law."""
    rng = np.random.default_rng(0)
    grid = [(B, T) for T in (1e8, 4e8, 1.6e9, 6.4e9, 2.56e10) for B in (16, 32, 64, 128)][:: 20 // cells]
    points = pd.DataFrame(grid, columns=["batch_size", "tokens"])
    points["lr_opt"] = (
        a * points["batch_size"] * points["tokens"] ** b * np.exp(rng.normal(0, noise, len(points)))
    )
    points["cell"] = [f"c{i}" for i in range(len(points))]
    laws = {"power": fit_law(points, parse_law("lr_opt ~ batch^1 + tokens", "power"), n_boot=200)}
    if batch_law:
        groups = pd.DataFrame({"tokens": [1e8, 4e8, 1.6e9, 6.4e9, 2.56e10]})
        groups["batch_opt"] = 0.004 * groups["tokens"] ** 0.5 * np.exp(rng.normal(0, noise, 5))
        groups["cell"] = [f"g{i}" for i in range(5)]
        laws["batch"] = fit_law(groups, parse_law("batch_opt ~ tokens", "batch"), n_boot=200)
    return {
        "source": "synthetic",
        "laws": laws,
        "transfer": {"status": "skipped"},
        "n_cells": {"total": cells, "used": cells, "excluded": 0},
    }


def decay_factor(shape: str, p: float) -> float:
    """The decay multipliers to 0 written out here: lm-engine's ExponentialScheduler (A exp(-p) + B, 1 at 0
    and 0 at 1), cosine and linear."""
    if shape == "exponential":
        return math.e / (math.e - 1) * math.exp(-p) - 1 / (math.e - 1)
    return (1 + math.cos(math.pi * p)) / 2 if shape == "cosine" else 1 - p


def power_lr(n: float, *, batch, a, b, lr_max, total, warmup, decay, shape="exponential") -> float:
    """Shen et al. 2024, eq. 7-8, with a decay to 0 over the last ``decay`` tokens."""

    def lr_power(t):
        return lr_max if t <= 0 else min(lr_max, batch * a * t**b)

    if n < warmup:
        return n / warmup * lr_power(warmup)
    if n < total - decay:
        return lr_power(n)
    return decay_factor(shape, (n - (total - decay)) / decay) * lr_power(total - decay)


def described_by_constants(text: str, fmt: str):
    """json or yaml: the schedule its constants describe, lr at a step (tokens = step * tokens per step)."""
    rec = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    c, t = rec["constants"], rec["target"]
    formula = dict(
        batch=t["batch_size"],
        a=c["a"]["value"],
        b=c["b"]["value"],
        lr_max=c["lr_max"],
        total=c["total_tokens"],
        warmup=c["warmup_tokens"],
        decay=c["decay_tokens"],
        shape=c["decay_shape"],
    )
    return lambda step: power_lr(step * t["tokens_per_step"], **formula)


def described_by_lm_engine(text: str):
    """lm-engine: its PowerScheduler (lm_engine/optimization/scheduler.py: linear warmup to
    min(1, a / max_lr * (W c)^b) for steps <= W, then min(1, a / max_lr * (step c)^b), times max_lr), and
    the plsweep_decay it is told to apply from its start step on."""
    args = yaml.safe_load(text)
    extra, decay, max_lr = args["extra_lr_scheduler_args"], args["plsweep_decay"], args["max_lr"]
    warmup = args["num_warmup_steps"]

    def lr(step):
        if step >= decay["start_step"]:
            return decay["lr_at_start"] * decay_factor(
                decay["shape"], (step - decay["start_step"]) / decay["num_steps"]
            )
        if warmup > 0 and step <= warmup:
            return step * min(1, extra["a"] / max_lr * (warmup * extra["c"]) ** extra["b"]) / warmup * max_lr
        return min(1, extra["a"] / max_lr * (step * extra["c"]) ** extra["b"]) * max_lr

    return lr, args["num_training_steps"]


def described_by_torch(text: str):
    """torch: the generated snippet run as a user would; the LR its LambdaLR gives at each step."""
    namespace = {"model": torch.nn.Linear(2, 2)}
    exec(compile(text, "<snippet>", "exec"), namespace)
    scheduler, optimizer = namespace["scheduler"], namespace["optimizer"]
    base = optimizer.param_groups[0]["initial_lr"]
    return lambda step: base * scheduler.lr_lambdas[0](step)


def steps_to_check(rec: dict) -> list[int]:
    """Every step of the warmup and the decay, every 13th step in between, and the boundaries."""
    t, c = rec["target"], rec["constants"]
    start = t["steps"] - c["decay_steps"]
    return sorted(
        set(range(c["warmup_steps"] + 2))
        | set(range(c["warmup_steps"], start, 13))
        | set(range(start - 1, t["steps"]))
    )


@pytest.mark.parametrize(
    ("batch", "tokens", "seq_len", "shape"),
    [
        (1024, 1e12, 4096, "exponential"),  # the case: warmup 2384.19 steps before alignment
        (64, 1e9, 1024, "cosine"),  # 15258.8 steps, warmup 152.6 steps
    ],
)
def test_every_format_describes_the_same_schedule_at_every_step(tmp_path, batch, tokens, seq_len, shape):
    per_step = batch * seq_len
    assert (0.01 * tokens / per_step) % 1 > 0.01  # the premise: warmup is not a whole number of steps
    rec = export(make_fit(), batch, tokens, seq_len, decay_shape=shape)
    t, c = rec["target"], rec["constants"]
    assert t["steps"] == math.ceil(tokens / per_step) and c["total_tokens"] == t["steps"] * per_step
    assert c["warmup_steps"] == round(0.01 * t["steps"]) and c["decay_steps"] == round(0.1 * t["steps"])
    assert (
        c["warmup_tokens"] == c["warmup_steps"] * per_step
        and c["decay_tokens"] == c["decay_steps"] * per_step
    )
    lm_engine, training_steps = described_by_lm_engine(render(rec, "lm-engine"))
    assert training_steps == t["steps"]
    formats = {
        "json": described_by_constants(render(rec, "json"), "json"),
        "yaml": described_by_constants(render(rec, "yaml"), "yaml"),
        "lm-engine": lm_engine,
        "torch": described_by_torch(render(rec, "torch")),
    }
    ours, steps = target_schedule(rec), steps_to_check(rec)
    expected = np.array([ours(step * per_step) for step in steps])
    for fmt, lr in formats.items():
        np.testing.assert_allclose([lr(step) for step in steps], expected, rtol=1e-9, atol=1e-13, err_msg=fmt)


def test_torch_scheduler_steps_through_the_warmup_like_the_schedule():
    rec = export(make_fit(), 64, 1e9, 1024)
    namespace = {"model": torch.nn.Linear(2, 2)}
    exec(render(rec, "torch"), namespace)
    optimizer, scheduler, schedule = namespace["optimizer"], namespace["scheduler"], target_schedule(rec)
    for step in range(
        rec["constants"]["warmup_steps"] + 20
    ):  # step k trains with schedule(k * tokens per step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule(step * 65536), rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_peak_lr_is_the_paper_formula_and_its_own_example():
    fit = make_fit(noise=0.0)
    rec = export(fit, 1024, 1e13)
    a, b = rec["constants"]["a"]["value"], rec["constants"]["b"]["value"]
    assert a == pytest.approx(4.6, rel=1e-9) and b == pytest.approx(-0.51, rel=1e-9)
    peak = rec["recommended"]["peak_lr"]
    assert peak["value"] == pytest.approx(1024 * 4.6 * 1e13**-0.51, rel=1e-9)
    assert round(peak["value"], 4) == 0.0011  # the paper's check: batch 1024, T = 1e13


def test_peak_lr_interval_comes_from_the_bootstrap():
    rec = export(make_fit(noise=0.05), 64, 1e9)
    peak = rec["recommended"]["peak_lr"]
    assert peak["low"] < 64 * 4.6 * 1e9**-0.51 < peak["high"]
    assert rec["constants"]["a"]["low"] < 4.6 < rec["constants"]["a"]["high"]


def test_schedule_points_match_the_power_formula():
    T = PER_STEP * 100_000
    rec = export(make_fit(), 1024, T, 4096, lr_max=0.01)
    c = rec["constants"]
    formula = dict(
        batch=1024, a=c["a"]["value"], b=c["b"]["value"], lr_max=0.01, total=T, warmup=0.01 * T, decay=0.1 * T
    )
    for point in rec["schedule"]:
        assert point["lr"] == pytest.approx(power_lr(point["tokens"], **formula), rel=1e-9, abs=1e-15)
        assert point["tokens"] == point["step"] * PER_STEP
    lrs = {p["step"]: p["lr"] for p in rec["schedule"]}
    assert lrs[0] == 0.0 and lrs[100_000] == pytest.approx(0.0, abs=1e-12)
    assert lrs[1000] == pytest.approx(0.01)  # the cap binds at the end of the warmup
    assert lrs[90_000] == pytest.approx(1024 * c["a"]["value"] * (0.9 * T) ** c["b"]["value"])


def test_without_a_sequence_length_the_schedule_is_in_tokens():
    rec = export(make_fit(), 64, 1e9)
    c = rec["constants"]
    assert rec["target"]["steps"] is None and c["warmup_steps"] is None
    assert c["warmup_tokens"] == pytest.approx(1e7) and c["decay_tokens"] == pytest.approx(1e8)
    with pytest.raises(FitError, match="needs the target's sequence length"):
        render(rec, "lm-engine")


def test_batch_from_the_batch_law_when_not_given():
    exact = export(make_fit(noise=0.0), None, 1e9, 1024)
    assert (
        exact["recommended"]["batch_size"]["value"]
        == round(0.004 * 1e9**0.5)
        == exact["target"]["batch_size"]
    )
    assert exact["recommended"]["peak_lr"]["value"] == pytest.approx(126 * 4.6 * 1e9**-0.51, rel=1e-6)
    batch = export(make_fit(), None, 1e9, 1024)["recommended"]["batch_size"]
    assert batch["low"] < 0.004 * 1e9**0.5 < batch["high"] and batch["source"].startswith("batch law")
    given = export(make_fit(), 256, 1e9)["recommended"]["batch_size"]
    assert given["value"] == 256 and given["source"] == "given"
    assert given["batch_opt"]["low"] < 0.004 * 1e9**0.5 < given["batch_opt"]["high"]
    with pytest.raises(FitError, match="no batch_opt law.*give --batch-size"):
        export(make_fit(batch_law=False), None, 1e9)


@functools.cache
def _nd_laws() -> dict:
    """Step-Law-style laws over (N, D) and a loss law, fitted to points from known laws (once)."""
    rng = np.random.default_rng(1)
    grid = pd.DataFrame(
        [(n, d) for n in (1e7, 4.6e7, 2.2e8, 1e9) for d in (1e9, 4.6e9, 2.2e10, 1e11)],
        columns=["params_non_embedding", "tokens"],
    )
    n, d = grid["params_non_embedding"], grid["tokens"]
    grid["lr_opt"] = 1.79 * n**-0.713 * d**0.307 * np.exp(rng.normal(0, 0.02, len(grid)))
    grid["batch_opt"] = 0.58 * d**0.571 / 2048 * np.exp(rng.normal(0, 0.05, len(grid)))
    grid["loss_opt"] = (1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28) * np.exp(rng.normal(0, 0.001, len(grid)))
    grid["group"] = [f"g{i}" for i in range(len(grid))]
    return {
        name: fit_law(grid, parse_law(text, name), n_boot=60, id_column="group")
        for name, text in (("lr", "lr_opt ~ N + D"), ("bopt", "batch_opt ~ D"), ("loss", "loss ~ N + D"))
    }


def nd_fit() -> dict:
    """A fit.json-like dict with the laws of ``_nd_laws``."""
    return {"source": "synthetic", "laws": copy.deepcopy(_nd_laws()), "transfer": {"status": "skipped"}}


def test_n_d_target_recommends_lr_batch_and_loss_with_intervals():
    fit = nd_fit()
    rec = export(fit, None, 2e10, 2048, params=1e8)
    r = rec["recommended"]
    truth = {
        "peak_lr": 1.79 * 1e8**-0.713 * 2e10**0.307,
        "batch_size": 0.58 * 2e10**0.571 / 2048,
        "loss": 1.69 + 406.4 * 1e8**-0.34 + 410.7 * 2e10**-0.28,
    }
    for key, value in truth.items():
        assert r[key]["low"] < value < r[key]["high"], (key, r[key], value)
    assert r["peak_lr"]["law"] == "lr" and "optimal batch" in r["peak_lr"]["meaning"]
    assert rec["target"]["batch_size"] == round(r["batch_size"]["batch_opt"]["value"])
    assert (
        rec["constants"] is None and rec["schedule"] is None and "not the Power form" in rec["schedule_note"]
    )
    assert json.loads(render(rec, "json"))["recommended"]["loss"]["law"] == "loss"
    with pytest.raises(FitError, match="lm-engine format is a Power schedule"):
        render(rec, "lm-engine")
    off = export(fit, 8, 2e10, 2048, params=1e8)  # a batch far from B_opt: the LR law is not for it
    assert any("gives the LR at the optimal batch" in w for w in off["warnings"])
    with pytest.raises(FitError, match="no fitted lr_opt law can answer"):
        export(fit, 256, 2e10)  # without N no law gives lr_opt


def test_automatic_law_choice_uses_most_of_the_target():
    fit = nd_fit() | {"laws": nd_fit()["laws"] | make_fit()["laws"]}
    assert export(fit, 256, 1e9)["recommended"]["peak_lr"]["law"] == "power"
    assert export(fit, None, 1e9, params=1e8)["recommended"]["peak_lr"]["law"] == "lr"
    assert export(fit, None, 1e9, params=1e8)["recommended"]["batch_size"]["batch_opt"]["law"] == "bopt"
    pooled = export(fit, 256, 1e9, params=1e8, law="power")
    assert any("does not use params_non_embedding" in w for w in pooled["warnings"])


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
        assert render(rec, fmt).startswith("# WARNING: law power:"), fmt
    assert yaml.safe_load(render(rec, "yaml"))["flagged"] is True
    far = export(make_fit(), 1024, 1e13, 4096)
    assert any("outside the fitted range" in w for w in far["warnings"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens": -1.0}, "--tokens -1: must be a finite number > 0"),
        ({"tokens": 0.0}, "--tokens 0: must be a finite number > 0"),
        ({"tokens": float("inf")}, "--tokens inf: must be a finite number > 0"),
        ({"params": float("inf")}, "--params inf: must be a finite number > 0"),
        ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
        ({"decay_shape": "step"}, "--decay-shape 'step': valid: linear, cosine, 1-sqrt, exponential"),
        ({"warmup_fraction": 0.5, "decay_fraction": 0.6}, "together at most 1"),
        ({"lr_max": 0.0}, "--lr-max 0: must be a finite number > 0"),
        ({"lr_max": float("inf")}, "--lr-max inf: must be a finite number > 0"),
        ({"law": "nope"}, "the fit has no law 'nope'"),
        ({"law": "batch"}, "is a batch_opt law"),
    ],
)
def test_bad_targets_and_options_are_errors(kwargs, message):
    args = {"batch_size": 64, "tokens": 1e9} | kwargs
    with pytest.raises(FitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export(make_fit(), args.pop("batch_size"), args.pop("tokens"), **args)


def test_export_refuses_what_it_cannot_do():
    fit = make_fit()
    fit["laws"]["free"] = fit_law(
        pd.DataFrame(
            {
                "lr_opt": [1e-3, 2e-3, 3e-3, 5e-3],
                "batch_size": [16, 32, 64, 128],
                "tokens": [1e8, 3e8, 1e8, 3e8],
            }
        ),
        parse_law("lr_opt ~ batch + tokens"),
        n_boot=10,
        id_column="none",
    )
    free = export(fit, 64, 1e9, 1024, law="free")
    assert free["constants"] is None
    with pytest.raises(FitError, match="torch format is a Power schedule.*--law power"):
        render(free, "torch")
    with pytest.raises(FitError, match="unknown format 'toml'"):
        render(export(fit, 64, 1e9), "toml")
    rising = copy.deepcopy(fit)
    rising["laws"]["power"]["exponents"]["tokens"].update(value=0.07, low=-0.2, high=0.3)
    with pytest.raises(FitError, match="b = 0.07 .* is not negative"):
        export(rising, 64, 1e9, law="power")
    fit["laws"]["power"] = {"name": "power", "status": "failed", "error": "too few cells", "y": "lr_opt"}
    with pytest.raises(FitError, match="not fitted \\(too few cells\\)"):
        export(fit, 64, 1e9, law="power")


def lr_sweep_table() -> pd.DataFrame:
    """Runs of an LR x batch x tokens sweep whose optimum follows lr_opt = 4.6 * batch * T^-0.51 (loss a
    bowl in log2 LR, with noise; LRs 4x above the optimum diverge)."""
    rng = np.random.default_rng(0)
    rows = []
    for T in (1e8, 4e8, 1.6e9):
        for B in (16, 32, 64):
            lr_opt = 4.6 * B * T**-0.51
            for lr in 2.0 ** np.arange(-14, 0):
                dx = math.log2(lr / lr_opt)
                rows.append(
                    {
                        "batch_size": B,
                        "tokens": T,
                        "lr": lr,
                        "status": "ok" if dx < 2 else "diverged",
                        "final_val_loss": 3 + 0.01 * dx**2 + rng.normal(0, 0.002) if dx < 2 else math.nan,
                    }
                )
    return pd.DataFrame(rows)


def test_from_a_real_fit_json_to_every_format(tmp_path):
    write_fit(fit_sweep(lr_sweep_table(), n_boot=100), tmp_path / "fit")
    rec = export(read_fit(tmp_path), 64, 1e9, 1024)
    assert rec["recommended"]["peak_lr"]["value"] == pytest.approx(64 * 4.6 * 1e9**-0.51, rel=0.15)
    lm_engine = lm_engine_arguments(rec)
    assert lm_engine["extra_lr_scheduler_args"]["c"] == 64 * 1024
    assert lm_engine["extra_lr_scheduler_args"]["a"] == pytest.approx(64 * rec["constants"]["a"]["value"])
    png = write_schedule_png(rec, tmp_path / "schedule.png")
    assert png.stat().st_size > 5000


def _proxy_fit(tmp_path, **settings) -> dict:
    """A fit of a sweep-like table whose runs all share ``settings`` (columns of a plsweep runs table)."""
    write_fit(fit_sweep(lr_sweep_table().assign(**settings), n_boot=50), tmp_path / "fit")
    return read_fit(tmp_path)


def test_export_says_which_parametrization_and_optimizer_the_lr_holds_for(tmp_path):
    mup = {"parametrization": "mup", "base_width": 32, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95}
    rec = export(_proxy_fit(tmp_path, **mup, weight_decay_rule="independent", eps=1e-8), 64, 1e9, 1024)
    proxy = rec["proxy"]
    assert {k: proxy[k] for k in mup} == mup and proxy["weight_decay_rule"] == "independent"
    assert "m = width / 32" in proxy["trainer"] and "0.1 x width/base_width" in proxy["trainer"]
    for fmt in ("yaml", "lm-engine", "torch"):
        assert f"holds for a trainer like the proxy's: {proxy['trainer']}" in render(rec, fmt)
    namespace = {"model": torch.nn.Linear(2, 2)}
    exec(render(rec, "torch"), namespace)
    group = namespace["optimizer"].param_groups[0]  # the proxy's AdamW, not torch's defaults
    assert group["weight_decay"] == 0.1 and group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8
    coupled = export(_proxy_fit(tmp_path / "c", **mup, weight_decay_rule="coupled"), 64, 1e9, 1024)
    assert "(decay = group LR x 0.1)" in coupled["proxy"]["trainer"]
    assert export(_proxy_fit(tmp_path / "plain"), 64, 1e9, 1024)["proxy"] is None  # another lab's table


def test_export_carries_the_tuned_base_settings_into_every_format(tmp_path):
    base = {"parametrization": "mup", "base_width": 32, "init_std": 0.0566, "output_multiplier": 2.0}
    rec = export(_proxy_fit(tmp_path, **base, embedding_multiplier=1.0), 64, 1e9, 1024)
    proxy = rec["proxy"]
    assert {k: proxy[k] for k in base} == base and proxy["embedding_multiplier"] == 1.0
    assert "init 0.0566 / sqrt(m)" in proxy["trainer"] and "readout logits x 2 / m" in proxy["trainer"]
    assert "embedding output" not in proxy["trainer"]  # x1: nothing to ask of the trainer
    for fmt in ("yaml", "lm-engine", "torch"):
        assert "readout logits x 2 / m" in render(rec, fmt)
    assert json.loads(render(rec, "json"))["proxy"]["output_multiplier"] == 2.0
    sp = export(_proxy_fit(tmp_path / "sp", parametrization="sp", embedding_multiplier=4.0), 64, 1e9, 1024)
    assert "embedding output x 4 at every width" in sp["proxy"]["trainer"]


def test_export_warns_when_the_lr_law_pools_base_models(tmp_path):
    table = pd.concat([lr_sweep_table().assign(init_std=s) for s in (0.02, 0.0566)])
    write_fit(fit_sweep(table, n_boot=50, group_by=["batch_size", "tokens", "init_std"]), tmp_path / "fit")
    rec = export(read_fit(tmp_path), 64, 1e9, 1024)
    assert any("pools init_std" in w for w in rec["warnings"]) and "init_std" not in (rec["proxy"] or {})
