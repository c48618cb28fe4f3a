"""Trust and cost of the bookkeeping, on real local sweeps: what each command imports and reads, every
run-id setting in the runs table, untrusted records, and one launch at a time per sweep directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny import TINY_MODEL, record_paths

from powerlaw_cli.collect import collect
from powerlaw_cli.config import RunConfig, settings_table
from powerlaw_cli.fit import fit_sweep, load_runs
from powerlaw_cli.fit_cells import cell_curves, grouping
from powerlaw_cli.launch import launch
from powerlaw_cli.schema import IDENTITY_COLUMNS, RUNS_SCHEMA, SETTING_COLUMNS
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir
from powerlaw_cli.sweep_settings import LaunchConfig
from powerlaw_cli.worker import run_task

HEAVY = ("torch", "pandas", "scipy")
IMPORTS = """
import sys
from typer.testing import CliRunner
from powerlaw_cli.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def heavy_imports(*args: object) -> set[str]:
    """Which of torch, pandas, scipy a plsweep command imports, run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS.format(heavy=HEAVY), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return set(filter(None, done.stdout.strip().split(",")))


def test_bookkeeping_commands_import_no_torch_and_status_no_pandas(tiny_spec, tiny_sweep_dir):
    assert heavy_imports("status", tiny_sweep_dir) == set()  # the first status: it reads every record
    assert heavy_imports("status", tiny_sweep_dir) == set()  # and from its index
    assert "torch" not in heavy_imports("collect", tiny_sweep_dir)
    assert "torch" not in heavy_imports("plan", tiny_spec)
    assert "torch" not in heavy_imports("fit", tiny_sweep_dir, "--no-plots", "--bootstrap", "20")
    # what `launch --executor slurm` runs in the driver: the launcher and the worker class it pickles
    code = "import sys, powerlaw_cli.launch, powerlaw_cli.worker; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_a_task_parses_only_its_own_runs(tiny_sweep_dir, monkeypatch):
    sweep = SweepDir(tiny_sweep_dir)
    tasks = sweep.tasks(0)
    assert len(tasks) > 2 and sum(map(len, tasks)) == 16
    parsed: list[str] = []
    original = RunConfig.from_dict.__func__

    def spy(cls, data, where="config"):
        config = original(cls, data, where)
        parsed.append(config.run_id)
        return config

    monkeypatch.setattr(RunConfig, "from_dict", classmethod(spy))
    assert run_task(tiny_sweep_dir, 0, 1) == {}  # every run is recorded: nothing to train
    assert sorted(parsed) == sorted(tasks[1])


def test_status_reads_only_records_that_are_new_or_changed(tiny_sweep_dir, monkeypatch):
    sweep = SweepDir(tiny_sweep_dir)
    assert sweep_status(sweep).counts["finished"] == 16
    reads: list[Path] = []
    original = SweepDir.read_record
    monkeypatch.setattr(
        SweepDir, "read_record", lambda self, path, *a: reads.append(path) or original(self, path, *a)
    )
    assert sweep_status(sweep).counts["finished"] == 16 and reads == []
    changed = record_paths(sweep)[3]
    changed.write_text(changed.read_text())  # rewritten: a new inode and modification time
    assert sweep_status(sweep).counts["finished"] == 16 and reads == [changed]


@pytest.mark.parametrize(
    ("field", "value"), [("width", "abc"), ("started_at", "yesterday"), ("status", "done")]
)
def test_a_record_that_does_not_fit_the_schema_is_unfinished_rerun_and_harmless(
    tiny_spec, tiny_sweep_dir, field, value
):
    sweep = SweepDir(tiny_sweep_dir)
    path = record_paths(sweep)[5]
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | {field: value}))
    status = sweep_status(sweep)
    assert status.counts["finished"] == 15 and status.counts["lost"] == 1
    assert any(field in reason for reason in status.lost) and field in " ".join(status.bad_records)
    report = collect(sweep)  # left out, reported, no crash
    assert report.runs == 15 and [p.path for p in report.problems] == [path]
    relaunched = launch(load_sweep(tiny_spec), tiny_sweep_dir, "local", LaunchConfig(workers=1))
    assert relaunched.runs_launched == 1 and relaunched.counts == {"ok": 1}
    rewritten = sweep.read_record(path)
    assert (
        isinstance(rewritten, dict) and rewritten["width"] == record["width"] and rewritten["status"] == "ok"
    )
    assert sweep_status(sweep).counts["finished"] == 16
    assert collect(sweep).runs == 16
    fitted = fit_sweep(load_runs(tiny_sweep_dir), n_boot=20)  # 2 batches x 2 budgets, each over all 4 LRs
    assert len(fitted.cells) == 4 and set(fitted.cells["n_lrs"]) == {4}


def test_every_run_id_setting_is_a_column_and_the_fit_never_pools_across_one(tmp_path):
    spec = tmp_path / "languages.toml"
    spec.write_text(
        '[sweep]\nname = "languages"\n' + TINY_MODEL + "[data]\nval_tokens = 256\n"
        '[schedule]\nname = "constant"\n[training]\nbatch_size = 8\ntokens = 256\n'
        "[grid]\noptimizer.lr = [1e-3, 1e-2, 1e-1]\ndata.synthetic_seed = [0, 1]\n"
    )
    out = tmp_path / "out"
    launch(load_sweep(spec), out, "local", LaunchConfig(workers=2))
    collect(SweepDir(out))
    table = pq.read_table(out / "runs.parquet")
    assert table.schema.remove_metadata() == RUNS_SCHEMA
    identity = {f"{section}.{name}" for section, name, _, _, is_id, _ in settings_table() if is_id}
    assert set(SETTING_COLUMNS) == identity and set(IDENTITY_COLUMNS) <= set(table.column_names)
    for column in IDENTITY_COLUMNS:  # written by the real record writer, every one filled
        assert table.column(column).null_count == 0, column
    assert sorted(table.column("synthetic_seed").to_pylist()) == [0, 0, 0, 1, 1, 1]
    runs = load_runs(out)
    groups, cells, mode = grouping(runs)
    assert mode == "sweep" and "synthetic_seed" in groups and "synthetic_seed" in cells
    curves = cell_curves(runs, cells)
    assert len(curves) == 2  # one cell per language
    assert all(points["count"].tolist() == [1, 1, 1] for _, points, _ in curves)  # no seeds pooled


def launch_command(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "powerlaw_cli", "launch", str(spec), "--out", str(out), "--json", *extra]


def test_a_second_launch_waits_for_the_lock_and_submits_nothing_the_first_did(tmp_path):
    spec = tmp_path / "locked.toml"
    spec.write_text(
        '[sweep]\nname = "locked"\n' + TINY_MODEL + "[data]\nval_tokens = 256\n"
        '[schedule]\nname = "constant"\n[training]\nbatch_size = 8\ntokens = 8192\n'
        "[grid]\noptimizer.lr = [1e-3, 3e-3, 1e-2, 3e-2]\n"
    )
    out = tmp_path / "out"
    sweep_dir = SweepDir(out)
    log = tmp_path / "second.err"
    with sweep_dir.launch_lock():
        with open(log, "w") as err:
            second = subprocess.Popen(
                launch_command(spec, out, "--workers", "1"), stdout=subprocess.PIPE, stderr=err, text=True
            )
        deadline = time.monotonic() + 120
        while "waiting for the launch held by" not in log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert f"pid {__import__('os').getpid()}" in log.read_text()  # the holder is named
        first = subprocess.Popen(
            launch_command(spec, out, "--workers", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert second.poll() is None and first.poll() is None  # both wait while the lock is held
    results = [json.loads(p.communicate(timeout=600)[0]) for p in (second, first)]
    assert [p.returncode for p in (second, first)] == [0, 0]
    launched = sorted(r["runs_launched"] for r in results)
    assert launched == [
        0,
        4,
    ]  # whichever got the lock first took every run; the other found them queued or done
    assert len(sweep_dir.launches()) == 1
    logs = "".join(p.read_text() for p in (out / "jobs" / "local").glob("*.log"))
    assert sorted(line.split(":")[0] for line in logs.splitlines() if line.startswith("run ")) == sorted(
        f"run {run.run_id}" for run in load_sweep(spec).runs
    )  # each trained exactly once
