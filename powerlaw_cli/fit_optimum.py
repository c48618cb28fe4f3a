"""The optimal LR of one cell: a local fit of loss against log2 LR, checked against the argmin.

A *cell* is a group of runs that differ only in LR (and seed). Per LR the loss is the mean over the
seeds that finished; an LR where any seed diverged is a "too high" marker, never a point of the curve.

Methods (``method=``):

- ``parabola`` (default): a quadratic in log2 LR on a window *centred on the argmin*: the argmin and
  ``window`` neighbours on each side (default 1: three points), shrunk symmetrically when one side has
  fewer. The vertex must fall between the argmin's two neighbours and the parabola must open upwards,
  else the cell falls back to the argmin and says so. Why three points: real loss curves rise faster
  above the optimum than below. On noiseless curves with the optimum anywhere within a grid step (x2
  grid), the mean |error| of the vertex in grid steps was, for a skewed bowl
  2 (e^{s dx} - 1 - s dx) / s^2 with s = 0.5 / 0.8: 3 points 0.06 / 0.10, 5 points 0.26 / 0.39,
  whole grid (-3..7 steps) 0.29 / 0.25, argmin 0.25; for log cosh (symmetric, not quadratic): 0.015,
  0.03, 0.09 (0.48 on a grid -7..3), 0.25. A wider window averages more noise but adds bias that is the
  same in every cell only if every window has the same width; ``window=2`` is available.
- ``band`` (Step Law): every LR within ``band`` (relative) of the best loss; lr_opt is their geometric mean.
- ``argmin``: the best grid point.
- ``parabola_grid``: a quadratic over the whole grid. Kept for comparison only: it is biased.

Uncertainty, as the std of log2 lr_opt (``sigma_log2``):

- parabola methods: the delta method on the vertex -c1 / (2 c2) with the coefficient covariance from the
  per-seed loss noise ``noise_std`` (``fit.point_noise``: seeds, or pooled local-fit residuals), else the
  window's own residuals (more than 3 points), else half a grid step. The noise is not the only error: on
  a curve that rises faster above its optimum than below, the vertex is biased (measured above: up to 0.1
  grid step with 3 points, 0.4 with 5 or the whole grid), and an interval of the noise alone then covers the
  truth in 43-87% of cells instead of 95% (skews 0.3..0.8, 2 seeds, noise 0.001..0.004, x2 grid). So that
  bias, ``PARABOLA_BIAS_STEPS`` (or ``WIDE_PARABOLA_BIAS_STEPS``) grid steps, is added in quadrature, which
  restores 93-100% coverage in the same measurement.
- argmin: step / sqrt(12), the std of a uniform error over one grid step; band: the same or the
  uniform std over the band's range, whichever is larger.

The loss at the optimum (``loss_opt``) has its own std ``loss_sigma``: the delta method on the vertex
value c0 - c1^2 / (4 c2) for the parabola methods, else the per-seed noise over sqrt(seeds) at the best
point (NaN when the noise is unknown). The joint (LR, batch) optimum draws from both sigmas.

Edges: a best point at the lowest LR tested is ``edge_low`` (excluded). A best point at the highest
finite LR is ``edge_high`` (excluded) unless the next LR up diverged: the loss is then known to rise
(an infinite loss one step up), so the optimum is bracketed between the argmin's lower neighbour and the
divergence; the cell is used with method ``argmin_bracketed`` (lr_opt = the argmin, sigma half a step).
This rule is switched off with ``divergence_brackets=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np

OptimumMethod = Literal["parabola", "band", "argmin", "parabola_grid"]
PARABOLA_BIAS_STEPS = 0.1
"""Bias of a 3-point vertex on skewed loss curves, in grid steps: a model error added to its sigma_log2."""
WIDE_PARABOLA_BIAS_STEPS = 0.4
"""The same for a vertex fitted on 5 or more points (wider windows are more biased)."""
METHODS: tuple[str, ...] = get_args(OptimumMethod)
BandMode = Literal["profile", "steplaw"]
BAND_MODES: tuple[str, ...] = get_args(BandMode)
"""How ``method="band"`` finds the optimum of a group whose batch varies (``fit_joint``): the profile over
batch of its cells' optima, or Step Law's band of (LR, batch) points."""


def normal_z(ci: float) -> float:
    """The half-width in stds of a central normal interval at level ``ci`` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + ci / 2)


