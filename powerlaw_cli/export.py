"""``plsweep export``: the recommendation for a target run, read from ``fit.json`` only.

A target is its length in tokens (D) with its batch size, its model size N (``params``), or both.
Three laws of the fit answer, each chosen by name or automatically (``"auto"``: the fitted law of that
quantity that uses the most of the variables the user gave, all its variables known; ties go to the
one that uses the given batch, then to ``power``, then to the first fitted):

- the batch: the given one, else B_opt from a ``batch_opt`` law (rounded to whole sequences);
- the peak LR: an ``lr_opt`` law at (batch, tokens, N, ...). A law without the batch (``lr_opt ~ N + D``)
  gives the LR at the optimal batch, and says so when the batch used is not within B_opt's interval;
- the loss, with a ``loss_opt`` law over variables the target gives.

Each comes with its bootstrap interval. When the LR law is the Power paper's form (lr_opt = a * batch *
T^b, batch in sequences, T in tokens) the Power schedule follows: ``a``, ``b`` with their intervals,
``lr_max`` (default 0.02, the paper's cap), warmup (default 1% of the run), decay over the last 10%,
exponential to 0 (the paper's choice); ``peak_lr`` is lr_power(T) = batch * a * T^b, the LR a WSD run of
that length should hold. With a sequence length the schedule is **step-aligned**: the run takes
steps = ceil(tokens / tokens_per_step), warmup and decay are whole numbers of steps (rounded from their
fractions), and the schedule's tokens are those steps times tokens_per_step, so that every format
describes the same LR at every step (``export_formats``: json, yaml, lm-engine, torch). Flagged, poorly
determined or extrapolated laws put warnings in every format.
"""

from __future__ import annotations

import math
from typing import Any, get_args

from .bounds import POSITIVE, UNIT
from .config import DecayShape
from .fit_base import BASE_SETTINGS
from .fit_spec import FitError
from .schedules import PowerSchedule
from .store import json_ready

DECAY_SHAPES: tuple[str, ...] = get_args(DecayShape)
PAPER_LR_MAX = 0.02
SCHEDULE_FRACTIONS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
TRAINER_SETTINGS = (
    "parametrization",
    "base_width",
    "base_head_dim",
    "init_std",
    "embedding_multiplier",
    "output_multiplier",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "weight_decay_rule",
    "grad_clip",
)
"""The proxy's settings a target's trainer must reproduce for the fitted LR to transfer (beyond the law's
variables): the parametrization the LR is a base LR of, the base model's settings muP carries to every width
(init_std and the multipliers, tuned at the base width: docs/mup.md), and the optimizer it was tuned with."""

UNITS = {
    "lr": "base Adam LR at width == base_width (muP), absolute",
    "batch_size": "sequences",
    "tokens": "tokens",
    "params_non_embedding": "parameters",
    "a": "lr per sequence of batch at 1 token: lr_opt = batch * a * T^b",
    "b": "dimensionless exponent of tokens",
    "steps": "optimizer steps of tokens_per_step = batch * seq_len tokens",
}


def export(
    fit: dict,
    batch_size: int | None,
    tokens: float,
    seq_len: int | None = None,
    *,
    params: float | None = None,
    law: str = "auto",
    batch_law: str = "auto",
    loss_law: str = "auto",
    lr_max: float = PAPER_LR_MAX,
    warmup_fraction: float = 0.01,
    decay_fraction: float = 0.1,
    decay_shape: str = "exponential",
    final_ratio: float = 0.0,
) -> dict[str, Any]:
    """The recommendation for a target run of ``tokens`` tokens (JSON-ready); see the module docstring."""
    _check(
        batch_size, tokens, seq_len, params, lr_max, warmup_fraction, decay_fraction, decay_shape, final_ratio
    )
    given = {"tokens": float(tokens)} | ({"params_non_embedding": float(params)} if params else {})
    batch = _batch(fit, batch_law, given, batch_size)
    values = given | {"batch_size": float(batch["used"])}
    lr_name = _choose(fit, "lr_opt", law, values, given | ({"batch_size": batch_size} if batch_size else {}))
    lr_law = fit["laws"][lr_name]
    peak = _predict(lr_law, values)
    out: dict[str, Any] = {
        "target": _target(batch["used"], tokens, params, seq_len),
        "recommended": {
            "peak_lr": {**peak, "law": lr_name, "formula": lr_law["formula"], "meaning": _lr_meaning(lr_law)},
            "batch_size": {k: v for k, v in batch.items() if k != "used"},
        },
        "units": UNITS,
        "source": fit.get("source"),
        "proxy": proxy_settings(lr_law),
        "base": [b for b in fit.get("base") or [] if b.get("status") == "tuned"] or None,
    }
    loss_name = _choose(fit, "loss_opt", loss_law, values, given, required=loss_law != "auto")
    if loss_name:
        loss = fit["laws"][loss_name]
        out["recommended"]["loss"] = {**_predict(loss, values), "law": loss_name, "formula": loss["formula"]}
    if _is_power_form(lr_law):
        schedule = _schedule(
            lr_law, out["target"], lr_max, warmup_fraction, decay_fraction, decay_shape, final_ratio
        )
        out["constants"] = _constants(lr_law, lr_name, schedule, out["target"])
        out["schedule"] = _points(schedule, out["target"])
    else:
        out["constants"] = out["schedule"] = None
        out["schedule_note"] = (
            f"law {lr_name!r} is not the Power form (lr_opt = a * batch^1 * tokens^b), so there "
            "is no Power schedule; the peak LR is for a WSD or cosine run of this length"
        )
    out["warnings"] = _warnings(fit, out, lr_name, loss_name, batch, given, values)
    out["flagged"] = bool(out["warnings"])
    return json_ready(out)


