"""The sweep directory: trusted records, incremental collect, atomic Parquet readable by every reader."""

from __future__ import annotations

import json
import os
import threading

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tiny import record_paths

from powerlaw_cli.collect import collect
from powerlaw_cli.schema import CURVES_SCHEMA, RUNS_SCHEMA
from powerlaw_cli.store import MANIFEST_ROW_GROUP, SCATTERED, SweepDir, SweepDirError, select_runs


def test_collect_has_every_run_exactly_once_with_the_typed_schema(tiny_sweep_dir):
    report = collect(SweepDir(tiny_sweep_dir))
    assert report.runs == 16 and report.new == 16 and not report.problems
    table = pq.read_table(tiny_sweep_dir / "runs.parquet")
    assert table.schema.remove_metadata() == RUNS_SCHEMA
    runs = table.to_pandas()
    assert runs["run_id"].is_unique and set(runs["status"]) == {"ok"}
    manifest = pq.read_table(tiny_sweep_dir / "manifest.parquet").column("run_id").to_pylist()
    assert sorted(runs["run_id"]) == sorted(manifest)
    curves = pq.read_table(tiny_sweep_dir / "curves.parquet")
    assert curves.schema == CURVES_SCHEMA
    assert set(curves.column("run_id").to_pylist()) == set(runs["run_id"])
    assert (runs["batch_tokens"] == runs["batch_size"] * runs["seq_len"]).all()


def test_collect_is_incremental_and_picks_up_rewritten_records(tiny_sweep_dir):
    sweep = SweepDir(tiny_sweep_dir)
    collect(sweep)
    assert collect(sweep).new == 0
    path = record_paths(sweep)[0]
    record = json.loads(path.read_text())
    record["final_val_loss"] = 1.2345
    path.write_text(json.dumps(record))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    report = collect(sweep)
    assert report.new == 1 and report.runs == 16
    runs = pd.read_parquet(tiny_sweep_dir / "runs.parquet").set_index("run_id")
    assert runs.loc[record["run_id"], "final_val_loss"] == 1.2345
    curves = pd.read_parquet(tiny_sweep_dir / "curves.parquet")
    rows_per_run = curves.groupby("run_id").size()
    assert (
        rows_per_run == runs.loc[rows_per_run.index, "steps"]
    ).all()  # the rewritten run's curve is not doubled


def test_corrupt_partial_and_foreign_records_are_reported_and_left_out(tiny_sweep_dir):
    sweep = SweepDir(tiny_sweep_dir)
    files = record_paths(sweep)
    files[0].write_text(files[0].read_text()[:40])  # a torn write
    foreign = json.loads(files[1].read_text())
    foreign["sweep_hash"] = "0" * 16
    files[1].write_text(json.dumps(foreign))
    renamed = json.loads(files[2].read_text())
    renamed["run_id"] = "f" * 16
    files[2].write_text(json.dumps(renamed))
    report = collect(sweep)
    assert report.runs == 13
    reasons = " ".join(p.reason for p in report.problems)
    assert (
        "unreadable" in reasons
        and "is not this sweep's" in reasons
        and "does not match the file name" in reasons
    )
    collected = set(pd.read_parquet(tiny_sweep_dir / "runs.parquet")["run_id"])
    assert not collected & {f.stem for f in files[:3]}


def test_output_reads_in_pandas_pyarrow_polars_and_duckdb(tiny_sweep_dir):
    collect(SweepDir(tiny_sweep_dir))
    path = str(tiny_sweep_dir / "runs.parquet")
    expected = pq.read_table(path).num_rows
    assert len(pd.read_parquet(path)) == expected
    frame = pl.read_parquet(path)
    assert frame.height == expected and frame.schema["started_at"] == pl.Datetime("us", "UTC")
    assert duckdb.sql(f"select count(*), min(final_val_loss) > 0 from '{path}'").fetchall()[0] == (
        expected,
        True,
    )
    curves = str(tiny_sweep_dir / "curves.parquet")
    assert duckdb.sql(f"select count(distinct run_id) from '{curves}'").fetchall()[0][0] == expected


