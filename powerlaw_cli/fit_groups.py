"""Questions asked across cells: the Power paper's top-k gamma, and whether lr_opt transfers across
widths (muP). (The optimal batch of a group is ``fit_joint``'s.)

All take the per-cell frame built by ``fit_cells.find_cell_optima`` (one row per cell, ``status`` used or
excluded) and the list of cell key columns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

WIDTH_LINKED = ("width", "params_non_embedding", "n_heads")  # change together with width in a muP sweep


def group_label(keys: list[str], values) -> str:
    """``"tokens=1e+09, width=256"`` for the key columns ``keys`` and their ``values``."""
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={_short(v)}" for k, v in zip(keys, values, strict=True)) or "all"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _varying(cells: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if cells[k].nunique(dropna=False) > 1]


def top_k_gamma(cells: pd.DataFrame, keys: list[str], k: int) -> pd.DataFrame:
    """The Power paper's points: per group of cells differing only in batch, the k batches with the lowest
    loss_opt, and gamma = geometric mean of lr_opt / batch over them.

    Returned as law points with ``lr_opt = gamma`` and ``batch_size = 1`` so that the law
    ``lr_opt ~ batch_size^1 + tokens`` fits gamma against tokens unchanged.
    """
    used = cells[cells["status"] == "used"]
    group_keys = [c for c in keys if c not in ("batch_size", "batch_tokens")]
    shown = _varying(used, group_keys)
    rows = []
    for values, group in used.groupby(group_keys, dropna=False, sort=True):
        best = group.nsmallest(k, "loss_opt")
        gamma = float(np.exp(np.mean(np.log(best["lr_opt"] / best["batch_size"]))))
        row = dict(zip(group_keys, values if isinstance(values, tuple) else (values,), strict=True))
        row.update(
            cell=group_label(shown, tuple(row[c] for c in shown)),
            lr_opt=gamma,
            batch_size=1.0,
            batches=best["batch_size"].tolist(),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def transfer_check(
    cells: pd.DataFrame,
    keys: list[str],
    *,
    tolerance: float = 2.0,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Does lr_opt stay put across widths? Needs used cells at two or more widths, other keys equal.

    The statistic is the shift of lr_opt over the sweep's width range: the slope s of log2 lr_opt on
    log2 width within groups (group means removed), times log2(max width / min width). Its interval
    resamples groups and redraws each cell's log2 lr_opt from N(estimate, sigma_log2). Verdict:
    ``transfers`` when the shift and its interval are within a factor ``tolerance`` (default 2, one x2 grid
    step), ``shifts`` when the whole interval is beyond it, else ``uncertain`` (a point estimate beyond
    the tolerance whose interval reaches inside it is noise as far as this test can tell).
    """
    used = cells[cells["status"] == "used"]
    if "width" not in used or used["width"].nunique() < 2:
        return {"status": "skipped", "reason": "the usable cells have fewer than 2 widths"}
    group_keys = [k for k in keys if k not in WIDTH_LINKED]
    groups = [
        g
        for _, g in (used.groupby(group_keys, dropna=False) if group_keys else [((), used)])
        if g["width"].nunique() >= 2
    ]
    if not groups:
        return {"status": "skipped", "reason": "no cells differ only in width"}
    shown = _varying(used, group_keys)
    span = math.log2(used["width"].max() / used["width"].min())
    shift = _slope(groups, [np.log2(g["lr_opt"].to_numpy(float)) for g in groups]) * span
    boot = _transfer_bootstrap(groups, span, n_boot, seed)
    low, high = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)])
    tol = math.log2(tolerance)
    verdict = (
        "transfers"
        if abs(shift) <= tol and -tol <= low and high <= tol
        else "shifts"
        if low > tol or high < -tol
        else "uncertain"
    )
    return {
        "status": "checked",
        "verdict": verdict,
        "tolerance_factor": tolerance,
        "statistic": "lr_opt(max width) / lr_opt(min width) from the slope of log2 lr_opt on log2 width",
        "shift_factor": {"value": 2.0**shift, "low": 2.0**low, "high": 2.0**high},
        "widths": sorted(int(w) for w in used["width"].unique()),
        "n_groups": len(groups),
        "bootstrap": {
            "n": n_boot,
            "seed": seed,
            "ci": ci,
            "resampled": "groups, plus each cell's sigma_log2",
        },
        "groups": [
            {
                "group": group_label(shown, tuple(g[k].iloc[0] for k in shown)),
                "widths": g["width"].astype(int).tolist(),
                "lr_opt": g["lr_opt"].tolist(),
                "max_over_min": float(g["lr_opt"].max() / g["lr_opt"].min()),
            }
            for g in groups
        ],
    }


def _slope(groups: list[pd.DataFrame], ys: list[np.ndarray]) -> float:
    """Pooled within-group slope of y on log2 width."""
    xs = [np.log2(g["width"].to_numpy(float)) for g in groups]
    num = sum(float(((x - x.mean()) * (y - y.mean())).sum()) for x, y in zip(xs, ys, strict=True))
    den = sum(float(((x - x.mean()) ** 2).sum()) for x in xs)
    return num / den


def _transfer_bootstrap(groups, span, n_boot, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        pick = [groups[i] for i in rng.integers(0, len(groups), len(groups))] if len(groups) > 1 else groups
        ys = [
            np.log2(g["lr_opt"].to_numpy(float))
            + rng.normal(0, np.nan_to_num(g["sigma_log2"].to_numpy(float)))
            for g in pick
        ]
        out[b] = _slope(pick, ys) * span
    return out


def width_loss_warnings(cells: pd.DataFrame, keys: list[str]) -> list[str]:
    """Warnings for muP cells whose best loss does not fall as the width grows (experiment 1's symptom).

    Among used ``mup`` cells that differ only in width (the transfer check's groups), every pair of
    neighbouring widths where the wider cell's loss_opt is not below the narrower one's gives a warning with
    both losses and their stds. More width should help; when it does not, the base model (its init_std and
    multipliers, which muP carries to every width) is the first suspect: tune it (docs/mup.md).
    """
    used = cells[cells["status"] == "used"] if "status" in cells else cells.iloc[:0]
    # a table that does not say it is muP makes no claim to check
    used = used[used["parametrization"] == "mup"] if "parametrization" in used else used.iloc[:0]
    if "width" not in used or used["width"].nunique() < 2:
        return []
    group_keys = [k for k in keys if k not in WIDTH_LINKED]
    shown = _varying(used, group_keys)
    out = []
    for _, g in used.groupby(group_keys, dropna=False) if group_keys else [((), used)]:
        g = g.sort_values("width")
        loss, sigma, width = (g[c].to_numpy(float) for c in ("loss_opt", "loss_sigma", "width"))
        for i in range(len(g) - 1):
            if loss[i + 1] >= loss[i]:
                where = group_label(shown, tuple(g[k].iloc[0] for k in shown))
                out.append(
                    f"muP best loss does not improve with width{f' ({where})' if shown else ''}: "
                    f"{loss[i + 1]:.4g} ± {sigma[i + 1]:.2g} at width {width[i + 1]:g} against "
                    f"{loss[i]:.4g} ± {sigma[i]:.2g} at width {width[i]:g}; tune the base model "
                    "(LR, init_std, output_multiplier) at the base width: see docs/mup.md"
                )
    return out
