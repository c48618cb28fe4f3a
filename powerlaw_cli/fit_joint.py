"""The optimum of every group: the optimal batch B_opt, the optimal LR at B_opt and the loss there.

A group (``fit_cells``) whose cells differ in batch size is a 2-D grid in (LR, batch). Its optimum is
found on the *profile* of its cells: each cell (one batch) has its LR optimum lr_opt(B) and the loss
there, loss_opt(B), with their stds (``fit_optimum``). Then, with the same method as for LR:

- B_opt: the optimum of loss_opt(B) against log2 B (``parabola``: a quadratic on the best batch and its
  ``window`` neighbours on each side, checked against the argmin; ``band``: the geometric mean of the
  batches within ``band`` of the best loss; ``argmin``), and loss_opt at B_opt: the vertex's value (else
  the best batch's loss);
- lr_opt at B_opt: a straight line of log2 lr_opt(B) on log2 B through the same window (weighted by
  1 / sigma^2), evaluated at B_opt: exact when lr_opt is a power of B near the optimum.

A B_opt at the smallest or largest batch of the group is ``edge_low`` / ``edge_high`` and the group is
excluded from every law, as an LR edge excludes a cell; so is a group whose best batch has a neighbour
without an interior LR optimum (its loss is then unknown), or with fewer than ``min_points`` usable batches.

Intervals: a parametric bootstrap of the group. ``n_draws`` times, every cell's loss_opt is redrawn from
N(loss_opt, loss_sigma) and its log2 lr_opt from N(log2 lr_opt, sigma_log2), and the three quantities are
recomputed; a draw whose best batch falls on the profile's edge takes that batch (a censored draw, counted
in ``edge_draws``). Percentile intervals at ``ci``; ``*_sigma_log2`` are the draws' stds (for weighted laws).
The errors of a cell's lr_opt and loss_opt are drawn independently (their correlation is not estimated).
Groups of one batch (a 1-D sweep) take their cell's optimum and its normal interval at ``ci``.

Step Law's own estimator (``band_mode="steplaw"`` with ``method="band"``; Li et al. 2025): no profile.
Every (LR, batch) point of the group (the seeds' mean loss; from every cell, edges included) within
``band`` of the group's best loss is kept, and lr_opt and B_opt are the geometric means of the kept
points' LRs and batches, ``n_band`` their count. A law over groups then weights each group by
``n_band``, which makes its least squares exactly the paper's least squares over all kept points (the
law's variables are constant inside a group). Intervals: the kept points' range (``lr_low``..``lr_high``,
``batch_low``..``batch_high``), ``*_sigma_log2`` their std; loss_opt is the best point's loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .fit_cells import CARRIED
from .fit_groups import group_label
from .fit_optimum import Optimum, find_optimum, normal_z

PROFILE = ("batch_size", "loss_opt", "lr_opt", "status")


def joint_optima(
    cells: pd.DataFrame,
    keys: list[str],
    *,
    method: str = "parabola",
    window: int = 1,
    band: float = 0.0025,
    min_points: int = 3,
    n_draws: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    carry: tuple[str, ...] = CARRIED,
    band_mode: str = "profile",
) -> pd.DataFrame:
    """One row per group of ``cells`` (grouped by ``keys``): B_opt, lr_opt at B_opt, loss_opt, intervals.

    ``carry`` columns outside ``keys`` are kept when constant in the group, else NaN. ``band_mode``
    ``steplaw`` with ``method="band"``: Step Law's band of (LR, batch) points (module docstring).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for row, group in _groups(cells, keys, carry):
        group = group.sort_values("batch_size") if "batch_size" in group else group
        if "batch_size" not in group or group["batch_size"].nunique() < 2:
            row.update(_one_batch(group.iloc[0], ci))
        elif method == "band" and band_mode == "steplaw":
            row.update(_steplaw_band(group, band))
        else:
            options = {"method": method, "window": window, "band": band, "min_points": min_points}
            row.update(_two_d(group, options, rng, n_draws, ci))
        rows.append(row)
    return pd.DataFrame(rows)


