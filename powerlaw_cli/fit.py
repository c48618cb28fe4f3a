"""``plsweep fit``: optimal LR per cell, power laws with bootstrap intervals, the muP transfer check.

Flow: ``load_runs`` (a sweep directory or any CSV/Parquet table, renamed to our columns) ->
``fit_sweep`` (cells -> optima -> laws -> batch law -> transfer) -> ``FitResult.to_dict()`` written by
``write_fit`` as ``fit/fit.json``; ``predict`` and ``plsweep export`` read only that JSON.

Units: lr is the base Adam LR at width == base_width, batch_size is in sequences, tokens is the planned
budget in tokens. Pure pandas/numpy/scipy. Per-cell optima: ``fit_optimum``; laws: ``fit_laws``;
batch optimum and transfer: ``fit_groups``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fit_groups import batch_optima, group_label, top_k_gamma, transfer_check
from .fit_laws import FitError, Prediction, canonical, failed_law, fit_law, parse_law, predict_law
from .fit_optimum import find_optimum
from .schema import IDENTITY_COLUMNS, RUN_COLUMNS, STATUSES
from .store import atomic_write, json_ready

__all__ = ["FitError", "FitResult", "Prediction", "fit_sweep", "load_runs", "predict", "predict_all", "read_fit",
           "write_fit"]

REQUIRED = ("lr", "batch_size", "tokens")
CELL_CANDIDATES = (*(c for c in IDENTITY_COLUMNS if c not in ("lr", "seed")), "params_non_embedding")
"""Default cell grouping: every run-id setting of the runs table but LR and seed (and the model size they imply)."""
DEFAULT_LAWS = {"free": "lr_opt ~ batch_size + tokens", "power": "lr_opt ~ batch_size^1 + tokens"}
BATCH_LAW = "batch_opt ~ tokens"
MIN_CELLS = 3
UNITS = {"lr": "base Adam LR at width == base_width, before muP multipliers", "batch_size": "sequences",
         "batch_tokens": "tokens per step", "tokens": "tokens (planned budget)",
         "params_non_embedding": "parameters", "loss": "nats/token",
         "sigma_log2": "std of log2 of the estimate", "laws": "fitted in natural log; intervals are bootstrap percentiles"}


def parse_pairs(items: list[str] | None, what: str = "--col") -> dict[str, str]:
    """``["lr=peak_lr", "batch=bs"]`` -> ``{"lr": "peak_lr", "batch_size": "bs"}`` (aliases resolved)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise FitError(f"{what} {item!r}: expected NAME=VALUE")
        out[canonical(key)] = value.strip()
    return out


def parse_values(items: list[str] | None) -> dict[str, float]:
    """``["batch=1024", "tokens=1e12"]`` -> ``{"batch_size": 1024.0, "tokens": 1e12}`` (for ``--predict``)."""
    out = {}
    for key, value in parse_pairs(items, "--predict").items():
        try:
            out[key] = float(value)
        except ValueError:
            raise FitError(f"--predict {key}={value}: not a number") from None
    return out


def _table_path(path: Path) -> Path:
    if path.is_dir():
        table = path / "runs.parquet"
        if not table.exists():
            raise FitError(f"{path}: no runs.parquet; run `plsweep collect {path}` first")
        return table
    if not path.exists():
        raise FitError(f"{path}: no such file or directory")
    return path


def load_runs(path: str | Path, columns: dict[str, str] | None = None, loss_column: str | None = None,
              batch_unit: str = "sequences", seq_len: int | None = None) -> pd.DataFrame:
    """Read a sweep directory (its ``runs.parquet``) or a CSV/Parquet table into our column names.

    ``columns`` maps our names to the file's (``{"lr": "peak_lr"}``); ``loss_column`` (the file's name or
    ours; default ``final_val_loss``) becomes the column ``loss``. ``batch_unit="tokens"`` says the batch
    column counts tokens: it is divided by ``seq_len`` (the option, else the table's column). Without a
    status column, rows with a non-finite loss are taken as diverged, the others as ok.
    """
    table = _table_path(Path(path))
    if table.suffix.lower() == ".csv":
        raw = pd.read_csv(table)
    elif table.suffix.lower() in (".parquet", ".pq"):
        raw = pd.read_parquet(table)
    else:
        raise FitError(f"{table}: unknown table type {table.suffix!r}; use .csv or .parquet")
    return prepare_runs(raw, columns, loss_column, batch_unit, seq_len, source=str(table))


