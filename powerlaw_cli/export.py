"""``plsweep export``: the Power-scheduler constants and the recommended LR and batch for a target run.

Reads only ``fit.json``. The constants come from the fit's ``power`` law, lr_opt = batch * a * T^b (batch
in sequences, T in tokens; the Power paper's form with the batch exponent fixed to 1):

- ``a``, ``b`` with their bootstrap intervals; ``lr_max`` (default 0.02, the paper's cap); warmup (default
  1% of the target's tokens); decay over the last 10% of tokens, exponential to 0 (the paper's choice).
- ``peak_lr``: the law's lr_opt at the target (batch, tokens), with its interval. That is the LR a WSD run
  of that length should hold, and the LR the Power schedule reaches at the end of its stable phase
  (lr_power(T) = batch * a * T^b), before the decay.
- ``batch_size``: B_opt(T) from the fit's ``batch`` law when it was fitted, else the given batch.

The schedule itself is ``schedules.PowerSchedule`` (no second copy of the formula here). Formats:
``json``, ``yaml``, ``lm-engine`` (its PowerScheduler arguments: a_coded = batch * a, c = batch * seq_len)
and ``torch`` (a Python snippet with ``PowerSchedule`` and ``lambda_lr``). A flagged or poorly determined law
puts warnings in every format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .fit_laws import FitError, extrapolation_notes, predict_law
from .schedules import PowerSchedule, sample
from .store import json_ready

FORMATS = ("json", "yaml", "lm-engine", "torch")
PAPER_LR_MAX = 0.02
SCHEDULE_FRACTIONS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
UNITS = {"lr": "base Adam LR at width == base_width (muP), absolute", "batch_size": "sequences",
         "tokens": "tokens", "a": "lr per sequence of batch at 1 token: lr_opt = batch * a * T^b",
         "b": "dimensionless exponent of tokens", "steps": "optimizer steps (tokens / (batch * seq_len))"}


def export(fit: dict, batch_size: int, tokens: float, seq_len: int | None = None, *, law: str = "power",
           lr_max: float = PAPER_LR_MAX, warmup_tokens: float | None = None, warmup_fraction: float = 0.01,
           decay_fraction: float = 0.1, decay_shape: str = "exponential", final_ratio: float = 0.0) -> dict[str, Any]:
    """The recommendation for a target run of ``tokens`` tokens at ``batch_size`` sequences (JSON-ready)."""
    power = _power_law(fit, law)
    a, b = power["a"], power["exponents"]["tokens"]
    if b["value"] >= 0:
        raise FitError(f"law {law!r}: fitted token exponent b = {b['value']:.3g} [{b['low']:.3g}, {b['high']:.3g}] is not "
                       "negative (lr_opt does not fall with tokens), so there is no Power schedule to export; "
                       "widen the token budgets or add seeds")
    warmup = round(warmup_fraction * tokens) if warmup_tokens is None else warmup_tokens
    schedule = PowerSchedule(lr_max, a["value"], b["value"], batch_size, tokens, warmup,
                             round(decay_fraction * tokens), decay_shape, final_ratio)
    peak = predict_law(power, {"batch_size": batch_size, "tokens": tokens})
    out = {
        "target": {"batch_size": batch_size, "tokens": tokens, "seq_len": seq_len,
                   "batch_tokens": batch_size * seq_len if seq_len else None,
                   "steps": -(-int(tokens) // (batch_size * seq_len)) if seq_len else None},
        "constants": {"a": a, "b": b, "lr_max": lr_max, "warmup_tokens": schedule.warmup_tokens,
                      "decay_tokens": schedule.decay_tokens, "decay_shape": decay_shape, "final_ratio": final_ratio,
                      "law": power["formula"], "law_name": law},
        "recommended": {"peak_lr": {**peak._asdict(), "meaning": "lr_opt = batch * a * T^b at the target"},
                        "batch_size": _batch(fit, batch_size, tokens)},
        "schedule": [_point(schedule, f * tokens, batch_size, seq_len) for f in SCHEDULE_FRACTIONS]
        + [_point(schedule, schedule.decay_start, batch_size, seq_len), _point(schedule, tokens, batch_size, seq_len)],
        "units": UNITS, "source": fit.get("source"),
    }
    out["schedule"].sort(key=lambda p: p["tokens"])
    out["warnings"] = _warnings(fit, power, batch_size, tokens, lr_max, peak.value)
    out["flagged"] = bool(out["warnings"])
    return json_ready(out)


def _power_law(fit: dict, name: str) -> dict:
    law = fit.get("laws", {}).get(name)
    if law is None:
        raise FitError(f"the fit has no law {name!r}; laws: {', '.join(fit.get('laws', {}))}")
    if law["status"] != "fitted":
        raise FitError(f"law {name!r} was not fitted ({law.get('error')}); cannot export Power constants")
    exps = law["exponents"]
    if set(exps) != {"batch_size", "tokens"} or not exps["batch_size"]["fixed"] or exps["batch_size"]["value"] != 1:
        raise FitError(f"law {name!r} is {law['formula']}; export needs lr_opt = a * batch_size^1 * tokens^b")
    return law


def _batch(fit: dict, given: int, tokens: float) -> dict:
    law = fit.get("laws", {}).get("batch")
    if not law or law["status"] != "fitted" or law["variables"] != ["tokens"]:
        why = law["error"] if law and law["status"] != "fitted" else "no batch law ~ tokens in the fit"
        return {"value": given, "low": None, "high": None, "source": f"given ({why})"}
    value, low, high = predict_law(law, {"tokens": tokens})
    return {"value": value, "low": low, "high": high, "source": f"batch law {law['formula']}",
            "warnings": law["warnings"] + extrapolation_notes(law, {"tokens": tokens})}


def _point(schedule: PowerSchedule, tokens: float, batch_size: int, seq_len: int | None) -> dict:
    step = int(tokens // (batch_size * seq_len)) if seq_len else None
    return {"tokens": tokens, "step": step, "lr": schedule(tokens)}


def _warnings(fit: dict, law: dict, batch_size: int, tokens: float, lr_max: float, peak: float) -> list[str]:
    out = [f"law {law['name']}: {w}" for w in law["warnings"]]
    out += [f"law {law['name']}: {n}" for n in extrapolation_notes(law, {"batch_size": batch_size, "tokens": tokens})]
    transfer = fit.get("transfer", {})
    if transfer.get("verdict") in ("shifts", "uncertain"):
        out.append(f"muP transfer across widths {transfer.get('widths')}: {transfer['verdict']}")
    excluded = fit.get("n_cells", {}).get("excluded", 0)
    if excluded:
        out.append(f"{excluded} of {fit['n_cells']['total']} cells were excluded from the fit (see fit.json)")
    if peak > lr_max:
        out.append(f"the law's lr_opt {peak:.3g} is above lr_max {lr_max:g}: the cap binds for the whole run")
    return out


def target_schedule(rec: dict) -> PowerSchedule:
    """The target's ``PowerSchedule`` rebuilt from an ``export`` result."""
    c, t = rec["constants"], rec["target"]
    return PowerSchedule(c["lr_max"], c["a"]["value"], c["b"]["value"], t["batch_size"], t["tokens"],
                         c["warmup_tokens"], c["decay_tokens"], c["decay_shape"], c["final_ratio"])


