"""Any lab's table of runs, read into our column names: a sweep directory's ``runs.parquet`` or a CSV or
Parquet file from any trainer, with ``--col OURS=THEIRS`` for its names.

Units after loading: ``lr`` is the base LR, ``batch_size`` is in sequences (a batch given in tokens is
divided by the sequence length), ``tokens`` in tokens, and ``loss`` is the loss column the user named.
Only the loss is required: a table without an ``lr`` column is a table of final losses (one run per
setting, the layout of published scaling studies), which supports loss laws only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import bounds
from .fit_spec import BATCH_UNITS, BatchUnit, FitError, canonical
from .schema import RUN_COLUMNS, STATUSES

POSITIVE = ("lr", "batch_size", "tokens", "params_non_embedding", "seq_len")
"""Columns that must be finite positive numbers wherever the table has them."""


def parse_pairs(items: list[str] | None, what: str = "--col") -> dict[str, str]:
    """``["lr=peak_lr", "batch=bs"]`` -> ``{"lr": "peak_lr", "batch_size": "bs"}`` (aliases resolved)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise FitError(f"{what} {item!r}: expected NAME=VALUE")
        out[canonical(key)] = value.strip()
    return out


def parse_values(items: list[str] | None, what: str = "--predict") -> dict[str, float]:
    """``["batch=1024", "tokens=1e12"]`` -> ``{"batch_size": 1024.0, "tokens": 1e12}``: positive numbers."""
    out = {}
    for key, value in parse_pairs(items, what).items():
        try:
            number = float(value)
        except ValueError:
            raise FitError(f"{what} {key}={value}: not a number") from None
        if not (np.isfinite(number) and number > 0):
            raise FitError(f"{what} {key}={value}: must be a positive number")
        out[key] = number
    return out


def table_path(path: Path) -> Path:
    """The runs table a path names: the file, or a sweep directory's ``runs.parquet``."""
    if path.is_dir():
        table = path / "runs.parquet"
        if not table.exists():
            raise FitError(f"{path}: no runs.parquet; run `plsweep collect {path}` first")
        return table
    if not path.exists():
        raise FitError(f"{path}: no such file or directory")
    return path