def prepare_runs(raw: pd.DataFrame, columns: dict[str, str] | None = None, loss_column: str | None = None,
                 batch_unit: str = "sequences", seq_len: int | None = None, source: str = "table") -> pd.DataFrame:
    """``load_runs`` on a data frame already in memory (``source`` names it in errors)."""
    runs = _rename(raw, source, columns or {})
    loss_name = loss_column or "final_val_loss"
    mapped = loss_name in raw.columns and loss_name not in (columns or {}).values()  # the file's own name
    loss = raw[loss_name] if mapped else runs.get(canonical(loss_name))
    if loss is None:
        raise FitError(f"{source}: missing loss column {loss_name!r}; name yours with --loss-column NAME")
    runs["loss"] = pd.to_numeric(loss, errors="coerce").astype(float)
    _check_required(runs, source)
    _set_status(runs, source)
    _set_batch(runs, source, batch_unit, seq_len)
    runs.attrs.update(source=source, loss_column=loss_name, batch_unit=batch_unit)
    return runs


def _rename(raw: pd.DataFrame, table: str, columns: dict[str, str]) -> pd.DataFrame:
    known = {name for name, _, _ in RUN_COLUMNS}
    columns = {canonical(ours): theirs for ours, theirs in columns.items()}
    for ours, theirs in columns.items():
        if ours not in known:
            raise FitError(f"--col {ours}={theirs}: {ours!r} is not a runs-table column; valid: {', '.join(sorted(known))}")
        if theirs not in raw.columns:
            raise FitError(f"{table}: no column {theirs!r} (from --col {ours}={theirs}); columns: {', '.join(map(str, raw.columns))}")
    clashing = [c for c in columns if c in raw.columns and c not in columns.values()]
    runs = raw.drop(columns=clashing)
    return runs.rename(columns={theirs: ours for ours, theirs in columns.items()})


def _check_required(runs: pd.DataFrame, table: str) -> None:
    for name in REQUIRED:
        if name not in runs:
            raise FitError(f"{table}: missing column {name!r}; map yours with --col {name}=YOUR_COLUMN")
        runs[name] = pd.to_numeric(runs[name], errors="coerce").astype(float)
        if runs[name].isna().any() or (runs[name] <= 0).any():
            raise FitError(f"{table}: column {name!r} has missing, non-numeric or non-positive values")


def _set_status(runs: pd.DataFrame, table: str) -> None:
    if "status" not in runs:
        runs["status"] = np.where(np.isfinite(runs["loss"]), "ok", "diverged")
        runs.attrs["status_inferred"] = True
        return
    runs["status"] = runs["status"].astype(str).str.strip().str.lower()
    bad = sorted(set(runs["status"]) - set(STATUSES))
    if bad:
        raise FitError(f"{table}: status {bad[0]!r} is not one of {', '.join(STATUSES)}")


def _set_batch(runs: pd.DataFrame, table: str, batch_unit: str, seq_len: int | None) -> None:
    if seq_len is not None:
        runs["seq_len"] = float(seq_len)
    has_len = "seq_len" in runs and runs["seq_len"].notna().all()
    if batch_unit == "tokens":
        if not has_len:
            raise FitError(f"{table}: batch in tokens needs the sequence length: --seq-len L or --col seq_len=NAME")
        runs["batch_tokens"] = runs["batch_size"]
        runs["batch_size"] = runs["batch_tokens"] / runs["seq_len"]
        if not np.allclose(runs["batch_size"], runs["batch_size"].round()):
            raise FitError(f"{table}: a batch in tokens is not a multiple of seq_len; check --batch-unit and --seq-len")
    elif batch_unit != "sequences":
        raise FitError(f"batch unit {batch_unit!r}: use sequences or tokens")
    elif has_len:
        runs["batch_tokens"] = runs["batch_size"] * runs["seq_len"]


