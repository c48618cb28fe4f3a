"""A launch that dies or meets a broken sweep directory on this machine: workers die with their launcher and a
relaunch trains each run once; a task file that is not one is one line naming it; a full disk is named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY_MODEL, record_paths
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.launch import launch
from powerlaw_cli.spec import Sweep, load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir
from powerlaw_cli.sweep_settings import LaunchConfig

DEADLINE = 180  # seconds: a bound on waits for processes and files, never an assertion on speed


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


# --- a task file that is not one ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"{not json", b"[1, 2]", b'{"options": {}, "tasks": [[1]]}', b'{"tasks": []}', b"\xff\xfe"],
    ids=["not-json", "a-list", "ids-not-strings", "no-options", "not-utf8"],
)
def test_a_task_file_that_is_not_one_is_one_line_naming_it_for_status_and_launch(
    tiny_spec, tiny_sweep_dir, text
):
    path = SweepDir(tiny_sweep_dir).tasks_path(0)
    path.write_bytes(text)
    for args in (("status", tiny_sweep_dir), ("launch", tiny_spec, "--out", tiny_sweep_dir)):
        code, out, err = invoke(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, out, err)
        assert str(path) in lines[0] and "restore it, or delete it to forget launch 0" in lines[0], err
        assert "Traceback" not in out + err


def test_a_deleted_task_file_forgets_its_launch_and_a_relaunch_trains_what_has_no_record(
    tiny_spec, tiny_sweep_dir
):
    sweep_dir = SweepDir(tiny_sweep_dir)
    record_paths(sweep_dir)[0].unlink()
    sweep_dir.tasks_path(0).unlink()
    status = sweep_status(sweep_dir)
    assert status.counts["lost"] == 1 and status.lost == {"never launched": 1}
    again = launch(load_sweep(tiny_spec), tiny_sweep_dir, "local", LaunchConfig(workers=1))
    assert again.runs_launched == 1 and again.counts == {"ok": 1} and again.launch == 1


# --- a killed local launch -------------------------------------------------------------------------

LONG_RUNS = (
    '[sweep]\nname = "killed"\n' + TINY_MODEL + '[data]\nval_tokens = 256\n[schedule]\nname = "constant"\n'
    '[training]\ndevice = "cpu"\nbatch_size = 8\ntokens = 16384\ncheckpoint_seconds = 0.2\n'
    "[grid]\noptimizer.lr = [1e-3]\n"
)


def start_launch(folder: Path, out: Path) -> tuple[Sweep, Path, subprocess.Popen]:
    """``plsweep launch`` of LONG_RUNS into ``out`` with one worker, as a real process (output captured)."""
    spec = folder / "long.toml"
    spec.write_text(LONG_RUNS)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "powerlaw_cli", "launch", str(spec), "--out", str(out), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return load_sweep(spec), out, launcher


def wait_for(what: str, predicate, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"waited {deadline} s for {what}"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """The pool workers (multiprocessing spawn children) of process ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie nobody reaped)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_lines(sweep_dir: SweepDir) -> list[str]:
    """The run id of every "run RUN_ID: ..." line in the local logs: one per record written."""
    logs = "".join(p.read_text(errors="replace") for p in (sweep_dir.jobs_dir / "local").glob("*.log"))
    return sorted(line.split(":")[0][4:] for line in logs.splitlines() if line.startswith("run "))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their launcher on Linux")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_killed_local_launch_takes_its_workers_with_it_and_relaunches_train_each_run_once(tmp_path, sig):
    sweep, out, launcher = start_launch(tmp_path, tmp_path / "out")
    sweep_dir = SweepDir(out)
    try:
        checkpoints = [sweep_dir.checkpoint_path(run.run_id) for run in sweep.runs]
        wait_for("the run to checkpoint", lambda: all(c.exists() for c in checkpoints))
        assert not record_paths(sweep_dir), "a run finished before the kill"
        workers = children(launcher.pid)
        assert len(workers) == 1, workers
        os.kill(launcher.pid, sig)
        launcher.communicate(timeout=DEADLINE)
    finally:
        launcher.kill()
    # Relaunch at once, as a user would, and again until every run is recorded: while the killed launch's
    # workers are saving they hold its lock (its runs are running, not lost), then their runs are relaunched.
    relaunched = 0
    end = time.monotonic() + DEADLINE
    while len(record_paths(sweep_dir)) < len(sweep.runs):
        assert time.monotonic() < end, sweep_status(sweep_dir).counts
        relaunched += launch(sweep, out, "local", LaunchConfig(workers=1)).runs_launched
        time.sleep(0.2)
    wait_for("the killed launch's workers to exit", lambda: not any(alive(pid) for pid in workers))
    assert relaunched == len(sweep.runs)  # the workers stopped with their launcher: nothing finished there
    assert run_lines(sweep_dir) == sorted(run.run_id for run in sweep.runs)  # each run recorded once
    for path in record_paths(sweep_dir):
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["resumes"] == 1, (
            record
        )  # from the checkpoint saved at the kill
    assert sweep_status(sweep_dir).counts["finished"] == len(sweep.runs)


# --- a full disk ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (skips where mounting is not allowed: not root, no tmpfs, a container without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write into ``disk`` until it is full; the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mounts a tmpfs")
def test_a_disk_that_fills_during_a_local_launch_is_named_and_a_relaunch_finishes(tmp_path, small_disk):
    sweep, out, launcher = start_launch(tmp_path, small_disk / "out")
    sweep_dir = SweepDir(out)
    try:
        (run,) = sweep.runs
        wait_for("the run to checkpoint", sweep_dir.checkpoint_path(run.run_id).exists)
        filler = fill(small_disk)
        _, stderr = launcher.communicate(timeout=DEADLINE)
    finally:
        launcher.kill()
    lines = stderr.strip().splitlines()
    assert launcher.returncode == 2 and len(lines) == 1, stderr
    assert "1 of 1 tasks of launch 0 stopped: No space left on device (ENOSPC)" in lines[0], stderr
    assert record_paths(sweep_dir) == []  # no record says the run failed: the disk did
    filler.unlink()
    again = launch(sweep, out, "local", LaunchConfig(workers=1))
    assert again.runs_launched == 1 and again.counts == {"ok": 1}
    assert json.loads(record_paths(sweep_dir)[0].read_text())["resumes"] == 1  # from the last checkpoint
