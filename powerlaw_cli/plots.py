"""matplotlib figures: schedules, coord checks, LR curves and fits.

Every function takes plain data (numbers, arrays, data frames), writes one PNG and returns its path.
Figures are files only (the Agg backend): nothing here needs a screen.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating parent folders) and close it; return the file written (a path
    without a suffix gets ``.png``, as matplotlib adds it)."""
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_schedule(
    points: list[tuple[float, float]] | dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """LR against tokens seen: one curve of (tokens, lr) points, or {label: points} overlaid.

    ``schedules.sample(schedule, total_tokens)`` gives the points.
    """
    curves = points if isinstance(points, dict) else {"": points}
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        tokens, lrs = zip(*curve, strict=True)
        ax.plot(tokens, lrs, label=label or None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    if any(curves):
        ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)


# --- fit figures (plsweep fit): they take the fit.json dict --------------------------------------------

import numpy as np  # noqa: E402


def plot_cell_curves(fit: dict, path: str | Path, max_cells: int = 60) -> Path:
    """Loss against LR, one small panel per cell: points, the local parabola, lr_opt with its interval,
    diverged LRs as red x at the top; excluded cells are grey with their reason."""
    cells = fit["cells"][:max_cells]  # the first max_cells, in the order of the cell keys
    ncols = min(6, max(len(cells), 1))
    nrows = -(-len(cells) // ncols) or 1
    lines = max((c["cell"].count(", ") + 2 for c in cells), default=1)  # title lines, with the reason
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.6 * ncols, (2.2 + 0.12 * lines) * nrows),
        squeeze=False,
        gridspec_kw={"hspace": 0.25 + 0.12 * lines, "wspace": 0.35},
    )
    for ax in axes.flat[len(cells) :]:
        ax.axis("off")
    for ax, cell in zip(axes.flat, cells, strict=False):
        pts = np.asarray(cell["points"], float).reshape(-1, 3)
        used = cell["status"] == "used"
        ax.plot(pts[:, 0], pts[:, 1], "o", ms=3, color="C0" if used else "0.6")
        par = cell.get("parabola")
        if par:
            xs = np.linspace(np.log2(par["window"][0]), np.log2(par["window"][1]), 50)
            ax.plot(2.0**xs, np.polyval(par["coef"], xs - par["x0"]), "-", color="C1", lw=1)
        if used:
            ax.axvline(cell["lr_opt"], color="C3", lw=1)
            ax.axvspan(cell["lr_low"], cell["lr_high"], color="C3", alpha=0.15)
        if cell["diverged_lrs"]:
            tops = [0.95] * len(cell["diverged_lrs"])
            ax.plot(cell["diverged_lrs"], tops, "x", color="red", transform=ax.get_xaxis_transform())
        _light_log_axis(ax)
        name = cell["cell"].replace(", ", "\n")  # one key per line: long labels overlap their neighbours
        label = name if used else f"{name}\n{cell['reason'].split(':')[0]}"
        label = f"PREDICTED (multi-power law)\n{label}" if cell.get("predicted") else label
        ax.set_title(label, fontsize=6, color="black" if used else "0.4")
        ax.tick_params(labelsize=6)
    shown = f" (first {len(cells)} of {len(fit['cells'])} cells)" if len(cells) < len(fit["cells"]) else ""
    fig.supxlabel("lr (base LR); red x: diverged" + shown)
    fig.supylabel("loss")
    return save(fig, path)


def _light_log_axis(ax) -> None:
    """A log2 x axis with few plain tick labels (mathtext ticks on dozens of panels are slow)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=4))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(MaxNLocator(3))


def plot_law(fit: dict, name: str, path: str | Path) -> Path:
    """A fitted law against each of its variables (one panel each), one series per combination of the
    others, with the law's line and its bootstrap band (power laws on log-log axes, loss laws on a log x)."""
    from .fit_laws import law_curve
    from .fit_spec import SHORT_UNITS

    law = fit["laws"][name]
    data = {k: np.asarray(v, float) for k, v in law["data"].items()}
    variables = law["variables"]
    ci = law["bootstrap"]["ci"]
    fig, axes = plt.subplots(1, len(variables), figsize=(5 * len(variables), 4), squeeze=False)
    for ax, var in zip(axes.flat, variables, strict=False):
        others = [v for v in variables if v != var]
        combos = sorted({tuple(data[o][i] for o in others) for i in range(len(data[var]))})
        for k, combo in enumerate(combos):
            mask = (
                np.all([data[o] == c for o, c in zip(others, combo, strict=True)], axis=0)
                if others
                else np.ones(len(data[var]), bool)
            )
            label = ", ".join(f"{o}={c:.3g}" for o, c in zip(others, combo, strict=True)) or None
            ax.plot(data[var][mask], data[law["y"]][mask], "o", color=f"C{k % 10}", label=label)
            grid = {var: np.geomspace(data[var].min(), data[var].max(), 50)}
            grid.update({o: np.full(50, c) for o, c in zip(others, combo, strict=True)})
            centre, draws = law_curve(law, grid)
            ax.plot(grid[var], centre, "-", color=f"C{k % 10}", lw=1)
            if len(draws):
                low, high = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
                ax.fill_between(grid[var], low, high, color=f"C{k % 10}", alpha=0.15)
        ax.set(
            xscale="log",
            yscale="log" if law.get("form", "power") == "power" else "linear",
            xlabel=f"{var} [{SHORT_UNITS.get(var, 'table unit')}]",
            ylabel=f"{law['y']} [{SHORT_UNITS.get(law['y'], 'table unit')}]",
        )
        if len(combos) > 1:
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"{name}: {law['formula']}  (R² {law['r2']:.3f}, {law['n_points']} points; band: {ci:.0%} bootstrap)",
        fontsize=9,
    )
    return save(fig, path)