def cell_columns(runs: pd.DataFrame, group_by: list[str] | None = None) -> list[str]:
    """The columns that define a cell: ``group_by`` (checked), else the config columns present."""
    if group_by:
        keys = [canonical(c) for c in group_by]
        missing = [c for c in keys if c not in runs]
        if missing:
            raise FitError(f"--group-by {missing[0]!r}: no such column; columns: {', '.join(map(str, runs.columns))}")
        return keys
    return [c for c in CELL_CANDIDATES if c in runs and runs[c].notna().any()]


def cell_curves(runs: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame, np.ndarray]]:
    """Per cell: (its key values and label, its points [lr, mean, count], its diverged LRs).

    A point is the mean loss of the seeds that finished ok with a finite loss at that LR; an LR where
    any seed diverged (or ended non-finite) is a divergence marker instead; failed runs are ignored.
    """
    runs = runs[runs["status"] != "failed"]
    varying = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    extra = [c for c in ("width", "params_non_embedding", "seq_len", "batch_tokens", "batch_size", "tokens")
             if c in runs and c not in keys]  # law variables outside the grouping: NaN unless constant
    curves = []
    for values, cell in (runs.groupby(keys, dropna=False, sort=True) if keys else [((), runs)]):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row.update({c: cell[c].iloc[0] if cell[c].nunique() == 1 else math.nan for c in extra})
        row.update(cell=group_label(varying, tuple(row[k] for k in varying)), n_runs=len(cell))
        finite = (cell["status"] == "ok") & np.isfinite(cell["loss"])
        bad_lrs = np.unique(cell.loc[~finite, "lr"])
        points = cell[finite & ~cell["lr"].isin(bad_lrs)].groupby("lr")["loss"].agg(["mean", "count", "var"])
        curves.append((row, points.reset_index(), bad_lrs))
    return curves


def point_noise(curves: list[tuple[dict, pd.DataFrame, np.ndarray]]) -> tuple[float | None, str]:
    """Per-seed loss noise: the pooled spread of seeds at the same cell and LR when there are repeats,
    else the pooled residuals of 5-point quadratics around each argmin (asymmetry inflates it: a
    conservative estimate), else unknown."""
    seeds = pd.concat([p for _, p, _ in curves])
    seeds = seeds[seeds["count"] >= 2]
    if len(seeds):
        return math.sqrt(float(((seeds["count"] - 1) * seeds["var"]).sum() / (seeds["count"] - 1).sum())), "seeds"
    ss = dof = 0.0
    for _, p, _ in curves:
        i = int(np.argmin(p["mean"])) if len(p) else -1
        if 2 <= i <= len(p) - 3:
            x, y = np.log2(p["lr"].to_numpy()[i - 2 : i + 3]), p["mean"].to_numpy()[i - 2 : i + 3]
            ss += float(np.sum((np.polyval(np.polyfit(x, y, 2), x) - y) ** 2))
            dof += 2
    return (math.sqrt(ss / dof), "local fit residuals") if dof else (None, "unknown")


def find_cell_optima(curves: list[tuple[dict, pd.DataFrame, np.ndarray]], noise_std: float | None = None,
                     **options: Any) -> pd.DataFrame:
    """One row per cell: its keys, label, optimum (``fit_optimum.Optimum`` fields), interval and points.

    ``lr_low``/``lr_high`` are the 95% normal interval of log2 lr_opt (+-1.96 sigma_log2).
    """
    rows = []
    for row, points, bad_lrs in curves:
        opt = find_optimum(points["lr"].to_numpy(), points["mean"].to_numpy(), points["count"].to_numpy(),
                           bad_lrs, noise_std=noise_std, **options)
        z = 1.959964 * opt.sigma_log2
        rows.append({**row, **vars(opt), "lr_low": opt.lr_opt * 2.0**-z, "lr_high": opt.lr_opt * 2.0**z,
                     "n_lrs": len(points) + len(bad_lrs), "diverged_lrs": bad_lrs.tolist(),
                     "points": points[["lr", "mean", "count"]].to_numpy().tolist()})
    return pd.DataFrame(rows)


