"""The sweep directory: its layout, the one writer of its files, and its trusted records.

Layout (the single source of truth; every command after ``launch`` reads only this)::

    results/NAME/                 created readable by its owner only (0700)
      sweep.toml                  the spec exactly as first launched
      sweep.json                  name, sweep_hash, created_at
      manifest.parquet            one row per run: run_id, trunk_id, every setting, config JSON
      tasks/launch-N.json         the run ids of every task of launch N, and its options
      launches.jsonl              one line per launch: executor, job ids per task
      launching/launch-N.json     a Slurm launch's write-ahead entry, from before its first sbatch until
                                  launches.jsonl records it (``orphans.py``: what a killed launch left)
      launch.lock                 held by the launch that is reading the state or submitting
      records.index.json          status, error, loss and file key of every trusted record (status, launch read it)
      rounds.jsonl                an adaptive sweep's rounds: what each added, why, at what cost
      runs/ab/RUN_ID.json         one record per finished run, written atomically
      curves/ab/RUN_ID.arrow      the run's loss curve (Arrow IPC, zstd)
      checkpoints/KEY.pt          resumable state of unfinished work (removed once recorded)
      jobs/                       submitit's folder (pickles, logs)
      code/HASH/powerlaw_cli      the code snapshot Slurm workers run
      runs.parquet, curves.parquet   the records and curves as tables

A run is finished when its trusted record exists: a regular file inside the directory (``inside``) that fits
the runs schema and its run's manifest row (``trust``); the writer writes no other (``storable_record``).
``records.index.json`` keeps each trusted record's status (for
``status`` and ``launch``) with its file's key (modification time, size, inode), so that they read only
the records that are new or changed since they last looked; ``collect.py`` keeps such keys for
``runs.parquet``. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from .errors import PlsweepError
from .schema import CURVES_SCHEMA, REQUIRED, STATUSES, column_problem, record_problem
from .trust import ManifestSettings


class SweepDirError(PlsweepError):
    """The directory is not a sweep directory, or belongs to another sweep."""


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Write ``path`` so that readers see the old file or the new one, never a part.

    ``data`` is the bytes, or a function that writes into the open binary file (e.g. a Parquet writer).
    The file goes to a temporary name in the same folder, is flushed to disk (unless not ``durable``: a
    file whose loss after a machine crash costs nothing that matters), then renamed over ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, table: pa.Table, durable: bool = True, row_group_size: int | None = None) -> None:
    """A Parquet file, written atomically (see ``atomic_write`` for ``durable``)."""
    atomic_write(path, lambda handle: pq.write_table(table, handle, row_group_size=row_group_size), durable)


# --- reading back: only regular files inside the sweep directory, of a bounded size ----------------

RECORD_MAX_BYTES = 1 << 20
"""A record (or sweep.json) is ~2 KB of JSON, read whole into memory: anything larger is not one."""
WHOLE_MAX_BYTES = 1 << 30
"""Other files read whole: a run's curve, the record index (~150 bytes per run)."""
LARGE_MAX_BYTES = 1 << 40
"""Parquet tables (manifest, runs, curves, shards) and checkpoints, read in parts: the cap refuses only what
no sweep writes."""


class UntrustedFile(PlsweepError):
    """A file plsweep will not read: not a regular file inside its folder, or larger than its kind may be."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_KINDS |= {stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _refuse(path: Path, st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
        raise UntrustedFile(path, f"not a regular file ({kind})")
    if st.st_size > max_bytes:
        raise UntrustedFile(path, f"{st.st_size} bytes, more than the {max_bytes} such a file may have")


def inside(path: Path, root: Path, max_bytes: int) -> Path:
    """``path`` with its symlinks resolved, if it is a regular file of at most ``max_bytes`` inside ``root``
    (resolved too: a sweep directory reached through a symlink is fine); else ``UntrustedFile`` saying why.

    The one check of every file plsweep reads back from a sweep directory (records, curves, tables, shards,
    checkpoints): no symlink leads out of it, and no FIFO, device or endless file can hang a command or
    fill its memory. Nothing is opened, so nothing blocks; ``read_inside`` also checks the open file.
    """
    real = _resolved(path, root)
    try:
        _refuse(path, os.stat(real), max_bytes)
    except OSError as err:
        raise UntrustedFile(path, f"unreadable ({err.strerror})") from None
    return Path(real)


def read_inside(path: Path, root: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if ``inside`` trusts it. The file is opened without following a symlink and
    without waiting (a FIFO), and checked open, so a swap between the check and the read is refused too."""
    real = _resolved(path, root)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UntrustedFile(path, f"unreadable ({err.strerror})") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        st = os.fstat(fd)
        _refuse(path, st, max_bytes)
        data = handle.read(st.st_size + 1)  # one more byte: a file that grows past its cap is refused too
    if len(data) > max_bytes:
        raise UntrustedFile(path, f"more than the {max_bytes} bytes such a file may have")
    return data


