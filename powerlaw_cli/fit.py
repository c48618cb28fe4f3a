"""``plsweep fit``: optimal LR and batch per group, laws over any variables with bootstrap intervals, the
loss law, and the muP transfer check.

One pipeline, ``run_fit``: load (``fit_data``) -> optima (``fit_cells`` per cell, ``fit_joint`` per group)
-> laws (``fit_laws``, ``fit_loss``) -> transfer (``fit_groups``) -> ``fit.json`` -> figures (``plots``).
``plsweep fit``, ``plsweep demo`` and the experiment scripts all call it; ``fit_sweep`` is its
in-memory core. ``predict`` and ``plsweep export`` read only ``fit.json``.

Units: lr is the base Adam LR at width == base_width, batch sizes are in sequences (and in tokens where
the sequence length is known), tokens in tokens, losses in the table's unit (nats/token for our sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .fit_base import base_optima, base_warnings
from .fit_cells import CARRIED, cell_curves, find_cell_optima, grouping, point_noise
from .fit_data import BatchUnit, load_runs, prepare_runs
from .fit_groups import top_k_gamma, transfer_check, width_loss_warnings
from .fit_io import default_fit_dir, find_fit, predict, predict_all, read_fit, write_fit
from .fit_joint import joint_optima, loss_groups
from .fit_laws import FitError, LawSpec, Prediction, batch_in_tokens, failed_law, fit_law, parse_law
from .fit_optimum import BAND_MODES, METHODS
from .fit_spec import UNITS as QUANTITY_UNITS
from .store import json_ready

if TYPE_CHECKING:
    from .collect import CollectReport

# fit.json I/O and predictions live in fit_io; they are part of this module's interface
__all__ = [
    "FitError",
    "FitResult",
    "FitRun",
    "Prediction",
    "default_fit_dir",
    "find_fit",
    "fit_sweep",
    "predict",
    "predict_all",
    "read_fit",
    "run_fit",
    "write_fit",
]

DEFAULT_LAWS = {
    "free": "lr_opt ~ batch_size + tokens",
    "power": "lr_opt ~ batch_size^1 + tokens",
    "batch": "batch_opt ~ tokens",
}
"""Fitted on every LR sweep: lr_opt against batch and tokens (free, and the Power paper's form), and the
optimal batch against tokens."""
MIN_CELLS = 3
UNITS = QUANTITY_UNITS | {
    "loss": "the table's loss column (nats/token for plsweep sweeps)",
    "sigma_log2": "std of log2 of the estimate",
    "laws": "fitted in natural log; intervals are bootstrap percentiles over cells or groups",
}


@dataclass
class FitResult:
    """Everything ``plsweep fit`` found; ``to_dict()`` is the content of ``fit.json``."""

    source: str
    mode: str  # sweep | losses
    options: dict[str, Any]
    cell_keys: list[str]
    group_keys: list[str]
    cells: pd.DataFrame
    groups: pd.DataFrame
    laws: dict[str, dict]
    transfer: dict
    warnings: list[str] = field(default_factory=list)
    noise: dict[str, Any] = field(default_factory=dict)
    base: list[dict] = field(default_factory=list)  # the tuned base settings (fit_base), per context

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN becomes None."""
        from . import __version__

        def counts(frame: pd.DataFrame) -> dict[str, int]:
            used = int((frame["status"] == "used").sum()) if len(frame) else 0
            return {"total": len(frame), "used": used, "excluded": len(frame) - used}

        return _plain(
            {
                "plsweep_version": __version__,
                "source": self.source,
                "mode": self.mode,
                "units": UNITS,
                "options": self.options,
                "cell_keys": self.cell_keys,
                "group_keys": self.group_keys,
                "loss_noise": self.noise,
                "n_cells": counts(self.cells),
                "n_groups": counts(self.groups),
                "warnings": self.warnings,
                "laws": self.laws,
                "transfer": self.transfer,
                "base": self.base,
                "cells": self.cells.to_dict(orient="records"),
                "groups": self.groups.to_dict(orient="records"),
            }
        )


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


def check_options(
    *,
    method: str,
    window: int,
    band: float,
    min_points: int,
    n_boot: int,
    ci: float,
    top_k_batches: int | None,
    transfer_tolerance: float,
    band_mode: str = "profile",
) -> None:
    """Every fit option in its range, else ``FitError`` naming the option."""
    checks = [
        (method in METHODS, f"--method {method!r}: valid: {', '.join(METHODS)}"),
        (band_mode in BAND_MODES, f"--band-mode {band_mode!r}: valid: {', '.join(BAND_MODES)}"),
        (window >= 1, f"--window {window}: must be at least 1"),
        (0 < band < 1, f"--band {band}: must be in (0, 1), e.g. 0.0025 for 0.25%"),
        (min_points >= 3, f"--min-points {min_points}: a parabola needs at least 3"),
        (n_boot >= 0, f"--bootstrap {n_boot}: must be >= 0"),
        (0 < ci < 1, f"ci {ci}: must be in (0, 1)"),
        (top_k_batches is None or top_k_batches >= 1, f"--top-k-batches {top_k_batches}: must be >= 1"),
        (transfer_tolerance > 1, f"transfer tolerance {transfer_tolerance}: must be > 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise FitError(message)


def fit_sweep(
    runs: pd.DataFrame,
    *,
    group_by: list[str] | None = None,
    method: str = "parabola",
    window: int = 1,
    band: float = 0.0025,
    min_points: int = 3,
    divergence_brackets: bool = True,
    laws: dict[str, str] | None = None,
    default_laws: bool = True,
    robust: bool = False,
    weighted: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    top_k_batches: int | None = None,
    transfer_tolerance: float = 2.0,
    band_mode: str = "profile",
) -> FitResult:
    """Fit everything: optima per cell and per group, the laws, and the muP transfer check.

    ``laws`` maps names to formulas (``fit_spec``); an LR sweep also gets ``DEFAULT_LAWS`` (those whose
    columns the table has) unless ``default_laws`` is False. ``top_k_batches`` fits ``power`` the paper's
    way (gamma averaged over the k best batches per group). ``n_boot`` is the number of bootstrap
    resamples of every law and of draws of every group's joint optimum. Raises ``FitError`` when fewer
    than 3 cells (or groups) are usable, or no law can be fitted (a base-tuning sweep, ``fit_base``, needs
    no law). ``band_mode="steplaw"`` with ``method="band"``: Step Law's estimator per group
    (``fit_joint``), and laws over groups weighted by each group's number of band points.
    """
    options = {k: v for k, v in locals().items() if k != "runs"}
    check_options(
        method=method,
        window=window,
        band=band,
        min_points=min_points,
        n_boot=n_boot,
        ci=ci,
        top_k_batches=top_k_batches,
        transfer_tolerance=transfer_tolerance,
        band_mode=band_mode,
    )
    steplaw = method == "band" and band_mode == "steplaw"
    if steplaw and weighted:
        raise FitError(
            "--weighted and --band-mode steplaw do not combine: Step Law weights groups by their band"
        )
    if "loss" not in runs:
        runs = prepare_runs(runs, source=str(runs.attrs.get("source", "data frame")))
    group_keys, cell_keys, mode = grouping(runs, group_by)
    specs = _law_specs(runs, mode, laws or {}, default_laws)
    carry = tuple(dict.fromkeys([*CARRIED, *(v for s in specs.values() for v in s.variables)]))
    noise, noise_source = None, "not needed (no LR sweep)"
    if mode == "sweep":
        curves = cell_curves(runs, cell_keys, carry)
        noise, noise_source = point_noise(curves)
        cells = find_cell_optima(
            curves,
            noise,
            method=method,
            window=window,
            band=band,
            min_points=min_points,
            divergence_brackets=divergence_brackets,
            ci=ci,
        )
        _require_usable(cells, "cells")
        groups = joint_optima(
            cells,
            group_keys,
            method=method,
            window=window,
            band=band,
            min_points=min_points,
            n_draws=n_boot,
            seed=seed,
            ci=ci,
            carry=carry,
            band_mode=band_mode,
        )
        base = base_optima(
            groups, group_keys, method=method, window=window, band=band, n_draws=n_boot, seed=seed, ci=ci
        )
    else:
        cells, groups = pd.DataFrame(columns=["status"]), loss_groups(runs, group_keys, carry, ci)
        _require_usable(groups, "groups")
        base = []
    boot = {"n_boot": n_boot, "seed": seed, "ci": ci, "robust": robust}
    fitted = {
        name: _fit_one(spec, mode, cells, groups, group_keys, weighted, top_k_batches, boot, steplaw)
        for name, spec in specs.items()
    }
    if all(law["status"] != "fitted" for law in fitted.values()) and not base:
        raise FitError(
            "no law could be fitted: " + "; ".join(f"{n}: {law['error']}" for n, law in fitted.items())
        )
    transfer = (
        transfer_check(cells, cell_keys, tolerance=transfer_tolerance, n_boot=n_boot, seed=seed, ci=ci)
        if mode == "sweep"
        else {"status": "skipped", "reason": "no LR sweep"}
    )
    result = FitResult(
        str(runs.attrs.get("source", "")),
        mode,
        options,
        cell_keys,
        group_keys,
        cells,
        groups,
        fitted,
        transfer,
        noise={"std": noise, "source": noise_source, "unit": "loss, per seed"},
        base=base,
    )
    result.warnings = _summary_warnings(result)
    if mode == "sweep" and "seed" not in runs:
        repeats = sum(int((points["count"] > 1).sum()) for _, points, _ in curves)
        if repeats:
            result.warnings.append(
                f"{repeats} (cell, LR) points average several runs and the table has no seed column: if "
                "they differ in a setting, map that column with --col (or --group-by it) so that it is not "
                "averaged"
            )
    return result


def _law_specs(runs: pd.DataFrame, mode: str, laws: dict[str, str], default_laws: bool) -> dict[str, LawSpec]:
    specs = {name: parse_law(text, name) for name, text in laws.items()}
    for (
        name,
        spec,
    ) in specs.items():  # a law the user asked for over a column the table lacks is a typo, not a fit
        missing = [v for v in spec.variables if v not in runs]
        if missing:
            raise FitError(
                f"--law {name}: {runs.attrs.get('source', 'the table')} has no column {missing[0]!r}; "
                f"columns: {', '.join(map(str, runs.columns))}"
            )
    if mode == "sweep" and default_laws:
        asked = {(s.y, s.variables, tuple(sorted(s.fixed.items()))) for s in specs.values()}
        defaults = {n: parse_law(t, n) for n, t in DEFAULT_LAWS.items() if n not in specs}
        specs = {
            n: s
            for n, s in defaults.items()
            if all(v in runs for v in s.variables)
            and (s.y, s.variables, tuple(sorted(s.fixed.items()))) not in asked
        } | specs
    if not specs and mode == "losses":
        table = (
            f"{runs.attrs.get('source', 'the table')}: missing column 'lr'; map yours with --col lr=YOUR_COLUMN"
            if "lr" not in runs
            else "no LR varies inside a cell"
        )
        raise FitError(
            f"{table}; a table of final losses supports loss laws only: add e.g. --law 'loss ~ N + D'"
        )
    if not specs:
        raise FitError("no law to fit")
    return specs


def _require_usable(frame: pd.DataFrame, what: str) -> None:
    used = frame[frame["status"] == "used"]
    if len(used) < MIN_CELLS:
        reasons = frame.loc[frame["status"] != "used", "reason"].str.split(":").str[0].value_counts()
        why = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "none excluded"
        raise FitError(
            f"only {len(used)} usable {what} of {len(frame)} ({why}); a law needs at least {MIN_CELLS}"
        )


def _fit_one(spec: LawSpec, mode: str, cells, groups, group_keys, weighted, top_k, boot, steplaw) -> dict:
    """Fit one law to its points: cells for lr_opt laws with the batch, groups for the others (weighted by
    their band's points under Step Law's estimator, ``steplaw``)."""
    if mode == "losses" and spec.y != "loss_opt":
        return failed_law(
            spec, "the table has no LR sweep (no lr column, or one LR per cell): only loss laws"
        )
    if spec.per_cell:
        frame, id_column, sigma = cells, "cell", "sigma_log2"
    else:
        frame, id_column = groups, "group"
        sigma = "batch_sigma_log2" if spec.y == "batch_opt" else "sigma_log2"
    points = frame[frame["status"] == "used"]
    if spec.y == "batch_opt":
        points = points[points["batch_varied"]] if "batch_varied" in points else points.iloc[:0]
        if not len(points):
            return failed_law(spec, _no_batch_optimum(groups))
    if spec.name == "power" and top_k and spec.per_cell:
        points = top_k_gamma(cells, group_keys, top_k)
    try:
        law = fit_law(
            points,
            spec,
            sigma_column=sigma if weighted and spec.form == "power" else None,
            id_column=id_column,
            weight_column="n_band" if steplaw and not spec.per_cell and _has(points, "n_band") else None,
            **boot,
        )
    except FitError as err:
        return failed_law(spec, str(err))
    law["fitted_on"] = (
        "cells (the LR optimum of each batch)" if spec.per_cell else "groups (the joint optimum)"
    )
    law["pools"] = _pooled(points, group_keys, spec.variables)
    law["settings"] = _shared_settings(points, group_keys, spec.variables)
    seq = points["seq_len"].dropna().unique() if "seq_len" in points else []
    if len(seq) == 1 and (tokens := batch_in_tokens(law, float(seq[0]))):
        law["in_tokens"] = tokens
    return law


def _pooled(points: pd.DataFrame, keys: list[str], variables: tuple[str, ...]) -> list[str]:
    """Settings that vary among points with the same values of the law's variables: the law assumes they
    do not matter and averages over them (e.g. a law over batch and tokens fitted to several model sizes,
    or Step Law's B_opt ~ D over every N). Reported as the law's ``pools``."""
    if not len(points) or any(v not in points for v in variables):
        return []
    by = points.groupby(list(variables), dropna=False)
    return [k for k in keys if k in points and k not in variables and (by[k].nunique(dropna=False) > 1).any()]


def _shared_settings(points: pd.DataFrame, keys: list[str], variables: tuple[str, ...]) -> dict[str, Any]:
    """Settings with one value over all the law's points (other than its variables): what the law holds
    under, e.g. the proxy's parametrization and optimizer, which a target's trainer must match."""
    out = {}
    for key in keys:
        if key in points and key not in variables and points[key].nunique(dropna=False) == 1:
            value = points[key].iloc[0]
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def _no_batch_optimum(groups: pd.DataFrame) -> str:
    varied = groups[groups["batch_varied"]] if "batch_varied" in groups else groups.iloc[:0]
    if not len(varied):
        return "the batch size does not vary inside any group, so there is no optimal batch to fit"
    reasons = varied["reason"].str.split(":").str[0].value_counts()
    return (
        f"no group with an interior batch optimum ({', '.join(f'{n} {r}' for r, n in reasons.items())}); "
        "widen the batch grid"
    )


def _summary_warnings(result: FitResult) -> list[str]:
    out = []
    for what, frame, label in (("cells", result.cells, "cell"), ("groups", result.groups, "group")):
        bad = frame[frame["status"] != "used"] if len(frame) else frame
        if len(bad):
            reasons = bad["reason"].str.split(":").str[0].value_counts()
            first = "; ".join(f"{r[label]}: {r['reason']}" for _, r in bad.head(3).iterrows())
            out.append(
                f"{len(bad)} of {len(frame)} {what} excluded ("
                + ", ".join(f"{n} {r}" for r, n in reasons.items())
                + f"), e.g. {first}"
                + (" ..." if len(bad) > 3 else "")
            )
    out += [f"law {name}: {w}" for name, law in result.laws.items() for w in law.get("warnings", [])]
    out += base_warnings(result.base)
    if result.mode == "sweep":
        out += width_loss_warnings(result.cells, result.cell_keys)
    if result.transfer.get("verdict") in ("shifts", "uncertain"):
        t = result.transfer["shift_factor"]
        out.append(
            f"muP transfer {result.transfer['verdict']}: lr_opt changes x{t['value']:.3g} "
            f"[{t['low']:.3g}, {t['high']:.3g}] over widths {result.transfer['widths']}; laws pool widths"
        )
    return out


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class FitRun:
    """What ``run_fit`` made: the fit (the content of ``fit.json``), where it went, the figures, and the
    collect report when the source was a sweep directory."""

    fit: dict[str, Any]
    fit_json: Path | None = None
    figures: list[Path] = field(default_factory=list)
    collected: CollectReport | None = None


def run_fit(
    source: str | Path | pd.DataFrame,
    *,
    columns: dict[str, str] | None = None,
    loss_column: str | None = None,
    batch_unit: BatchUnit = "sequences",
    seq_len: int | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    predicted_budgets: list[float] | None = None,
    **options: Any,
) -> FitRun:
    """The fit pipeline: load -> optima -> laws -> fit.json -> figures.

    ``source`` is a sweep directory (collected first), a CSV/Parquet table (``columns``, ``loss_column``,
    ``batch_unit``, ``seq_len`` read it: ``fit_data.load_runs``) or a runs data frame. ``out`` is the folder
    of ``fit.json`` and the figures (default: ``default_fit_dir`` for a path; a data frame writes nothing
    unless ``out`` is given). ``options`` go to ``fit_sweep``. ``predicted_budgets`` (tokens; a sweep
    directory only) adds each model's predicted final loss at budgets it did not train
    (``curves_budgets``), flagged ``predicted`` in the cells of fit.json.
    """
    collected = None
    if isinstance(source, pd.DataFrame):
        runs = (
            source
            if "loss" in source
            else prepare_runs(
                source,
                columns,
                loss_column,
                batch_unit,
                seq_len,
                source=str(source.attrs.get("source", "data frame")),
            )
        )
    else:
        from .collect import collect
        from .store import SweepDir

        if SweepDir(source).exists():
            collected = collect(SweepDir(source))
        runs = load_runs(source, columns, loss_column, batch_unit, seq_len)
        out = default_fit_dir(source) if out is None else out
    predicted = None
    if predicted_budgets:
        from .curves_budgets import predicted_runs

        attrs = dict(runs.attrs)
        predicted, notes = predicted_runs(source, runs, predicted_budgets, seed=options.get("seed", 0))
        runs = pd.concat([runs, predicted], ignore_index=True)
        runs.attrs.update(attrs)
    fit = fit_sweep(runs, **options).to_dict()
    if predicted is not None:
        from .curves_budgets import flag_cells

        n = flag_cells(fit, predicted)
        fit["warnings"] += notes
        fit["predicted_budgets"] = {
            "budgets": predicted_budgets,
            "runs": len(predicted),
            "cells": n,
            "method": "final loss of each model's own schedule at the budget, by the multi-power law fitted "
            "on its trained curves (plsweep curves); loss_low/high: 95% block-bootstrap interval",
        }
    done = FitRun(fit, collected=collected)
    if out is not None:
        done.fit_json = write_fit(fit, out)
        if plots:
            from .plots import fit_figures  # matplotlib only once there is something to draw

            done.figures = fit_figures(fit, out)
    return done


def _has(points: pd.DataFrame, column: str) -> bool:
    """Whether every point has a value in ``column``."""
    return column in points and bool(points[column].notna().all())
