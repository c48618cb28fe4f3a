"""A user's trainer's result (the JSON file at ``PLSWEEP_RESULT``, or an entry point's return value) as a
run's record and curve, checked like a built-in record (``schema.record_problem``) before it is trusted.

The result's fields: ``final_val_loss`` (required unless diverged), and optionally ``status`` (ok or
diverged), ``tokens_seen``, ``diverged_at_tokens``, ``params_non_embedding``, ``flops`` and ``curve`` (a
list of ``{step, tokens, lr, train_loss, val_loss}`` rows, or the path of a CSV or JSONL file of them,
relative to the run's folder). Anything else is a ``ResultError``: the run is recorded as failed with it.
No torch here.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .config import RunConfig
from .schema import CURVE_COLUMNS, RUN_COLUMNS, SETTING_COLUMNS, record_problem, setting_values

RESULT_FIELDS = (
    "final_val_loss",
    "status",
    "tokens_seen",
    "diverged_at_tokens",
    "params_non_embedding",
    "flops",
    "curve",
)
CURVE_FIELDS = tuple(name for name, _, _ in CURVE_COLUMNS if name != "run_id")
_INT_FIELDS = ("tokens_seen", "diverged_at_tokens", "params_non_embedding")


class ResultError(ValueError):
    """A trainer's result that cannot be trusted; the message is one line naming the field."""


def read_result_file(path: Path) -> dict[str, Any]:
    """The result a command wrote at ``path`` (JSON object), or a ``ResultError`` saying why not."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultError(f"no result file at {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultError(f"{path}: unreadable ({err})") from None
    try:
        result = json.loads(text)
    except ValueError as err:
        raise ResultError(f"{path}: not valid JSON ({err})") from None
    return result


def check_result(result: Any, run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result's fields (checked: names, types, ranges) and its curve rows."""
    if not isinstance(result, dict):
        raise ResultError(f"the result must be a JSON object, got {type(result).__name__}")
    unknown = sorted(set(result) - set(RESULT_FIELDS))
    if unknown:
        raise ResultError(f"result.{unknown[0]}: unknown field; valid: {', '.join(RESULT_FIELDS)}")
    status = result.get("status", "ok")
    if status not in ("ok", "diverged"):
        raise ResultError(f"result.status: expected ok or diverged, got {status!r}")
    loss = result.get("final_val_loss")
    if loss is None and status == "ok":
        raise ResultError("result.final_val_loss: missing (required unless status is diverged)")
    if loss is not None:
        _number(loss, "final_val_loss")
    for name in _INT_FIELDS:
        value = result.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ResultError(f"result.{name}: expected an integer >= 0, got {value!r}")
    if result.get("flops") is not None:
        _number(result["flops"], "flops")
    curve = _curve(result.get("curve"), run_dir)
    return {**result, "status": status}, curve


