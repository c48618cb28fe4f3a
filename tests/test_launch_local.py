"""Launching on this machine: the workers cap, skipping finished runs, failures, retries, status counts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY_MODEL, record_paths, trusted_records

from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir, SweepDirError
from powerlaw_cli.sweep_settings import LaunchConfig

SPEC = (
    """
[sweep]
name = "{name}"
"""
    + TINY_MODEL
    + """[data]
source = "tokens"
val_tokens = 1024
[schedule]
name = "constant"
[training]
batch_size = 8
tokens = {tokens}
[grid]
optimizer.lr = {lrs}
data.path = {paths}
"""
)


def make_spec(
    tmp_path: Path,
    name: str = "local",
    tokens: int = 4096,
    lrs: str = "[1e-3, 3e-3, 1e-2]",
    bad_path: bool = False,
) -> Path:
    tokens_file = tmp_path / "train.bin"
    if not tokens_file.exists():
        np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint16).tofile(tokens_file)
    bad = tmp_path / "bad_ids.bin"  # readable, but its ids are beyond the vocabulary: only a worker finds out
    if bad_path and not bad.exists():
        np.full(50_000, 60_000, dtype=np.uint16).tofile(bad)
    paths = [str(tokens_file)] + ([str(bad)] if bad_path else [])
    spec = tmp_path / f"{name}.toml"
    spec.write_text(SPEC.format(name=name, tokens=tokens, lrs=lrs, paths=repr(paths).replace("'", '"')))
    return spec


def max_overlap(records: list[dict]) -> int:
    """The largest number of runs whose [started_at, finished_at] intervals overlap."""
    events = []
    for r in records:
        events += [
            (datetime.fromisoformat(r["started_at"]), 1),
            (datetime.fromisoformat(r["finished_at"]), -1),
        ]
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_never_runs_more_than_workers_at_once(tmp_path, workers):
    sweep = load_sweep(make_spec(tmp_path, tokens=16384, lrs="[1e-3, 2e-3, 4e-3, 8e-3]"))
    result = launch(sweep, tmp_path / "out", "local", LaunchConfig(workers=workers))
    records = trusted_records(SweepDir(tmp_path / "out"))
    assert result.counts == {"ok": 4} and len(records) == 4
    assert max_overlap(list(records.values())) == workers  # reaches the cap, never exceeds it


def test_relaunch_skips_finished_runs_and_resubmits_lost_ones(tmp_path):
    sweep = load_sweep(make_spec(tmp_path))
    out = tmp_path / "out"
    first = launch(sweep, out, "local", LaunchConfig(workers=2))
    assert first.runs_launched == 3 and first.launch == 0
    again = launch(sweep, out, "local", LaunchConfig(workers=2))
    assert again.runs_launched == 0 and again.skipped_recorded == 3 and again.launch is None
    sweep_dir = SweepDir(out)
    lost = record_paths(sweep_dir)[0]
    lost.unlink()
    assert sweep_status(sweep_dir).counts["lost"] == 1
    third = launch(sweep, out, "local", LaunchConfig(workers=2))
    assert third.runs_launched == 1 and third.launch == 1 and lost.exists()
    assert sweep_status(sweep_dir).counts["finished"] == 3


def test_a_failed_run_is_recorded_the_others_finish_and_retry_failed_reruns_it(tmp_path):
    sweep = load_sweep(make_spec(tmp_path, bad_path=True))
    out = tmp_path / "out"
    result = launch(sweep, out, "local", LaunchConfig(workers=2))
    assert result.counts == {"ok": 3, "failed": 3}
    status = sweep_status(SweepDir(out))
    assert status.counts["finished"] == 3 and status.counts["failed"] == 3
    failure = status.failures[0]
    assert "bad_ids.bin" in failure.error and failure.log and Path(failure.log).exists()
    assert any("bad_ids.bin" in line for line in failure.log_tail)
    assert launch(sweep, out, "local", LaunchConfig(workers=2)).runs_launched == 0  # failed runs have records
    retried = launch(sweep, out, "local", LaunchConfig(workers=2), retry_failed=True)
    assert retried.runs_launched == 3 and retried.counts == {"failed": 3}  # still bad: fails again, recorded


def test_diverged_runs_are_results_not_failures(tmp_path):
    sweep = load_sweep(make_spec(tmp_path, lrs="[1e-3, 1e4]"))
    out = tmp_path / "out"
    assert launch(sweep, out, "local", LaunchConfig(workers=2)).counts == {"ok": 1, "diverged": 1}
    assert sweep_status(SweepDir(out)).counts["diverged"] == 1
    assert launch(sweep, out, "local", LaunchConfig(workers=2), retry_failed=True).runs_launched == 0


def test_a_different_spec_into_an_existing_sweep_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    launch(load_sweep(make_spec(tmp_path, lrs="[1e-3]")), out, "local", LaunchConfig(workers=1))
    changed = load_sweep(make_spec(tmp_path, lrs="[1e-3, 2e-3]"))
    with pytest.raises(SweepDirError, match="holds sweep 'local'.*not this spec"):
        launch(changed, out, "local", LaunchConfig(workers=1))


def test_debug_executor_runs_in_process(tmp_path):
    sweep = load_sweep(make_spec(tmp_path, lrs="[1e-3, 2e-3]"))
    result = launch(sweep, tmp_path / "out", "debug", LaunchConfig(runs_per_task=2))
    assert result.tasks == 1 and result.counts == {"ok": 2}


def test_relaunch_keeps_a_half_recorded_trunk_whole(tiny_spec, tiny_sweep_dir):
    sweep_dir = SweepDir(tiny_sweep_dir)
    records = trusted_records(sweep_dir)
    longest = max(records.values(), key=lambda r: (r["tokens"], r["lr"], r["batch_size"]))
    sibling = next(r for r in records.values() if r["trunk_id"] == longest["trunk_id"] and r is not longest)
    sweep_dir.record_path(longest["run_id"]).unlink()
    result = launch(load_sweep(tiny_spec), tiny_sweep_dir, "local", LaunchConfig(workers=1))
    assert result.runs_launched == 1 and result.counts == {"ok": 1}
    assert sweep_dir.tasks(result.launch) == [[sibling["run_id"], longest["run_id"]]]  # the whole chain
    again = trusted_records(sweep_dir)
    assert again[sibling["run_id"]]["finished_at"] == sibling["finished_at"]  # recorded: not trained again
    retrained = again[longest["run_id"]]
    assert retrained["trunk_id"] == longest["trunk_id"]
    assert retrained["final_val_loss"] == longest["final_val_loss"]


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="with GPUs the default is one worker per GPU"
)
def test_default_workers_is_one_per_usable_cpu_core_without_gpus():
    import os

    from powerlaw_cli.launch import default_workers

    assert default_workers() == len(os.sched_getaffinity(0)) >= 1


def test_a_task_training_several_chains_at_once_records_what_one_at_a_time_does(tmp_path):
    """One task of four chains: two processes of one thread each, or one after the other in this process,
    give the same records (bit for bit on the CPU)."""
    import shutil

    import torch

    from powerlaw_cli.worker import run_task

    spec = make_spec(tmp_path, lrs="[1e-3, 3e-3, 1e-2, 3e-2]")
    out = tmp_path / "out"
    sweep = load_sweep(spec)
    launch(sweep, out, "local", LaunchConfig(workers=1, runs_per_task=4))
    assert SweepDir(out).tasks(0) and len(SweepDir(out).tasks(0)) == 1 and len(SweepDir(out).tasks(0)[0]) == 4
    results = {}
    for at_once in (1, 2):
        copy = tmp_path / f"again-{at_once}"
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs", "curves", "records.index.json"))
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            counts = run_task(copy, 0, 0, at_once=at_once, threads=1)
        finally:
            torch.set_num_threads(previous)
        assert counts == {"ok": 4}
        results[at_once] = trusted_records(SweepDir(copy))
    assert set(results[1]) == set(results[2]) == {run.run_id for run in sweep.runs}
    for run_id, record in results[1].items():
        assert results[2][run_id]["final_val_loss"] == record["final_val_loss"]
        assert results[2][run_id]["final_train_loss"] == record["final_train_loss"]
