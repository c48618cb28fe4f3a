"""Loss curves read for ``plsweep curves``: a sweep's ``curves.parquet`` (with its runs' settings) or any
CSV/Parquet table of curves, checked curve by curve.

A table needs a run column, a step column, an LR column and a loss column (``--col run=... --col step=...
--col lr=... --col tokens=...``, ``--loss-column``); ``tokens`` (tokens seen after the step) is optional
and converts a budget in tokens to steps. Every other column of a table, and every run-id setting of a
sweep, can group curves into models.

Each curve's LR of every step 1..T comes from its logged LRs, interpolated linearly between logged steps;
before the first logged step it rises linearly from 0 (a warmup assumed, and said) unless step 1 is logged.
A curve is rejected, with one line naming the run and the reason, when its steps do not increase, an LR is
missing or negative, a loss is NaN, or it has a single point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fit_data import table_path
from .fit_spec import FitError
from .schema import SETTING_COLUMNS

SPARSE_LOSSES = ("val_loss", "val_loss_averaged")
"""Curve columns that are null except at evaluation points: their null rows are not logged points."""
COLUMNS = ("run", "step", "lr", "tokens")
"""Our names of a curves table's columns (``--col NAME=THEIRS``); the loss is ``--loss-column``."""
DEFAULT_LOSS = "train_loss"
NOT_MODEL = ("tokens", "seed")
"""Run-id settings that do not make a different model: the budget and the seed (and every schedule setting)."""
MODEL_COLUMNS = tuple(
    dict.fromkeys(
        column
        for setting, column in SETTING_COLUMNS.items()
        if not setting.startswith("schedule.") and column not in NOT_MODEL
    )
)
"""A sweep's default ``--group-by``: every run-id setting but the schedule's, the budget and the seed."""


@dataclass
class Curve:
    """One run's logged loss curve and the LR of every step."""

    run: str
    steps: np.ndarray  # logged steps, increasing, 1-based
    loss: np.ndarray
    eta: np.ndarray  # LR of steps 1..steps[-1]
    warmup_assumed: bool
    tokens_per_step: float | None
    settings: dict[str, Any] = field(default_factory=dict)
    title: str = ""  # the run's schedule and budget, for figures (a sweep's curves)

    @property
    def warmup_steps(self) -> int:
        """Steps up to the first largest LR (the warmup's end)."""
        return int(np.argmax(self.eta)) + 1


@dataclass
class CurveSet:
    """The curves of a source, the curves rejected (run -> reason), and the loss column used."""

    curves: list[Curve]
    rejected: dict[str, str]
    loss_column: str
    source: str
    settings: list[str]


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise FitError(f"{path}: unknown table type {path.suffix!r}; use .csv or .parquet")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FitError(f"{path}: cannot read it as {suffix[1:]} ({first})") from None


