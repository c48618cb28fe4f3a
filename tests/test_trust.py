"""What plsweep trusts of what it reads back: records, curves, shards and checkpoints only as regular files
inside the sweep directory (never a hang, never a crash); a record only when it matches its manifest row and
its numbers are in range; and the writer never writes a record its own reader refuses."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import TINY_MODEL, record_paths
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.collect import collect
from powerlaw_cli.fit import load_runs
from powerlaw_cli.launch import launch
from powerlaw_cli.schema import RUN_COLUMNS
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir, atomic_write
from powerlaw_cli.sweep_settings import LaunchConfig

COMMAND_TIMEOUT = 300
"""Seconds a command may take before the test fails (a generous bound on a loaded machine: a regression
that blocks on a FIFO would wait forever)."""


def plsweep(*args: object) -> subprocess.CompletedProcess:
    """A plsweep command in a fresh interpreter that is killed (and the test failed) should it hang."""
    return subprocess.run(
        [sys.executable, "-m", "powerlaw_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _link(path: Path, target: Path | str) -> None:
    path.unlink()
    path.symlink_to(target)


def test_files_that_are_not_regular_files_inside_the_sweep_are_untrusted_never_a_hang(
    tiny_sweep_dir, tmp_path
):
    sweep = SweepDir(tiny_sweep_dir)
    fifo_record, zero_record, outside_record, fine = record_paths(sweep)[:4]
    fifo = tiny_sweep_dir / "jobs" / "fifo"  # inside the sweep directory: refused for what it is
    os.mkfifo(fifo)
    outside = tmp_path / "elsewhere.json"
    shutil.copy(outside_record, outside)  # a valid record of this very run, outside the sweep directory
    _link(fifo_record, fifo)
    _link(zero_record, "/dev/zero")
    _link(outside_record, outside)
    _link(sweep.curve_path(fine.stem), fifo)  # a curve, and a shard, that are FIFOs
    sweep.shards_dir.mkdir(exist_ok=True)
    for suffix in (".runs.parquet", ".curves.parquet"):
        (sweep.shards_dir / f"x{suffix}").symlink_to(fifo)

    done = plsweep("status", tiny_sweep_dir, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["counts"]["lost"] == 3 and status["counts"]["finished"] == 13
    bad = "\n".join(status["bad_records"])
    assert f"{fifo_record}: not a regular file (a FIFO)" in bad
    assert f"{zero_record}: leads to /dev/zero, outside" in bad
    assert f"{outside_record}: leads to {outside}, outside" in bad

    done = plsweep("collect", tiny_sweep_dir, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["runs"] == 13 and len(report["problems"]) == 3
    assert [c.split(":")[0] for c in report["unreadable_curves"]] == [str(sweep.curve_path(fine.stem))]
    assert "a FIFO" in report["unreadable_curves"][0]


def test_a_checkpoint_that_is_a_fifo_is_ignored_and_the_run_trains(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "fifo")  # inside the run's folder: refused for what it is
    (out / "checkpoint.pt").symlink_to(out / "fifo")
    config = tmp_path / "run.toml"
    config.write_text(TINY_MODEL + "[data]\nval_tokens = 256\n[training]\ntokens = 512\nbatch_size = 4\n")
    done = plsweep("train", config, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    assert "ignoring unreadable checkpoint" in done.stdout and "a FIFO" in done.stdout
    assert json.loads((out / "record.json").read_text())["status"] == "ok"


# --- the writer writes only what its reader trusts -------------------------------------------------


def _unstorable(dtype: pa.DataType) -> list[Any]:
    """Values of a column's type that a worker could hand the writer and the reader refuses."""
    if pa.types.is_floating(dtype):
        return [math.inf, -math.inf, math.nan, -1.0]
    if pa.types.is_integer(dtype):
        return [1.5, -1, "12"]
    if pa.types.is_timestamp(dtype):
        return ["yesterday", "2024-01-01T00:00:00"]  # no UTC offset
    return [{"not": "text"}, 7]


def test_every_column_round_trips_and_what_the_reader_refuses_is_written_as_a_trusted_failure(tiny_sweep_dir):
    """For every column of the runs schema (generated from it): a record as the worker made it reads back
    unchanged, and a value the reader would refuse makes the writer write a failed record, saying why, that
    the reader trusts: never a record that calls its run lost."""
    sweep = SweepDir(tiny_sweep_dir)
    path = record_paths(sweep)[0]
    good = sweep.read_record(path)
    assert isinstance(good, dict)
    assert sweep.write_result(good, [])[0] == good and sweep.read_record(path) == good
    for name, dtype, _ in RUN_COLUMNS:
        if name in ("run_id", "sweep_hash"):  # set by the worker itself, never by a run
            continue
        for bad in _unstorable(dtype if name != "config" else pa.null()):
            record = {**good, name: bad}
            written = sweep.write_result(record, [])[0]
            read = sweep.read_record(path)
            assert read == written, (name, bad, read)
            if written["status"] == "failed":
                assert written["error"].startswith("its record would not be trusted: "), (name, bad)
                assert written["error"].split(": ")[1] in (name, *[c for c, *_ in RUN_COLUMNS]), written[
                    "error"
                ]
    assert sweep.write_result(good, [])[0] == good