@dataclass
class Optimum:
    """The optimum of one cell (LRs in absolute units; sigma and windows in log2 LR)."""

    status: str  # used | excluded
    reason: str  # "" when used, else "edge_low: ..." / "edge_high: ..." / "too_few_points: ..."
    method: str = ""
    lr_opt: float = math.nan
    sigma_log2: float = math.nan
    sigma_method: str = ""
    loss_opt: float = math.nan
    loss_sigma: float = math.nan  # std of loss_opt
    lr_argmin: float = math.nan
    shift_from_argmin_steps: float = math.nan  # (log2 lr_opt - log2 lr_argmin) / grid step
    grid_step_log2: float = math.nan
    parabola: dict | None = (
        None  # {"x0": log2 lr at the centre, "coef": [c2, c1, c0] in (x - x0), "window": [lr_lo, lr_hi]}
    )
    notes: list[str] = field(default_factory=list)


def find_optimum(
    lrs: np.ndarray,
    losses: np.ndarray,
    n_seeds: np.ndarray | None = None,
    diverged_lrs: np.ndarray | None = None,
    *,
    method: OptimumMethod = "parabola",
    window: int = 1,
    band: float = 0.0025,
    min_points: int = 3,
    noise_std: float | None = None,
    divergence_brackets: bool = True,
    label: str = "LR",
) -> Optimum:
    """Estimate the optimum of a loss curve ``losses`` over ``lrs`` (one value per distinct LR).

    ``n_seeds`` weights each mean (default 1); ``diverged_lrs`` are the LRs that diverged; ``noise_std``
    is the per-seed loss noise if known. Works for any positive variable (``label`` names it in
    reasons), e.g. batch sizes.
    """
    if method not in METHODS:
        raise ValueError(f"unknown optimum method {method!r}; valid: {', '.join(METHODS)}")
    order = np.argsort(lrs)
    x = np.log2(np.asarray(lrs, float)[order])
    y = np.asarray(losses, float)[order]
    n = np.ones_like(y) if n_seeds is None else np.asarray(n_seeds, float)[order]
    div = np.log2(np.asarray([] if diverged_lrs is None else diverged_lrs, float))
    step = _grid_step(np.concatenate([x, div]))
    if len(x) < min_points:
        return Optimum(
            "excluded", f"too_few_points: {len(x)} finite points (< {min_points})", grid_step_log2=step
        )
    i = int(np.argmin(y))
    base = {
        "lr_argmin": 2.0 ** x[i],
        "grid_step_log2": step,
        "loss_sigma": noise_std / math.sqrt(n[i]) if noise_std else math.nan,
    }
    if i == 0:
        return Optimum(
            "excluded", f"edge_low: best loss at the lowest {label} tested ({2.0 ** x[0]:.3g})", **base
        )
    if i == len(x) - 1:
        above = div[div > x[i]]
        if divergence_brackets and len(above) and above.min() - x[i] <= 1.5 * step:
            return Optimum(
                "used",
                "",
                "argmin_bracketed",
                2.0 ** x[i],
                step / 2,
                "half grid step",
                y[i],
                shift_from_argmin_steps=0.0,
                **base,
                notes=[
                    f"best at the highest finite {label}; the next {label} ({2.0 ** above.min():.3g}) diverged"
                ],
            )
        return Optimum(
            "excluded",
            f"edge_high: best loss at the highest finite {label} tested ({2.0 ** x[i]:.3g})",
            **base,
        )
    if method == "argmin":
        return _argmin(x, y, i, step, base)
    if method == "band":
        return _band(x, y, i, band, step, base)
    lo, hi = (0, len(x) - 1) if method == "parabola_grid" else _centred(i, len(x), window)
    return _parabola(x, y, n, i, lo, hi, step, noise_std, method, base)


def _grid_step(x: np.ndarray) -> float:
    diffs = np.diff(np.unique(x))
    return float(np.median(diffs)) if len(diffs) else 1.0


