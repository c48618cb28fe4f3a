"""Shards: the results one worker process recorded, written as one runs table and one curves table, which
``collect`` reads instead of every run's record and curve files, and trusts only while each run's record
file is the one the shard describes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import record_paths

from powerlaw_cli.collect import SHARD_MIN_RUNS, ShardWriter, collect
from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.store import SweepDir, atomic_write
from powerlaw_cli.sweep_settings import LaunchConfig

RUNS_PER_TASK = 8


@pytest.fixture(scope="module")
def _sharded(tiny_spec, tmp_path_factory) -> Path:
    """The tiny sweep launched in 2 tasks of 8 runs: each task's process records 8 runs, so it writes a shard."""
    assert RUNS_PER_TASK >= SHARD_MIN_RUNS
    out = tmp_path_factory.mktemp("sweeps") / "sharded"
    launch(load_sweep(tiny_spec), out, "local", LaunchConfig(workers=2, runs_per_task=RUNS_PER_TASK))
    return out


@pytest.fixture
def linked(_sharded, tmp_path) -> SweepDir:
    """A copy of the sharded sweep made of hard links, so every record file keeps its inode and with it the
    key its shard holds. Its files are shared with the fixture: a test replaces them, never writes into them."""
    copy = tmp_path / "linked"
    shutil.copytree(_sharded, copy, copy_function=os.link)
    return SweepDir(copy)


@pytest.fixture
def from_files(_sharded, tmp_path) -> tuple[pa.Table, pa.Table]:
    """runs and curves as collect builds them from the record and curve files alone: a plain copy gives every
    file a new inode, so no shard matches a record file's key."""
    copy = SweepDir(tmp_path / "copied")
    shutil.copytree(_sharded, copy.root)
    report = collect(copy)
    assert report.runs == 16 and not list(copy.shards_dir.iterdir())  # read, none used, all deleted
    return _tables(copy)


def _tables(sweep: SweepDir) -> tuple[pa.Table, pa.Table]:
    runs = pq.read_table(sweep.runs_table_path).replace_schema_metadata(None)
    curves = pq.read_table(sweep.curves_table_path).replace_schema_metadata(None)
    return runs, curves.sort_by([("run_id", "ascending"), ("step", "ascending")])


def _remove_curve_files(sweep: SweepDir, keep: set[str] = frozenset()) -> None:
    for path in (sweep.root / "curves").rglob("*.arrow"):
        if path.stem not in keep:
            path.unlink()


def test_each_task_writes_one_shard_of_its_runs_with_their_record_keys(linked):
    shards = sorted(linked.shards_dir.glob("*.runs.parquet"))
    assert len(shards) == 2
    keys = {}
    for path in shards:
        keys |= json.loads(pq.read_schema(path).metadata[b"plsweep.record_keys.2"])
        assert pq.read_metadata(path).num_rows == RUNS_PER_TASK
    assert keys == {run_id: key for run_id, (_, key) in linked.record_files().items()}


def test_collect_takes_runs_and_curves_from_shards_identical_to_the_files(linked, from_files):
    _remove_curve_files(linked)  # only the shards hold the curves now
    report = collect(linked)
    assert report.runs == report.new == 16 and not report.problems and not report.unreadable_curves
    runs, curves = _tables(linked)
    assert runs.equals(from_files[0]) and curves.equals(from_files[1])
    assert not list(linked.shards_dir.iterdir())  # collected: deleted
    assert collect(linked).new == 0


def test_a_record_replaced_after_its_shard_was_written_is_read_from_its_file(linked, from_files):
    path = record_paths(linked)[0]
    record = json.loads(path.read_text())
    record["final_val_loss"] = 1.2345
    atomic_write(path, json.dumps(record).encode())  # a new inode: the shard's key no longer matches
    _remove_curve_files(linked, keep={path.stem})
    collect(linked)
    runs, curves = _tables(linked)
    losses = dict(zip(runs["run_id"].to_pylist(), runs["final_val_loss"].to_pylist(), strict=True))
    assert losses[path.stem] == 1.2345
    expected = dict(
        zip(from_files[0]["run_id"].to_pylist(), from_files[0]["final_val_loss"].to_pylist(), strict=True)
    )
    assert {k: v for k, v in losses.items() if k != path.stem} == {
        k: v for k, v in expected.items() if k != path.stem
    }
    assert curves.equals(from_files[1])


def test_torn_and_foreign_shards_cost_only_the_file_reads(linked, from_files):
    torn, foreign = sorted(linked.shards_dir.glob("*.runs.parquet"))
    atomic_write(torn, torn.read_bytes()[:100])
    table = pq.read_table(foreign)
    hashes = pa.array(["0" * 16] * table.num_rows, pa.string())
    table = table.set_column(table.schema.get_field_index("sweep_hash"), "sweep_hash", hashes)
    atomic_write(
        foreign, lambda handle: pq.write_table(table, handle)
    )  # its keys still match: its hash must not
    report = collect(linked)
    assert report.runs == 16 and not report.problems
    assert _tables(linked) == from_files
    assert not list(linked.shards_dir.iterdir())


def test_a_shard_that_cannot_be_written_is_a_log_line_not_a_failed_task(tiny_sweep_dir, capsys):
    sweep = SweepDir(tiny_sweep_dir)
    shutil.rmtree(sweep.shards_dir, ignore_errors=True)
    sweep.shards_dir.write_text("a file where the shards' folder would be")
    writer = ShardWriter(sweep)
    for path, key in sorted(sweep.record_files().values())[:SHARD_MIN_RUNS]:
        writer.add(json.loads(path.read_text()), key, None)
    writer.write()
    assert f"shard of {SHARD_MIN_RUNS} runs not written" in capsys.readouterr().out
    assert collect(sweep).runs == 16  # the runs' own files are all there is, and enough


def test_a_shard_row_that_is_not_its_runs_result_is_read_from_the_runs_file(linked, from_files):
    """A shard is checked as a record file is: a row whose settings are not its run's, or whose numbers are
    out of range, is left out and its run read from its own (trusted) file."""
    path = sorted(linked.shards_dir.glob("*.runs.parquet"))[0]
    table = pq.read_table(path)
    lrs = table.column("lr").to_pylist()
    losses = table.column("final_val_loss").to_pylist()
    edited = table.set_column(
        table.schema.get_field_index("lr"), "lr", pa.array([0.5] + lrs[1:], pa.float64())
    )
    edited = edited.set_column(
        edited.schema.get_field_index("final_val_loss"),
        "final_val_loss",
        pa.array([losses[0], -1.0, *losses[2:]], pa.float64()),
    )
    atomic_write(path, lambda handle: pq.write_table(edited, handle))  # its keys still match the record files
    report = collect(linked)
    assert report.runs == 16 and not report.problems
    assert _tables(linked) == from_files
