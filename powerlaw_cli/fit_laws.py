"""Laws fitted to the optima, with bootstrap intervals over cells or groups, and their evaluation.

Power laws y = a * prod(x_i ^ e_i) (``lr_opt``, ``batch_opt``) are fitted here, loss laws
L = E + sum A_i x_i^-alpha_i in ``fit_loss``; ``fit_law`` and ``law_curve`` / ``predict_law`` take either.
Law syntax and names: ``fit_spec``. Logs are natural logs.

Power-law fitting: ordinary least squares of ln y - sum(fixed e_j ln x_j) on [1, ln x_free], or Huber
(``robust=True``: ``scipy.optimize.least_squares(loss="huber")`` with ``f_scale`` = 1.345 robust stds of the
OLS residuals unless given), optionally weighted by 1 / sigma^2 of each point. Intervals: percentiles of
``n_boot`` refits on resamples *of points* (cells, or groups) with replacement; resamples whose design is
rank deficient are skipped; the deviations of the refits from the fit are scaled by sqrt(n / (n - p))
(n points, p coefficients), the usual small-sample correction. The bootstrap coefficients are kept so that
``predict_law`` can give intervals from ``fit.json`` alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from . import fit_loss
from .fit_spec import (
    MAX_EXPONENT_CI_WIDTH,
    FitError,
    LawSpec,
    bootstrap_record,
    bootstrap_warnings,
    canonical,
    few_points_warnings,
    law_data,
    parse_law,
    parse_law_options,
)

__all__ = [
    "FitError",
    "LawSpec",
    "Prediction",
    "canonical",
    "extrapolation_notes",
    "failed_law",
    "fit_law",
    "law_curve",
    "parse_law",
    "parse_law_options",
    "predict_law",
]

MAX_ABS_CORRELATION = 0.9  # |corr(ln x_i, ln x_j)| above this: the exponents trade off against each other


def fit_law(
    points: pd.DataFrame,
    spec: LawSpec,
    *,
    robust: bool = False,
    huber_scale: float | None = None,
    sigma_column: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    id_column: str = "cell",
    weight_column: str | None = None,
) -> dict:
    """Fit ``spec`` to ``points`` (one row per cell or group); return a JSON-ready law record.

    Loss laws go to ``fit_loss.fit_loss_law`` (always Huber on log residuals; ``robust``, ``huber_scale``,
    ``sigma_column`` and ``weight_column`` apply to power laws only). ``weight_column``: each point's weight
    as a count, e.g. the number of runs in a Step-Law band (least squares over the points' means with
    these weights is least squares over the runs themselves).
    """
    if spec.form == "hoffmann":
        law = fit_loss.fit_loss_law(points, spec, n_boot=n_boot, seed=seed, ci=ci, id_column=id_column)
    else:
        weights = (sigma_column, weight_column)
        law = _fit_power(points, spec, robust, huber_scale, weights, n_boot, seed, ci, id_column)
    law["units"] = spec.units()
    return law


def _fit_power(points, spec, robust, huber_scale, weights, n_boot, seed, ci, id_column) -> dict:
    sigma_column, weight_column = weights
    X, y, w = _design(points, spec, sigma_column, weight_column)
    coef, scale = _solve(X, y, w, robust, huber_scale)
    # small-sample correction: resampled fits spread like residuals with n, not n - p, degrees of freedom
    boot = coef + math.sqrt(len(y) / (len(y) - len(coef))) * (
        _bootstrap(X, y, w, robust, scale, n_boot, seed) - coef
    )
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    names = ["ln_a", *spec.free]
    lows, highs = (
        np.percentile(boot, q, axis=0) if len(boot) else np.full(len(coef), np.nan) for q in (lo_q, hi_q)
    )
    resid = y - X @ coef
    exponents = {
        v: {"value": spec.fixed[v], "low": spec.fixed[v], "high": spec.fixed[v], "fixed": True}
        for v in spec.fixed
    }
    for j, v in enumerate(spec.free, start=1):
        exponents[v] = {
            "value": float(coef[j]),
            "low": float(lows[j]),
            "high": float(highs[j]),
            "fixed": False,
        }
    law = {
        "name": spec.name,
        "status": "fitted",
        "form": "power",
        "y": spec.y,
        "variables": list(spec.variables),
        "formula": spec.formula(),
        "fitted_in": "natural log",
        "loss": "huber" if robust else "least squares",
        "huber_scale": scale if robust else None,
        "weighted": sigma_column is not None or weight_column is not None,
        "a": {"value": math.exp(coef[0]), "low": math.exp(lows[0]), "high": math.exp(highs[0])},
        "exponents": {v: exponents[v] for v in spec.variables},
        "r2": _r2(y, resid, w),
        "rmse_ln": float(np.sqrt(np.mean(resid**2))),
        "n_points": len(y),
        "points": [str(c) for c in points[id_column]] if id_column in points else [],
        "data": {c: points[c].astype(float).tolist() for c in (spec.y, *spec.variables)},
        "residuals_ln": [float(r) for r in resid],
        "ranges": {v: [float(points[v].min()), float(points[v].max())] for v in spec.variables},
        "bootstrap": bootstrap_record(boot, n_boot, seed, ci, id_column, names, decimals=6),
    }
    law["warnings"] = _warnings(points, spec, law, len(names))
    law["poorly_determined"] = bool(law["warnings"])
    return law


def _design(points, spec, sigma_column, weight_column=None):
    data = law_data(points, spec)
    p = 1 + len(spec.free)
    if len(data) < p + 1:
        raise FitError(
            f"law {spec.name!r}: {len(data)} usable points for {p} coefficients; need at least {p + 1}"
        )
    for v in spec.free:
        if data[v].nunique() < 2:
            raise FitError(
                f"law {spec.name!r}: {v} has one value ({data[v].iloc[0]:g}) in the usable points, "
                f"so its exponent cannot be fitted; fix it (e.g. {v}^1) or drop it"
            )
    y = np.log(data[spec.y].to_numpy()) - sum(e * np.log(data[v].to_numpy()) for v, e in spec.fixed.items())
    X = np.column_stack([np.ones(len(data))] + [np.log(data[v].to_numpy()) for v in spec.free])
    if np.linalg.matrix_rank(X) < p:
        raise FitError(f"law {spec.name!r}: the variables {spec.free} are collinear in the usable points")
    if weight_column is not None:
        w = points[weight_column].to_numpy(float)
    elif sigma_column is None:
        w = np.ones(len(data))
    else:
        sig = points[sigma_column].to_numpy(float)
        if not np.isfinite(sig).any():
            raise FitError(
                f"law {spec.name!r}: weighting needs the points' uncertainties (no intervals with "
                "--bootstrap 0 for group optima)"
            )
        sig = np.where(np.isfinite(sig), sig, np.nanmedian(sig))  # unknown: a typical point's
        w = 1 / np.maximum(sig, np.nanmedian(sig) / 10) ** 2
    return X, y, w / w.mean()


def _solve(X, y, w, robust, scale):
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    if not robust:
        return coef, None
    if scale is None:
        resid = y - X @ coef
        scale = max(1.345 * 1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 1e-3)
    result = least_squares(lambda c: sw * (X @ c - y), coef, loss="huber", f_scale=scale)
    return result.x, scale


def _bootstrap(X, y, w, robust, scale, n_boot, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if np.linalg.matrix_rank(X[idx]) < X.shape[1]:
            continue
        out.append(_solve(X[idx], y[idx], w[idx], robust, scale)[0])
    return np.array(out).reshape(-1, X.shape[1])


def _r2(y, resid, w) -> float:
    mean = np.average(y, weights=w)
    total = float(np.sum(w * (y - mean) ** 2))
    return 1 - float(np.sum(w * resid**2)) / total if total > 0 else math.nan


def _warnings(points, spec, law, n_coef) -> list[str]:
    out = few_points_warnings(law["n_points"], n_coef) + bootstrap_warnings(law["bootstrap"])
    free = spec.free
    for i, u in enumerate(free):
        for v in free[i + 1 :]:
            r = float(np.corrcoef(np.log(points[u].astype(float)), np.log(points[v].astype(float)))[0, 1])
            if abs(r) > MAX_ABS_CORRELATION:
                out.append(f"ln {u} and ln {v} are correlated (r = {r:.2f}): their exponents trade off")
    for v in free:
        e = law["exponents"][v]
        if not e["high"] - e["low"] <= MAX_EXPONENT_CI_WIDTH:
            out.append(f"exponent of {v} poorly determined: interval [{e['low']:.3g}, {e['high']:.3g}]")
    return out


class Prediction(NamedTuple):
    """A law's value at a point with its bootstrap interval."""

    value: float
    low: float
    high: float


