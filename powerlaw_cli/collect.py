"""``collect``: the trusted records as ``runs.parquet`` and their curves as ``curves.parquet``, incrementally.

Both tables keep, in their Parquet metadata, the key (modification time, size, inode) of every record file
they were built from, so a collect reads only records and curves that are new or changed, and rewrites
nothing when nothing is. Both are replaced atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import CURVES_SCHEMA, RUNS_SCHEMA
from .store import RecordProblem, SweepDir, read_table, write_table

RECORD_KEYS = b"plsweep.record_keys"
"""Metadata key of runs.parquet and curves.parquet: {run_id: key} of the record files they were built from."""


def read_curve(path: Path) -> pa.Table:
    """A run's curve: ``.arrow`` (Arrow IPC), or the ``.parquet`` of plsweep before 0.2."""
    if path.suffix == ".parquet":
        return read_table(path).cast(CURVES_SCHEMA)
    return pa.ipc.open_file(path).read_all().cast(CURVES_SCHEMA)


# --- the runs table --------------------------------------------------------------------------------


def _table_keys(path: Path, expected: pa.Schema) -> dict[str, str] | None:
    """The record keys a table was built from (None: no such table, an unreadable one, or one written by a
    version with another schema, which is then rebuilt)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return None
    metadata = schema.metadata or {}
    if RECORD_KEYS not in metadata or not schema.remove_metadata().equals(expected):
        return None
    try:
        return json.loads(metadata[RECORD_KEYS])
    except ValueError:
        return None


def _row(record: dict[str, Any]) -> dict[str, Any]:
    row = {name: record.get(name) for name in RUNS_SCHEMA.names}
    for name in ("started_at", "finished_at"):
        if row[name] is not None:
            row[name] = datetime.fromisoformat(row[name])
    if isinstance(row["config"], dict):
        row["config"] = json.dumps(row["config"], sort_keys=True)
    return row


def _update_runs_table(sweep: SweepDir) -> tuple[dict[str, str], list[str], list[RecordProblem]]:
    """Bring ``runs.parquet`` up to date with the record files: read only records that are new or changed
    since it was written (their keys are in its metadata), leave out and report the untrusted ones.
    Returns the keys of its rows, the run ids read just now, and the problems."""
    sweep_hash = sweep.info()["sweep_hash"]
    files = sweep.record_files()
    path = sweep.runs_table_path
    old_keys = _table_keys(path, RUNS_SCHEMA) or {}
    fresh = [run_id for run_id, (_, key) in files.items() if old_keys.get(run_id) != key]
    rows, read, problems = [], [], []
    for run_id in fresh:
        record = sweep.read_record(files[run_id][0], sweep_hash)
        if isinstance(record, RecordProblem):
            problems.append(record)
            continue
        rows.append(_row(record))
        read.append(run_id)
    kept = [run_id for run_id in old_keys if run_id in files and run_id not in set(fresh)]
    if not read and len(kept) == len(old_keys) and path.exists():
        return old_keys, [], problems  # nothing new, nothing gone: the table stands
    parts = [pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)]
    if kept:
        parts.append(read_table(path, run_ids=kept).cast(RUNS_SCHEMA))
    table = pa.concat_tables(parts).sort_by("run_id")
    keys = {run_id: files[run_id][1] for run_id in table.column("run_id").to_pylist()}
    write_table(path, table.replace_schema_metadata({RECORD_KEYS: json.dumps(keys).encode()}))
    return keys, read, problems


# --- collect ---------------------------------------------------------------------------------------


@dataclass
class CollectReport:
    """What ``collect`` did."""

    runs: int = 0
    new: int = 0
    problems: list[RecordProblem] = field(default_factory=list)
    runs_path: Path | None = None
    curves_path: Path | None = None
    unreadable_curves: list[str] = field(default_factory=list)


def collect(sweep: SweepDir) -> CollectReport:
    """Bring ``runs.parquet`` and ``curves.parquet`` up to date with the records, incrementally.

    Records and curves that are new or changed since the last collect are read; corrupt, foreign or
    invalid records are reported and left out, so they count as not finished. Both files are replaced
    atomically: two collects at once never leave a broken file (the later one wins).
    """
    keys, fresh, problems = _update_runs_table(sweep)
    unreadable = _update_curves(sweep, keys)
    return CollectReport(
        len(keys), len(fresh), problems, sweep.runs_table_path, sweep.curves_table_path, unreadable
    )


def _update_curves(sweep: SweepDir, keys: dict[str, str]) -> list[str]:
    """curves.parquet = the kept curves of the old file + the curve files of runs whose record is new.

    Returns the curve files that could not be read (their runs stay in runs.parquet, without a curve).
    """
    path = sweep.curves_table_path
    old_keys = _table_keys(path, CURVES_SCHEMA)
    if old_keys == keys:
        return []
    old_keys = old_keys or {}
    fresh = [run_id for run_id, key in keys.items() if old_keys.get(run_id) != key]
    kept = [run_id for run_id in keys if run_id in old_keys and run_id not in set(fresh)]
    parts, unreadable = [], []
    for run_id in fresh:
        if (curve := _existing_curve(sweep, run_id)) is not None:
            try:
                parts.append(read_curve(curve))
            except (OSError, pa.ArrowException) as err:
                unreadable.append(f"{curve}: {' '.join(str(err).split())[:160]}")
    if kept:
        parts.append(read_table(path, run_ids=kept).cast(CURVES_SCHEMA))
    table = pa.concat_tables(parts) if parts else CURVES_SCHEMA.empty_table()
    write_table(path, table.replace_schema_metadata({RECORD_KEYS: json.dumps(keys).encode()}))
    return unreadable


def _existing_curve(sweep: SweepDir, run_id: str) -> Path | None:
    path = sweep.curve_path(run_id)
    for candidate in (path, path.with_suffix(".parquet")):
        if candidate.exists():
            return candidate
    return None