def _number(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise ResultError(f"result.{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _curve(curve: Any, run_dir: Path) -> list[dict[str, Any]]:
    """Curve rows from a list, or from a CSV or JSONL file (its path relative to the run's folder)."""
    if curve is None:
        return []
    if isinstance(curve, str):
        path = run_dir / curve
        try:
            with open(path, newline="") as handle:
                if path.suffix == ".csv":
                    curve = [_csv_row(row) for row in csv.DictReader(handle)]
                elif path.suffix == ".jsonl":
                    curve = [json.loads(line) for line in handle if line.strip()]
                else:
                    raise ResultError(f"result.curve: {curve!r}: expected a .csv or .jsonl file")
        except OSError as err:
            raise ResultError(f"result.curve: cannot read {path} ({err.strerror})") from None
        except ValueError as err:
            raise ResultError(f"result.curve: {path}: {err}") from None
    if not isinstance(curve, list):
        raise ResultError("result.curve: expected a list of rows or the path of a .csv or .jsonl file")
    return [_curve_row(row, i) for i, row in enumerate(curve)]


def _csv_row(row: dict[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) if value not in ("", None) else None for key, value in row.items()}


def _curve_row(row: Any, index: int) -> dict[str, Any]:
    where = f"result.curve[{index}]"
    if not isinstance(row, dict):
        raise ResultError(f"{where}: expected an object with {', '.join(CURVE_FIELDS)}")
    unknown = sorted(set(row) - set(CURVE_FIELDS))
    if unknown:
        raise ResultError(f"{where}.{unknown[0]}: unknown field; valid: {', '.join(CURVE_FIELDS)}")
    for name in ("step", "tokens"):
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ResultError(f"{where}.{name}: expected an integer >= 0, got {value!r}")
    for name in ("lr", "train_loss", "val_loss", "val_loss_averaged"):
        value = row.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise ResultError(f"{where}.{name}: expected a finite number or null, got {value!r}")
    return {name: row.get(name) for name in CURVE_FIELDS}


def external_record(
    run: RunConfig,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    curve: list[dict[str, Any]] | None = None,
    error: str | None = None,
    started_at: str,
    wall_seconds: float,
    resumes: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a run a user's trainer trained (the columns of ``schema.RUN_COLUMNS``); a result that
    does not fit the runs schema makes it a failed run whose error says why."""
    result = result or {}
    curve = curve or []
    tokens_seen = result.get("tokens_seen")
    if tokens_seen is None and status == "ok":
        tokens_seen = curve[-1]["tokens"] if curve else run.training.tokens
    record: dict[str, Any] = dict.fromkeys(name for name, _, _ in RUN_COLUMNS)  # null unless known
    record |= {
        "run_id": run.run_id,
        "status": status,
        "error": error,
        **given_setting_values(run),
        **{
            name: result.get(name)
            for name in ("params_non_embedding", "final_val_loss", "diverged_at_tokens")
        },
        "batch_tokens": run.batch_tokens,
        "tokens_seen": tokens_seen,
        "steps": curve[-1]["step"] if curve else None,
        "final_train_loss": curve[-1]["train_loss"] if curve else None,
        "flops": result.get("flops"),
        "wall_seconds": wall_seconds,
        "resumes": resumes,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "config": run.to_dict(),
        **env_info(),
        **(extra or {}),
    }
    if status != "failed" and (problem := record_problem({**record, "sweep_hash": "-"})):
        return external_record(
            run,
            "failed",
            error=f"result: {problem}",
            started_at=started_at,
            wall_seconds=wall_seconds,
            resumes=resumes,
            extra=extra,
        )
    return record


def given_setting_values(run: RunConfig) -> dict[str, Any]:
    """The runs-table columns of a trainer run's settings: those its trainer is given (``trainer_spec``);
    null for the built-in proxy's settings it is not given, so that a fit never groups by them."""
    assert run.trainer is not None
    given = set(run.trainer["settings"])
    shown = {column for setting, column in SETTING_COLUMNS.items() if setting in given}
    return {column: value if column in shown else None for column, value in setting_values(run).items()}


def env_info() -> dict[str, Any]:
    """Where a user's trainer ran: the host, the Slurm job (ARRAY_TASK form), the GPUs it was shown."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {
        "device": f"cuda:{gpus}" if gpus else "cpu",
        "host": socket.gethostname(),
        "slurm_job_id": job,
        "plsweep_version": __version__,
        "torch_version": None,
    }


PARAMS_PREFIX = "params."
"""The runs table's columns of a [trainer] sweep's params: ``params.NAME`` (none of ours has a dot)."""


def with_params_columns(table: pa.Table) -> pa.Table:
    """The runs table with a ``params.NAME`` column per param of its runs (read from their ``config``), after
    the schema's columns; a table of built-in proxy runs is returned as it is."""
    table = table.select([name for name in table.column_names if not name.startswith(PARAMS_PREFIX)])
    configs = table.column("config")
    if not pc.any(pc.match_substring(configs, '"params"')).as_py():
        return table
    params = [(json.loads(text) if text else {}).get("params") or {} for text in configs.to_pylist()]
    for name in sorted({name for row in params for name in row}):
        values = [row.get(name) for row in params]
        kinds = {type(v) for v in values if v is not None}
        if not (kinds <= {int, float} or kinds == {bool} or kinds == {str}):
            values = [None if v is None else json.dumps(v) for v in values]  # lists, or mixed kinds: as JSON
        table = table.append_column(PARAMS_PREFIX + name, pa.array(values))
    return table
