"""Figures of ``plsweep curves``: per group, every curve's data against the multi-power law (solid) and
Tissue et al.'s law (dashed), fitted curves and predicted ones told apart, and a ``--predict`` schedule."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .curve_laws import LAWS, Design, law_loss
from .curves_data import Curve
from .plots import plt, save

MAX_FIGURES = 60


def _name(label: str, index: int) -> str:
    return f"curves_{index:02d}_" + (re.sub(r"[^A-Za-z0-9.=-]+", "_", label)[:80] or "all") + ".png"


def group_figures(data: dict, curves: list[Curve], smooth: int, out: Path) -> list[Path]:
    """One PNG per fitted group (the first ``MAX_FIGURES``): loss against step, data and both laws."""
    from .curves import smoothed

    by_run = {c.run: c for c in curves}
    paths = []
    fitted = [g for g in data["groups"] if g["status"] == "fitted"][:MAX_FIGURES]
    for index, group in enumerate(fitted):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        low, high = np.inf, -np.inf
        for i, run in enumerate(group["fitted"] + group["predicted"]):
            curve = by_run[run]
            role = "fitted" if run in group["fitted"] else "predicted"
            color = f"C{i % 10}"
            keep = curve.steps > curve.warmup_steps
            steps, y = curve.steps[keep], smoothed(curve.loss, smooth)[keep]
            low, high = min(low, float(y.min())), max(high, float(y.max()))
            ax.plot(steps, y, ".", ms=2, color=color, alpha=0.35)
            design = Design.build(curve.eta, steps)
            for name, style in (("mpl", "-"), ("tissue", "--")):
                params = [group["laws"][name]["params"][p]["value"] for p in LAWS[name].params]
                label = f"{curve.title or run} ({role})" if name == "mpl" else None
                ax.plot(steps, law_loss(name, params, design), style, color=color, lw=1.2, label=label)
        prediction = group.get("prediction")
        if prediction:
            points = np.array(prediction["mpl"]["curve"])
            final = prediction["mpl"]["final"]
            ax.plot(
                points[:, 0], points[:, 1], "-", color="k", lw=1.5, label=f"predict {prediction['schedule']}"
            )
            if "low" in final:
                ax.vlines(points[-1, 0], final["low"], final["high"], color="k", lw=3, alpha=0.5)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{data['loss_column']}" + (f" (moving mean of {smooth})" if smooth > 1 else ""))
        ax.set_title(f"{group['label']}\nmulti-power law (solid), Tissue et al. 2024 (dashed)", fontsize=9)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))  # the data's range
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(save(fig, out / _name(group["label"], index)))
    return paths