def load_curves(
    source: str | Path, columns: dict[str, str] | None = None, loss_column: str | None = None
) -> CurveSet:
    """Read the curves of a sweep directory (collected first) or a CSV/Parquet table (see the module)."""
    source = Path(source)
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise FitError(f"--col {unknown[0]}: not a curves column; valid: {', '.join(COLUMNS)}")
    if source.is_dir():
        from .collect import collect
        from .store import SweepDir

        sweep = SweepDir(source)
        if not sweep.exists():
            raise FitError(f"{source}: not a sweep directory (no sweep.json); give a table file")
        collect(sweep)
        raw = _read(table_path(source).with_name("curves.parquet"))
        runs = _read(table_path(source))
        ok = runs[runs["status"] == "ok"]
        keep = ["run_id", *(c for c in MODEL_COLUMNS if c in ok)]
        raw = raw.rename(columns={"lr": "step_lr"}).merge(ok[keep], on="run_id", how="inner")
        titles = {row.run_id: _title(row) for row in ok.itertuples()}
        columns.setdefault("lr", "step_lr")  # the run's setting lr is its peak; the curve's LR is per step
        settings = [c for c in MODEL_COLUMNS if c in raw]
        where = str(sweep.curves_table_path)
    else:
        raw = _read(table_path(source))
        settings, titles = None, {}
        where = str(source)
    names = {ours: columns.get(ours, "run_id" if ours == "run" else ours) for ours in COLUMNS}
    for ours in ("run", "step", "lr"):
        if names[ours] not in raw:
            raise FitError(f"{where}: no {ours} column {names[ours]!r}; name yours with --col {ours}=COLUMN")
    loss = loss_column or DEFAULT_LOSS
    if loss not in raw:
        raise FitError(f"{where}: no loss column {loss!r}; name yours with --loss-column NAME")
    taken = {names[c] for c in COLUMNS} | {loss}
    if settings is None:  # a table's settings: the columns constant within every run
        rest = [c for c in raw.columns if c not in taken]
        counts = raw.groupby(names["run"])[rest].nunique(dropna=False) if rest else None
        settings = [c for c in rest if counts is not None and (counts[c] <= 1).all()]
    curves, rejected = [], {}
    for run, rows in raw.groupby(names["run"], sort=False):
        if loss in SPARSE_LOSSES:
            rows = rows[rows[loss].notna()]
        try:
            curves.append(_curve(str(run), rows, names, loss, settings))
            curves[-1].title = titles.get(run, "")
        except ValueError as err:
            rejected[str(run)] = str(err)
    return CurveSet(curves, rejected, loss, where, settings)


def _curve(run: str, rows: pd.DataFrame, names: dict[str, str], loss: str, settings: list[str]) -> Curve:
    """One run's curve, or ValueError saying why it cannot be used."""
    steps = pd.to_numeric(rows[names["step"]], errors="coerce").to_numpy(float)
    lr = pd.to_numeric(rows[names["lr"]], errors="coerce").to_numpy(float)
    y = pd.to_numeric(rows[loss], errors="coerce").to_numpy(float)
    if len(rows) < 2:
        raise ValueError("a single logged point (a curve needs two or more)")
    if not np.isfinite(steps).all() or (steps < 1).any() or (steps != np.round(steps)).any():
        raise ValueError(f"steps must be whole numbers >= 1 ({names['step']!r})")
    bad = np.flatnonzero(np.diff(steps) <= 0)
    if len(bad):
        raise ValueError(f"steps do not increase: step {steps[bad[0] + 1]:.0f} follows {steps[bad[0]]:.0f}")
    for what, values in (("LR", lr), ("loss", y)):
        nan = np.flatnonzero(~np.isfinite(values))
        if len(nan):
            raise ValueError(f"{what} is missing or NaN at step {steps[nan[0]]:.0f}")
    if (lr < 0).any():
        raise ValueError(f"negative LR {lr[lr < 0][0]:g} at step {steps[np.argmax(lr < 0)]:.0f}")
    if not (lr > 0).any():
        raise ValueError("every LR is 0")
    warmup_assumed = steps[0] > 1
    grid = np.arange(1, int(steps[-1]) + 1)
    known_steps, known_lr = (np.r_[0.0, steps], np.r_[0.0, lr]) if warmup_assumed else (steps, lr)
    eta = np.interp(grid, known_steps, known_lr)
    tps = None
    if names["tokens"] in rows:
        tokens = pd.to_numeric(rows[names["tokens"]], errors="coerce").to_numpy(float)
        if np.isfinite(tokens).all() and (tokens > 0).all():
            tps = float(np.median(tokens / steps))
    first = rows.iloc[0]
    values = {c: _plain(first[c]) for c in settings if c in rows}
    return Curve(run, steps.astype(int), y, eta, bool(warmup_assumed), tps, values)


def _title(run: Any) -> str:
    """``wsd 1-sqrt 20%, 1.05e+06 tokens``: a sweep run's schedule and budget."""
    decay = (
        f" {run.decay_shape} {run.decay_fraction:.0%}" if run.schedule in ("wsd", "wsd_s", "power") else ""
    )
    return f"{run.schedule}{decay}, {run.tokens:.3g} tokens"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return None if isinstance(value, float) and np.isnan(value) else value
