"""``collect``: the trusted records as ``runs.parquet`` and their curves as ``curves.parquet``, incrementally.

Both tables keep, in their Parquet metadata, the key (modification time, size, inode) of every record file
they were built from, so a collect reads only records and curves that are new or changed, and rewrites
nothing when nothing is. Both are replaced atomically. Workers also write the runs they record as shards
(``ShardWriter``: one runs and one curves table per process, with the same keys), which a collect reads
instead of the runs' own files while the keys still match.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import RunConfig
from .schema import CURVES_SCHEMA, IDENTITY_COLUMNS, REQUIRED, RUNS_SCHEMA, record_problem, setting_values
from .store import (
    LARGE_MAX_BYTES,
    WHOLE_MAX_BYTES,
    RecordProblem,
    SweepDir,
    UntrustedFile,
    inside,
    read_table,
    select_runs,
    write_table,
)
from .trainer_result import PARAMS_PREFIX, with_params_columns

RECORD_KEYS = b"plsweep.record_keys.2"
"""Metadata key of runs.parquet and curves.parquet: {run_id: key} of the record files they were built from.
Its suffix changes when rows are built differently from the same records (2: settings derived from the
config), so a table written before is rebuilt once rather than trusted."""


def read_curve(path: Path, root: Path) -> pa.Table:
    """A run's curve: ``.arrow`` (Arrow IPC), or the ``.parquet`` of plsweep before 0.2; a regular file inside
    the sweep directory ``root`` (``store.inside``)."""
    if path.suffix == ".parquet":
        return read_table(path, root=root).cast(CURVES_SCHEMA)
    table = pa.ipc.open_file(inside(path, root, WHOLE_MAX_BYTES)).read_all()
    return table if table.schema.equals(CURVES_SCHEMA) else table.cast(CURVES_SCHEMA)  # a cast costs ~0.1 ms


CURVE_READERS = 8
"""Threads reading curve files at once: a first collect of 10,000 runs opens 10,000 small files."""


# --- the runs table --------------------------------------------------------------------------------


def _table_keys(path: Path, expected: pa.Schema, root: Path) -> dict[str, str] | None:
    """The record keys a table was built from (None: no such table, an unreadable one, one that is not a
    regular file inside the sweep directory ``root``, or one written by a version with another schema, which
    is then rebuilt)."""
    try:
        schema = pq.read_schema(inside(path, root, LARGE_MAX_BYTES))
    except (UntrustedFile, OSError, pa.ArrowException):
        return None
    metadata = schema.metadata or {}
    ours = pa.schema([f for f in schema.remove_metadata() if not f.name.startswith(PARAMS_PREFIX)])
    if RECORD_KEYS not in metadata or not ours.equals(expected):
        return None
    try:
        return json.loads(metadata[RECORD_KEYS])
    except ValueError:
        return None


def _row(record: dict[str, Any], sweep: SweepDir) -> dict[str, Any]:
    """A record as a runs-table row. A setting column the record lacks comes from its run's manifest row (a
    failed record without a value it could not hold, ``store.storable_record``), else from its config (a
    record of an older plsweep, from before the setting had a column), so every row has its run's settings
    and old and new records of one setting share one cell."""
    row = {name: record.get(name) for name in RUNS_SCHEMA.names}
    missing = [column for column in IDENTITY_COLUMNS if row[column] is None]
    if missing:
        expected = sweep.manifest_settings().expected(record["run_id"]) or {}
        row |= {column: expected[column] for column in missing if column in expected}
    if record.get("config") is not None and any(row[c] is None for c in IDENTITY_COLUMNS):
        config = record["config"]
        try:
            derived = setting_values(
                RunConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
            )
        # a config this plsweep cannot read: those columns stay null
        except (ValueError, TypeError, AttributeError):
            derived = {}
        row |= {name: value for name, value in derived.items() if name in row and row[name] is None}
    for name in ("started_at", "finished_at"):
        if row[name] is not None:
            row[name] = datetime.fromisoformat(row[name])
    if isinstance(row["config"], dict):
        row["config"] = json.dumps(row["config"], sort_keys=True)
    return row


def _update_runs_table(
    sweep: SweepDir,
    files: dict[str, tuple[Path, str]],
    old_keys: dict[str, str],
    shards: _Shards,
    sweep_hash: str,
) -> tuple[dict[str, str], list[str], list[RecordProblem]]:
    """Bring ``runs.parquet`` (built from the records of ``old_keys``) up to date with the record files
    (``files``): read only records that are new or changed, from a shard where one holds them, and leave
    out and report the untrusted ones. Returns the keys of its rows, the run ids read just now, and the
    problems."""
    path = sweep.runs_table_path
    fresh = [run_id for run_id, (_, key) in files.items() if old_keys.get(run_id) != key]
    fresh_set = set(fresh)
    rows, read, problems = [], [], []
    from_shards = fresh_set & shards.run_ids
    if fresh_set - from_shards:
        sweep.manifest_settings().prefetch(fresh_set - from_shards)
    for run_id in fresh:
        if run_id in from_shards:
            read.append(run_id)
            continue
        record = sweep.read_record(files[run_id][0], sweep_hash)
        if isinstance(record, RecordProblem):
            problems.append(record)
            continue
        rows.append(_row(record, sweep))
        read.append(run_id)
    kept = [run_id for run_id in old_keys if run_id in files and run_id not in fresh_set]
    if not read and len(kept) == len(old_keys) and path.exists():
        return old_keys, [], problems  # nothing new, nothing gone: the table stands
    parts = [pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)] if rows else []
    if from_shards:
        parts.append(_only(shards.runs, from_shards, shards.run_ids))
    if kept:
        parts.append(read_table(path, RUNS_SCHEMA.names, run_ids=kept, root=sweep.root).cast(RUNS_SCHEMA))
    table = pa.concat_tables(parts).sort_by("run_id") if parts else RUNS_SCHEMA.empty_table()
    table = with_params_columns(table)
    keys = {run_id: files[run_id][1] for run_id in table.column("run_id").to_pylist()}
    write_table(path, table.replace_schema_metadata({RECORD_KEYS: json.dumps(keys).encode()}))
    return keys, read, problems


# --- shards: the results of one worker process, collected by the worker ------------------------------


SHARD_MIN_RUNS = 4
"""A worker process that recorded at least this many runs writes them as a shard as well: below it, the
shard would cost collect about as many file reads as the runs' own files."""