def plot_groups(fit: dict, path: str | Path, max_groups: int = 60) -> Path:
    """The batch profile of every group whose batch varied: loss_opt (the LR optimum's loss) against the
    batch size, with B_opt and its interval; excluded groups grey with their reason."""
    groups = [g for g in fit["groups"] if g.get("batch_varied")][:max_groups]
    ncols = min(6, max(len(groups), 1))
    nrows = -(-len(groups) // ncols) or 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.6 * ncols, 2.6 * nrows),
        squeeze=False,
        gridspec_kw={"hspace": 0.7, "wspace": 0.35},
    )
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    for ax, group in zip(axes.flat, groups, strict=False):
        used = group["status"] == "used"
        profile = [p for p in group["profile"] if p["status"] == "used"]
        ax.plot(
            [p["batch_size"] for p in profile],
            [p["loss_opt"] for p in profile],
            "o-",
            ms=3,
            lw=0.8,
            color="C0" if used else "0.6",
        )
        if used:
            ax.axvline(group["batch_opt"], color="C3", lw=1)
            if group.get("batch_low") is not None:
                ax.axvspan(group["batch_low"], group["batch_high"], color="C3", alpha=0.15)
        _light_log_axis(ax)
        name = group["group"].replace(", ", "\n")
        ax.set_title(
            name if used else f"{name}\n{group['reason'].split(':')[0]}",
            fontsize=6,
            color="black" if used else "0.4",
        )
        ax.tick_params(labelsize=6)
    fig.supxlabel("batch size (sequences); red: B_opt and its interval")
    fig.supylabel("loss at the LR optimum")
    return save(fig, path)


def plot_residuals(fit: dict, path: str | Path) -> Path:
    """ln residuals of every fitted law against its last variable (tokens in the default laws)."""
    laws = [(n, law) for n, law in fit["laws"].items() if law["status"] == "fitted"]
    fig, axes = plt.subplots(1, max(len(laws), 1), figsize=(4.5 * max(len(laws), 1), 3.5), squeeze=False)
    for ax, (name, law) in zip(axes.flat, laws, strict=False):
        x = np.asarray(law["data"][law["variables"][-1]], float)
        ax.plot(x, law["residuals_ln"], "o", ms=4)
        ax.axhline(0, color="0.3", lw=1)
        ax.set(xscale="log", xlabel=law["variables"][-1], ylabel=f"ln residual of {law['y']}")
        ax.set_title(f"{name} (rmse {law['rmse_ln']:.3f})", fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, path)


def fit_figures(fit: dict, out_dir: str | Path) -> list[Path]:
    """Every fit figure into ``out_dir``: cells.png (LR curves, an LR sweep only), groups.png (batch
    profiles, when the batch varied in a group), law_NAME.png per fitted law, residuals.png."""
    out_dir = Path(out_dir)
    paths = [plot_cell_curves(fit, out_dir / "cells.png")] if fit["cells"] else []
    if any(g.get("batch_varied") for g in fit["groups"]):
        paths.append(plot_groups(fit, out_dir / "groups.png"))
    paths += [
        plot_law(fit, name, out_dir / f"law_{name}.png")
        for name, law in fit["laws"].items()
        if law["status"] == "fitted"
    ]
    paths.append(plot_residuals(fit, out_dir / "residuals.png"))
    return paths


import pandas as pd  # noqa: E402


def plot_coord_check(df: pd.DataFrame, path: str | Path) -> Path:
    """The muP coord check: mean |output| of each module against width (log-log), a line per module.

    One panel per recorded step, one row of panels per parametrization in ``df`` (``coord_check.coord_check``'s
    table: width, step, module, l1, and optionally parametrization and seed, averaged over seeds).
    Flat lines are what muP promises; sp's fan out upwards.
    """
    if "parametrization" not in df:
        df = df.assign(parametrization="")
    mean = df.groupby(["parametrization", "step", "module", "width"], sort=False)["l1"].mean().reset_index()
    kinds, steps = list(mean["parametrization"].unique()), sorted(mean["step"].unique())
    fig, axes = plt.subplots(
        len(kinds),
        len(steps),
        figsize=(3.0 * len(steps) + 1.5, 2.8 * len(kinds)),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for i, kind in enumerate(kinds):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            part = mean[(mean["parametrization"] == kind) & (mean["step"] == step)]
            for module, line in part.groupby("module", sort=False):
                ax.plot(line["width"], line["l1"], marker="o", markersize=3, linewidth=1, label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{kind} step {step}".strip(), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("width")
    for row in axes:
        row[0].set_ylabel("mean |output|")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, path)