def test_a_run_whose_record_cannot_hold_a_setting_is_failed_not_retrained_on_every_launch(
    tiny_spec, tiny_sweep_dir
):
    """The issue's case: a run at lr = inf diverges and its record would store lr: null (JSON has no inf),
    which the reader refuses. It is recorded failed, with why; status says so and launch skips it."""
    sweep = SweepDir(tiny_sweep_dir)
    path = record_paths(sweep)[0]
    record = {**json.loads(path.read_text()), "lr": math.inf, "status": "diverged", "final_val_loss": None}
    sweep.write_result(record, [])
    state = sweep_status(sweep)
    assert state.counts["lost"] == 0 and state.counts["failed"] == 1, state
    (failure,) = state.failures
    assert failure.run_id == path.stem and "lr: missing (the value was inf)" in failure.error
    again = launch(load_sweep(tiny_spec), tiny_sweep_dir, "local", LaunchConfig(workers=1))
    assert again.runs_launched == 0 and again.skipped_recorded == 16
    assert collect(sweep).runs == 16  # its row has its run's settings, from the manifest: the fit reads it
    runs = load_runs(tiny_sweep_dir).set_index("run_id")
    manifest = pq.read_table(sweep.manifest_path, columns=["run_id", "optimizer.lr"]).to_pydict()
    assert runs.loc[path.stem, "status"] == "failed"
    assert runs.loc[path.stem, "lr"] == dict(zip(*manifest.values(), strict=True))[path.stem]


# --- a record must be its run's, with numbers in range -------------------------------------------------


def _edit(path: Path, **changes: Any) -> None:
    record = json.loads(path.read_text())
    atomic_write(path, json.dumps(record | changes).encode())


def test_records_that_disagree_with_their_run_or_are_out_of_range_are_lost_and_left_out(tiny_sweep_dir):
    sweep = SweepDir(tiny_sweep_dir)
    paths = record_paths(sweep)
    edits = {
        paths[0]: {"lr": 0.5},  # not the manifest's LR
        paths[1]: {"width": 4096},
        paths[2]: {"final_val_loss": -1.0},
        paths[3]: {"tokens_seen": -5},
        paths[4]: {"data": "tokens:/elsewhere"},  # a derived column
        paths[5]: {"batch_tokens": 7},  # not batch_size x seq_len
    }
    for path, change in edits.items():
        _edit(path, **change)
    state = sweep_status(sweep)
    assert state.counts["lost"] == len(edits) and state.counts["finished"] == 16 - len(edits)
    bad = "\n".join(state.bad_records)
    assert f"{paths[0]}: not a result of its run: lr = 0.5 is not its run's" in bad
    assert f"{paths[1]}: not a result of its run: width = 4096 is not its run's 32" in bad
    assert f"{paths[2]}: does not fit the runs schema: final_val_loss: must be >= 0" in bad
    assert f"{paths[3]}: does not fit the runs schema: tokens_seen: must be >= 0" in bad
    assert (
        f"{paths[4]}: not a result of its run: data = 'tokens:/elsewhere' is not its run's 'synthetic'" in bad
    )
    assert f"{paths[5]}: does not fit the runs schema: batch_tokens: must be batch_size x seq_len" in bad
    report = collect(sweep)
    assert report.runs == 16 - len(edits) and len(report.problems) == len(edits)
    kept = set(pq.read_table(sweep.runs_table_path, columns=["run_id"]).column("run_id").to_pylist())
    assert not kept & {path.stem for path in edits}


# --- state files: the index is a cache, the manifest the sweep's own ------------------------------------


@pytest.mark.parametrize("index", ["[1, 2]", '{"RUN": 5}', '{"RUN": {"key": "KEY"}}', "null"])
def test_an_index_of_the_wrong_shape_is_rebuilt(tiny_sweep_dir, index):
    """RUN: a run of the sweep, KEY: its record file's key (so that only the entry's shape is wrong)."""
    sweep = SweepDir(tiny_sweep_dir)
    run_id, (_, key) = next(iter(sweep.record_files().items()))
    sweep.index_path.write_text(index.replace("RUN", run_id).replace("KEY", key))
    assert sweep_status(sweep).counts["finished"] == 16
    assert set(json.loads(sweep.index_path.read_text())) == set(sweep.record_files())


@pytest.mark.parametrize("command", ["status", "collect", "launch"])
def test_a_manifest_that_is_not_parquet_is_one_line_naming_it(tiny_spec, tiny_sweep_dir, command):
    manifest = tiny_sweep_dir / "manifest.parquet"
    manifest.write_bytes(b"PAR1 not really parquet PAR1")
    args = [tiny_spec, "--out", tiny_sweep_dir] if command == "launch" else [tiny_sweep_dir]
    result = CliRunner().invoke(app, [command, *map(str, args)], env={"COLUMNS": "80"})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert (
        lines[0].startswith(f"error: {manifest}: not a readable manifest")
        and "launch the sweep file" in lines[0]
    )


def test_a_replaced_manifest_is_read_again(tiny_sweep_dir):
    """One SweepDir across an adaptive sweep's rounds sees each round's manifest (a stale one would call
    the new round's records untrusted, and the rounds would relaunch them forever)."""
    sweep = SweepDir(tiny_sweep_dir)
    path = record_paths(sweep)[0]
    assert isinstance(sweep.read_record(path), dict)
    manifest = pq.read_table(sweep.manifest_path)
    ids = manifest.column("run_id").to_pylist()
    sweep.write_manifest(manifest.take([i for i, run_id in enumerate(ids) if run_id != path.stem]))
    assert "is not a run of manifest.parquet" in sweep.read_record(path).reason
    sweep.write_manifest(manifest)
    assert isinstance(sweep.read_record(path), dict)