def _resolved(path: Path, root: Path) -> str:
    """``path`` with every symlink resolved, if that is inside ``root`` (resolved); else ``UntrustedFile``.
    Folders are resolved once per process (a sweep's 256 ``runs/ab`` folders), a file only when it is a link."""
    top = _real_folder(str(root))
    folder = _real_folder(str(path.parent))
    real = os.path.join(folder, path.name)
    if os.path.islink(real):
        real = os.path.realpath(real)
        folder = os.path.dirname(real)
    if folder != top and not folder.startswith(top.rstrip(os.sep) + os.sep):
        raise UntrustedFile(path, f"leads to {real}, outside {top}")
    return real


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def read_table(
    path: Path, columns: list[str] | None = None, run_ids: list[str] | None = None, root: Path | None = None
) -> pa.Table:
    """A Parquet file (only ``columns``, only the rows of ``run_ids`` if given), read directly: ``pq.read_table``
    goes through pyarrow's dataset layer, which imports pandas, and is slower for one file. It must be a
    regular file inside ``root`` (default: its own folder; see ``inside``)."""
    table = pq.ParquetFile(inside(path, root or path.parent, LARGE_MAX_BYTES)).read(columns=columns)
    return table if run_ids is None else select_runs(table, run_ids)


SCATTERED = 64
"""Stretches of matching rows beyond which ``select_runs`` filters rather than concatenates slices."""


def select_runs(table: pa.Table, run_ids: Iterable[str]) -> pa.Table:
    """The rows of ``table`` whose ``run_id`` is one of ``run_ids``, in the table's order.

    Stretches of consecutive matches are sliced out (a worker's task, the kept rows of a table): building an
    Arrow array from Python values, as a filter needs, imports pandas (~0.15 s), which a worker's startup
    and ``status`` do without. Matches scattered over more than ``SCATTERED`` stretches are filtered.
    """
    wanted = set(run_ids)
    matches = [run_id in wanted for run_id in table.column("run_id").to_pylist()]
    stretches: list[tuple[int, int]] = []
    start = None
    for index, match in enumerate([*matches, False]):
        if match and start is None:
            start = index
        elif not match and start is not None:
            stretches.append((start, index))
            start = None
    if len(stretches) > SCATTERED:
        return table.filter(pa.array(matches, pa.bool_()))
    slices = [table.slice(start, stop - start) for start, stop in stretches]
    return pa.concat_tables(slices) if slices else table.slice(0, 0)


def json_ready(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def file_key(stat: os.stat_result) -> str:
    """A file's identity for incremental reading: modification time, size and inode change when it is replaced."""
    return f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}"


def _entry_key(entry: os.DirEntry) -> str:
    """The key of what a directory entry leads to (of the link itself when it leads nowhere)."""
    try:
        return file_key(entry.stat())
    except OSError:
        return file_key(entry.stat(follow_symlinks=False))


def write_run_files(
    record_path: Path, curve_path: Path, record: dict[str, Any], curve: list[dict[str, Any]]
) -> tuple[str, pa.Table | None]:
    """The one writer of a run's result: its curve (Arrow IPC), then its record (JSON), each atomically.

    The record comes last: its existence means the run is finished (``plsweep train`` uses this too). The
    record is flushed to disk before it is renamed into place; the curve is not waited for (a curve lost to
    a machine crash is reported by ``collect`` and costs the curve, not the result). Returns the record
    file's key (``file_key``) and the curve table written (None: no curve).
    """
    table = None
    if curve:
        rows = [{**row, "run_id": record["run_id"]} for row in curve]
        table = pa.Table.from_pylist(rows, schema=CURVES_SCHEMA)
        atomic_write(
            curve_path, lambda handle: feather.write_feather(table, handle, compression="zstd"), durable=False
        )
    atomic_write(record_path, json.dumps(json_ready(record), indent=1, sort_keys=True, default=str).encode())
    return file_key(record_path.stat()), table