class ShardWriter:
    """The runs one worker process records, kept as a runs table and a curves table (a *shard*) that
    ``collect`` reads instead of their record and curve files, one file each per process instead of per run.

    A shard is an accelerator, never the truth: it holds each run's record-file key, and collect takes a
    run from it only while the record file on disk still has that key (a rerun or an edited record is read
    from its file); a missing, partial or unreadable shard costs only the per-file reads. Collect deletes
    the shards it has read once the tables hold their runs.
    """

    def __init__(self, sweep: SweepDir) -> None:
        self.sweep = sweep
        self.rows: list[dict[str, Any]] = []
        self.keys: dict[str, str] = {}
        self.curves: list[pa.Table] = []

    def add(self, record: dict[str, Any], key: str, curve: pa.Table | None) -> None:
        """A run just recorded (its record file's key and curve table, as ``write_result`` returns them);
        a record the runs schema refuses is left to collect to read and report."""
        if record_problem(record) is None:
            self.rows.append(_row(record, self.sweep))
            self.keys[record["run_id"]] = key
            if curve is not None:
                self.curves.append(curve)

    def write(self) -> None:
        """Write the shard (curves first: a shard's runs file means both are complete), if it is worth it.
        A shard that cannot be written (a full disk) is a line in the log, never a failed task: the runs'
        own files are written already."""
        if len(self.rows) < SHARD_MIN_RUNS:
            return
        metadata = {RECORD_KEYS: json.dumps(self.keys).encode()}
        stem = self.sweep.shards_dir / f"{self.rows[0]['run_id']}-{uuid.uuid4().hex[:12]}"
        curves = pa.concat_tables(self.curves) if self.curves else CURVES_SCHEMA.empty_table()
        runs = pa.Table.from_pylist(self.rows, schema=RUNS_SCHEMA).replace_schema_metadata(metadata)
        try:
            write_table(stem.with_suffix(".curves.parquet"), curves.replace_schema_metadata(metadata), False)
            write_table(stem.with_suffix(".runs.parquet"), runs, durable=False)
        except OSError as err:
            print(
                f"shard of {len(self.rows)} runs not written ({err}); collect reads their files", flush=True
            )
        self.rows, self.keys, self.curves = [], {}, []


@dataclass
class _Shards:
    """The rows and curves that shards hold of the runs a collect needs, and the shard files read."""

    run_ids: set[str] = field(default_factory=set)
    runs: pa.Table | None = None  # None when run_ids is empty (an empty table would import pandas)
    curves: pa.Table | None = None
    paths: list[Path] = field(default_factory=list)


def _only(table: pa.Table, run_ids: set[str], among: set[str]) -> pa.Table:
    """The rows of ``table`` (whose run ids are ``among``) of ``run_ids``."""
    return table if run_ids == among else select_runs(table, run_ids)


def _read_shards(sweep: SweepDir, wanted: dict[str, str], sweep_hash: str) -> _Shards:
    """The runs of ``wanted`` ({run_id: current record-file key}) that a shard holds with that same key and
    this sweep's hash, with their curves; and every shard file there is (to delete once collected)."""
    out = _Shards()
    try:
        out.paths = sorted(p for p in sweep.shards_dir.iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):  # no shards: every run is read from its files
        return out
    if not wanted:
        return out
    runs, curves = [], []
    for runs_path in (p for p in out.paths if p.name.endswith(".runs.parquet")):
        curves_path = runs_path.with_name(runs_path.name.replace(".runs.", ".curves."))
        keys = _table_keys(runs_path, RUNS_SCHEMA, sweep.root)
        if keys is None or _table_keys(curves_path, CURVES_SCHEMA, sweep.root) != keys:
            continue  # gone (another collect), partial or foreign: its runs are read from their files
        take = [
            run_id for run_id, key in keys.items() if wanted.get(run_id) == key and run_id not in out.run_ids
        ]
        if not take:
            continue
        try:
            table = read_table(runs_path, run_ids=take, root=sweep.root)
            curve = read_table(curves_path, run_ids=take, root=sweep.root)
        except (UntrustedFile, OSError, pa.ArrowException):
            continue
        ids = table.column("run_id").to_pylist()
        taken = _trusted_rows(sweep, table, sweep_hash)
        runs.append(_only(table, taken, set(ids)).replace_schema_metadata(None))
        curves.append(_only(curve, taken, set(take)).replace_schema_metadata(None))
        out.run_ids |= taken
    if runs:
        out.runs, out.curves = pa.concat_tables(runs), pa.concat_tables(curves)
    return out


