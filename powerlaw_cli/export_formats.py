"""The formats of ``plsweep export``: one recommendation (``export.export``) as json, yaml, lm-engine's
PowerScheduler arguments, or a torch snippet, and a PNG of its schedule.

Every format describes the same schedule, to 1e-9 relative at every step (the schedule is step-aligned
when the sequence length is known, see ``export``): ``json`` and ``yaml`` give the constants in tokens and
steps; ``lm-engine`` its PowerScheduler (a_coded = batch * a, c = tokens per step, warmup in steps) plus
``plsweep_decay``, the decay lm-engine does not apply itself; ``torch`` builds ``schedules.PowerSchedule``
with the ``lambda_lr`` adapter. Warnings head every format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .fit_spec import FitError
from .schedules import PowerSchedule, sample

ExportFormat = Literal["json", "yaml", "lm-engine", "torch"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)


def target_schedule(rec: dict) -> PowerSchedule:
    """The target's ``PowerSchedule`` rebuilt from an ``export`` result."""
    c, t = rec["constants"], rec["target"]
    if c is None:
        raise FitError(rec["schedule_note"])
    return PowerSchedule(
        c["lr_max"],
        c["a"]["value"],
        c["b"]["value"],
        t["batch_size"],
        c["total_tokens"],
        c["warmup_tokens"],
        c["decay_tokens"],
        c["decay_shape"],
        c["final_ratio"],
    )


def lm_engine_arguments(rec: dict) -> dict[str, Any]:
    """lm-engine's PowerScheduler settings for the target (needs ``seq_len``), in whole steps.

    lm-engine's PowerScheduler has no decay phase: ``plsweep_decay`` is the decay to apply on top (from
    ``start_step`` on, lr = lr_at_start * f((step - start_step) / num_steps), f of ``schedules.decay_factor``;
    exponential is lm-engine's own ExponentialScheduler factor)."""
    t = rec["target"]
    if not t["seq_len"]:
        raise FitError("the lm-engine format needs the target's sequence length: --seq-len L")
    schedule, c = target_schedule(rec), rec["constants"]
    start = t["steps"] - c["decay_steps"]
    return {
        "lr_decay_style": "power",
        "max_lr": schedule.lr_max,
        "num_warmup_steps": c["warmup_steps"],
        "num_constant_steps": 0,
        "num_decay_steps": c["decay_steps"],
        "num_training_steps": t["steps"],
        "lr_decay_factor": c["final_ratio"],
        "extra_lr_scheduler_args": schedule.lm_engine_arguments(t["seq_len"]),
        "plsweep_decay": {
            "start_step": start,
            "num_steps": c["decay_steps"],
            "shape": c["decay_shape"],
            "final_ratio": c["final_ratio"],
            "lr_at_start": schedule.lr_power(start * t["tokens_per_step"]),
        },
    }


def render(rec: dict, fmt: str = "json") -> str:
    """The recommendation as text in ``fmt`` (one of ``FORMATS``); warnings are visible in each."""
    if fmt not in FORMATS:
        raise FitError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(rec, indent=1)
    header = "".join(f"# WARNING: {w}\n" for w in rec["warnings"])
    if rec.get("proxy"):
        header += f"# the LR holds for a trainer like the proxy's: {rec['proxy']['trainer']}\n"
    if fmt == "yaml":
        return header + yaml.safe_dump(rec, sort_keys=False)
    if rec["constants"] is None:
        raise FitError(
            f"the {fmt} format is a Power schedule: {rec['schedule_note']}; pick one with --law power"
        )
    if fmt == "lm-engine":
        note = (
            "# lm-engine PowerScheduler: lr = min(max_lr, a * (step * c)^b), a = batch * a_plsweep, c = tokens per step;\n"
            "# linear warmup over num_warmup_steps. It has no decay phase of its own: plsweep_decay is the decay\n"
            "# this schedule ends with, to apply on top (lr = lr_at_start * f((step - start_step) / num_steps)).\n"
        )
        return header + note + yaml.safe_dump(lm_engine_arguments(rec), sort_keys=False)
    return header + _torch_snippet(rec)


def _torch_snippet(rec: dict) -> str:
    t, c = rec["target"], rec["constants"]
    if not t["seq_len"]:
        raise FitError("the torch format needs the target's sequence length: --seq-len L")
    peak = rec["recommended"]["peak_lr"]
    return (
        f"# Power schedule from plsweep: lr_opt = batch * a * T^b; peak LR at the target {peak['value']:.4g} "
        f"[{peak['low']:.4g}, {peak['high']:.4g}]; {t['steps']} steps of {t['tokens_per_step']} tokens\n"
        "# `model` is yours; build the optimizer with lr = schedule.peak_lr (= lr_max), muP groups keep their multipliers.\n"
        "import torch\n\n"
        "from powerlaw_cli.schedules import PowerSchedule, lambda_lr\n\n"
        f"schedule = PowerSchedule(lr_max={c['lr_max']!r}, a={c['a']['value']!r}, b={c['b']['value']!r}, "
        f"batch_size={t['batch_size']!r}, total_tokens={c['total_tokens']!r}, warmup_tokens={c['warmup_tokens']!r}, "
        f"decay_tokens={c['decay_tokens']!r}, decay_shape={c['decay_shape']!r}, final_ratio={c['final_ratio']!r})\n"
        f"optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.peak_lr{_adamw_arguments(rec.get('proxy'))})\n"
        f"scheduler = lambda_lr(optimizer, schedule, tokens_per_step={t['tokens_per_step']})\n"
    )


def _adamw_arguments(proxy: dict | None) -> str:
    """The proxy's AdamW settings as keyword arguments (torch's defaults differ: betas (0.9, 0.999),
    weight_decay 0.01)."""
    proxy = proxy or {}
    out = ""
    if "beta1" in proxy and "beta2" in proxy:
        out += f", betas=({proxy['beta1']!r}, {proxy['beta2']!r})"
    if "eps" in proxy:
        out += f", eps={proxy['eps']!r}"
    if "weight_decay" in proxy:
        out += f", weight_decay={proxy['weight_decay']!r}"
    return out


def write_schedule_png(rec: dict, path: str | Path) -> Path:
    """A PNG of the target's LR against tokens (a Power schedule only)."""
    from .plots import plot_schedule

    schedule, t = target_schedule(rec), rec["target"]
    title = f"Power schedule: batch {t['batch_size']} seq, {t['tokens']:.3g} tokens"
    return plot_schedule(sample(schedule, schedule.total_tokens, 400), path, title)