def storable_record(
    record: dict[str, Any], check: Callable[[dict[str, Any]], tuple[str, str] | None] = column_problem
) -> dict[str, Any]:
    """``record`` as its reader will see it (JSON-ready) if the reader's checks (``check``: (column, why) or
    None) accept it; else a ``failed`` record of the run that says why, with the values they refuse removed,
    which they accept: a run is never retrained because its own record is refused."""
    stored = json.loads(json.dumps(json_ready(record), default=str))
    problem = check(stored)
    if problem is None:
        return stored
    column, why = problem
    was = f" (the value was {record.get(column)!r})" if record.get(column) != stored.get(column) else ""
    failed = {**stored, "status": "failed", "error": f"its record would not be trusted: {column}: {why}{was}"}
    while (problem := check(failed)) is not None:
        if problem[0] in REQUIRED:  # a programming error: no record at all could be written
            raise ValueError(f"record of run {record.get('run_id')!r}: {problem[0]}: {problem[1]}")
        failed[problem[0]] = None
    return failed


MANIFEST_ROW_GROUP = 256
"""Rows per row group of manifest.parquet: a worker decodes the settings of its task's row groups only."""


@dataclass
class RecordProblem:
    """A record file that cannot be trusted, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class SweepDir:
    """Paths and I/O of one sweep directory."""

    root: Path
    _info: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _settings: tuple[str, ManifestSettings] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    spec_path = property(lambda self: self.root / "sweep.toml")
    info_path = property(lambda self: self.root / "sweep.json")
    manifest_path = property(lambda self: self.root / "manifest.parquet")
    launches_path = property(lambda self: self.root / "launches.jsonl")
    lock_path = property(lambda self: self.root / "launch.lock")
    index_path = property(lambda self: self.root / "records.index.json")
    rounds_path = property(lambda self: self.root / "rounds.jsonl")
    jobs_dir = property(lambda self: self.root / "jobs")
    runs_table_path = property(lambda self: self.root / "runs.parquet")
    curves_table_path = property(lambda self: self.root / "curves.parquet")
    shards_dir = property(lambda self: self.root / "shards")

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
        if self.root.exists() and any(p.name != self.lock_path.name for p in self.root.iterdir()):
            raise SweepDirError(f"{self.root} exists, is not empty and is not a sweep directory")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        atomic_write(self.spec_path, spec_text.encode())
        info = {"name": name, "sweep_hash": sweep_hash, "created_at": datetime.now().astimezone().isoformat()}
        atomic_write(self.info_path, json.dumps(info, indent=2).encode())

    def info(self) -> dict[str, str]:
        """{name, sweep_hash, created_at}; raises SweepDirError if this is not a sweep directory."""
        if self._info is None:
            try:
                self._info = json.loads(read_inside(self.info_path, self.root, RECORD_MAX_BYTES))
            except UntrustedFile as err:
                if not os.path.lexists(self.info_path):
                    raise SweepDirError(
                        f"{self.root}: not a sweep directory (no sweep.json); launch a sweep there first"
                    ) from None
                raise SweepDirError(str(err)) from None
                raise SweepDirError(
                    f"{self.root}: not a sweep directory (no sweep.json); launch a sweep there first"
                ) from None
            except (OSError, ValueError) as err:
                raise SweepDirError(f"{self.info_path}: unreadable ({err})") from None
        return self._info

    @contextlib.contextmanager
    def launch_lock(self, on_wait: Callable[[str], None] | None = None, wait: bool = True) -> Iterator[bool]:
        """Hold the sweep's launch lock: one launch at a time reads the state, submits and records.

        A second launch waits (``on_wait`` gets one message naming the holder) until the first has
        recorded what it submitted; without ``wait`` the context gets False at once instead (and holds
        nothing). The kernel releases the lock when its holder exits or dies; on a shared file system it
        needs working ``flock`` (NFSv4, Lustre mounted with ``flock``, GPFS).
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if on_wait is not None:
                    on_wait(f"{self.root}: waiting for the launch held by {holder} to finish submitting")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n")
            handle.flush()
            yield True

    # --- per-run files ----------------------------------------------------------------------

    def record_path(self, run_id: str) -> Path:
        return self.root / "runs" / run_id[:2] / f"{run_id}.json"

    def curve_path(self, run_id: str) -> Path:
        return self.root / "curves" / run_id[:2] / f"{run_id}.arrow"

    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"

    def run_dir(self, run_id: str) -> Path:
        """The folder a user's trainer trains one run in, the same on every attempt (``trainer_command``)."""
        return self.root / "trainer-runs" / run_id

    def tasks_path(self, launch: int) -> Path:
        return self.root / "tasks" / f"launch-{launch}.json"

    def write_result(
        self, record: dict[str, Any], curve: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], str, pa.Table | None]:
        """Write a run's curve, then its record (its existence means the run is finished), as
        ``storable_record`` makes it: one its reader (``read_record``) trusts. Returns the record written, its file's key and the
        curve table."""
        settings = self.manifest_settings()
        record = storable_record(record, lambda r: column_problem(r) or settings.mismatch(r))
        key, table = write_run_files(
            self.record_path(record["run_id"]), self.curve_path(record["run_id"]), record, curve
        )
        return record, key, table

    def record_files(self) -> dict[str, tuple[Path, str]]:
        """run_id -> (path, key) of every record file; the key (mtime, size, inode) changes when it is replaced."""
        out: dict[str, tuple[Path, str]] = {}
        try:
            prefixes = os.scandir(self.root / "runs")
        except FileNotFoundError:
            return out
        with prefixes:
            for prefix in prefixes:
                if not prefix.is_dir():
                    continue
                with os.scandir(prefix.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(".json") and not entry.name.startswith("."):
                            out[entry.name[:-5]] = (Path(entry.path), _entry_key(entry))
        return out

    def read_record(self, path: Path, sweep_hash: str | None = None) -> dict[str, Any] | RecordProblem:
        """A record, trusted only if it is a regular file inside the sweep directory (``inside``), parses,
        belongs here (run id = file name, sweep hash) and fits the schema."""
        try:
            record = json.loads(read_inside(path, self.root, RECORD_MAX_BYTES))
        except UntrustedFile as err:
            return RecordProblem(path, err.reason)
        except (UnicodeDecodeError, ValueError) as err:
            return RecordProblem(path, f"unreadable ({type(err).__name__}: {err})")
        if not isinstance(record, dict):
            return RecordProblem(path, "not a JSON object")
        if record.get("run_id") != path.stem:
            return RecordProblem(path, f"run_id {record.get('run_id')!r} does not match the file name")
        expected = sweep_hash if sweep_hash is not None else self.info()["sweep_hash"]
        if record.get("sweep_hash") != expected:
            return RecordProblem(
                path, f"sweep_hash {record.get('sweep_hash')!r} is not this sweep's {expected!r}"
            )
        problem = record_problem(record)
        if problem:
            return RecordProblem(path, f"does not fit the runs schema: {problem}")
        problem = self.manifest_settings().problem(record)
        return RecordProblem(path, f"not a result of its run: {problem}") if problem else record

    def manifest_settings(self) -> ManifestSettings:
        """The settings each run's record must hold (``trust``), read from the manifest as records need them;
        read again once the manifest is replaced (an adaptive round adds runs)."""
        try:
            key = file_key(os.stat(self.manifest_path))
        except OSError:
            key = ""
        if self._settings is None or self._settings[0] != key:
            self._settings = (key, ManifestSettings(self.manifest_file))
        return self._settings[1]

    def read_result(self, run_id: str) -> dict[str, Any] | RecordProblem | None:
        """The trusted record of one run, its problem, or None when it has no record file."""
        path = self.record_path(run_id)
        return self.read_record(path) if path.exists() else None

    # --- manifest, tasks, launches ----------------------------------------------------------

    def write_manifest(self, table: pa.Table) -> None:
        write_table(self.manifest_path, table, row_group_size=MANIFEST_ROW_GROUP)

    def _read_manifest(self, columns: list[str], run_ids: list[str] | None = None) -> pa.Table:
        """Columns of the manifest; with ``run_ids``, their rows only, decoded from only the row groups
        that hold them (a worker's task is a few neighbouring row groups of a 10,000-run manifest)."""
        with self._manifest_errors():
            manifest = self.manifest_file()
            if run_ids is None:
                return manifest.read(columns=columns)
            wanted = set(run_ids)
            ids = manifest.read(columns=["run_id"]).column("run_id").to_pylist()
            groups, end = [], 0
            for group in range(manifest.num_row_groups):
                start, end = end, end + manifest.metadata.row_group(group).num_rows
                if not wanted.isdisjoint(ids[start:end]):
                    groups.append(group)
            return select_runs(manifest.read_row_groups(groups, columns=columns), wanted)

    def manifest_file(self) -> pq.ParquetFile:
        """manifest.parquet, opened; ``SweepDirError`` (one line: the file and what to do) if there is none, or
        it is not a regular Parquet file inside the sweep directory."""
        self.info()  # not a sweep directory at all: say so
        if not os.path.lexists(self.manifest_path):
            raise SweepDirError(f"{self.root}: no manifest.parquet; the sweep was never launched")
        with self._manifest_errors():
            return pq.ParquetFile(inside(self.manifest_path, self.root, LARGE_MAX_BYTES))

    @contextlib.contextmanager
    def _manifest_errors(self) -> Iterator[None]:
        """A manifest that cannot be read (not Parquet, not a regular file, without the columns asked for) as
        one ``SweepDirError`` line."""
        fix = "restore it, or remove it and launch the sweep file into this directory again to rewrite it"
        try:
            yield
        except UntrustedFile as err:
            raise SweepDirError(f"{err}; {fix}") from None
        except (OSError, KeyError, pa.ArrowException) as err:
            problem = " ".join(str(err).split())[:160]
            raise SweepDirError(f"{self.manifest_path}: not a readable manifest ({problem}); {fix}") from None

    def manifest_run_ids(self) -> list[str]:
        """Every run of the sweep, in grid order."""
        return self._read_manifest(["run_id"]).column("run_id").to_pylist()

    def manifest_configs(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The settings {section: {field: value}} of these runs only (a worker's task), from the manifest."""
        table = self._read_manifest(["run_id", "config"], list(run_ids))
        return dict(
            zip(
                table.column("run_id").to_pylist(),
                map(json.loads, table.column("config").to_pylist()),
                strict=True,
            )
        )

    def write_tasks(self, launch: int, tasks: list[list[str]], options: dict[str, Any]) -> None:
        """Launch N's run ids per task and the options its workers follow, written before anything runs."""
        atomic_write(self.tasks_path(launch), json.dumps({"options": options, "tasks": tasks}).encode())

    def _tasks_file(self, launch: int) -> dict[str, Any]:
        """Launch N's task file, checked: a JSON object with an ``options`` object and ``tasks``, a list of
        lists of run ids; anything else is one line naming the file and what to do."""
        path = self.tasks_path(launch)
        try:
            data = json.loads(path.read_bytes())
        except (UnicodeDecodeError, ValueError) as err:
            data, why = None, f"not JSON ({' '.join(str(err).split())})"
        else:
            why = (
                ""
                if _is_tasks_file(data)
                else "not a task file (expected {options: {...}, tasks: [[run ids]]})"
            )
        if why:
            raise SweepDirError(
                f"{path}: {why}; it lists the runs of launch {launch}'s tasks: restore it, or delete it to "
                f"forget launch {launch} (its runs without a record are then launched again)"
            )
        return data

    def tasks(self, launch: int, missing_ok: bool = False) -> list[list[str]]:
        """The run ids of every task of launch N (``missing_ok``: none when its task file was deleted, which
        forgets the launch)."""
        if missing_ok and not self.tasks_path(launch).exists():
            return []
        return self._tasks_file(launch)["tasks"]

    def task_options(self, launch: int) -> dict[str, Any]:
        """The options launch N's workers follow (share_trunks, retry_failed)."""
        return self._tasks_file(launch)["options"]

    def launches(self) -> list[dict[str, Any]]:
        """Every launch so far, oldest first."""
        return _read_lines(self.launches_path)

    def next_launch_number(self) -> int:
        """One more than any launch recorded, being submitted (write-ahead entry) or with a task file: a
        number is never used twice, so no queued task of a killed launch reads another launch's task file."""
        tasks = self.root / "tasks"
        numbers = [entry["launch"] for entry in self.launches()] + [i["launch"] for i in self.intents()]
        if tasks.is_dir():
            numbers += [int(p.stem[7:]) for p in tasks.glob("launch-*.json") if p.stem[7:].isdigit()]
        return max(numbers, default=-1) + 1

    def intent_path(self, launch: int) -> Path:
        return self.root / "launching" / f"launch-{launch}.json"

    def write_intent(self, entry: dict[str, Any]) -> None:
        """A Slurm launch's write-ahead entry (its number, tag, tasks), written before its first sbatch."""
        atomic_write(self.intent_path(entry["launch"]), json.dumps(entry).encode())

    def intents(self) -> list[dict[str, Any]]:
        """The write-ahead entries of launches not (yet) in launches.jsonl, oldest first; one that cannot be
        read is one line naming it."""
        folder = self.root / "launching"
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("launch-*.json"), key=lambda p: p.stat().st_mtime_ns):
            try:
                entry = json.loads(path.read_bytes())
                why = "" if isinstance(entry, dict) and isinstance(entry.get("tag"), str) else "not an entry"
            except (UnicodeDecodeError, ValueError) as err:
                why = f"not JSON ({' '.join(str(err).split())})"
            if why:
                raise SweepDirError(
                    f"{path}: {why}; it is the write-ahead entry of a Slurm launch killed while submitting: "
                    "cancel its arrays (squeue --name plsweep-NAME -o '%F %k' shows their tags) and delete it"
                )
            out.append(entry)
        return out

    def clear_intent(self, launch: int) -> None:
        """Remove launch N's write-ahead entry (recorded in launches.jsonl, or settled)."""
        self.intent_path(launch).unlink(missing_ok=True)

    def append_launch(self, entry: dict[str, Any]) -> None:
        """Record a launch: its executor, tasks' job ids and options."""
        _append_line(self.launches_path, entry)

    def rounds(self) -> list[dict[str, Any]]:
        """Every round of an adaptive sweep so far, oldest first."""
        return _read_lines(self.rounds_path)

    def append_round(self, entry: dict[str, Any]) -> None:
        """Record an adaptive round: what it added, why, and what it cost."""
        _append_line(self.rounds_path, json_ready(entry))


def _is_tasks_file(data: Any) -> bool:
    """Is this the shape ``write_tasks`` writes: {options: {...}, tasks: [[run id, ...], ...]}?"""
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        return False
    tasks = data.get("tasks")
    return isinstance(tasks, list) and all(
        isinstance(task, list) and all(isinstance(run_id, str) for run_id in task) for task in tasks
    )


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, oldest first (lines that do not parse are skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _append_line(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line (a single small write, so concurrent appends do not interleave)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


# --- the record index: what status and launch need of every record -----------------------------


@dataclass
class RecordIndex:
    """Per trusted record: its status, error, finish time and final loss; and the record files that cannot be
    trusted."""

    records: dict[str, dict[str, Any]]
    problems: list[RecordProblem]


INDEX_FIELDS = ("status", "error", "finished_at", "final_val_loss")


def record_index(sweep: SweepDir) -> RecordIndex:
    """The status, error, finish time and final loss of every trusted record, from ``records.index.json``.

    The index keeps each record file's key (modification time, size, inode): only records that are new or
    changed since it was written are read and checked, and it is rewritten (atomically) only then. Records
    that cannot be trusted are not indexed, so they are read again, and reported, every time. Plain JSON:
    building Arrow tables from Python objects would import pandas, which ``status`` must not.
    """
    sweep_hash = sweep.info()["sweep_hash"]
    files = sweep.record_files()
    old = _read_index(sweep)
    index = {
        run_id: entry
        for run_id, entry in old.items()
        if run_id in files and entry.get("key") == files[run_id][1]
    }
    problems = []
    fresh = [run_id for run_id in files if run_id not in index]
    if fresh:
        sweep.manifest_settings().prefetch(fresh)
    for run_id in fresh:
        path, key = files[run_id]
        record = sweep.read_record(path, sweep_hash)
        if isinstance(record, RecordProblem):
            problems.append(record)
        else:
            index[run_id] = {"key": key, **{name: record.get(name) for name in INDEX_FIELDS}}
    if index != old:
        atomic_write(sweep.index_path, json.dumps(index).encode())
    return RecordIndex(index, problems)


def _read_index(sweep: SweepDir) -> dict[str, dict[str, Any]]:
    """The entries of ``records.index.json`` that have the shape ``record_index`` writes; the rest (a file that
    is missing, not JSON, of another shape, or not a regular file) are read again from their records: the
    index is a cache, never the truth."""
    try:
        old = json.loads(read_inside(sweep.index_path, sweep.root, WHOLE_MAX_BYTES))
    except (UntrustedFile, ValueError):
        return {}
    if not isinstance(old, dict):
        return {}
    return {
        run_id: entry
        for run_id, entry in old.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and entry.get("status") in STATUSES
        and set(entry) == {"key", *INDEX_FIELDS}
    }
