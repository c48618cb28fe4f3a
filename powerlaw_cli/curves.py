"""``plsweep curves``: fit the multi-power law (and Tissue et al.'s law beside it) per model, predict the
other curves of the model and any schedule's curve, and write ``curves/curves.json`` and figures.

A *group* (one model) is the curves equal in every ``--group-by`` column (default for a sweep: every
run-id setting but the schedule's, the budget and the seed; so LR and batch stay in the group: the law is
monotone in the LR and cannot span an LR optimum). In each group the curves named by ``--fit-on`` are
fitted, every other one is predicted. Default ``--fit-on``: every curve shorter than the group's longest;
the longest ones are predicted (so a sweep's smaller budgets predict its largest).

Points fitted: the logged steps after the warmup (its steps are outside both laws' validity), at most
``MAX_FIT_POINTS`` per curve, evenly spaced. Metrics are over every logged post-warmup point of the
predicted curves. Intervals: 95% percentiles of a moving-block bootstrap (``curve_laws.fit_law``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .curve_laws import LAWS, Design, FitOutcome, fit_law, law_loss, metrics
from .curves_data import Curve, CurveSet, load_curves
from .fit_groups import group_label
from .fit_spec import FitError
from .store import atomic_write, json_ready

MAX_FIT_POINTS = 120
PREDICT_POINTS = 200
INTERVAL_NOTE = (
    "95% percentile intervals of a moving-block bootstrap: each fitted curve's points resampled in 10 "
    "contiguous blocks, refitted from the best fit; they hold the parameters' uncertainty, not the noise"
)


@dataclass
class PredictSpec:
    """A schedule to predict in every fitted group: its config section and its budget in tokens."""

    schedule: Any  # config.ScheduleConfig
    tokens: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class CurvesRun:
    """What ``run_curves`` made: the content of ``curves.json``, its path and the figures."""

    data: dict[str, Any]
    json_path: Path | None = None
    figures: list[Path] = field(default_factory=list)


def smoothed(y: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average over ``window`` points (shrinking at the ends); ``y`` itself below 2."""
    if window < 2:
        return y
    kernel = np.ones(window)
    total = np.convolve(y, kernel, mode="same")
    count = np.convolve(np.ones_like(y), kernel, mode="same")
    return total / count


def _points(curve: Curve, limit: int | None) -> np.ndarray:
    """Indices of the logged points after the warmup, at most ``limit`` (evenly spaced, the last kept)."""
    index = np.flatnonzero(curve.steps > curve.warmup_steps)
    if limit is not None and len(index) > limit:
        index = index[np.unique(np.linspace(0, len(index) - 1, limit).round().astype(int))]
    return index


def _groups(curves: list[Curve], keys: list[str]) -> dict[tuple, list[Curve]]:
    out: dict[tuple, list[Curve]] = {}
    for curve in curves:
        out.setdefault(tuple(curve.settings.get(k) for k in keys), []).append(curve)
    return out


def _split(members: list[Curve], fit_on: list[str] | None) -> tuple[list[Curve], list[Curve], str | None]:
    """(fitted, predicted, reason the group cannot be fitted or None)."""
    if fit_on is not None:
        fitted = [c for c in members if c.run in fit_on]
        if not fitted:
            return [], members, "no curve of --fit-on in this group"
        return fitted, [c for c in members if c.run not in fit_on], None
    if len(members) < 2:
        return members, [], "one curve only: nothing to fit it on and predict (name it with --fit-on)"
    longest = max(c.steps[-1] for c in members)
    fitted = [c for c in members if c.steps[-1] < longest]
    if not fitted:
        return [], members, "every curve has the same length; name the fitted ones with --fit-on"
    return fitted, [c for c in members if c.steps[-1] == longest], None


def _final(outcome: FitOutcome, eta: np.ndarray, step: int) -> dict[str, float]:
    """The law's loss after ``step`` steps of the LRs ``eta``, with the bootstrap interval."""
    design = Design.build(eta, np.array([step]))
    row = {"value": float(law_loss(outcome.law, outcome.vector(), design)[0])}
    if len(outcome.draws):
        last = np.array([law_loss(outcome.law, p, design)[0] for p in outcome.draws])
        last = last[np.isfinite(last)]
        if len(last):
            row |= {"low": float(np.quantile(last, 0.025)), "high": float(np.quantile(last, 0.975))}
    return row


