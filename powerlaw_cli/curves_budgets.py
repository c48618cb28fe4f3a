"""``fit --predicted-budgets``: runs of budgets that were not trained, their final loss predicted by the
multi-power law fitted on the trained curves of the same model (``curves``).

Per model (LR, batch and every other setting but the schedule, budget and seed: ``curves_data.MODEL_COLUMNS``)
the law is fitted on every trained curve of that model, and the model's own schedule (from its longest
run's config) is predicted at each budget. Each prediction becomes a runs-table row like that run's, with
``tokens`` the budget, ``loss`` the predicted final loss, ``predicted`` True and ``loss_low``/``loss_high``
its 95% block-bootstrap interval; the fit then treats it like a trained run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ScheduleConfig, section_from_dict
from .curves import PredictSpec, fit_group, predict_schedule
from .curves_data import MODEL_COLUMNS, load_curves
from .fit_spec import FitError


def parse_budgets(text: str) -> list[float]:
    """``"1e6,2097152"`` -> [1e6, 2097152.0]: positive token counts, else ``FitError``."""
    try:
        budgets = [float(item) for item in text.split(",")]
    except ValueError:
        raise FitError(f"--predicted-budgets {text!r}: expected comma-separated token counts") from None
    if not all(b > 0 and b == b for b in budgets):
        raise FitError(f"--predicted-budgets {text!r}: budgets must be positive")
    return budgets


def predicted_runs(
    source: str | Path, runs: pd.DataFrame, budgets: list[float], n_boot: int = 50, seed: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """Rows of ``runs``' columns for every (model, budget) not trained, and warnings (one per model skipped)."""
    if "config" not in runs:
        raise FitError("--predicted-budgets needs a sweep directory (its curves and run configs)")
    found = load_curves(source)
    by_run = {c.run: c for c in found.curves}
    keys = [k for k in MODEL_COLUMNS if k in runs]
    ok = runs[(runs["status"] == "ok") & runs["run_id"].isin(by_run)]
    rows, warnings = [], []
    for _, members in ok.groupby(keys, dropna=False, sort=False):
        curves = [by_run[r] for r in members["run_id"]]
        longest = members.loc[members["tokens"].idxmax()]
        try:
            _, outcomes, _ = fit_group(curves, [], 0, n_boot, seed)
        except FitError as err:
            warnings.append(f"--predicted-budgets: runs {', '.join(members['run_id'])}: {err}")
            continue
        section = json.loads(longest["config"])["schedule"]
        for budget in budgets:
            if (members["tokens"] == budget).any():
                continue
            cfg = section_from_dict(ScheduleConfig, section, "schedule")
            final = predict_schedule(PredictSpec(cfg, budget), curves, outcomes)["mpl"]["final"]
            row = longest.to_dict()
            row |= {"tokens": float(budget), "loss": final["value"], "predicted": True}
            row |= {
                "loss_low": final.get("low"),
                "loss_high": final.get("high"),
                "run_id": f"predicted-{longest['run_id']}-{budget:g}",
            }
            if "decay_tokens" in row:
                row["decay_tokens"] = (
                    cfg.decay_length(int(budget)) if cfg.name in ("wsd", "wsd_s", "power") else 0
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=[*runs.columns, "predicted", "loss_low", "loss_high"]), warnings


def flag_cells(fit: dict, predicted: pd.DataFrame) -> int:
    """Mark in ``fit`` (fit.json's dict) every cell holding predicted losses: ``predicted`` True and
    ``predicted_points`` [[lr, loss, low, high]]; return how many cells were marked."""
    keys = fit["cell_keys"]
    marked = 0
    for cell in fit["cells"]:
        mine = predicted
        for key in keys:
            mine = mine[np.array([_same(v, cell.get(key)) for v in mine[key]], dtype=bool)]
        if len(mine):
            cell["predicted"] = True
            cell["predicted_points"] = mine[["lr", "loss", "loss_low", "loss_high"]].to_numpy().tolist()
            marked += 1
    return marked


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(abs(float(a)), abs(float(b)), 1.0)
    return a == b or (pd.isna(a) and b is None)