def load_runs(
    path: str | Path,
    columns: dict[str, str] | None = None,
    loss_column: str | None = None,
    batch_unit: BatchUnit = "sequences",
    seq_len: int | None = None,
) -> pd.DataFrame:
    """Read a sweep directory (its ``runs.parquet``) or a CSV/Parquet table into our column names.

    ``columns`` maps our names to the file's (``{"lr": "peak_lr"}``); ``loss_column`` (the file's name or
    ours; default ``final_val_loss``) becomes the column ``loss``. ``batch_unit="tokens"`` says the batch
    column counts tokens: it is divided by ``seq_len`` (the option, else the table's column). Without a
    status column, rows with a non-finite loss are taken as diverged, the others as ok.
    """
    table = table_path(Path(path))
    suffix = table.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise FitError(f"{table}: unknown table type {table.suffix!r}; use .csv or .parquet")
    try:
        raw = pd.read_csv(table) if suffix == ".csv" else pd.read_parquet(table)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise FitError(
            f"{table}: cannot read it as {suffix[1:]} ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    return prepare_runs(raw, columns, loss_column, batch_unit, seq_len, source=str(table))


def prepare_runs(
    raw: pd.DataFrame,
    columns: dict[str, str] | None = None,
    loss_column: str | None = None,
    batch_unit: BatchUnit = "sequences",
    seq_len: int | None = None,
    source: str = "table",
) -> pd.DataFrame:
    """``load_runs`` on a data frame already in memory (``source`` names it in errors)."""
    if raw.empty:
        raise FitError(f"{source}: the table has no rows")
    runs = _rename(raw, source, columns or {})
    loss_name = loss_column or "final_val_loss"
    mapped = loss_name in raw.columns and loss_name not in (columns or {}).values()  # the file's own name
    loss = raw[loss_name] if mapped else runs.get(canonical(loss_name))
    if loss is None:
        raise FitError(f"{source}: missing loss column {loss_name!r}; name yours with --loss-column NAME")
    runs["loss"] = pd.to_numeric(loss, errors="coerce").astype(float)
    _check_positive(runs, source)
    _set_status(runs, source)
    _check_loss(runs, loss, source, loss_name)
    _set_batch(runs, source, batch_unit, seq_len)
    if not (runs["status"] == "ok").any():
        raise FitError(f"{source}: no run finished with a finite loss in {loss_name!r}")
    runs.attrs.update(source=source, loss_column=loss_name, batch_unit=batch_unit)
    return runs


def _rename(raw: pd.DataFrame, table: str, columns: dict[str, str]) -> pd.DataFrame:
    known = {name for name, _, _ in RUN_COLUMNS}
    columns = {canonical(ours): theirs for ours, theirs in columns.items()}
    for ours, theirs in columns.items():
        if ours not in known:
            raise FitError(
                f"--col {ours}={theirs}: {ours!r} is not a runs-table column; valid: {', '.join(sorted(known))}"
            )
        if theirs not in raw.columns:
            raise FitError(
                f"{table}: no column {theirs!r} (from --col {ours}={theirs}); columns: {', '.join(map(str, raw.columns))}"
            )
    clashing = [c for c in columns if c in raw.columns and c not in columns.values()]
    runs = raw.drop(columns=clashing)
    return runs.rename(columns={theirs: ours for ours, theirs in columns.items()})


def _check_positive(runs: pd.DataFrame, table: str) -> None:
    """``POSITIVE`` columns hold positive finite numbers in every run but failed ones (not results); a column with no
    value at all is no column (a trainer that reports no parameter count)."""
    results = (
        runs["status"].astype(str).str.lower() != "failed"
        if "status" in runs
        else pd.Series(True, index=runs.index)
    )
    for name in POSITIVE:
        if name not in runs:
            continue
        raw = runs[name]
        runs[name] = pd.to_numeric(raw, errors="coerce").astype(float)
        if runs[name].isna().all() and name != "lr":
            runs.drop(columns=name, inplace=True)
            continue
        _check_cells(runs[name], raw, bounds.POSITIVE, f"{table}: column {name!r}", results.to_numpy())


def _check_loss(runs: pd.DataFrame, raw: pd.Series, table: str, loss_name: str) -> None:
    """A loss is never negative, and a run counted as finished (status ok) has a finite one; a diverged or
    failed run's loss may be missing or infinite."""
    where = f"{table}: column {loss_name!r}"
    negative = (runs["loss"] < 0).to_numpy()
    _check_cells(
        runs["loss"], raw, bounds.NON_NEGATIVE, where, negative | (runs["status"] == "ok").to_numpy()
    )


def _check_cells(
    values: pd.Series, raw: pd.Series, rule: bounds.Range, where: str, rows: np.ndarray | None = None
) -> None:
    """Every value (of ``rows``, default all) holds ``rule``, else one line naming the first bad row
    (counted from 1, the header not counted) and its value as the table gives it."""
    bad = ~rule.mask(values.to_numpy()) & (True if rows is None else rows)
    if bad.any():
        i = int(np.argmax(bad))
        raise FitError(f"{where}, row {i + 1}: must be {rule.describe()}, got {raw.iloc[i]}")


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
    if batch_unit not in BATCH_UNITS:
        raise FitError(f"batch unit {batch_unit!r}: use {' or '.join(BATCH_UNITS)}")
    if seq_len is not None:
        if seq_len <= 0:
            raise FitError(f"--seq-len {seq_len}: must be positive")
        runs["seq_len"] = float(seq_len)
    has_len = "seq_len" in runs and runs["seq_len"].notna().all()
    if "batch_tokens" in runs and "batch_size" not in runs:
        raise FitError(
            f"{table}: name the batch column with --col batch=COLUMN (with --batch-unit tokens "
            "--seq-len L for a batch in tokens), not --col batch_tokens"
        )
    if "batch_size" not in runs:
        if batch_unit == "tokens":
            raise FitError(
                f"{table}: --batch-unit tokens but no batch column; map yours with --col batch=YOUR_COLUMN"
            )
        return
    if batch_unit == "tokens":
        if not has_len:
            raise FitError(
                f"{table}: batch in tokens needs the sequence length: --seq-len L or --col seq_len=NAME"
            )
        runs["batch_tokens"] = runs["batch_size"]
        runs["batch_size"] = runs["batch_tokens"] / runs["seq_len"]
        if not np.allclose(runs["batch_size"], runs["batch_size"].round()):
            raise FitError(
                f"{table}: a batch in tokens is not a multiple of seq_len; check --batch-unit and --seq-len"
            )
    elif has_len:
        runs["batch_tokens"] = runs["batch_size"] * runs["seq_len"]