def fit_group(
    fitted: list[Curve], predicted: list[Curve], smooth: int, n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, FitOutcome], list[dict[str, Any]]]:
    """Fit both laws on ``fitted`` and judge them on ``predicted``: (laws, outcomes, per-curve rows)."""
    designs, losses = [], []
    for curve in fitted:
        take = _points(curve, MAX_FIT_POINTS)
        if len(take) < 2:
            raise FitError(f"run {curve.run}: fewer than 2 logged points after the warmup")
        designs.append(Design.build(curve.eta, curve.steps[take]))
        losses.append(smoothed(curve.loss, smooth)[take])
    outcomes = {name: fit_law(name, designs, losses, n_boot=n_boot, seed=seed) for name in LAWS}
    rows, pooled = [], {name: ([], []) for name in LAWS}
    for role, members in (("fitted", fitted), ("predicted", predicted)):
        for curve in members:
            take = _points(curve, None)
            if len(take) < 1:
                continue
            design = Design.build(curve.eta, curve.steps[take])
            y = smoothed(curve.loss, smooth)[take]
            row = {"run": curve.run, "title": curve.title, "role": role, "steps": int(curve.steps[-1])}
            row["final_loss"] = float(y[-1])
            if curve.tokens_per_step:
                row["tokens"] = float(curve.steps[-1] * curve.tokens_per_step)
            for name, outcome in outcomes.items():
                pred = law_loss(name, outcome.vector(), design)
                row[name] = metrics(pred, y) | {"final": _final(outcome, curve.eta, int(design.at[-1]))}
                if role == "predicted":
                    pooled[name][0].append(pred)
                    pooled[name][1].append(y)
            rows.append(row)
    laws = {}
    for name, outcome in outcomes.items():
        preds, ys = pooled[name]
        laws[name] = {
            "params": outcome.intervals(),
            "converged": outcome.converged,
            "on_bound": outcome.on_bound,
            "huber_cost": outcome.cost,
            "metrics": metrics(np.concatenate(preds), np.concatenate(ys)) if preds else None,
        }
    return laws, outcomes, rows


def predict_schedule(spec: PredictSpec, fitted: list[Curve], outcomes: dict[str, FitOutcome]) -> dict:
    """The curve and final loss (with its interval) of ``spec``'s schedule under each fitted law."""
    from .schedules import build_schedule

    tps = fitted[0].tokens_per_step
    if not tps:
        raise FitError(
            "--predict with --tokens needs tokens per step: name the tokens column with --col tokens=NAME"
        )
    lr = fitted[0].settings.get("lr") or float(max(c.eta.max() for c in fitted))
    batch = int(fitted[0].settings.get("batch_size") or 1)
    sched = build_schedule(spec.schedule, float(lr), int(spec.tokens), batch)
    steps = max(int(round(spec.tokens / tps)), 2)
    eta = np.array([sched(k * tps) for k in range(steps)])
    if not (eta > 0).any():
        raise FitError(f"--predict {spec.schedule.name}: the schedule's LR is 0 everywhere")
    start = int(np.argmax(eta)) + 2
    at = np.unique(np.linspace(min(start, steps), steps, PREDICT_POINTS).round().astype(int))
    design = Design.build(eta, at)
    out = {"schedule": spec.schedule.name, "settings": spec.settings, "tokens": spec.tokens, "steps": steps}
    out["peak_lr"] = float(lr)
    for name, outcome in outcomes.items():
        out[name] = {
            "final": _final(outcome, eta, steps),
            "curve": [
                [int(s), float(v)] for s, v in zip(at, law_loss(name, outcome.vector(), design), strict=True)
            ],
        }
    return out


def default_out(source: Path) -> Path:
    """``DIR/curves`` for a sweep directory, ``curves`` beside a table file."""
    return source / "curves" if source.is_dir() else source.parent / "curves"