def proxy_settings(law: dict) -> dict[str, Any] | None:
    """The ``TRAINER_SETTINGS`` the law's proxy runs shared, with what they ask of the target's trainer
    (None: the fitted table did not record them, e.g. another lab's CSV)."""
    shared = law.get("settings") or {}
    settings = {name: shared[name] for name in TRAINER_SETTINGS if name in shared}
    if not settings:
        return None
    return settings | {"trainer": _trainer_note(settings)}


def _trainer_note(s: dict[str, Any]) -> str:
    """In words: the optimizer and parametrization the target must use for the peak LR to mean the same."""
    adam = ", ".join(f"{k}={s[k]}" for k in ("beta1", "beta2", "eps", "grad_clip") if k in s)
    note = f"AdamW ({adam})" if adam else "AdamW"
    emb, out = s.get("embedding_multiplier", 1.0), s.get("output_multiplier", 1.0)
    multipliers = f"embedding output x {emb:g} at every width; " if emb != 1.0 else ""
    if s.get("parametrization") == "mup":
        readout = f"{out:g} / m" if out != 1.0 else "1/m"
        note += (
            f"; muP with m = width / {s.get('base_width', 'base_width')} (the peak LR is the base LR; "
            f"hidden matrices: LR x 1/m, init {s.get('init_std', 'init_std')} / sqrt(m); {multipliers}"
            f"readout logits x {readout}; attention q.k x sqrt(base_head_dim) / head_dim: the table of "
            "powerlaw_cli/model.py)"
        )
    elif s.get("parametrization") == "sp":
        logits = f"logits x {out:g}; " if out != 1.0 else ""
        note += f"; standard parametrization (one LR for every parameter; {multipliers}{logits}init {s.get('init_std', 'init_std')})"
    if "weight_decay" in s:
        wd, rule = s["weight_decay"], s.get("weight_decay_rule", "coupled")
        if s.get("parametrization") == "mup" and rule == "independent":
            note += f"; weight decay {wd} with the hidden matrices' group at {wd} x width/base_width"
        else:
            note += f"; weight_decay={wd} in every AdamW group but the norm gains' (decay = group LR x {wd})"
    return note


