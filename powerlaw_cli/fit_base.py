"""The tuned muP base model: a joint optimum in the LR and the base settings muP transfers.

A base-tuning sweep (``sweeps/mup-base.toml``, docs/mup.md) varies, at the base width, the LR and some of
``BASE_SETTINGS``. Each group of the fit (one value of each base setting; ``fit_joint``) has its LR
optimum and the loss there. Per *context* (one value of every other group key, e.g. one budget):

- the best group: the lowest loss_opt;
- each base setting h that varies: its *profile* loss(h), the lowest loss_opt over the groups at that
  value of h (as ``fit_joint`` profiles the batch over LR), and h_opt, its optimum by the fit's method in
  log2 h (``fit_optimum.find_optimum``: the parabola's vertex around the best value). A best value on the
  grid's edge is ``edge_low`` / ``edge_high``: h_opt is then that grid value and the grid should be widened;
  a setting with fewer than 3 values takes its best value (``too_few_points``);
- lr_opt: the LR optimum of the best group (an LR tuned together with the base settings), loss_opt its loss.

Intervals: a parametric bootstrap like the joint (LR, batch) optimum's. ``n_draws`` times, every group's
loss_opt is redrawn from N(loss_opt, loss_sigma) and its log2 lr_opt from N(log2 lr_opt, sigma_log2), and
h_opt of every setting and lr_opt (of the draw's best group) are recomputed; percentile intervals at ``ci``.
An edge setting's interval is its draws' (mostly the edge value): read its status, not its interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .fit_groups import group_label
from .fit_optimum import find_optimum

BASE_SETTINGS = ("init_std", "output_multiplier", "embedding_multiplier")
"""The model settings muP carries unchanged from the base width to every width (besides the LR)."""


def base_optima(
    groups: pd.DataFrame,
    group_keys: list[str],
    *,
    method: str = "parabola",
    window: int = 1,
    band: float = 0.0025,
    n_draws: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> list[dict[str, Any]]:
    """One record per context of ``groups`` in which base settings vary (empty when none do); see the
    module docstring. Each: context, tuned (the settings), best_group, settings {h: value, low, high,
    status, reason, method, grid}, lr_opt and loss_opt {value, low, high}, n_groups, notes."""
    tuned = [k for k in BASE_SETTINGS if k in group_keys and groups[k].nunique() > 1]
    if not tuned:
        return []
    context = [k for k in group_keys if k not in tuned and groups[k].nunique(dropna=False) > 1]
    rng = np.random.default_rng(seed)
    options = {"method": method, "window": window, "band": band}
    out = []
    for values, part in groups.groupby(context, dropna=False, sort=True) if context else [((), groups)]:
        record = {"context": group_label(context, values), "tuned": tuned}
        record |= _context_optimum(part.reset_index(drop=True), tuned, options, rng, n_draws, ci)
        out.append(record)
    return out


def _context_optimum(part, tuned, options, rng, n_draws, ci) -> dict[str, Any]:
    used = part[part["status"] == "used"].reset_index(drop=True)
    if used.empty:
        return {"status": "excluded", "reason": "no group with an interior LR optimum", "n_groups": len(part)}
    loss = used["loss_opt"].to_numpy(float)
    log2_lr = np.log2(used["lr_opt"].to_numpy(float))
    grid = {h: used[h].to_numpy(float) for h in tuned}
    best = int(np.argmin(loss))
    point = {h: _profile_optimum(grid[h], loss, h, options) for h in tuned}
    record: dict[str, Any] = {
        "status": "tuned",
        "reason": "",
        "n_groups": len(part),
        "n_groups_used": len(used),
        "best_group": str(used["group"].iloc[best]) if "group" in used else "",
        "settings": {
            h: {
                "value": point[h]["value"],
                "status": point[h]["status"],
                "reason": point[h]["reason"],
                "method": point[h]["method"],
                "grid": sorted(set(grid[h].tolist())),
            }
            for h in tuned
        },
        "lr_opt": {"value": float(2.0 ** log2_lr[best])},
        "loss_opt": {"value": float(loss[best])},
        "notes": [],
    }
    sigma = used["loss_sigma"].to_numpy(float)
    if n_draws < 1 or not np.all(np.isfinite(sigma)):
        record["notes"].append(
            "no intervals: the groups' loss noise is unknown (run two or more seeds)"
            if n_draws
            else "no draws"
        )
        return record
    lr_sigma = np.nan_to_num(used["sigma_log2"].to_numpy(float))
    draws = np.empty((n_draws, len(tuned) + 2))
    for d in range(n_draws):
        drawn = rng.normal(loss, sigma)
        i = int(np.argmin(drawn))
        settings = [math.log2(_profile_optimum(grid[h], drawn, h, options)["value"]) for h in tuned]
        draws[d] = [*settings, rng.normal(log2_lr[i], lr_sigma[i]), drawn[i]]
    low, high = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    for j, h in enumerate(tuned):
        record["settings"][h] |= {"low": float(2.0 ** low[j]), "high": float(2.0 ** high[j])}
    record["lr_opt"] |= {"low": float(2.0 ** low[-2]), "high": float(2.0 ** high[-2])}
    record["loss_opt"] |= {"low": float(low[-1]), "high": float(high[-1])}
    return record


def _profile_optimum(values: np.ndarray, loss: np.ndarray, name: str, options: dict) -> dict[str, Any]:
    """h_opt of one base setting from the profile min loss(h) over the groups at each value of h."""
    grid = np.unique(values)
    profile = np.array([loss[values == v].min() for v in grid])
    opt = find_optimum(grid, profile, divergence_brackets=False, label=name, min_points=3, **options)
    if opt.status == "used":
        return {"value": float(opt.lr_opt), "status": "used", "reason": "", "method": opt.method}
    return {
        "value": float(grid[int(np.argmin(profile))]),
        "status": opt.reason.split(":")[0],
        "reason": opt.reason,
        "method": "argmin",
    }


def base_warnings(base: list[dict[str, Any]]) -> list[str]:
    """One warning per tuned setting whose best value is not interior to its grid, and per record without
    intervals."""
    out = []
    for record in base:
        where = f" ({record['context']})" if record["context"] != "all" else ""
        for name, s in record.get("settings", {}).items():
            if s["status"] != "used":
                out.append(
                    f"base setting {name}{where}: {s['reason']}; widen its grid (the value reported is that grid point)"
                )
        out += [f"base settings{where}: {note}" for note in record.get("notes", []) if note.startswith("no ")]
    return out
