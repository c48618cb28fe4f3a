"""The loss law L(x_1, ..., x_k) = E + sum_i A_i * x_i^-alpha_i (Hoffmann et al. 2022, approach 3).

``loss ~ N + D`` is their L(N, D) = E + A N^-alpha + B D^-beta; ``loss ~ D`` is E + B D^-beta, for tables
where only D varies. Fitted the way the careful replication does it (Besiroglu et al. 2024):

- parameters theta = (e, a_i, alpha_i) with E = exp(e), A_i = exp(a_i), so that
  ln L_hat = logsumexp(e, a_i - alpha_i ln x_i) (no sign constraints);
- objective: sum over points of Huber_delta(ln L_hat - ln L) with delta = 1e-3 (``HUBER_DELTA``);
- L-BFGS-B (analytic gradient) from a grid of starts: e in {-1, -0.5, ..., 1}, a_i in {0, 5, ..., 25},
  alpha_i in {0, 0.5, ..., 2} (4,500 starts for two variables). The objective is evaluated on the whole
  grid first and L-BFGS-B runs from the ``N_STARTS`` best starts: the grid's job is to land in the basin
  of the global minimum, and the best few of it do that at a fraction of the cost;
- intervals: percentile bootstrap over points (cells or groups, never rows), each resample refitted from
  the full fit's optimum (and from the 2 best grid starts on that resample when that run does not
  converge), deviations scaled by sqrt(n / (n - p)) like the power laws. The samples are kept so that predictions have intervals from ``fit.json`` alone.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize
from scipy.special import huber

from .fit_spec import (
    MAX_EXPONENT_CI_WIDTH,
    FitError,
    LawSpec,
    bootstrap_warnings,
    few_points_warnings,
    law_data,
)

HUBER_DELTA = 1e-3
GRID_E = np.arange(-1.0, 1.01, 0.5)
GRID_A = np.arange(0.0, 25.1, 5.0)
GRID_ALPHA = np.arange(0.0, 2.01, 0.5)
N_STARTS = 8
GRID_CELLS = 2_000_000  # grid points x data points evaluated at once


def fit_loss_law(
    points: pd.DataFrame,
    spec: LawSpec,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    id_column: str = "group",
) -> dict:
    """Fit ``spec`` (``loss_opt ~ X1 + ...``) to ``points``; return a JSON-ready law record."""
    data = law_data(points, spec)
    k = len(spec.variables)
    if len(data) < 2 * k + 2:
        raise FitError(
            f"law {spec.name!r}: {len(data)} usable points for {2 * k + 1} parameters; "
            f"need at least {2 * k + 2}"
        )
    for v in spec.variables:
        if data[v].nunique() < 3:
            raise FitError(
                f"law {spec.name!r}: {v} takes {data[v].nunique()} values in the usable points; "
                f"its term A * {v}^-alpha needs at least 3"
            )
    ln_x = np.log(data[list(spec.variables)].to_numpy().T)  # [variables, points]
    ln_y = np.log(data[spec.y].to_numpy())
    grid = _grid(k)
    theta, converged = _fit(ln_x, ln_y, _best_starts(grid, ln_x, ln_y, N_STARTS))
    boot = _bootstrap(ln_x, ln_y, theta, grid, n_boot, seed)
    if len(boot):  # small-sample correction, as for the power laws
        boot = theta + math.sqrt(len(ln_y) / (len(ln_y) - len(theta))) * (boot - theta)
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    lows, highs = (
        np.percentile(boot, q, axis=0) if len(boot) else np.full(len(theta), np.nan) for q in (lo_q, hi_q)
    )

    def estimate(j: int, transform=math.exp) -> dict:
        return {"value": transform(theta[j]), "low": transform(lows[j]), "high": transform(highs[j])}

    resid = _predict_ln(theta, ln_x) - ln_y
    law = {
        "name": spec.name,
        "status": "fitted",
        "form": "hoffmann",
        "y": spec.y,
        "variables": list(spec.variables),
        "formula": spec.formula(),
        "fitted_in": "natural log of the loss",
        "loss": "huber",
        "huber_delta": HUBER_DELTA,
        "E": estimate(0),
        "terms": {
            v: {"A": estimate(1 + 2 * i), "alpha": estimate(2 + 2 * i, float)}
            for i, v in enumerate(spec.variables)
        },
        "r2": 1 - float(resid @ resid) / float(((ln_y - ln_y.mean()) ** 2).sum()),
        "rmse_ln": float(np.sqrt(np.mean(resid**2))),
        "n_points": len(ln_y),
        "points": [str(c) for c in points[id_column]] if id_column in points else [],
        "data": {c: data[c].tolist() for c in data},
        "residuals_ln": resid.tolist(),
        "ranges": {v: [float(data[v].min()), float(data[v].max())] for v in spec.variables},
        "optimizer": {
            "method": "L-BFGS-B",
            "grid_starts": len(grid),
            "optimized_starts": N_STARTS,
            "converged": converged,
        },
        "bootstrap": {
            "n": n_boot,
            "n_ok": len(boot),
            "seed": seed,
            "ci": ci,
            "resampled": id_column + "s",
            "names": _names(spec.variables),
            "samples": np.round(boot, 8).tolist(),
        },
    }
    law["warnings"] = _warnings(law, len(theta))
    law["poorly_determined"] = bool(law["warnings"])
    return law


def loss_curve(law: dict, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A fitted loss law at arrays of its variables: (value per point, bootstrap draws [n_ok, points])."""
    ln_x = np.stack([np.log(np.asarray(values[v], float)) for v in law["variables"]])
    theta = [math.log(law["E"]["value"])]
    for v in law["variables"]:
        theta += [math.log(law["terms"][v]["A"]["value"]), law["terms"][v]["alpha"]["value"]]
    samples = np.asarray(law["bootstrap"]["samples"], float).reshape(-1, len(theta))
    draws = np.array([np.exp(_predict_ln(s, ln_x)) for s in samples]).reshape(len(samples), ln_x.shape[1])
    return np.exp(_predict_ln(np.array(theta), ln_x)), draws