def _check(batch_size, tokens, seq_len, params, lr_max, warmup, decay, shape, final_ratio) -> None:
    checks = [
        (POSITIVE.holds(tokens), f"--tokens {tokens:g}: must be {POSITIVE.describe()}"),
        (batch_size is None or batch_size >= 1, f"--batch-size {batch_size}: must be at least 1"),
        (seq_len is None or seq_len >= 1, f"--seq-len {seq_len}: must be at least 1"),
        (params is None or POSITIVE.holds(params), f"--params {params}: must be {POSITIVE.describe()}"),
        (POSITIVE.holds(lr_max), f"--lr-max {lr_max:g}: must be {POSITIVE.describe()}"),
        (
            UNIT.holds(warmup) and UNIT.holds(decay) and warmup + decay <= 1,
            f"--warmup-fraction {warmup:g} and --decay-fraction {decay:g}: each in [0, 1], together at most 1",
        ),
        (shape in DECAY_SHAPES, f"--decay-shape {shape!r}: valid: {', '.join(DECAY_SHAPES)}"),
        (UNIT.holds(final_ratio), f"final ratio {final_ratio:g}: must be in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise FitError(message)


def _predict(law: dict, values: dict[str, float]) -> dict:
    from .fit_laws import predict_law  # scipy and pandas only when exporting, not at CLI start-up

    return predict_law(law, values)._asdict()


def _choose(fit: dict, y: str, name: str, values: dict, given: dict, required: bool = True) -> str | None:
    """The law of quantity ``y`` to use: ``name``, or the best fitted one evaluable at ``values``."""
    laws = fit.get("laws", {})
    if name != "auto":
        law = laws.get(name)
        if law is None:
            raise FitError(f"the fit has no law {name!r}; laws: {', '.join(laws)}")
        if law["status"] != "fitted" or law["y"] != y:
            why = (
                f"was not fitted ({law.get('error')})"
                if law["status"] != "fitted"
                else f"is a {law['y']} law"
            )
            raise FitError(f"law {name!r} {why}; {y} needs a fitted {y} law")
        missing = [v for v in law["variables"] if v not in values]
        if missing:
            raise FitError(
                f"law {name!r} needs {', '.join(law['variables'])}; the target lacks {', '.join(missing)} "
                "(give --batch-size, --params)"
            )
        return name
    order = list(laws)
    ranked = sorted(
        (
            n
            for n, law in laws.items()
            if law["status"] == "fitted" and law["y"] == y and all(v in values for v in law["variables"])
        ),
        key=lambda n: (
            -sum(v in given for v in laws[n]["variables"]),
            -("batch_size" in given and "batch_size" in laws[n]["variables"]),
            n != "power",
            order.index(n),
        ),
    )
    if ranked:
        return ranked[0]
    if required:
        fitted = [
            f"{n} ({', '.join(law['variables'])})"
            for n, law in laws.items()
            if law["status"] == "fitted" and law["y"] == y
        ]
        hint = "; give --batch-size" if y == "batch_opt" else ""
        raise FitError(
            f"no fitted {y} law can answer for this target ({', '.join(values)}); "
            + (f"fitted {y} laws: {'; '.join(fitted)}" if fitted else f"the fit has no {y} law")
            + hint
        )
    return None


def _batch(fit: dict, name: str, given: dict, batch_size: int | None) -> dict:
    """The batch used (given, else B_opt rounded), with the batch law's value and interval when it has one."""
    law_name = _choose(fit, "batch_opt", name, given, given, required=name != "auto" or batch_size is None)
    if law_name is None:
        return {"used": batch_size, "value": batch_size, "low": None, "high": None, "source": "given"}
    law = fit["laws"][law_name]
    opt = _predict(law, given)
    used = batch_size if batch_size else max(1, round(opt["value"]))
    source = "given" if batch_size else f"batch law {law_name} ({law['formula']}), rounded"
    return {
        "used": used,
        "value": used,
        "low": None if batch_size else opt["low"],
        "high": None if batch_size else opt["high"],
        "source": source,
        "batch_opt": {**opt, "law": law_name, "formula": law["formula"]},
    }


def _target(batch: int, tokens: float, params: float | None, seq_len: int | None) -> dict:
    per_step = batch * seq_len if seq_len else None
    return {
        "batch_size": batch,
        "tokens": tokens,
        "params_non_embedding": params,
        "seq_len": seq_len,
        "batch_tokens": per_step,
        "tokens_per_step": per_step,
        "steps": math.ceil(tokens / per_step) if per_step else None,
    }


def _lr_meaning(law: dict) -> str:
    if "batch_size" in law["variables"]:
        return f"lr_opt from {law['formula']} at the target's batch"
    return f"lr_opt from {law['formula']}: the optimal LR at the optimal batch"


def _is_power_form(law: dict) -> bool:
    exps = law.get("exponents", {})
    return (
        law.get("form", "power") == "power"
        and set(exps) == {"batch_size", "tokens"}
        and exps["batch_size"]["fixed"]
        and exps["batch_size"]["value"] == 1
    )


def _schedule(
    law: dict, target: dict, lr_max, warmup_fraction, decay_fraction, decay_shape, final_ratio
) -> PowerSchedule:
    a, b = law["a"], law["exponents"]["tokens"]
    if b["value"] >= 0:
        raise FitError(
            f"law {law['name']!r}: fitted token exponent b = {b['value']:.3g} [{b['low']:.3g}, {b['high']:.3g}] "
            "is not negative (lr_opt does not fall with tokens), so there is no Power schedule to export; "
            "widen the token budgets or add seeds"
        )
    if target["steps"]:  # step-aligned: whole steps for warmup and decay, and for the run
        per_step, steps = target["tokens_per_step"], target["steps"]
        total = steps * per_step
        warmup, decay = round(warmup_fraction * steps) * per_step, round(decay_fraction * steps) * per_step
    else:
        total = target["tokens"]
        warmup, decay = warmup_fraction * total, decay_fraction * total
    try:
        return PowerSchedule(
            lr_max,
            a["value"],
            b["value"],
            target["batch_size"],
            total,
            warmup,
            decay,
            decay_shape,
            final_ratio,
        )  # type: ignore[arg-type]
    except ValueError as err:
        raise FitError(f"Power schedule: {err}") from None


def _constants(law: dict, name: str, schedule: PowerSchedule, target: dict) -> dict:
    per_step = target["tokens_per_step"]
    return {
        "a": law["a"],
        "b": law["exponents"]["tokens"],
        "lr_max": schedule.lr_max,
        "total_tokens": schedule.total_tokens,
        "warmup_tokens": schedule.warmup_tokens,
        "decay_tokens": schedule.decay_tokens,
        "warmup_steps": round(schedule.warmup_tokens / per_step) if per_step else None,
        "decay_steps": round(schedule.decay_tokens / per_step) if per_step else None,
        "decay_shape": schedule.decay_shape,
        "final_ratio": schedule.final_ratio,
        "law": law["formula"],
        "law_name": name,
        "step_aligned": bool(per_step),
        "schedule": "lr(n) = min(lr_max, batch * a * n^b), n = tokens seen; "
        "warmup: n / warmup_tokens * lr(warmup_tokens); decay over the last decay_tokens of total_tokens",
    }


def _points(schedule: PowerSchedule, target: dict) -> list[dict]:
    per_step = target["tokens_per_step"]
    if per_step:
        steps = sorted(
            {round(f * target["steps"]) for f in SCHEDULE_FRACTIONS}
            | {round(schedule.warmup_tokens / per_step), round(schedule.decay_start / per_step)}
        )
        return [{"tokens": s * per_step, "step": s, "lr": schedule(s * per_step)} for s in steps]
    tokens = sorted({f * schedule.total_tokens for f in SCHEDULE_FRACTIONS} | {schedule.decay_start})
    return [{"tokens": t, "step": None, "lr": schedule(t)} for t in tokens]


def _warnings(fit, out, lr_name, loss_name, batch, given, values) -> list[str]:
    from .fit_laws import extrapolation_notes

    laws = fit["laws"]
    from_law = batch["source"] != "given"
    used = [lr_name, *([loss_name] if loss_name else []), *([batch["batch_opt"]["law"]] if from_law else [])]
    warn = [f"law {n}: {w}" for n in dict.fromkeys(used) for w in laws[n]["warnings"]]
    warn += [f"law {n}: {note}" for n in dict.fromkeys(used) for note in extrapolation_notes(laws[n], values)]
    lr_law = laws[lr_name]
    warn += [
        f"law {lr_name} does not use {v} (the target gives {given[v]:.4g}): its lr_opt pools every {v} of the fit"
        for v in given
        if v not in lr_law["variables"]
    ]
    opt = batch.get("batch_opt")
    if (
        "batch_size" not in lr_law["variables"]
        and opt
        and not from_law
        and opt["low"] is not None
        and not opt["low"] <= batch["used"] <= opt["high"]
    ):
        warn.append(
            f"law {lr_name} gives the LR at the optimal batch {opt['value']:.4g} [{opt['low']:.4g}, "
            f"{opt['high']:.4g}], not at the given batch {batch['used']}"
        )
    warn += [
        f"law {lr_name} pools {k}: its LR averages proxies with different base models; fit the runs of one "
        f"{k} (the tuned one) so that the trainer note names the base the LR belongs to"
        for k in lr_law.get("pools", [])
        if k in BASE_SETTINGS
    ]
    transfer = fit.get("transfer", {})
    if transfer.get("verdict") in ("shifts", "uncertain"):
        warn.append(f"muP transfer across widths {transfer.get('widths')}: {transfer['verdict']}")
    kinds = {"groups" if laws[n].get("fitted_on", "cells").startswith("groups") else "cells" for n in used}
    for what in sorted(kinds):  # exclusions among the points the laws used were fitted to
        counts = fit.get(f"n_{what}", {})
        if counts.get("excluded"):
            warn.append(
                f"{counts['excluded']} of {counts['total']} {what} were excluded from the fit (see fit.json)"
            )
    if out["constants"] and out["recommended"]["peak_lr"]["value"] > out["constants"]["lr_max"]:
        warn.append(
            f"the law's lr_opt {out['recommended']['peak_lr']['value']:.3g} is above lr_max "
            f"{out['constants']['lr_max']:g}: the cap binds for the whole run"
        )
    return warn