def loss_groups(
    runs: pd.DataFrame, keys: list[str], carry: tuple[str, ...] = CARRIED, ci: float = 0.95
) -> pd.DataFrame:
    """A table of final losses (no LR sweep): one row per group, loss_opt = the mean loss of its runs that
    ended ok with a finite loss; loss_sigma = their std / sqrt(count) (NaN for a single run), and the
    normal interval at ``ci``."""
    rows = []
    for row, group in _groups(runs[runs["status"] != "failed"], keys, carry):
        finite = group.loc[(group["status"] == "ok") & np.isfinite(group["loss"]), "loss"]
        sigma = finite.std() / math.sqrt(len(finite)) if len(finite) > 1 else math.nan
        row.update(
            status="used" if len(finite) else "excluded",
            reason="" if len(finite) else "no finite loss",
            batch_varied=False,
            n_runs=len(group),
            loss_opt=finite.mean() if len(finite) else math.nan,
            loss_sigma=sigma,
            loss_low=finite.mean() - normal_z(ci) * sigma,
            loss_high=finite.mean() + normal_z(ci) * sigma,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _groups(frame: pd.DataFrame, keys: list[str], carry: tuple[str, ...]):
    """(row with the key values, carried constants and a label; the group's rows) for each group."""
    shown = [k for k in keys if frame[k].nunique(dropna=False) > 1]
    carried = [c for c in carry if c in frame and c not in keys]
    for values, group in frame.groupby(keys, dropna=False, sort=True) if keys else [((), frame)]:
        row: dict[str, Any] = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row.update({c: group[c].iloc[0] if group[c].nunique() == 1 else math.nan for c in carried})
        row["group"] = group_label(shown, tuple(row[k] for k in shown))
        yield row, group


def _one_batch(cell: pd.Series, ci: float) -> dict:
    z = normal_z(ci) * cell["loss_sigma"]
    return {
        "status": cell["status"],
        "reason": cell["reason"],
        "batch_varied": False,
        "n_batches": 1,
        "method": cell["method"],
        "batch_opt": math.nan,
        "lr_opt": cell["lr_opt"],
        "lr_low": cell["lr_low"],
        "lr_high": cell["lr_high"],
        "sigma_log2": cell["sigma_log2"],
        "loss_opt": cell["loss_opt"],
        "loss_low": cell["loss_opt"] - z,
        "loss_high": cell["loss_opt"] + z,
        "loss_sigma": cell["loss_sigma"],
    }


def _two_d(group: pd.DataFrame, options: dict, rng: np.random.Generator, n_draws: int, ci: float) -> dict:
    batches = group["batch_size"].to_numpy(float)
    used = (group["status"] == "used").to_numpy()
    out: dict[str, Any] = {
        "batch_varied": True,
        "n_batches": len(batches),
        "n_batches_used": int(used.sum()),
        "profile": group[list(PROFILE)].to_dict(orient="records"),
        "notes": [],
    }
    if used.sum() < options["min_points"]:
        return out | _excluded(
            f"too_few_points: {int(used.sum())} batches with an interior LR optimum "
            f"(< {options['min_points']})"
        )
    b, loss, lr = (
        batches[used],
        group["loss_opt"].to_numpy(float)[used],
        group["lr_opt"].to_numpy(float)[used],
    )
    best = float(b[np.argmin(loss)])
    k = int(np.searchsorted(batches, best))
    if k == 0 or k == len(batches) - 1:
        edge = "edge_low" if k == 0 else "edge_high"
        return out | _excluded(
            f"{edge}: best loss at the {'smallest' if k == 0 else 'largest'} batch size tested ({best:.4g})"
        )
    for j in (k - 1, k + 1):
        if not used[j]:
            return out | _excluded(
                f"batch_neighbour_excluded: batch {batches[j]:.4g} next to the best one has no "
                f"interior LR optimum ({group['reason'].iloc[j].split(':')[0]})"
            )
    point = _profile_optimum(b, loss, np.log2(lr), group["sigma_log2"].to_numpy(float)[used], options)
    out |= {
        "status": "used",
        "reason": "",
        "method": point["method"],
        "batch_opt": point["batch"],
        "lr_opt": point["lr"],
        "loss_opt": point["loss"],
    }
    out["notes"] += point["notes"]
    loss_sigma = group["loss_sigma"].to_numpy(float)[used]
    if n_draws < 1 or not np.all(np.isfinite(loss_sigma)):
        out["notes"].append("no intervals: the loss noise of the cells is unknown" if n_draws else "no draws")
        return out | {
            k: math.nan
            for k in (
                "batch_low",
                "batch_high",
                "batch_sigma_log2",
                "lr_low",
                "lr_high",
                "sigma_log2",
                "loss_low",
                "loss_high",
                "loss_sigma",
            )
        }
    intervals = _draw_intervals(b, loss, lr, group, used, options, rng, n_draws, ci)
    out["notes"] += intervals.pop("notes", [])
    return out | intervals


def _steplaw_band(group: pd.DataFrame, band: float) -> dict:
    """Step Law's optimum of a 2-D group: the geometric means of its points within ``band`` of the best."""
    points = np.array(
        [
            (lr, b, mean)
            for b, cell in zip(group["batch_size"], group["points"], strict=True)
            for lr, mean, _ in cell
        ],
        float,
    ).reshape(-1, 3)  # (lr, batch, seed-mean loss)
    out: dict[str, Any] = {
        "batch_varied": True,
        "n_batches": group["batch_size"].nunique(),
        "profile": group[list(PROFILE)].to_dict(orient="records"),  # the cells' optima, for the figure
        "notes": [],
    }
    if not len(points):
        return out | _excluded("too_few_points: no finite point in the group")
    best = points[:, 2].min()
    kept = points[points[:, 2] <= best * (1 + band)]
    log2_lr, log2_b = np.log2(kept[:, 0]), np.log2(kept[:, 1])
    out["notes"].append(f"{len(kept)} (LR, batch) points within {band:.2%} of the best loss")
    for what, column in (("LR", 0), ("batch", 1)):
        if {kept[:, column].min(), kept[:, column].max()} & {
            points[:, column].min(),
            points[:, column].max(),
        }:
            out["notes"].append(f"the band reaches the grid's edge in {what}")
    return out | {
        "status": "used",
        "reason": "",
        "method": "band_steplaw",
        "n_band": len(kept),
        "band_points": kept.tolist(),
        "batch_opt": float(2.0 ** log2_b.mean()),
        "batch_low": float(kept[:, 1].min()),
        "batch_high": float(kept[:, 1].max()),
        "batch_sigma_log2": _spread(log2_b),
        "lr_opt": float(2.0 ** log2_lr.mean()),
        "lr_low": float(kept[:, 0].min()),
        "lr_high": float(kept[:, 0].max()),
        "sigma_log2": _spread(log2_lr),
        "loss_opt": float(best),
        "loss_low": float(best),
        "loss_high": float(best * (1 + band)),
        "loss_sigma": math.nan,
    }


def _spread(x: np.ndarray) -> float:
    return float(x.std()) if len(x) > 1 else math.nan


def _excluded(reason: str) -> dict:
    return {
        "status": "excluded",
        "reason": reason,
        "method": "",
        "batch_opt": math.nan,
        "lr_opt": math.nan,
        "loss_opt": math.nan,
    }


def _profile_optimum(
    b: np.ndarray, loss: np.ndarray, log2_lr: np.ndarray, sigma_log2: np.ndarray, options: dict
) -> dict:
    """B_opt, lr at B_opt and the loss there from one profile (one draw or the estimate)."""
    opt: Optimum = find_optimum(b, loss, divergence_brackets=False, label="batch size", **options)
    i = int(np.argmin(loss))
    if opt.status != "used":  # a draw whose best batch is on the profile's edge: censored there
        return {"batch": b[i], "lr": 2.0 ** log2_lr[i], "loss": loss[i], "method": "edge", "notes": []}
    half = max(1, min(options["window"], i, len(b) - 1 - i))
    window = slice(i - half, i + half + 1)
    x, y, w = np.log2(b[window]), log2_lr[window], 1 / np.maximum(sigma_log2[window], 1e-6) ** 2
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(w))
    return {
        "batch": opt.lr_opt,
        "lr": 2.0 ** (intercept + slope * math.log2(opt.lr_opt)),
        "loss": opt.loss_opt,
        "method": opt.method,
        "notes": opt.notes,
    }