def _centred(i: int, count: int, window: int) -> tuple[int, int]:
    half = min(window, i, count - 1 - i)
    return i - half, i + half


def _band(x, y, i, band, step, base) -> Optimum:
    inside = y <= y[i] * (1 + band)
    xs = x[inside]
    sigma = max((xs.max() - xs.min()) / math.sqrt(12), step / math.sqrt(12))
    centre = float(xs.mean())
    return Optimum(
        "used",
        "",
        "band",
        2.0**centre,
        sigma,
        "uniform over the band (at least one grid step)",
        y[i],
        shift_from_argmin_steps=(centre - x[i]) / step,
        **base,
        notes=[f"{int(inside.sum())} LRs within {band:.2%} of the best loss"],
    )


def _argmin(x, y, i, step, base, **extra) -> Optimum:
    """The best grid point as the optimum, with the std of a uniform error over one grid step."""
    return Optimum(
        "used",
        "",
        "argmin",
        2.0 ** x[i],
        step / math.sqrt(12),
        "uniform over one grid step",
        y[i],
        shift_from_argmin_steps=0.0,
        **base,
        **extra,
    )


def _parabola(x, y, n, i, lo, hi, step, noise_std, method, base) -> Optimum:
    xs, ys, ns = x[lo : hi + 1] - x[i], y[lo : hi + 1], n[lo : hi + 1]
    design = np.stack([xs**2, xs, np.ones_like(xs)], axis=1)
    w = np.sqrt(ns)
    coef, *_ = np.linalg.lstsq(design * w[:, None], ys * w, rcond=None)
    c2, c1, c0 = coef
    window = {"x0": float(x[i]), "coef": [float(c) for c in coef], "window": [2.0 ** x[lo], 2.0 ** x[hi]]}
    vertex = -c1 / (2 * c2) if c2 > 0 else math.nan
    if not (c2 > 0 and x[i - 1] - x[i] < vertex < x[i + 1] - x[i]):
        why = "parabola opens downwards" if c2 <= 0 else "parabola vertex outside the argmin's neighbours"
        return _argmin(x, y, i, step, base, parabola=window, notes=[f"{why}: fell back to the argmin"])
    cov, how = _coef_cov(design, w, ys, coef, noise_std)
    if cov is None:
        sigma, sigma_method, loss_sigma = step / 2, "half grid step (noise unknown)", math.nan
    else:  # delta method: gradients of the vertex -c1/(2 c2) and of its value c0 - c1^2/(4 c2)
        grad = np.array([c1 / (2 * c2**2), -1 / (2 * c2), 0.0])
        bias = step * (PARABOLA_BIAS_STEPS if hi - lo == 2 else WIDE_PARABOLA_BIAS_STEPS)
        sigma = math.sqrt(max(float(grad @ cov @ grad), 0.0) + bias**2)
        sigma_method = f"{how}, with the window's bias on skewed curves"
        grad_value = np.array([c1**2 / (4 * c2**2), -c1 / (2 * c2), 1.0])
        loss_sigma = math.sqrt(max(float(grad_value @ cov @ grad_value), 0.0))
    base = base | {"loss_sigma": loss_sigma}
    loss_opt = float(c0 - c1**2 / (4 * c2))
    return Optimum(
        "used",
        "",
        method,
        2.0 ** (x[i] + vertex),
        sigma,
        sigma_method,
        loss_opt,
        shift_from_argmin_steps=vertex / step,
        parabola=window,
        **base,
        notes=[f"{hi - lo + 1}-point window"],
    )


def _coef_cov(design, w, ys, coef, noise_std) -> tuple[np.ndarray | None, str]:
    """Covariance of the parabola's coefficients from the seed noise, else the window's residuals
    (more than 3 points), else None (noise unknown)."""
    dof = len(ys) - 3
    if noise_std is not None and noise_std > 0:
        var, how = noise_std**2, "parabola covariance (seed noise)"
    elif dof > 0:
        resid = (design @ coef - ys) * w
        var, how = float(resid @ resid) / dof, "parabola covariance (window residuals)"
    else:
        return None, ""
    weighted = design * w[:, None]
    return var * np.linalg.pinv(weighted.T @ weighted), how