def test_concurrent_collects_never_leave_a_broken_file(tiny_sweep_dir):
    sweep = SweepDir(tiny_sweep_dir)
    collect(sweep)
    order = [("run_id", "ascending"), ("step", "ascending")]
    curves_before = pq.read_table(tiny_sweep_dir / "curves.parquet").sort_by(order)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            try:
                assert pq.read_table(tiny_sweep_dir / "runs.parquet").num_rows == 16
            except BaseException as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

    def collect_from_scratch() -> None:
        for _ in range(4):
            for path in record_paths(sweep):  # touch every record: each collect rewrites everything
                os.utime(path)
            collect(sweep)

    reader = threading.Thread(target=read_forever)
    writers = [threading.Thread(target=collect_from_scratch) for _ in range(2)]
    reader.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()
    assert not errors
    assert pq.read_table(tiny_sweep_dir / "curves.parquet").sort_by(order).equals(curves_before)
    assert pc.count_distinct(curves_before["run_id"]).as_py() == 16
    assert not list(tiny_sweep_dir.glob(".*.tmp"))


def test_sweep_dir_is_owner_only_and_refuses_another_spec(tmp_path):
    sweep = SweepDir(tmp_path / "s")
    sweep.create("x = 1", "s", "hash-a")
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    sweep.create("x = 1", "s", "hash-a")  # the same sweep again is fine
    with pytest.raises(SweepDirError, match="holds sweep 's' .* launch a changed spec into a new directory"):
        sweep.create("x = 2", "s", "hash-b")
    with pytest.raises(SweepDirError, match="not a sweep directory"):
        SweepDir(tmp_path).info()


def test_a_record_from_before_a_setting_was_a_column_gets_it_from_its_config(tiny_sweep_dir):
    """An older plsweep wrote no column for some run-id settings: collect derives them from the record's
    config, so its row equals a new record's and the fit puts old and new runs of one cell together."""
    sweep = SweepDir(tiny_sweep_dir)
    collect(sweep)
    before = pd.read_parquet(tiny_sweep_dir / "runs.parquet").set_index("run_id")
    path = record_paths(sweep)[0]
    record = json.loads(path.read_text())
    for column in ("synthetic_seed", "weight_decay_rule", "decay_points", "mlp_ratio"):
        del record[column]
    path.write_text(json.dumps(record))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert collect(sweep).new == 1
    after = pd.read_parquet(tiny_sweep_dir / "runs.parquet").set_index("run_id")
    row = after.loc[record["run_id"]]
    for column in ("synthetic_seed", "weight_decay_rule", "decay_points", "mlp_ratio"):
        assert row[column] == before.loc[record["run_id"], column], column
    assert not after.drop(columns="config").compare(before.drop(columns="config")).size


def test_a_task_decodes_its_own_rows_of_a_manifest_of_many_row_groups(tmp_path):
    """The worker's read: the asked runs' settings exactly, from a manifest spread over many row groups."""
    sweep = SweepDir(tmp_path / "s")
    sweep.create("x = 1", "s", "hash-a")
    run_ids = [f"{i:016x}" for i in range(3000)]
    configs = [json.dumps({"training": {"seed": i}}) for i in range(3000)]
    sweep.write_manifest(pa.table({"run_id": run_ids, "config": configs}))
    assert pq.ParquetFile(sweep.manifest_path).num_row_groups == 3000 // MANIFEST_ROW_GROUP + 1
    asked = [run_ids[i] for i in (2999, 0, 255, 256, 1700, 1701, 1703)]  # both ends, a group boundary
    got = sweep.manifest_configs(asked)
    assert got == {run_id: {"training": {"seed": int(run_id, 16)}} for run_id in asked}
    assert sweep.manifest_configs([]) == {}


def test_select_runs_keeps_the_tables_order_and_only_the_asked_rows():
    table = pa.table({"run_id": list("abcdefg"), "x": list(range(7))})
    assert select_runs(table, {"g", "a", "c", "d"}).column("x").to_pylist() == [0, 2, 3, 6]
    assert select_runs(table, {"zz"}).num_rows == 0
    many = pa.table({"run_id": [str(i) for i in range(4 * SCATTERED)], "x": list(range(4 * SCATTERED))})
    every_other = {str(i) for i in range(0, 4 * SCATTERED, 2)}  # 2 * SCATTERED stretches: filtered
    assert select_runs(many, every_other).column("x").to_pylist() == list(range(0, 4 * SCATTERED, 2))
