"""The result schema: one typed table of runs and one of loss curves, kept in this one place.

``runs.parquet`` has one row per run, ``curves.parquet`` one row per logged step. The schema
tables of docs/results.md are generated from ``RUN_COLUMNS`` and ``CURVE_COLUMNS``. Units: batch sizes in
sequences, token counts in tokens, LR is the base LR (width == base_width) before muP multipliers,
losses in nats per token.

Every setting that is part of a run's id is a column (``SETTING_COLUMNS``, derived from the settings
in ``config.py``: the column's name, type and meaning come from the setting's own definition), so that
two runs that differ in any such setting differ in a column, and a fit never pools them unawares.
A record is checked against this schema before it is written and when it is read (``record_problem``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any, Literal, get_origin

import pyarrow as pa

from .config import SECTION_NAMES, SECTION_TYPES, RunConfig, ScheduleConfig, base_width_init_std, field_types

STATUSES = ("ok", "diverged", "failed")
"""ok: trained to the end; diverged: stopped early by a non-finite or exploding loss (a result);
failed: an error stopped it (not a result; ``--retry-failed`` reruns it)."""

_TIME = pa.timestamp("us", tz="UTC")

# Columns holding a setting in a derived form: the data source with its path, the resolved decay length
# and init std.
_DERIVED_DOCS = {
    "data": "data source and path (source:path)",
    "decay_tokens": "decay length, tokens (0 when the schedule has none)",
    "decay_points": "wsd_s: the budgets at which the main branch decays, comma-separated tokens",
    "init_std": "init std of embeddings, readout and (at base width) hidden matrices, resolved "
    "(model.init_std = 0 gives the base-width rule's value)",
}


def _arrow_type(annotation: Any) -> pa.DataType:
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is str or get_origin(annotation) in (Literal, list):  # lists: comma-joined
        return pa.string()
    raise TypeError(f"no runs-table type for setting type {annotation!r}")


def _setting_columns() -> tuple[dict[str, str], list[tuple[str, pa.DataType, str]]]:
    """{"section.field": column} of every run-id setting, and the columns in settings order."""
    mapping: dict[str, str] = {}
    columns: dict[str, tuple[str, pa.DataType, str]] = {}
    for section in SECTION_NAMES:
        section_type = SECTION_TYPES[section]
        hints = field_types(section_type)
        for f in fields(section_type):
            if not f.metadata["identity"]:
                continue
            column = f.metadata["column"] or f.name
            mapping[f"{section}.{f.name}"] = column
            columns.setdefault(
                column, (column, _arrow_type(hints[f.name]), _DERIVED_DOCS.get(column, f.metadata["doc"]))
            )
    return mapping, list(columns.values())


DERIVED_COLUMNS = tuple(_DERIVED_DOCS)
"""Columns that hold a setting in a derived form (``flat_setting_values``), not as the setting is."""

SETTING_COLUMNS, _SETTINGS = _setting_columns()
"""Every run-id setting ("section.field") -> its runs-table column."""

RUN_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "hash of the settings that change the result"),
    ("sweep", pa.string(), "sweep name"),
    ("sweep_hash", pa.string(), "hash of the sweep file the run was launched from"),
    ("status", pa.string(), "ok | diverged | failed"),
    ("error", pa.string(), "failed: the error, one line"),
    *_SETTINGS,
    ("params_non_embedding", pa.int64(), "parameters without token embedding, positions and readout"),
    ("batch_tokens", pa.int64(), "tokens per step = batch_size * seq_len"),
    ("tokens_seen", pa.int64(), "tokens actually trained on (less if diverged)"),
    ("steps", pa.int64(), "optimizer steps taken"),
    ("final_val_loss", pa.float64(), "validation loss of the final raw weights, nats/token (null unless ok)"),
    (
        "final_val_loss_averaged",
        pa.float64(),
        "validation loss of the averaged weights (null without averaging)",
    ),
    ("final_train_loss", pa.float64(), "train loss of the last step"),
    ("diverged_at_tokens", pa.int64(), "diverged: tokens seen when it was stopped"),
    ("flops", pa.float64(), "training FLOPs spent: flops_per_token * tokens_seen"),
    ("wall_seconds", pa.float64(), "wall-clock seconds of training (over all restarts)"),
    ("resumes", pa.int64(), "times the run resumed from a checkpoint"),
    ("device", pa.string(), "cpu | cuda:N"),
    ("trunk_id", pa.string(), "id of the shared WSD trunk or WSD-S main branch (null when trained alone)"),
    ("slurm_job_id", pa.string(), "Slurm job id (ARRAY_TASK form), null outside Slurm"),
    ("host", pa.string(), "host name"),
    ("started_at", _TIME, "UTC start of training"),
    ("finished_at", _TIME, "UTC end of training"),
    ("plsweep_version", pa.string(), "plsweep version"),
    ("torch_version", pa.string(), "torch version"),
    ("config", pa.string(), "the run's full settings as JSON {section: {field: value}}"),
]

CURVE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "the run"),
    ("step", pa.int64(), "optimizer steps done"),
    ("tokens", pa.int64(), "tokens seen after this step"),
    ("lr", pa.float64(), "base LR used for this step"),
    ("train_loss", pa.float64(), "train loss of this step"),
    ("val_loss", pa.float64(), "validation loss (null except at evaluation points)"),
    (
        "val_loss_averaged",
        pa.float64(),
        "validation loss of the averaged weights (null except at evaluations with averaging)",
    ),
]

RUNS_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in RUN_COLUMNS])
CURVES_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in CURVE_COLUMNS])

IDENTITY_COLUMNS = tuple(dict.fromkeys(SETTING_COLUMNS.values()))
"""The columns of run-id settings, in settings order (a fit's cells are groups equal in all but LR and seed)."""

REQUIRED = ("run_id", "sweep_hash", "status")
RESULT_REQUIRED = ("width", "depth", "batch_size", "tokens", "lr", "seed")
"""Required unless the run failed: a failed record may lack a setting it could not store (see ``store``)."""
POSITIVE = (
    "width",
    "depth",
    "n_heads",
    "base_width",
    "seq_len",
    "vocab_size",
    "batch_size",
    "batch_tokens",
    "tokens",
    "lr",
)
NON_NEGATIVE = (
    "tokens_seen",
    "steps",
    "warmup_tokens",
    "decay_tokens",
    "params_non_embedding",
    "flops",
    "wall_seconds",
    "resumes",
    "diverged_at_tokens",
    "weight_decay",
    "final_val_loss",  # cross-entropies, nats per token
    "final_val_loss_averaged",
    "final_train_loss",
)
PRODUCTS = (("batch_tokens", "batch_size", "seq_len"), ("tokens_seen", "steps", "batch_tokens"))
"""column = a x b, in every record of the built-in proxy (a user's trainer counts its own steps and tokens:
only its ``batch_tokens`` is plsweep's)."""


def setting_values(run: RunConfig) -> dict[str, Any]:
    """The run-id settings of ``run`` as runs-table columns (the record writer's one source for them)."""
    return flat_setting_values(run.flat())


def flat_setting_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The run-id settings columns of flat settings {"section.field": value}: a run's, or its manifest row's
    (what its record must hold). KeyError when ``flat`` lacks a setting."""
    return {column: flat[setting] for setting, column in SETTING_COLUMNS.items()} | derived_values(flat)


def derived_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DERIVED_COLUMNS`` of flat settings (KeyError when ``flat`` lacks a setting they need)."""
    decay = _decay(flat["schedule.decay_tokens"], flat["schedule.decay_fraction"])
    return {
        "data": flat["data.source"] + (f":{flat['data.path']}" if flat["data.path"] else ""),
        "decay_tokens": decay.decay_length(flat["training.tokens"])
        if flat["schedule.name"] in ("wsd", "wsd_s", "power")
        else 0,
        "decay_points": ",".join(str(p) for p in flat["schedule.decay_points"]),
        "init_std": flat["model.init_std"] or base_width_init_std(flat["model.base_width"]),  # 0: the rule's
    }


@functools.lru_cache(maxsize=256)
def _decay(decay_tokens: int, decay_fraction: float) -> ScheduleConfig:
    """A schedule with this decay, for its ``decay_length`` (a sweep has few distinct ones)."""
    return ScheduleConfig(decay_tokens=decay_tokens, decay_fraction=decay_fraction)


def _type_problem(value: Any, dtype: pa.DataType) -> str | None:
    if pa.types.is_integer(dtype):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if pa.types.is_floating(dtype):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "expected a finite number"
    if pa.types.is_string(dtype):
        return None if isinstance(value, str) else "expected a string"
    if pa.types.is_timestamp(dtype):
        if isinstance(value, datetime):  # a runs-table row (a shard's)
            return None if value.tzinfo is not None else "expected a time with a UTC offset"
        try:
            ok = isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
        except ValueError:
            ok = False
        return None if ok else "expected an ISO 8601 time with a UTC offset"
    return f"unsupported column type {dtype}"  # pragma: no cover - a programming error


_TYPES = {name: dtype for name, dtype, _ in RUN_COLUMNS if name != "config"}
_FLOATS = {name: dtype for name, dtype in _TYPES.items() if pa.types.is_floating(dtype)}


def record_problem(record: dict[str, Any], typed: bool = False) -> str | None:
    """Why ``record`` does not fit the runs schema (types, statuses, ranges), or None when it does.

    Columns may be missing or null (older records lack newer columns) except ``REQUIRED`` (and, unless the run
    failed, ``RESULT_REQUIRED``); ``config`` may be a JSON object or its text; a failed run has an error; an
    ok run has a validation loss. ``typed``: a row of a runs table, whose Parquet types vouch for all but the
    finiteness of its numbers.
    """
    problem = column_problem(record, typed)
    return f"{problem[0]}: {problem[1]}" if problem else None


def _of_the_proxy(record: dict[str, Any]) -> bool:
    """Whether the built-in proxy trained the run: its config names no ``trainer`` (a dict, or its JSON text,
    parsed only when the word is in it)."""
    config = record.get("config")
    if isinstance(config, str) and '"trainer"' in config:
        try:
            config = json.loads(config)
        except ValueError:
            return True
    return not (isinstance(config, dict) and config.get("trainer"))


def column_problem(record: dict[str, Any], typed: bool = False) -> tuple[str, str] | None:
    """(column, what is wrong with it) for the first column of ``record`` that ``record_problem`` refuses."""
    required = REQUIRED if record.get("status") == "failed" else REQUIRED + RESULT_REQUIRED
    for name in required:
        if record.get(name) is None:
            return name, "missing"
    for name, dtype in _FLOATS.items() if typed else _TYPES.items():
        value = record.get(name)
        if value is not None and (problem := _type_problem(value, dtype)):
            return name, f"{problem}, got {value!r}"[:200]
    if record["status"] not in STATUSES:
        return "status", f"{record['status']!r} is not one of {', '.join(STATUSES)}"
    for name in POSITIVE:
        if record.get(name) is not None and record[name] <= 0:
            return name, f"must be > 0, got {record[name]!r}"
    for name in NON_NEGATIVE:
        if record.get(name) is not None and record[name] < 0:
            return name, f"must be >= 0, got {record[name]!r}"
    for name, a, b in PRODUCTS if _of_the_proxy(record) else PRODUCTS[:1]:
        if (
            None not in (record.get(name), record.get(a), record.get(b))
            and record[name] != record[a] * record[b]
        ):
            return name, f"must be {a} x {b} = {record[a] * record[b]}, got {record[name]!r}"
    if record["status"] == "failed" and not record.get("error"):
        return "error", "a failed run needs one"
    if record["status"] == "ok" and record.get("final_val_loss") is None:
        return "final_val_loss", "an ok run needs one"
    if not isinstance(record.get("config"), (dict, str, type(None))):
        return "config", "expected a JSON object"
    return None