@dataclass
class FitResult:
    """Everything ``plsweep fit`` found; ``to_dict()`` is the content of ``fit.json``."""

    source: str
    options: dict[str, Any]
    cell_keys: list[str]
    cells: pd.DataFrame
    laws: dict[str, dict]
    batch_groups: pd.DataFrame
    transfer: dict
    warnings: list[str] = field(default_factory=list)
    noise: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN becomes None."""
        from . import __version__

        used = self.cells["status"] == "used"
        return _plain({
            "plsweep_version": __version__, "source": self.source, "units": UNITS, "options": self.options,
            "cell_keys": self.cell_keys, "loss_noise": self.noise,
            "n_cells": {"total": len(self.cells), "used": int(used.sum()), "excluded": int((~used).sum())},
            "warnings": self.warnings, "laws": self.laws, "transfer": self.transfer,
            "cells": self.cells.to_dict(orient="records"),
            "batch_groups": self.batch_groups.to_dict(orient="records"),
        })


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    return json_ready(value)


def fit_sweep(runs: pd.DataFrame, *, group_by: list[str] | None = None, method: str = "parabola",
              window: int = 1, band: float = 0.0025, min_points: int = 3, divergence_brackets: bool = True,
              laws: dict[str, str] | None = None, batch_law: str | None = BATCH_LAW, robust: bool = False,
              weighted: bool = False, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              top_k_batches: int | None = None, transfer_tolerance: float = 2.0) -> FitResult:
    """Fit everything: per-cell optima, the LR laws, the batch law and the muP transfer check.

    ``laws`` maps names to formulas (default ``DEFAULT_LAWS``: ``free`` and the Power paper's ``power``);
    ``top_k_batches`` fits ``power`` the paper's way (gamma averaged over the k best batches per group).
    Raises ``FitError`` when fewer than 3 cells are usable or no LR law can be fitted.
    """
    options = {k: v for k, v in locals().items() if k != "runs"}
    if "loss" not in runs:
        runs = prepare_runs(runs, source=str(runs.attrs.get("source", "data frame")))
    keys = cell_columns(runs, group_by)
    curves = cell_curves(runs, keys)
    noise, noise_source = point_noise(curves)
    cells = find_cell_optima(curves, noise, method=method, window=window, band=band, min_points=min_points,
                             divergence_brackets=divergence_brackets)
    used = cells[cells["status"] == "used"]
    if len(used) < MIN_CELLS:
        reasons = cells.loc[cells["status"] != "used", "reason"].str.split(":").str[0].value_counts()
        why = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "none excluded"
        raise FitError(f"only {len(used)} usable cells of {len(cells)} ({why}); a law needs at least {MIN_CELLS}")
    boot = {"n_boot": n_boot, "seed": seed, "ci": ci, "robust": robust}
    fitted = {}
    for name, text in (laws or DEFAULT_LAWS).items():
        points = top_k_gamma(cells, keys, top_k_batches) if name == "power" and top_k_batches else used
        fitted[name] = _try_law(points, parse_law(text, name), sigma_column="sigma_log2" if weighted else None, **boot)
    if all(law["status"] != "fitted" for law in fitted.values()):
        raise FitError("no LR law could be fitted: " + "; ".join(law["error"] for law in fitted.values()))
    groups = batch_optima(cells, keys, window=window)
    if batch_law and len(groups):
        good = groups[groups["status"] == "used"].rename(columns={"group": "cell"})
        fitted["batch"] = _try_law(good, parse_law(batch_law, "batch"), **boot)
    transfer = transfer_check(cells, keys, tolerance=transfer_tolerance, n_boot=n_boot, seed=seed, ci=ci)
    result = FitResult(str(runs.attrs.get("source", "")), options, keys, cells, fitted, groups, transfer,
                       noise={"std": noise, "source": noise_source, "unit": "loss, per seed"})
    result.warnings = _summary_warnings(result)
    return result


def _try_law(points: pd.DataFrame, spec, **kwargs) -> dict:
    try:
        return fit_law(points, spec, **kwargs)
    except FitError as err:
        return failed_law(spec, str(err))


def _summary_warnings(result: FitResult) -> list[str]:
    out = [f"cell {c.cell}: excluded, {c.reason}" for c in result.cells.itertuples() if c.status != "used"]
    out += [f"law {name}: {w}" for name, law in result.laws.items() for w in law.get("warnings", [])]
    if result.transfer.get("verdict") in ("shifts", "uncertain"):
        t = result.transfer["shift_factor"]
        out.append(f"muP transfer {result.transfer['verdict']}: lr_opt changes x{t['value']:.3g} "
                   f"[{t['low']:.3g}, {t['high']:.3g}] over widths {result.transfer['widths']}; laws pool widths")
    return out


def default_fit_dir(path: str | Path) -> Path:
    """Where ``fit`` writes: ``DIR/fit`` for a sweep directory, ``fit`` beside a table file."""
    path = Path(path)
    return path / "fit" if path.is_dir() else path.parent / "fit"


def write_fit(result: FitResult | dict, out_dir: str | Path) -> Path:
    """Write ``fit.json`` into ``out_dir`` atomically; return its path."""
    data = result.to_dict() if isinstance(result, FitResult) else result
    path = Path(out_dir) / "fit.json"
    atomic_write(path, json.dumps(data, indent=1, allow_nan=False).encode())
    return path


def find_fit(path: str | Path) -> Path:
    """The ``fit.json`` that ``path`` names: the file itself, or ``DIR/fit.json``, or ``DIR/fit/fit.json``."""
    path = Path(path)
    for candidate in (path, path / "fit.json", path / "fit" / "fit.json"):
        if candidate.is_file():
            return candidate
    raise FitError(f"{path}: no fit.json; run `plsweep fit` first")


def read_fit(path: str | Path) -> dict:
    """Read the ``fit.json`` that ``path`` names (see ``find_fit``)."""
    found = find_fit(path)
    try:
        return json.loads(found.read_text())
    except json.JSONDecodeError as err:
        raise FitError(f"{found}: not a valid fit.json ({err})") from None


def predict(fit: FitResult | dict, values: dict[str, float] | None = None, law: str = "power",
            **kw: float) -> Prediction:
    """A law's value with its bootstrap interval, e.g. ``predict(fit, batch=1024, tokens=1e12)``."""
    data = fit.to_dict() if isinstance(fit, FitResult) else fit
    if law not in data["laws"]:
        raise FitError(f"no law {law!r} in the fit; laws: {', '.join(data['laws'])}")
    return predict_law(data["laws"][law], {**(values or {}), **kw})


def predict_all(fit: FitResult | dict, values: dict[str, float]) -> dict[str, Prediction | str]:
    """Every law at ``values`` (for ``--predict``): a Prediction, or why that law cannot answer."""
    data = fit.to_dict() if isinstance(fit, FitResult) else fit
    out: dict[str, Prediction | str] = {}
    for name, law in data["laws"].items():
        try:
            out[name] = predict_law(law, values)
        except FitError as err:
            out[name] = str(err)
    return out


def summary_tables(fit: dict) -> dict[str, list[dict[str, Any]]]:
    """Rows for the terminal: ``laws``, ``cells`` and ``transfer`` (plain strings and numbers)."""
    laws = []
    for name, law in fit["laws"].items():
        row = {"law": name, "formula": law["formula"], "status": law["status"], "warnings": len(law["warnings"])}
        if law["status"] == "fitted":
            row["a"] = _interval(law["a"])
            row.update({f"e_{v}": _interval(e) + (" (fixed)" if e["fixed"] else "") for v, e in law["exponents"].items()})
            row.update(r2=round(law["r2"], 4) if law["r2"] is not None else None, n=law["n_points"])
        laws.append(row)
    cells = [{"cell": c["cell"], "status": c["status"], "method": c["method"],
              "lr_opt": _interval({"value": c["lr_opt"], "low": c["lr_low"], "high": c["lr_high"]}),
              "reason": c["reason"]} for c in fit["cells"]]
    t = fit["transfer"]
    transfer = [{"verdict": t["verdict"], "shift_factor": _interval(t["shift_factor"]), "widths": t["widths"]}
                if t["status"] == "checked" else {"verdict": "skipped", "reason": t["reason"]}]
    return {"laws": laws, "cells": cells, "transfer": transfer}


def _interval(d: dict) -> str:
    if d.get("value") is None:
        return "-"
    low, high = d.get("low"), d.get("high")
    return f"{d['value']:.4g}" + (f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else "")
