"""The sweep directory: its layout, atomic writes, trusted records, and ``collect`` to Parquet.

Layout (the single source of truth; every command after ``launch`` reads only this)::

    results/NAME/                 created readable by its owner only (0700)
      sweep.toml                  the spec exactly as first launched
      sweep.json                  name, sweep_hash, created_at
      manifest.parquet            one row per run: run_id, trunk_id, every setting, config JSON
      tasks/launch-N.json         the run ids of every task of launch N, and its options
      launches.jsonl              one line per launch: executor, job ids per task
      runs/ab/RUN_ID.json         one record per finished run, written atomically
      curves/ab/RUN_ID.parquet    the run's loss curve
      checkpoints/KEY.pt          resumable state of unfinished work (removed once recorded)
      jobs/                       submitit's folder (pickles, logs)
      code/HASH/powerlaw_cli      the code snapshot Slurm workers run
      runs.parquet, curves.parquet   written by collect

A run is finished when its record exists. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import CURVES_SCHEMA, RUNS_SCHEMA, STATUSES

RECORD_MTIMES_KEY = b"plsweep.record_mtimes"


class SweepDirError(ValueError):
    """The directory is not a sweep directory, or belongs to another sweep."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_ready(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


@dataclass
class RecordProblem:
    """A record file that cannot be trusted, and why."""

    path: Path
    reason: str