def _draw_intervals(b, loss, lr, group, used, options, rng, n_draws, ci) -> dict:
    loss_sigma = group["loss_sigma"].to_numpy(float)[used]
    sigma_log2 = np.nan_to_num(group["sigma_log2"].to_numpy(float)[used])
    draws = np.empty((n_draws, 3))
    edges = 0
    for d in range(n_draws):
        point = _profile_optimum(
            b, rng.normal(loss, loss_sigma), rng.normal(np.log2(lr), sigma_log2), sigma_log2, options
        )
        edges += point["method"] == "edge"
        draws[d] = math.log2(point["batch"]), math.log2(point["lr"]), point["loss"]
    low, high = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    sd = draws.std(axis=0, ddof=1)
    out = {
        "batch_low": 2.0 ** low[0],
        "batch_high": 2.0 ** high[0],
        "batch_sigma_log2": sd[0],
        "lr_low": 2.0 ** low[1],
        "lr_high": 2.0 ** high[1],
        "sigma_log2": sd[1],
        "loss_low": low[2],
        "loss_high": high[2],
        "loss_sigma": sd[2],
        "edge_draws": edges / n_draws,
    }
    if edges > (1 - ci) * n_draws:
        out["notes"] = [f"{edges / n_draws:.0%} of the draws put B_opt on the edge of the usable batches"]
    return out
