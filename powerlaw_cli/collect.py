"""``collect``: the trusted records as ``runs.parquet`` and their curves as ``curves.parquet``, incrementally.

Both tables keep, in their Parquet metadata, the key (modification time, size, inode) of every record file
they were built from, so a collect reads only records and curves that are new or changed, and rewrites
nothing when nothing is. Both are replaced atomically.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import RunConfig
from .schema import CURVES_SCHEMA, IDENTITY_COLUMNS, RUNS_SCHEMA, setting_values
from .store import RecordProblem, SweepDir, read_table, write_table

RECORD_KEYS = b"plsweep.record_keys.2"
"""Metadata key of runs.parquet and curves.parquet: {run_id: key} of the record files they were built from.
Its suffix changes when rows are built differently from the same records (2: settings derived from the
config), so a table written before is rebuilt once rather than trusted."""


def read_curve(path: Path) -> pa.Table:
    """A run's curve: ``.arrow`` (Arrow IPC), or the ``.parquet`` of plsweep before 0.2."""
    if path.suffix == ".parquet":
        return read_table(path).cast(CURVES_SCHEMA)
    table = pa.ipc.open_file(path).read_all()
    return table if table.schema.equals(CURVES_SCHEMA) else table.cast(CURVES_SCHEMA)  # a cast costs ~0.1 ms


CURVE_READERS = 8
"""Threads reading curve files at once: a first collect of 10,000 runs opens 10,000 small files."""


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
    """A record as a runs-table row. A record written before a run-id setting became a column (an older
    plsweep) gets that column from its config, so old and new records of one setting share one cell."""
    row = {name: record.get(name) for name in RUNS_SCHEMA.names}
    if record.get("config") is not None and any(c not in record for c in IDENTITY_COLUMNS):
        config = record["config"]
        try:
            derived = setting_values(
                RunConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
            )
        # a config this plsweep cannot read: those columns stay null
        except (ValueError, TypeError, AttributeError):
            derived = {}
        row |= {name: value for name, value in derived.items() if name not in record and name in row}
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
    curves = [curve for run_id in fresh if (curve := _existing_curve(sweep, run_id)) is not None]
    parts, unreadable = [], []
    with ThreadPoolExecutor(max_workers=CURVE_READERS) as pool:  # Arrow reads without holding the GIL
        for curve, table in zip(curves, pool.map(_try_read_curve, curves), strict=True):
            if isinstance(table, pa.Table):
                parts.append(table)
            else:
                unreadable.append(f"{curve}: {' '.join(table.split())[:160]}")
    if kept:
        parts.append(read_table(path, run_ids=kept).cast(CURVES_SCHEMA))
    table = pa.concat_tables(parts) if parts else CURVES_SCHEMA.empty_table()
    write_table(path, table.replace_schema_metadata({RECORD_KEYS: json.dumps(keys).encode()}))
    return unreadable


def _try_read_curve(path: Path) -> pa.Table | str:
    try:
        return read_curve(path)
    except (OSError, pa.ArrowException) as err:
        return str(err)


def _existing_curve(sweep: SweepDir, run_id: str) -> Path | None:
    path = sweep.curve_path(run_id)
    for candidate in (path, path.with_suffix(".parquet")):
        if candidate.exists():
            return candidate
    return None