_CHECKED = [
    name
    for name in RUNS_SCHEMA.names
    if name in (*REQUIRED, "error", *IDENTITY_COLUMNS)
    or pa.types.is_integer(RUNS_SCHEMA.field(name).type)
    or pa.types.is_floating(RUNS_SCHEMA.field(name).type)
]
"""The columns of a shard's rows that its Parquet types do not vouch for: values, ranges, settings."""


def _trusted_rows(sweep: SweepDir, table: pa.Table, sweep_hash: str) -> set[str]:
    """The run ids of a shard's rows that pass the checks of a record file: this sweep's hash, the runs
    schema (``record_problem``), the run's settings (``trust``). A row that fails is read from its file."""
    columns = {name: table.column(name).to_pylist() for name in _CHECKED}
    rows = [dict(zip(_CHECKED, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    settings = sweep.manifest_settings()
    settings.prefetch(columns["run_id"])
    return {
        row["run_id"]
        for row in rows
        if row["sweep_hash"] == sweep_hash
        and record_problem(row, typed=True) is None
        and settings.problem(row) is None
    }


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
    sweep_hash = sweep.info()["sweep_hash"]  # not a sweep directory: say so
    files = sweep.record_files()
    runs_keys = _table_keys(sweep.runs_table_path, RUNS_SCHEMA, sweep.root) or {}
    curves_keys = _table_keys(sweep.curves_table_path, CURVES_SCHEMA, sweep.root)
    wanted = {
        run_id: key
        for run_id, (_, key) in files.items()
        if runs_keys.get(run_id) != key or (curves_keys or {}).get(run_id) != key
    }
    shards = _read_shards(sweep, wanted, sweep_hash)
    keys, fresh, problems = _update_runs_table(sweep, files, runs_keys, shards, sweep_hash)
    unreadable = _update_curves(sweep, keys, curves_keys, shards)
    for path in shards.paths:  # their runs are in the tables now (or superseded)
        path.unlink(missing_ok=True)
    return CollectReport(
        len(keys), len(fresh), problems, sweep.runs_table_path, sweep.curves_table_path, unreadable
    )


def _update_curves(
    sweep: SweepDir, keys: dict[str, str], old_keys: dict[str, str] | None, shards: _Shards
) -> list[str]:
    """curves.parquet (built from the records of ``old_keys``; None: there is none) = its kept curves + the
    curves of runs whose record is new (from a shard where one holds them, else from their curve files).

    Returns the curve files that could not be read (their runs stay in runs.parquet, without a curve).
    """
    path = sweep.curves_table_path
    if old_keys == keys:
        return []
    old_keys = old_keys or {}
    fresh = {run_id for run_id, key in keys.items() if old_keys.get(run_id) != key}
    kept = [run_id for run_id in keys if run_id in old_keys and run_id not in fresh]
    from_shards = fresh & shards.run_ids
    curves = [
        curve
        for run_id in sorted(fresh - from_shards)
        if (curve := _existing_curve(sweep, run_id)) is not None
    ]
    parts, unreadable = [], []
    if from_shards:
        parts.append(_only(shards.curves, from_shards, shards.run_ids))
    with ThreadPoolExecutor(max_workers=CURVE_READERS) as pool:  # Arrow reads without holding the GIL
        tables = pool.map(lambda curve: _try_read_curve(curve, sweep.root), curves)
        for curve, table in zip(curves, tables, strict=True):
            if isinstance(table, pa.Table):
                parts.append(table)
            else:
                unreadable.append(f"{curve}: {' '.join(table.split())[:160]}")
    if kept:
        parts.append(read_table(path, run_ids=kept, root=sweep.root).cast(CURVES_SCHEMA))
    table = pa.concat_tables(parts) if parts else CURVES_SCHEMA.empty_table()
    write_table(path, table.replace_schema_metadata({RECORD_KEYS: json.dumps(keys).encode()}))
    return unreadable


def _try_read_curve(path: Path, root: Path) -> pa.Table | str:
    try:
        return read_curve(path, root)
    except UntrustedFile as err:
        return err.reason
    except (OSError, pa.ArrowException) as err:
        return str(err)


def _existing_curve(sweep: SweepDir, run_id: str) -> Path | None:
    path = sweep.curve_path(run_id)
    for candidate in (path, path.with_suffix(".parquet")):
        if os.path.lexists(candidate):
            return candidate
    return None