def run_curves(
    source: str | Path,
    *,
    columns: dict[str, str] | None = None,
    loss_column: str | None = None,
    group_by: list[str] | None = None,
    fit_on: list[str] | None = None,
    smooth: int = 0,
    n_boot: int = 50,
    seed: int = 0,
    predict: PredictSpec | None = None,
    out: str | Path | None = None,
    plots: bool = True,
) -> CurvesRun:
    """The pipeline: load -> group -> fit both laws -> predict -> ``curves.json`` -> figures."""
    source = Path(source)
    found = load_curves(source, columns, loss_column)
    if not found.curves:
        reasons = "; ".join(f"run {r}: {why}" for r, why in list(found.rejected.items())[:3])
        raise FitError(f"{found.source}: no usable curve ({reasons or 'the table has no rows'})")
    keys = _keys(found, group_by)
    shown = [k for k in keys if len({c.settings.get(k) for c in found.curves}) > 1]
    groups, warnings = [], [f"run {run}: {why}; curve not used" for run, why in found.rejected.items()]
    for values, members in _groups(found.curves, keys).items():
        label = group_label(shown, tuple(members[0].settings.get(k) for k in shown))
        fitted, predicted, reason = _split(members, fit_on)
        group = {"group": dict(zip(keys, values, strict=True)), "label": label}
        group |= {"fitted": [c.run for c in fitted], "predicted": [c.run for c in predicted]}
        if reason is None:
            try:
                laws, outcomes, rows = fit_group(fitted, predicted, smooth, n_boot, seed)
            except FitError as err:
                reason = str(err)
        if reason is not None:
            groups.append(group | {"status": "skipped", "reason": reason})
            warnings.append(f"group {label}: {reason} (runs {', '.join(c.run for c in members)})")
            continue
        group |= {"status": "fitted", "laws": laws, "curves": rows}
        for name, law in laws.items():
            if not law["converged"]:
                warnings.append(
                    f"group {label}: the {name} fit did not converge (runs {', '.join(group['fitted'])})"
                )
            if law["on_bound"]:
                warnings.append(f"group {label}: {name} parameters on a bound: {', '.join(law['on_bound'])}")
        if predict is not None:
            group["prediction"] = predict_schedule(predict, fitted, outcomes)
        groups.append(group)
    if not any(g["status"] == "fitted" for g in groups):
        raise FitError(
            f"{found.source}: no group could be fitted ({warnings[-1] if warnings else 'no curves'})"
        )
    assumed = [c.run for c in found.curves if c.warmup_assumed]
    notes = ["the LR between logged steps is interpolated linearly"]
    if assumed:
        notes.append(f"{len(assumed)} curves start after step 1: their warmup is assumed linear from 0")
    data = {
        "source": found.source,
        "loss_column": found.loss_column,
        "group_by": keys,
        "fit_on": fit_on or "default: every curve shorter than its group's longest; the longest predicted",
        "smooth": smooth,
        "bootstrap": n_boot,
        "intervals": INTERVAL_NOTE,
        "notes": notes,
        "warnings": warnings,
        "groups": groups,
    }
    done = CurvesRun(data)
    if out is None:
        out = default_out(source)
    done.json_path = Path(out) / "curves.json"
    if plots:
        from .curve_plots import group_figures

        done.figures = group_figures(data, found.curves, smooth, Path(out))
        data["figures"] = [str(p) for p in done.figures]
    atomic_write(done.json_path, json.dumps(json_ready(data), indent=1, allow_nan=False).encode())
    return done


def _keys(found: CurveSet, group_by: list[str] | None) -> list[str]:
    if group_by is None:
        return found.settings
    missing = [k for k in group_by if k not in found.settings]
    if missing:
        raise FitError(
            f"--group-by {missing[0]!r}: not a setting of the curves; settings: {', '.join(found.settings) or 'none'}"
        )
    return group_by


def report_rows(data: dict) -> dict[str, list[dict[str, Any]]]:
    """The tables of ``plsweep curves``: {title: rows} of parameters, metrics, curves and predictions."""
    from .fit_report import interval

    params, scores, curves, predictions = [], [], [], []
    for group in data["groups"]:
        if group["status"] != "fitted":
            continue
        label = group["label"]
        for name, law in group["laws"].items():
            params.append({"group": label, "law": name} | {p: interval(v) for p, v in law["params"].items()})
            m = law["metrics"] or {}
            scores.append(
                {
                    "group": label,
                    "law": name,
                    "fitted": len(group["fitted"]),
                    "predicted": len(group["predicted"]),
                }
                | {k: f"{m[k]:.4g}" for k in ("r2", "mae", "rmse", "pred_e", "worst_e") if k in m}
            )
        for c in group["curves"]:
            curves.append(
                {"group": label, "curve": c["title"] or c["run"], "role": c["role"], "steps": c["steps"]}
                | {"final (data)": f"{c['final_loss']:.4g}"}
                | {f"final {name}": interval(c[name]["final"]) for name in LAWS}
                | {f"pred_e {name}": f"{c[name]['pred_e']:.4g}" for name in LAWS}
            )
        pred = group.get("prediction")
        if pred:
            predictions.append(
                {"group": label, "schedule": pred["schedule"], "tokens": f"{pred['tokens']:.4g}"}
                | {"steps": pred["steps"]}
                | {f"final {name}": interval(pred[name]["final"]) for name in LAWS}
            )
    return {
        f"parameters per group (fit on the loss, Huber delta 1e-3; {data['intervals'].split(':')[0]})": params,
        "predicted curves per group (metrics over every logged point after the warmup)": scores,
        "curves (final loss: the data's last logged point against each law, 95% interval)": curves,
        "predicted schedule (final loss, 95% bootstrap interval)": predictions,
    }