def law_curve(law: dict, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A fitted law at arrays of its variables: (value at each point, bootstrap draws [n_ok, points]).

    ``values`` maps every variable of the law to an array (all of one length); works for both forms.
    """
    if law.get("form", "power") == "hoffmann":
        return fit_loss.loss_curve(law, values)
    ln = np.stack([np.log(np.asarray(values[v], float)) for v in law["variables"]])  # [variables, points]
    exps = law["exponents"]
    is_free = np.array([not exps[v]["fixed"] for v in law["variables"]])
    fixed = (
        np.array([0.0 if f else exps[v]["value"] for v, f in zip(law["variables"], is_free, strict=True)])
        @ ln
    )
    values_free = np.array([exps[v]["value"] for v, f in zip(law["variables"], is_free, strict=True) if f])
    centre = math.log(law["a"]["value"]) + fixed + values_free @ ln[is_free]
    samples = np.asarray(law["bootstrap"]["samples"], float).reshape(-1, 1 + int(is_free.sum()))
    draws = samples[:, :1] + fixed + samples[:, 1:] @ ln[is_free]
    return np.exp(centre), np.exp(draws)


def predict_law(law: dict, values: dict[str, float]) -> Prediction:
    """Evaluate a law record (from ``fit_law`` or ``fit.json``) at ``values`` ({variable: value})."""
    if law.get("status") != "fitted":
        raise FitError(f"law {law.get('name')!r} was not fitted: {law.get('error', '')}")
    given = {canonical(k): float(v) for k, v in values.items()}
    missing = [v for v in law["variables"] if v not in given]
    if missing:
        raise FitError(
            f"law {law['name']!r} needs {', '.join(law['variables'])}; missing {', '.join(missing)}"
        )
    bad = [v for v in law["variables"] if not (math.isfinite(given[v]) and given[v] > 0)]
    if bad:
        raise FitError(f"law {law['name']!r}: {bad[0]} = {given[bad[0]]:g} must be a positive number")
    centre, draws = law_curve(law, {v: np.array([given[v]]) for v in law["variables"]})
    if not draws.size:
        return Prediction(float(centre[0]), math.nan, math.nan)
    ci = law["bootstrap"]["ci"]
    low, high = np.percentile(draws[:, 0], [50 * (1 - ci), 50 * (1 + ci)])
    return Prediction(float(centre[0]), float(low), float(high))


def extrapolation_notes(law: dict, values: dict[str, float]) -> list[str]:
    """Which variables of ``values`` lie outside the range the law was fitted on (with the factor)."""
    notes = []
    for v, (lo, hi) in law.get("ranges", {}).items():
        x = {canonical(k): float(val) for k, val in values.items()}.get(v)
        if x is not None and not lo <= x <= hi:
            factor = x / hi if x > hi else lo / x
            notes.append(f"{v} = {x:.3g} is {factor:.3g}x outside the fitted range [{lo:.3g}, {hi:.3g}]")
    return notes


def failed_law(spec: LawSpec, error: str) -> dict:
    """The record of a law that could not be fitted."""
    return {
        "name": spec.name,
        "status": "failed",
        "form": spec.form,
        "error": error,
        "y": spec.y,
        "variables": list(spec.variables),
        "formula": spec.formula(),
        "units": spec.units(),
        "poorly_determined": True,
        "warnings": [error],
    }


def batch_in_tokens(law: dict, seq_len: float) -> dict | None:
    """A fitted power law with the batch in tokens instead of sequences (one sequence length L), or None
    when the batch is not in it: batch_opt_tokens = (a * L) * ..., or y = (a * L^-e) * batch_tokens^e * ...
    Only ``a`` changes; its interval comes from the same bootstrap draws."""
    if law.get("status") != "fitted" or law.get("form") != "power":
        return None
    samples = np.asarray(law["bootstrap"]["samples"], float).reshape(-1, len(law["bootstrap"]["names"]))
    ln_a = samples[:, 0] if len(samples) else np.array([])
    if law["y"] == "batch_opt":
        shift, draws = math.log(seq_len), ln_a + math.log(seq_len)
        formula = law["formula"].replace("batch_opt = a", "batch_opt_tokens = a_tokens", 1)
    elif "batch_size" in law["variables"]:
        e = law["exponents"]["batch_size"]
        shift = -e["value"] * math.log(seq_len)
        column = law["bootstrap"]["names"].index("batch_size") if not e["fixed"] else None
        draws = ln_a - (samples[:, column] if column is not None else e["value"]) * math.log(seq_len)
        formula = law["formula"].replace("= a", "= a_tokens", 1).replace("batch_size^", "batch_tokens^")
    else:
        return None
    ci = law["bootstrap"]["ci"]
    low, high = (
        (math.exp(q) for q in np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)]))
        if len(draws)
        else (math.nan, math.nan)
    )
    return {
        "seq_len": seq_len,
        "formula": formula,
        "a": {"value": law["a"]["value"] * math.exp(shift), "low": low, "high": high},
    }
