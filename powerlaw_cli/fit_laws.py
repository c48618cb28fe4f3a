"""Power laws y = a * prod(x_i ^ e_i) fitted in log space, with bootstrap intervals over cells.

A law is written ``"lr_opt ~ batch_size + tokens"``; ``var^1`` fixes an exponent (the Power paper's form
is ``"lr_opt ~ batch_size^1 + tokens"``). Short names are accepted: batch, B -> batch_size; tokens, T, D
-> tokens; N, params -> params_non_embedding. Logs are natural logs.

Fitting: ordinary least squares of ln y - sum(fixed e_j ln x_j) on [1, ln x_free], or Huber
(``robust=True``: ``scipy.optimize.least_squares(loss="huber")`` with ``f_scale`` = 1.345 robust stds of the
OLS residuals unless given), optionally weighted by 1 / sigma^2 of each point. Intervals: percentiles of
``n_boot`` refits on resamples *of points* (cells, or batch groups for batch laws) with replacement;
resamples whose design is rank deficient are skipped; the deviations of the refits from the fit are
scaled by sqrt(n / (n - p)) (n points, p coefficients), the usual small-sample correction. The bootstrap coefficients are kept so that
``predict`` can give intervals from ``fit.json`` alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from .errors import PlsweepError

ALIASES = {"batch": "batch_size", "b": "batch_size", "bs": "batch_size", "t": "tokens", "d": "tokens",
           "n": "params_non_embedding", "params": "params_non_embedding"}
MAX_EXPONENT_CI_WIDTH = 0.5  # a free exponent whose interval is wider than this is "poorly determined"
MAX_ABS_CORRELATION = 0.9  # |corr(ln x_i, ln x_j)| above this: the exponents trade off against each other
CELLS_PER_PARAMETER = 3  # fewer points than this times the coefficients: a warning


class FitError(PlsweepError):
    """The data cannot support the requested fit; the message says why, in one line."""


def canonical(name: str) -> str:
    """Our column name for a variable name or alias (``batch`` -> ``batch_size``)."""
    name = name.strip()
    return ALIASES.get(name.lower(), name)


@dataclass(frozen=True)
class LawSpec:
    """y = a * prod(x ^ e) with some exponents free and some fixed."""

    name: str
    y: str
    variables: tuple[str, ...]
    fixed: dict[str, float] = field(default_factory=dict)

    @property
    def free(self) -> list[str]:
        return [v for v in self.variables if v not in self.fixed]

    def formula(self) -> str:
        terms = [f"{v}^{self.fixed[v]:g}" if v in self.fixed else f"{v}^e_{v}" for v in self.variables]
        return f"{self.y} = a * " + " * ".join(terms)


def parse_law(text: str, name: str | None = None) -> LawSpec:
    """Parse ``"lr_opt ~ batch_size^1 + tokens"`` (``var^value`` fixes that exponent)."""
    if "~" not in text:
        raise FitError(f"law {text!r}: expected 'Y ~ X1 + X2', e.g. 'lr_opt ~ batch_size + tokens'")
    left, right = text.split("~", 1)
    variables, fixed = [], {}
    for term in filter(None, (t.strip() for t in right.split("+"))):
        match = re.fullmatch(r"([A-Za-z_][\w]*)\s*(?:\^\s*([-+0-9.eE]+))?", term)
        if not match:
            raise FitError(f"law {text!r}: cannot read the term {term!r}; write NAME or NAME^EXPONENT")
        var = canonical(match.group(1))
        variables.append(var)
        if match.group(2) is not None:
            fixed[var] = float(match.group(2))
    if not variables:
        raise FitError(f"law {text!r}: no variables on the right of '~'")
    return LawSpec(name or text.strip(), canonical(left), tuple(variables), fixed)


def fit_law(points: pd.DataFrame, spec: LawSpec, *, robust: bool = False, huber_scale: float | None = None,
            sigma_column: str | None = None, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
            id_column: str = "cell") -> dict:
    """Fit ``spec`` to ``points`` (one row per cell or group); return a JSON-ready law record."""
    X, y, w = _design(points, spec, sigma_column)
    coef, scale = _solve(X, y, w, robust, huber_scale)
    # small-sample correction: resampled fits spread like residuals with n, not n - p, degrees of freedom
    boot = coef + math.sqrt(len(y) / (len(y) - len(coef))) * (_bootstrap(X, y, w, robust, scale, n_boot, seed) - coef)
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    names = ["ln_a", *spec.free]
    lows, highs = (np.percentile(boot, q, axis=0) if len(boot) else np.full(len(coef), np.nan) for q in (lo_q, hi_q))
    resid = y - X @ coef
    exponents = {v: {"value": spec.fixed[v], "low": spec.fixed[v], "high": spec.fixed[v], "fixed": True}
                 for v in spec.fixed}
    for j, v in enumerate(spec.free, start=1):
        exponents[v] = {"value": float(coef[j]), "low": float(lows[j]), "high": float(highs[j]), "fixed": False}
    law = {
        "name": spec.name, "status": "fitted", "y": spec.y, "variables": list(spec.variables),
        "formula": spec.formula(), "fitted_in": "natural log",
        "loss": "huber" if robust else "least squares", "huber_scale": scale if robust else None,
        "weighted": sigma_column is not None,
        "a": {"value": math.exp(coef[0]), "low": math.exp(lows[0]), "high": math.exp(highs[0])},
        "exponents": {v: exponents[v] for v in spec.variables},
        "r2": _r2(y, resid, w), "rmse_ln": float(np.sqrt(np.mean(resid**2))),
        "n_points": len(y), "points": [str(c) for c in points[id_column]] if id_column in points else [],
        "data": {c: points[c].astype(float).tolist() for c in (spec.y, *spec.variables)},
        "residuals_ln": [float(r) for r in resid],
        "ranges": {v: [float(points[v].min()), float(points[v].max())] for v in spec.variables},
        "bootstrap": {"n": n_boot, "n_ok": len(boot), "seed": seed, "ci": ci, "resampled": id_column + "s",
                      "names": names, "samples": np.round(boot, 6).tolist()},
    }
    law["warnings"] = _warnings(points, spec, law, len(names))
    law["poorly_determined"] = bool(law["warnings"])
    return law


def _design(points, spec, sigma_column):
    missing = [c for c in (spec.y, *spec.variables) if c not in points]
    if missing:
        raise FitError(f"law {spec.name!r}: the cells have no column {missing[0]!r}")
    data = points[[spec.y, *spec.variables]].astype(float)
    if (data <= 0).any().any() or data.isna().any().any():
        raise FitError(f"law {spec.name!r}: every {spec.y} and variable must be positive and known")
    p = 1 + len(spec.free)
    if len(data) < p + 1:
        raise FitError(f"law {spec.name!r}: {len(data)} usable points for {p} coefficients; need at least {p + 1}")
    for v in spec.free:
        if data[v].nunique() < 2:
            raise FitError(f"law {spec.name!r}: {v} has one value ({data[v].iloc[0]:g}) in the usable points, "
                           f"so its exponent cannot be fitted; fix it (e.g. {v}^1) or drop it")
    y = np.log(data[spec.y].to_numpy()) - sum(e * np.log(data[v].to_numpy()) for v, e in spec.fixed.items())
    X = np.column_stack([np.ones(len(data))] + [np.log(data[v].to_numpy()) for v in spec.free])
    if np.linalg.matrix_rank(X) < p:
        raise FitError(f"law {spec.name!r}: the variables {spec.free} are collinear in the usable points")
    if sigma_column is None:
        w = np.ones(len(data))
    else:
        sig = points[sigma_column].to_numpy(float)
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
    out = []
    if law["n_points"] < CELLS_PER_PARAMETER * n_coef:
        out.append(f"few points: {law['n_points']} for {n_coef} coefficients (want >= {CELLS_PER_PARAMETER * n_coef})")
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
    if law["bootstrap"]["n_ok"] < 0.9 * law["bootstrap"]["n"]:
        out.append(f"only {law['bootstrap']['n_ok']} of {law['bootstrap']['n']} bootstrap resamples were fittable")
    return out


class Prediction(NamedTuple):
    """A law's value at a point with its bootstrap interval."""

    value: float
    low: float
    high: float