@dataclass
class SweepDir:
    """Paths and I/O of one sweep directory."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    spec_path = property(lambda self: self.root / "sweep.toml")
    info_path = property(lambda self: self.root / "sweep.json")
    manifest_path = property(lambda self: self.root / "manifest.parquet")
    launches_path = property(lambda self: self.root / "launches.jsonl")
    jobs_dir = property(lambda self: self.root / "jobs")
    runs_table_path = property(lambda self: self.root / "runs.parquet")
    curves_table_path = property(lambda self: self.root / "curves.parquet")

    # --- creation and identity -------------------------------------------------------------

    def exists(self) -> bool:
        return self.info_path.exists()

    def create(self, spec_text: str, name: str, sweep_hash: str) -> None:
        """Create the directory (owner-only) with the spec copy, or check it is the same sweep."""
        if self.exists():
            info = self.info()
            if info["sweep_hash"] != sweep_hash:
                raise SweepDirError(
                    f"{self.root} holds sweep {info['name']!r} (hash {info['sweep_hash']}), not this spec "
                    f"(hash {sweep_hash}); launch a changed spec into a new directory (--out)"
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise SweepDirError(f"{self.root} exists, is not empty and is not a sweep directory")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        atomic_write_bytes(self.spec_path, spec_text.encode())
        info = {"name": name, "sweep_hash": sweep_hash, "created_at": datetime.now().astimezone().isoformat()}
        atomic_write_bytes(self.info_path, json.dumps(info, indent=2).encode())

    def info(self) -> dict[str, str]:
        """{name, sweep_hash, created_at}; raises SweepDirError if this is not a sweep directory."""
        try:
            return json.loads(self.info_path.read_text())
        except FileNotFoundError:
            raise SweepDirError(f"{self.root}: not a sweep directory (no sweep.json); launch a sweep there first") from None
        except json.JSONDecodeError as err:
            raise SweepDirError(f"{self.info_path}: corrupt ({err})") from None

    # --- per-run files ----------------------------------------------------------------------

    def record_path(self, run_id: str) -> Path:
        return self.root / "runs" / run_id[:2] / f"{run_id}.json"

    def curve_path(self, run_id: str) -> Path:
        return self.root / "curves" / run_id[:2] / f"{run_id}.parquet"

    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"

    def tasks_path(self, launch: int) -> Path:
        return self.root / "tasks" / f"launch-{launch}.json"

    def write_result(self, record: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        """Write a run's curve, then its record: the record's existence means the run is finished."""
        run_id = record["run_id"]
        if curve:
            rows = [{**row, "run_id": run_id} for row in curve]
            atomic_write_table(self.curve_path(run_id), pa.Table.from_pylist(rows, schema=CURVES_SCHEMA))
        text = json.dumps(json_ready(record), indent=1, sort_keys=True)
        atomic_write_bytes(self.record_path(run_id), text.encode())

    def record_files(self) -> list[Path]:
        runs = self.root / "runs"
        return sorted(runs.glob("*/*.json")) if runs.exists() else []

    def read_record(self, path: Path, sweep_hash: str | None = None) -> dict[str, Any] | RecordProblem:
        """A record, trusted only if it parses and belongs here (run id = file name, sweep hash)."""
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return RecordProblem(path, f"unreadable ({type(err).__name__}: {err})")
        if not isinstance(record, dict):
            return RecordProblem(path, "not a JSON object")
        if record.get("run_id") != path.stem:
            return RecordProblem(path, f"run_id {record.get('run_id')!r} does not match the file name")
        expected = sweep_hash if sweep_hash is not None else self.info()["sweep_hash"]
        if record.get("sweep_hash") != expected:
            return RecordProblem(path, f"sweep_hash {record.get('sweep_hash')!r} is not this sweep's {expected!r}")
        if record.get("status") not in STATUSES:
            return RecordProblem(path, f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
        return record

    def records(self) -> tuple[dict[str, dict[str, Any]], list[RecordProblem]]:
        """All trusted records by run id, and the problems of the others."""
        sweep_hash = self.info()["sweep_hash"]
        good: dict[str, dict[str, Any]] = {}
        bad: list[RecordProblem] = []
        for path in self.record_files():
            record = self.read_record(path, sweep_hash)
            if isinstance(record, RecordProblem):
                bad.append(record)
            else:
                good[record["run_id"]] = record
        return good, bad

    # --- manifest, tasks, launches ----------------------------------------------------------

    def write_manifest(self, table: pa.Table) -> None:
        atomic_write_table(self.manifest_path, table)

    def manifest(self) -> pa.Table:
        if not self.manifest_path.exists():
            raise SweepDirError(f"{self.root}: no manifest.parquet; the sweep was never launched")
        return pq.read_table(self.manifest_path)

    def write_tasks(self, launch: int, tasks: list[list[str]], options: dict[str, Any]) -> None:
        """Launch N's run ids per task and the options its workers follow, written before anything runs."""
        atomic_write_bytes(self.tasks_path(launch), json.dumps({"options": options, "tasks": tasks}).encode())

    def tasks(self, launch: int) -> list[list[str]]:
        """The run ids of every task of launch N."""
        return json.loads(self.tasks_path(launch).read_text())["tasks"]

    def task_options(self, launch: int) -> dict[str, Any]:
        """The options launch N's workers follow (share_trunks, retry_failed)."""
        return json.loads(self.tasks_path(launch).read_text())["options"]

    def launches(self) -> list[dict[str, Any]]:
        """Every launch so far, oldest first (lines that do not parse are skipped)."""
        if not self.launches_path.exists():
            return []
        out = []
        for line in self.launches_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def next_launch_number(self) -> int:
        return max((entry["launch"] for entry in self.launches()), default=-1) + 1

    def append_launch(self, entry: dict[str, Any]) -> None:
        """Append one JSON line (a single small write, so concurrent appends do not interleave)."""
        with open(self.launches_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def awaits_retry(record: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Is this failed run still to be retried by launch ``entry``? Only if that launch reruns failures and
    the record predates it; a record written after it came from that launch's own attempt."""
    if record["status"] != "failed" or not entry.get("retry_failed") or not record.get("finished_at"):
        return False
    return datetime.fromisoformat(record["finished_at"]) < datetime.fromisoformat(entry["submitted_at"])


@dataclass
class CollectReport:
    """What ``collect`` did."""

    runs: int = 0
    new: int = 0
    problems: list[RecordProblem] = field(default_factory=list)
    runs_path: Path | None = None
    curves_path: Path | None = None


def _record_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {name: record.get(name) for name in RUNS_SCHEMA.names}
    for name in ("started_at", "finished_at"):
        if isinstance(row[name], str):
            row[name] = datetime.fromisoformat(row[name])
    if isinstance(row["config"], dict):
        row["config"] = json.dumps(row["config"], sort_keys=True)
    return row


def collect(sweep: SweepDir) -> CollectReport:
    """Gather records into ``runs.parquet`` and curves into ``curves.parquet``, incrementally.

    Only records that are new or changed since the last collect (by file modification time, kept in
    the Parquet file's metadata) are read. Corrupt or foreign records are reported and left out, so
    they count as not finished. Both files are replaced atomically: two collects at once never leave
    a broken file (the later one wins).
    """
    sweep_hash = sweep.info()["sweep_hash"]
    old_rows, old_mtimes = _read_previous(sweep.runs_table_path)
    files = {path.stem: path for path in sweep.record_files()}
    mtimes = {run_id: path.stat().st_mtime_ns for run_id, path in files.items()}
    changed = [run_id for run_id in files if old_mtimes.get(run_id) != mtimes[run_id]]
    report = CollectReport()
    rows = {run_id: row for run_id, row in old_rows.items() if run_id in files and run_id not in changed}
    fresh: list[str] = []
    for run_id in changed:
        record = sweep.read_record(files[run_id], sweep_hash)
        if isinstance(record, RecordProblem):
            report.problems.append(record)
            mtimes.pop(run_id)
            continue
        rows[run_id] = _record_row(record)
        fresh.append(run_id)
    kept = {run_id: mtimes[run_id] for run_id in rows}
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=RUNS_SCHEMA)
    table = table.replace_schema_metadata({RECORD_MTIMES_KEY: json.dumps(kept).encode()})
    _write_curves(sweep, set(rows), set(fresh))
    atomic_write_table(sweep.runs_table_path, table)
    report.runs, report.new = len(rows), len(fresh)
    report.runs_path, report.curves_path = sweep.runs_table_path, sweep.curves_table_path
    return report


def _read_previous(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Rows and record mtimes of a previous collect; an unreadable file means starting over."""
    if not path.exists():
        return {}, {}
    try:
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        mtimes = json.loads(metadata.get(RECORD_MTIMES_KEY, b"{}"))
        return {row["run_id"]: row for row in table.to_pylist()}, mtimes
    except (pa.ArrowException, OSError, json.JSONDecodeError):
        return {}, {}


def _write_curves(sweep: SweepDir, keep: set[str], fresh: set[str]) -> None:
    """curves.parquet = old curves of kept runs + the curves of fresh runs."""
    parts: list[pa.Table] = []
    path = sweep.curves_table_path
    if path.exists() and not fresh >= keep:
        try:
            old = pq.read_table(path)
            stale = pa.array(sorted(fresh) + sorted(set(_unique_run_ids(old)) - keep), pa.string())
            parts.append(old.filter(pc.invert(pc.is_in(old["run_id"], value_set=stale))).cast(CURVES_SCHEMA))
        except (pa.ArrowException, OSError):
            fresh = set(keep)  # an unreadable old file: rebuild every curve from its run file
    missing = keep - fresh - {run_id for part in parts for run_id in _unique_run_ids(part)}
    parts.extend(_read_curve_files(sweep, sorted(fresh | missing)))
    table = pa.concat_tables(parts) if parts else CURVES_SCHEMA.empty_table()
    atomic_write_table(path, table)


def _unique_run_ids(table: pa.Table) -> list[str]:
    return pc.unique(table["run_id"]).to_pylist()


def _read_curve_files(sweep: SweepDir, run_ids: list[str]) -> list[pa.Table]:
    tables = []
    for run_id in run_ids:
        path = sweep.curve_path(run_id)
        if path.exists():
            try:
                tables.append(pq.read_table(path).cast(CURVES_SCHEMA))
            except (pa.ArrowException, OSError):
                continue  # a run's missing curve never blocks collecting its record
    return tables