def lm_engine_arguments(rec: dict) -> dict[str, Any]:
    """lm-engine's PowerScheduler settings for the target (needs ``seq_len``); warmup/decay in steps."""
    t = rec["target"]
    if not t["seq_len"]:
        raise FitError("the lm-engine format needs the target's sequence length: --seq-len L")
    schedule, per_step = target_schedule(rec), t["batch_size"] * t["seq_len"]
    return {
        "lr_decay_style": "power",
        "max_lr": schedule.lr_max,
        "num_warmup_steps": round(schedule.warmup_tokens / per_step),
        "num_decay_steps": round(schedule.decay_tokens / per_step),
        "extra_lr_scheduler_args": schedule.lm_engine_arguments(t["seq_len"]),
    }


def render(rec: dict, fmt: str = "json") -> str:
    """The recommendation as text in ``fmt`` (one of ``FORMATS``); warnings are visible in each."""
    if fmt == "json":
        return json.dumps(rec, indent=1)
    header = "".join(f"# WARNING: {w}\n" for w in rec["warnings"])
    if fmt == "yaml":
        return header + yaml.safe_dump(rec, sort_keys=False)
    if fmt == "lm-engine":
        note = ("# lm-engine PowerScheduler: lr = min(max_lr, a * (step * c)^b), a = batch * a_plsweep, c = tokens per step.\n"
                "# lm-engine has no decay phase of its own: num_decay_steps is the decay plsweep recommends\n"
                f"# ({rec['constants']['decay_shape']} to {rec['constants']['final_ratio']} x), to be applied separately.\n")
        return header + note + yaml.safe_dump(lm_engine_arguments(rec), sort_keys=False)
    if fmt == "torch":
        return header + _torch_snippet(rec)
    raise FitError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def _torch_snippet(rec: dict) -> str:
    t, c = rec["target"], rec["constants"]
    if not t["seq_len"]:
        raise FitError("the torch format needs the target's sequence length: --seq-len L")
    peak = rec["recommended"]["peak_lr"]
    return (
        f"# Power schedule from plsweep: lr_opt = batch * a * T^b; peak LR at the target {peak['value']:.4g} "
        f"[{peak['low']:.4g}, {peak['high']:.4g}]\n"
        "# `model` is yours; build the optimizer with lr = schedule.peak_lr (= lr_max), muP groups keep their multipliers.\n"
        "import torch\n\n"
        "from powerlaw_cli.schedules import PowerSchedule, lambda_lr\n\n"
        f"schedule = PowerSchedule(lr_max={c['lr_max']!r}, a={c['a']['value']!r}, b={c['b']['value']!r}, "
        f"batch_size={t['batch_size']!r}, total_tokens={t['tokens']!r}, warmup_tokens={c['warmup_tokens']!r}, "
        f"decay_tokens={c['decay_tokens']!r}, decay_shape={c['decay_shape']!r}, final_ratio={c['final_ratio']!r})\n"
        "optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.peak_lr)\n"
        f"scheduler = lambda_lr(optimizer, schedule, tokens_per_step={t['batch_size'] * t['seq_len']})\n"
    )


def write_schedule_png(rec: dict, path: str | Path) -> Path:
    """A PNG of the target's LR against tokens."""
    from .plots import plot_schedule

    t = rec["target"]
    title = f"Power schedule: batch {t['batch_size']} seq, {t['tokens']:.3g} tokens"
    return plot_schedule(sample(target_schedule(rec), t["tokens"], 400), path, title)