def predict_law(law: dict, values: dict[str, float]) -> Prediction:
    """Evaluate a law record (from ``fit_law`` or ``fit.json``) at ``values`` ({variable: value})."""
    if law.get("status") != "fitted":
        raise FitError(f"law {law.get('name')!r} was not fitted: {law.get('error', '')}")
    given = {canonical(k): float(v) for k, v in values.items()}
    missing = [v for v in law["variables"] if v not in given]
    if missing:
        raise FitError(f"law {law['name']!r} needs {', '.join(law['variables'])}; missing {', '.join(missing)}")
    ln_x = {v: math.log(given[v]) for v in law["variables"]}
    exps = law["exponents"]
    fixed = sum(exps[v]["value"] * ln_x[v] for v in law["variables"] if exps[v]["fixed"])
    free = [v for v in law["variables"] if not exps[v]["fixed"]]
    value = math.log(law["a"]["value"]) + fixed + sum(exps[v]["value"] * ln_x[v] for v in free)
    samples = np.asarray(law["bootstrap"]["samples"], float).reshape(-1, 1 + len(free))
    if not len(samples):
        return Prediction(math.exp(value), math.nan, math.nan)
    draws = samples[:, 0] + fixed + samples[:, 1:] @ np.array([ln_x[v] for v in free])
    ci = law["bootstrap"]["ci"]
    low, high = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)])
    return Prediction(math.exp(value), math.exp(low), math.exp(high))


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
    return {"name": spec.name, "status": "failed", "error": error, "y": spec.y, "variables": list(spec.variables),
            "formula": spec.formula(), "poorly_determined": True, "warnings": [error]}
