"""Groups and cells of a runs table, and the optimal LR of every cell.

A *group* holds the runs of one setting of everything but LR, batch size and seed (by default; or the
columns of ``--group-by``). Inside a group the runs may vary the LR and the batch size: a *cell* is one
batch size of a group, so its runs differ only in LR and seed, and its loss curve against LR gives
lr_opt for that batch (``fit_optimum``). A group whose cells differ in batch is a 2-D grid; its joint
optimum is ``fit_joint``'s job. Any other setting that varies inside a group is an error that names the
column: losses of different settings are never averaged as if they were seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .fit_groups import group_label
from .fit_optimum import find_optimum, normal_z
from .fit_spec import BATCH_COLUMNS, FitError, canonical
from .schema import IDENTITY_COLUMNS, SETTING_COLUMNS

_MODEL = tuple(
    dict.fromkeys(column for setting, column in SETTING_COLUMNS.items() if setting.startswith("model."))
)
CELL_CANDIDATES = (
    *_MODEL,
    "params_non_embedding",
    *(c for c in IDENTITY_COLUMNS if c not in (*_MODEL, "lr", "seed")),
)
"""The settings of a run that can define a cell: every run-id setting of the runs table but LR and seed (and the
model size they imply); those present are used."""
CARRIED = ("width", "params_non_embedding", "seq_len", "batch_tokens", "batch_size", "tokens")
"""Law variables kept on every cell and group even when outside the grouping (NaN unless constant in it)."""

Curve = tuple[dict, pd.DataFrame, np.ndarray]


def settings(runs: pd.DataFrame) -> list[str]:
    """The run settings present in the table (``CELL_CANDIDATES`` and a [trainer] sweep's ``params.NAME``
    columns, with a known value)."""
    params = sorted(c for c in runs.columns if str(c).startswith("params."))
    return [c for c in (*CELL_CANDIDATES, *params) if c in runs and runs[c].notna().any()]


def grouping(runs: pd.DataFrame, group_by: list[str] | None = None) -> tuple[list[str], list[str], str]:
    """The group columns, the cell columns and the mode of a runs table.

    Mode ``sweep``: some cell has runs at two or more LRs; cells are groups split by batch size when the
    batch varies inside a group. Mode ``losses``: no LR column, or one LR per cell: a table of final losses
    whose groups are its settings (by default every setting, batch included). Raises ``FitError`` naming
    the column when a setting other than LR, batch and seed varies inside a group.
    """
    explicit = [canonical(c) for c in group_by or [] if c.strip()]
    missing = [c for c in explicit if c not in runs]
    if missing:
        raise FitError(
            f"--group-by {missing[0]!r}: no such column; columns: {', '.join(map(str, runs.columns))}"
        )
    present = settings(runs)
    groups = explicit or [c for c in present if c not in BATCH_COLUMNS]
    cells = groups + ([] if "batch_size" in groups or "batch_size" not in runs else ["batch_size"])
    if "lr" in runs and _lr_varies(runs, cells):
        _check_constant(runs, groups, [c for c in present if c not in BATCH_COLUMNS], bool(explicit))
        if not _varies_within(runs, groups, "batch_size"):
            cells = groups
        return groups, cells, "sweep"
    groups = explicit or present
    _check_constant(runs, groups, present, bool(explicit))
    return groups, groups, "losses"


def _lr_varies(runs: pd.DataFrame, keys: list[str]) -> bool:
    lrs = runs.groupby(keys, dropna=False)["lr"].nunique() if keys else pd.Series([runs["lr"].nunique()])
    return bool((lrs >= 2).any())


def _varies_within(runs: pd.DataFrame, keys: list[str], column: str) -> bool:
    if column not in runs or column in keys:
        return False
    counts = (
        runs.groupby(keys, dropna=False)[column].nunique(dropna=False) if keys else [runs[column].nunique()]
    )
    return bool((np.asarray(counts) > 1).any())


def _check_constant(runs: pd.DataFrame, keys: list[str], columns: list[str], explicit: bool) -> None:
    for column in columns:
        if _varies_within(runs, keys, column):
            values = ", ".join(
                f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(runs[column].unique())[:5]
            )
            where = f"--group-by {','.join(keys)}" if explicit else "the default grouping"
            raise FitError(
                f"{where}: {column!r} varies inside a group (values {values}); add it to --group-by "
                f"or filter the table: runs of different settings are never averaged"
            )


def cell_curves(runs: pd.DataFrame, keys: list[str], carry: tuple[str, ...] = CARRIED) -> list[Curve]:
    """Per cell: (its key values and label, its points [lr, mean, count, var], its diverged LRs).

    A point is the mean loss of the seeds that finished ok with a finite loss at that LR; an LR where
    any seed diverged (or ended non-finite) is a divergence marker instead; failed runs are ignored.
    ``carry`` columns outside ``keys`` are kept on the cell when constant in it (else NaN).
    """
    runs = runs[runs["status"] != "failed"]
    varying = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    extra = [c for c in carry if c in runs and c not in keys]
    curves = []
    for values, cell in runs.groupby(keys, dropna=False, sort=True) if keys else [((), runs)]:
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row.update({c: cell[c].iloc[0] if cell[c].nunique() == 1 else math.nan for c in extra})
        row.update(cell=group_label(varying, tuple(row[k] for k in varying)), n_runs=len(cell))
        finite = (cell["status"] == "ok") & np.isfinite(cell["loss"])
        bad_lrs = np.unique(cell.loc[~finite, "lr"])
        points = cell[finite & ~cell["lr"].isin(bad_lrs)].groupby("lr")["loss"].agg(["mean", "count", "var"])
        curves.append((row, points.reset_index(), bad_lrs))
    return curves


def point_noise(curves: list[Curve]) -> tuple[float | None, str]:
    """Per-seed loss noise: the pooled spread of seeds at the same cell and LR when there are repeats,
    else the pooled residuals of 5-point cubics centred on each argmin (1 degree of freedom each; a cubic
    absorbs the asymmetry of real curves that inflates quadratic residuals several-fold), else unknown."""
    seeds = pd.concat([p for _, p, _ in curves])
    seeds = seeds[seeds["count"] >= 2]
    if len(seeds):
        return math.sqrt(
            float(((seeds["count"] - 1) * seeds["var"]).sum() / (seeds["count"] - 1).sum())
        ), "seeds"
    ss = dof = 0.0
    for _, p, _ in curves:
        i = int(np.argmin(p["mean"])) if len(p) else -1
        if 2 <= i <= len(p) - 3:
            x, y = np.log2(p["lr"].to_numpy()[i - 2 : i + 3]), p["mean"].to_numpy()[i - 2 : i + 3]
            ss += float(np.sum((np.polyval(np.polyfit(x - x[2], y, 3), x - x[2]) - y) ** 2))
            dof += 1
    return (math.sqrt(ss / dof), "local fit residuals") if dof else (None, "unknown")


def find_cell_optima(
    curves: list[Curve], noise_std: float | None = None, ci: float = 0.95, **options: Any
) -> pd.DataFrame:
    """One row per cell: its keys, label, optimum (``fit_optimum.Optimum`` fields), interval and points.

    ``lr_low``/``lr_high`` are the normal interval at ``ci`` of log2 lr_opt (+-1.96 sigma_log2 at 95%).
    """
    rows = []
    for row, points, bad_lrs in curves:
        opt = find_optimum(
            points["lr"].to_numpy(),
            points["mean"].to_numpy(),
            points["count"].to_numpy(),
            bad_lrs,
            noise_std=noise_std,
            **options,
        )
        z = normal_z(ci) * opt.sigma_log2
        rows.append(
            {
                **row,
                **vars(opt),
                "lr_low": opt.lr_opt * 2.0**-z,
                "lr_high": opt.lr_opt * 2.0**z,
                "n_lrs": len(points) + len(bad_lrs),
                "diverged_lrs": bad_lrs.tolist(),
                "points": points[["lr", "mean", "count"]].to_numpy().tolist(),
            }
        )
    return pd.DataFrame(rows)