def _names(variables) -> list[str]:
    return ["ln_E", *itertools.chain.from_iterable((f"ln_A_{v}", f"alpha_{v}") for v in variables)]


def _grid(k: int) -> np.ndarray:
    """Every start (e, a_1, alpha_1, ..., a_k, alpha_k) of the grid: [starts, 1 + 2k]."""
    axes = [GRID_E] + [GRID_A, GRID_ALPHA] * k
    return np.array(list(itertools.product(*axes)))


def _terms(theta: np.ndarray, ln_x: np.ndarray) -> np.ndarray:
    """The log of each term: [1 + k, points] for one theta, [starts, 1 + k, points] for many."""
    theta = np.atleast_2d(theta)
    a, alpha = theta[:, 1::2, None], theta[:, 2::2, None]
    power = a - alpha * ln_x[None]
    e = np.broadcast_to(theta[:, :1, None], (theta.shape[0], 1, ln_x.shape[1]))
    return np.concatenate([e, power], axis=1)


def _logsumexp(terms: np.ndarray, axis: int) -> np.ndarray:
    top = terms.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(terms - top).sum(axis=axis))


def _predict_ln(theta: np.ndarray, ln_x: np.ndarray) -> np.ndarray:
    return _logsumexp(_terms(theta, ln_x)[0], axis=0)


def _jacobian(theta: np.ndarray, ln_x: np.ndarray) -> np.ndarray:
    """d ln L_hat / d theta at every point: [points, 1 + 2k] (the softmax of the terms, times -ln x for alpha)."""
    terms = _terms(theta, ln_x)[0]
    weights = np.exp(terms - _logsumexp(terms, axis=0))
    jac = np.empty((ln_x.shape[1], len(theta)))
    jac[:, 0], jac[:, 1::2], jac[:, 2::2] = weights[0], weights[1:].T, -(weights[1:] * ln_x).T
    return jac


def _objective(theta: np.ndarray, ln_x: np.ndarray, ln_y: np.ndarray) -> tuple[float, np.ndarray]:
    """Huber loss of the log residuals (scaled by 1 / delta^2 so that L-BFGS-B's tolerances bite) and its
    gradient."""
    r = _predict_ln(theta, ln_x) - ln_y
    grad = np.clip(r, -HUBER_DELTA, HUBER_DELTA) @ _jacobian(theta, ln_x)
    return float(huber(HUBER_DELTA, r).sum()) / HUBER_DELTA**2, grad / HUBER_DELTA**2


def _best_starts(grid: np.ndarray, ln_x: np.ndarray, ln_y: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` starts of ``grid`` with the lowest objective (evaluated in chunks, vectorized)."""
    chunk = max(1, GRID_CELLS // max(ln_x.shape[1], 1))
    values = np.concatenate(
        [
            huber(HUBER_DELTA, _logsumexp(_terms(grid[i : i + chunk], ln_x), axis=1) - ln_y).sum(axis=1)
            for i in range(0, len(grid), chunk)
        ]
    )
    return grid[np.argsort(values)[:count]]


def _fit(ln_x: np.ndarray, ln_y: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, bool]:
    """L-BFGS-B from every start; the best optimum and whether its run converged.

    The optimizer works with centred logs, a_i - alpha_i ln x_i = (a_i - alpha_i c_i) - alpha_i (ln x_i - c_i),
    c_i the mean of ln x_i: a_i and alpha_i then hardly trade off, and L-BFGS-B needs far fewer steps.
    """
    centre = ln_x.mean(axis=1)
    shift = np.zeros(starts.shape[1])
    best = None
    for start in starts:
        shift[1::2] = start[2::2] * centre  # a' = a - alpha * c
        result = minimize(
            _objective,
            start - shift,
            args=(ln_x - centre[:, None], ln_y),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "ftol": 1e-10, "gtol": 1e-7},
        )
        if np.all(np.isfinite(result.x)) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise FitError("the loss law could not be fitted from any start")
    theta = best.x.copy()
    theta[1::2] += theta[2::2] * centre
    return theta, bool(best.success)


def _bootstrap(ln_x, ln_y, theta, grid, n_boot, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(ln_y), len(ln_y))
        x, y = ln_x[:, idx], ln_y[idx]
        if any(len(np.unique(row)) < 2 for row in x):
            continue
        result = least_squares(
            lambda t, x=x, y=y: _predict_ln(t, x) - y,
            theta,
            jac=lambda t, x=x, y=y: _jacobian(t, x),
            loss="huber",
            f_scale=HUBER_DELTA,
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
        )
        if result.success and np.all(np.isfinite(result.x)):
            out.append(result.x)
            continue
        try:
            out.append(_fit(x, y, np.vstack([theta, _best_starts(grid, x, y, 2)]))[0])
        except FitError:
            continue
    return np.array(out).reshape(-1, len(theta))


def _warnings(law: dict, n_coef: int) -> list[str]:
    out = few_points_warnings(law["n_points"], n_coef) + bootstrap_warnings(law["bootstrap"])
    if not law["optimizer"]["converged"]:
        out.append("L-BFGS-B did not report convergence at the best start")
    for v, term in law["terms"].items():
        alpha = term["alpha"]
        if not alpha["high"] - alpha["low"] <= MAX_EXPONENT_CI_WIDTH:
            out.append(
                f"exponent alpha of {v} poorly determined: interval [{alpha['low']:.3g}, {alpha['high']:.3g}]"
            )
    return out
