"""Sweeps on the real one-node Slurm cluster (tests/slurm_cluster.py, MaxArraySize=10, 2 CPUs).

What ``plsweep launch --executor slurm`` promises, checked on a real controller: many runs go out
as several arrays of packed tasks and every run ends with exactly one row after ``collect``; status
counts follow the queue (held, pending, running, done); tasks run the sweep's code snapshot; a task
requeued by ``scontrol requeue`` resumes from its checkpoint to the loss of an uninterrupted run; a
failed run is reported with its error, relaunching submits only what is missing, and
``--retry-failed`` reruns it.

Every task asks for one CPU (so two run at once and the rest pend) and no GPU; a task costs ~8 s on
this machine (Python, torch and its first optimizer step), whatever its tiny runs do, so the tests
keep tasks few and pack runs into them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from slurm_cluster import REPO_ROOT
from tiny import TINY_MODEL, record_paths, trusted_records
from typer.testing import CliRunner

from powerlaw_cli.cli import app
from powerlaw_cli.collect import collect
from powerlaw_cli.launch import LaunchResult, launch
from powerlaw_cli.runner import train_standalone
from powerlaw_cli.spec import Sweep, load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir

pytestmark = pytest.mark.slurm

BASE = (
    """
"""
    + TINY_MODEL
    + """[data]
val_tokens = 512
{data}
[schedule]
name = "constant"
[training]
device = "cpu"
{training}
[launch]
cpus_per_task = 1
gpus_per_task = 0
time_minutes = 5
runs_per_task = 8
[grid]
{grid}
"""
)

# 11 LRs x 4 seeds x 2 batch sizes = 88 runs, 8 per task: 11 tasks, one more than MaxArraySize=10,
# so two arrays (10 tasks and 1; submitit sends a lone task as a plain job).
MANY_RUNS = 88
MANY_GRID = """optimizer.lr = { log = [1e-3, 1e-2], num = 11 }
training.seed = [0, 1, 2, 3]
training.batch_size = [8, 16]"""

SWEEP_TIMEOUT = 240  # seconds; the many-run sweep takes ~45 s here


def write_spec(folder: Path, name: str, grid: str = "", data: str = "", training: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{name}.toml"
    spec.write_text(f'[sweep]\nname = "{name}"\n' + BASE.format(grid=grid, data=data, training=training))
    return spec


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def torch_threads(n: int):
    """One thread for in-test training: two on this loaded 2-core machine are ~20x slower, not faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def wait_until_done(sweep_dir: SweepDir, cluster, timeout: float = SWEEP_TIMEOUT) -> list[dict[str, int]]:
    """Poll ``sweep_status`` until nothing is queued or running; the counts of every poll, in order."""
    deadline = time.monotonic() + timeout
    history = []
    while True:
        status = sweep_status(sweep_dir)
        assert not status.warning, status.warning  # sacct answers on this cluster
        history.append(dict(status.counts))
        if status.done:
            return history
        if time.monotonic() > deadline:
            squeue = cluster.run(["squeue", "-a", "-r"], check=False).stdout
            raise AssertionError(
                f"{sweep_dir.root} not done after {timeout}s: {status.counts}\n{squeue}\n{cluster.log_tail()}"
            )
        time.sleep(0.5)


def task_log(sweep_dir: SweepDir, job_id: str) -> str:
    """A task's log (stdout and stderr), as submitit keeps it: ``jobs/ID/ID_0_log.out``."""
    return (sweep_dir.jobs_dir / job_id / f"{job_id}_0_log.out").read_text(errors="replace")


# --- many runs: arrays, packing, records, collect, status, code snapshot ----------------------------


@dataclasses.dataclass
class Launched:
    sweep: Sweep
    dir: SweepDir
    result: LaunchResult
    relaunch_while_queued: LaunchResult
    history: list[dict[str, int]]


@pytest.fixture(scope="module")
def many(slurm_cluster, tmp_path_factory) -> Launched:
    """The 88-run sweep, launched from the repository's root (where ``python -m`` would find the
    working tree's powerlaw_cli instead of the snapshot), relaunched at once, polled until done."""
    assert slurm_cluster.max_array_size == 10
    root = tmp_path_factory.mktemp("many")
    sweep = load_sweep(write_spec(root, "many", MANY_GRID, training="tokens = 2048"))
    sweep_dir = SweepDir(root / "out")
    with working_directory(REPO_ROOT):
        result = launch(sweep, sweep_dir.root, "slurm")
    relaunch = launch(sweep, sweep_dir.root, "slurm")
    return Launched(sweep, sweep_dir, result, relaunch, wait_until_done(sweep_dir, slurm_cluster))


def test_many_runs_go_out_as_several_arrays_of_packed_tasks_and_each_is_collected_once(many):
    options = many.sweep.launch
    assert len(many.sweep.runs) == MANY_RUNS >= 60 and options.runs_per_task == 8 > 1
    assert many.result.runs_launched == MANY_RUNS and many.result.tasks == 11

    (entry,) = many.dir.launches()
    assert entry["executor"] == "slurm" and entry["max_array_size"] == 10
    assert entry["array_ids"] == many.result.array_ids and len(entry["array_ids"]) == 2
    first, second = entry["array_ids"]
    # submitit submits an "array" of one task as a plain job: its id has no _INDEX
    assert entry["task_jobs"] == [f"{first}_{i}" for i in range(10)] + [second]

    tasks = many.dir.tasks(0)
    assert [len(task) for task in tasks] == [8] * 11
    records = trusted_records(many.dir)
    assert set(records) == {run.run_id for run in many.sweep.runs}
    for job, run_ids in zip(entry["task_jobs"], tasks, strict=True):
        assert {records[run_id]["slurm_job_id"] for run_id in run_ids} == {job}  # each run in its own task
    assert {record["status"] for record in records.values()} == {"ok"}

    report = collect(many.dir)
    table = pq.read_table(many.dir.runs_table_path)
    run_ids = table.column("run_id").to_pylist()
    assert report.runs == table.num_rows == MANY_RUNS and len(set(run_ids)) == MANY_RUNS
    assert set(run_ids) == set(records)


def test_relaunching_a_queued_sweep_submits_nothing(many):
    again = many.relaunch_while_queued
    assert again.launch is None and again.runs_launched == 0
    assert again.skipped_queued == MANY_RUNS  # a task takes seconds: none has finished yet


def test_status_counts_follow_the_queue(many):
    total = MANY_RUNS
    for counts in many.history:
        assert sum(counts.values()) == total
        assert counts["lost"] == 0 and counts["failed"] == 0, counts
    assert max(c["pending"] for c in many.history) >= total - 2 * 8  # two tasks at a time on two CPUs
    assert any(c["running"] > 0 for c in many.history)
    assert any(c["running"] > 0 and c["pending"] > 0 for c in many.history)
    assert many.history[-1] == {
        "finished": total,
        "diverged": 0,
        "failed": 0,
        "running": 0,
        "pending": 0,
        "lost": 0,
        "unknown": 0,
    }
    finished = [c["finished"] for c in many.history]
    assert finished == sorted(finished)  # records are never lost on the way


def test_tasks_run_the_code_snapshot(many):
    (entry,) = many.dir.launches()
    snapshot = Path(entry["code"]) / "powerlaw_cli"
    assert snapshot.is_relative_to(many.dir.root.resolve()) and (snapshot / "worker.py").is_file()
    package = REPO_ROOT / "powerlaw_cli"
    assert (snapshot / "worker.py").read_bytes() == (package / "worker.py").read_bytes()
    for job in entry["task_jobs"]:
        log = task_log(many.dir, job)
        code_lines = [line for line in log.splitlines() if line.startswith("plsweep code: ")]
        assert code_lines == [f"plsweep code: {snapshot}"], f"{job}: {code_lines}"


# --- requeue: checkpoint, resume, same loss ----------------------------------------------------------


def test_requeued_task_resumes_from_its_checkpoint_with_the_loss_of_an_uninterrupted_run(
    slurm_cluster, tmp_path
):
    # 512 steps (~4 s on one CPU) with a checkpoint every 0.5 s: requeued while it trains.
    spec = write_spec(
        tmp_path, "requeue", training="batch_size = 8\ntokens = 65536\ncheckpoint_seconds = 0.5"
    )
    sweep = load_sweep(spec)
    (run,) = sweep.runs
    sweep_dir = SweepDir(tmp_path / "out")
    assert launch(sweep, sweep_dir.root, "slurm").tasks == 1
    (job,) = sweep_dir.launches()[0]["task_jobs"]
    checkpoint = sweep_dir.checkpoint_path(run.run_id)

    deadline = time.monotonic() + 90
    while not checkpoint.exists():
        assert time.monotonic() < deadline, f"no checkpoint after 90 s\n{slurm_cluster.log_tail()}"
        assert not sweep_dir.record_path(run.run_id).exists(), "the run finished before it could be requeued"
        time.sleep(0.1)
    slurm_cluster.run(["scontrol", "requeue", job])

    with torch_threads(1):  # the uninterrupted run, trained here while the requeued job waits
        reference = train_standalone(run, tmp_path / "reference")
    assert reference["resumes"] == 0

    history = wait_until_done(sweep_dir, slurm_cluster)
    assert all(c["lost"] == 0 and c["failed"] == 0 for c in history), history
    record = sweep_dir.read_record(sweep_dir.record_path(run.run_id))
    assert record["status"] == "ok" and record["resumes"] >= 1
    assert record["steps"] == reference["steps"] == 512
    assert record["final_val_loss"] == reference["final_val_loss"]
    assert record["final_train_loss"] == reference["final_train_loss"]
    assert not checkpoint.exists()  # removed once the run is recorded

    log = task_log(sweep_dir, job)
    assert "stopped by signal 15 after saving a checkpoint" in log
    assert log.count("plsweep code: ") == 2  # the same task started twice
    restarts = slurm_cluster.run(["scontrol", "show", "job", job]).stdout
    assert "Restarts=1" in restarts, restarts


def test_a_requeued_task_training_two_chains_at_once_resumes_both(slurm_cluster, tmp_path):
    """One task of two CPUs trains its two runs at once, one process and one thread each; requeued while
    they train, both save a checkpoint, and the task resumes them to the losses of uninterrupted runs."""
    spec = write_spec(
        tmp_path,
        "together",
        "optimizer.lr = [1e-3, 3e-3]",
        training="batch_size = 8\ntokens = 65536\ncheckpoint_seconds = 0.5",
    )
    sweep = load_sweep(spec)
    options = dataclasses.replace(sweep.launch, cpus_per_task=2, chains_at_once=2, runs_per_task=2)
    sweep_dir = SweepDir(tmp_path / "out")
    assert launch(sweep, sweep_dir.root, "slurm", options).tasks == 1
    (job,) = sweep_dir.launches()[0]["task_jobs"]
    checkpoints = [sweep_dir.checkpoint_path(run.run_id) for run in sweep.runs]
    deadline = time.monotonic() + 90
    while not all(c.exists() for c in checkpoints):
        assert time.monotonic() < deadline, f"no checkpoints after 90 s\n{slurm_cluster.log_tail()}"
        assert not any(sweep_dir.record_path(r.run_id).exists() for r in sweep.runs), (
            "finished before the requeue"
        )
        time.sleep(0.1)
    slurm_cluster.run(["scontrol", "requeue", job])
    with torch_threads(1):
        references = {run.run_id: train_standalone(run, tmp_path / run.run_id) for run in sweep.runs}
    wait_until_done(sweep_dir, slurm_cluster)
    log = task_log(sweep_dir, job)
    assert "2 chains, 2 at once" in log and log.count("plsweep code: ") == 2, log
    for run in sweep.runs:
        record = sweep_dir.read_record(sweep_dir.record_path(run.run_id))
        assert record["status"] == "ok" and record["resumes"] >= 1, record
        assert record["final_val_loss"] == references[run.run_id]["final_val_loss"]


# --- failure, relaunch, retry -----------------------------------------------------------------------


def test_a_failed_run_is_reported_relaunch_submits_only_what_is_missing_and_retry_reruns_it(
    slurm_cluster, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a relative sweep directory, as `plsweep launch` makes by default
    good, bad = tmp_path / "train.bin", tmp_path / "bad_ids.bin"
    np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint16).tofile(good)
    np.full(50_000, 60_000, dtype=np.uint16).tofile(
        bad
    )  # readable, ids beyond the vocabulary: a worker finds out
    spec = write_spec(
        tmp_path,
        "failing",
        f'optimizer.lr = [1e-3, 3e-3]\ndata.path = ["{good}", "{bad}"]',
        data='source = "tokens"',
        training="batch_size = 8\ntokens = 2048",
    )
    sweep = load_sweep(spec)
    out = Path("failing-out")
    sweep_dir = SweepDir(out)

    held = launch(sweep, out, "slurm", dataclasses.replace(sweep.launch, sbatch_extra=["--hold"]))
    assert held.runs_launched == 4 and held.tasks == 1
    status = sweep_status(sweep_dir)
    assert status.counts == {
        "finished": 0,
        "diverged": 0,
        "failed": 0,
        "running": 0,
        "pending": 4,
        "lost": 0,
        "unknown": 0,
    }, (status.counts, slurm_cluster.run(["squeue", "-a", "-r"], check=False).stdout)
    assert not status.done
    queued = launch(sweep, out, "slurm")
    assert queued.launch is None and queued.runs_launched == 0 and queued.skipped_queued == 4

    (array_id,) = held.array_ids
    slurm_cluster.run(["scontrol", "release", array_id])
    wait_until_done(sweep_dir, slurm_cluster)
    status = sweep_status(sweep_dir)
    assert status.counts["finished"] == 2 and status.counts["failed"] == 2 and status.counts["lost"] == 0, (
        status.counts,
        status.failures,
    )
    (job,) = sweep_dir.launches()[0]["task_jobs"]
    assert {f.run_id for f in status.failures} == {r.run_id for r in sweep.runs if r.data.path == str(bad)}
    for failure in status.failures:
        assert "bad_ids.bin" in failure.error and failure.job == job
        assert failure.log and Path(failure.log).exists()
        assert any(failure.run_id in line and "bad_ids.bin" in line for line in failure.log_tail), (
            failure.log_tail
        )

    cli = CliRunner().invoke(app, ["status", str(out), "--json"], env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    shown = json.loads(cli.stdout)
    assert shown["counts"]["failed"] == 2 and shown["done"] is True
    assert all("bad_ids.bin" in f["error"] for f in shown["failures"])

    nothing = launch(sweep, out, "slurm")  # failed runs have records: nothing is missing
    assert nothing.launch is None and nothing.runs_launched == 0 and nothing.skipped_recorded == 4

    shutil.copy(good, bad)
    cli = CliRunner().invoke(
        app, ["launch", str(spec), "--executor", "slurm", "--out", str(out), "--retry-failed", "--json"]
    )
    assert cli.exit_code == 0, cli.output
    retried = json.loads(cli.stdout)
    assert retried["launch"] == 1 and retried["runs_launched"] == 2 and retried["skipped_recorded"] == 2
    history = wait_until_done(sweep_dir, slurm_cluster)
    assert history[0]["failed"] == 0 and history[0]["pending"] + history[0]["running"] == 2, history  # queued
    status = sweep_status(sweep_dir)
    assert status.counts["finished"] == 4 and status.counts["failed"] == 0 and not status.failures, (
        status.counts,
        status.failures,
    )


def slurm_commands_only(folder: Path, commands: tuple[str, ...]) -> dict[str, str]:
    """An environment whose PATH has only these Slurm commands of this machine (a cluster without the rest)."""
    folder.mkdir()
    for command in commands:
        (folder / command).symlink_to(shutil.which(command))
    env = {**os.environ, "PATH": str(folder)}
    assert all(shutil.which(c, path=env["PATH"]) is None for c in {"sacct", "squeue"} - set(commands))
    return env


def test_status_without_sacct_falls_back_to_squeue_and_records_with_one_warning(many, tmp_path):
    """A cluster without accounting: `plsweep status` still counts from the records, and says so once; a
    finished sweep needs no scheduler at all."""
    nothing = slurm_commands_only(tmp_path / "none", ("scontrol", "sinfo"))
    done = subprocess.run(
        [sys.executable, "-m", "powerlaw_cli", "status", str(many.dir.root), "--json"],
        capture_output=True,
        text=True,
        env=nothing,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # every run recorded: Slurm is not asked
    assert json.loads(done.stdout)["counts"]["finished"] == MANY_RUNS

    copy = SweepDir(tmp_path / "copy")
    shutil.copytree(many.dir.root, copy.root)
    record_paths(copy)[0].unlink()  # one run to ask about
    env = slurm_commands_only(tmp_path / "bin", ("squeue", "scontrol", "sinfo"))
    done = subprocess.run(
        [sys.executable, "-m", "powerlaw_cli", "status", str(copy.root), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("sacct unavailable") == 1
    status = json.loads(done.stdout)
    assert status["counts"]["finished"] == MANY_RUNS - 1 and status["counts"]["lost"] == 1 and status["done"]


def test_launch_refuses_when_slurm_cannot_say_what_is_queued(many, tmp_path):
    """Neither sacct nor squeue answers: guessing "nothing is queued" could submit every run twice."""
    copy = SweepDir(tmp_path / "copy")
    shutil.copytree(many.dir.root, copy.root)
    record_paths(copy)[0].unlink()  # one run to launch: is it still queued? nobody can tell
    env = slurm_commands_only(tmp_path / "bin", ("scontrol", "sinfo"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "powerlaw_cli",
            "launch",
            str(many.sweep.path),
            "--executor",
            "slurm",
            "--out",
            str(copy.root),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot ask Slurm which tasks are still queued" in done.stderr and done.stderr.count("\n") == 1
    assert len(copy.launches()) == 1


def test_a_job_id_squeue_no_longer_knows_is_not_a_failure(slurm_cluster):
    """squeue -j with one id that left the controller exits 1 ("Invalid job id"): that means "not queued"."""
    from powerlaw_cli.slurm import job_states

    states = job_states(["999999"])
    assert states.known and states.queue and states.states == {}


def test_status_watch_polls_at_most_every_30_s_and_warns_once(slurm_cluster, tmp_path):
    """`status --watch` on Slurm: a poll every 30 s at most (even when asked for 1 s), one warning in all."""
    spec = write_spec(tmp_path, "watched", "optimizer.lr = [1e-3]", training="batch_size = 8\ntokens = 1024")
    sweep = load_sweep(spec)
    out = tmp_path / "out"
    held = launch(sweep, out, "slurm", dataclasses.replace(sweep.launch, sbatch_extra=["--hold"]))
    env = slurm_commands_only(tmp_path / "bin", ("squeue", "scontrol", "sinfo"))
    watch = subprocess.Popen(
        [sys.executable, "-m", "powerlaw_cli", "status", str(out), "--watch", "--interval", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    polls: list[float] = []  # when each JSON document began
    try:
        for line in watch.stdout:
            if line.startswith("{"):
                polls.append(time.monotonic())
                if len(polls) == 2:
                    slurm_cluster.run(["scontrol", "release", held.array_ids[0]])
        assert watch.wait(timeout=150) == 0
    finally:
        watch.kill()
    stderr = watch.stderr.read()
    assert len(polls) >= 3, stderr  # pending, pending, ..., done
    assert all(later - earlier >= 29 for earlier, later in zip(polls, polls[1:], strict=False))
    assert stderr.count("sacct unavailable") == 1
    assert sweep_status(SweepDir(out)).counts["finished"] == 1


# --- one launch at a time, cancelled tasks, cluster limits, hostile paths ------------------------------


def plsweep(*args: object, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """``plsweep ARGS`` as a real process (stdout and stderr captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "powerlaw_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def run_lines(sweep_dir: SweepDir) -> list[str]:
    """Every "run RUN_ID: ..." line the workers printed, over all task logs: one per run trained."""
    logs = "".join(p.read_text(errors="replace") for p in sweep_dir.jobs_dir.rglob("*_log.out"))
    return [line.split(":")[0][4:] for line in logs.splitlines() if line.startswith("run ")]


def test_two_launches_of_one_sweep_at_the_same_moment_train_each_run_once(slurm_cluster, tmp_path):
    spec = write_spec(
        tmp_path,
        "twice",
        "optimizer.lr = { log = [1e-3, 1e-2], num = 6 }\ntraining.seed = [0, 1]",
        training="batch_size = 8\ntokens = 1024",
    )
    out = tmp_path / "out"
    both = [plsweep("launch", spec, "--executor", "slurm", "--out", out, "--json") for _ in range(2)]
    results = [proc.communicate(timeout=300) for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], results
    launched = sorted(json.loads(stdout)["runs_launched"] for stdout, _ in results)
    assert launched == [0, 12]  # the second waited for the lock, then found every run queued
    sweep_dir = SweepDir(out)
    assert len(sweep_dir.launches()) == 1
    wait_until_done(sweep_dir, slurm_cluster)
    assert sorted(run_lines(sweep_dir)) == sorted(run.run_id for run in load_sweep(spec).runs)  # each once
    assert sweep_status(sweep_dir).counts["finished"] == 12


def test_a_task_cancelled_before_it_starts_is_lost_and_a_relaunch_reruns_it(slurm_cluster, tmp_path):
    spec = write_spec(
        tmp_path, "cancelled", "optimizer.lr = [1e-3, 3e-3, 1e-2]", training="batch_size = 8\ntokens = 1024"
    )
    sweep = load_sweep(spec)
    out = tmp_path / "out"
    held = launch(sweep, out, "slurm", dataclasses.replace(sweep.launch, sbatch_extra=["--hold"]))
    slurm_cluster.run(["scancel", held.array_ids[0]])
    sweep_dir = SweepDir(out)
    deadline = time.monotonic() + 60
    while (status := sweep_status(sweep_dir)).counts["pending"]:
        assert time.monotonic() < deadline, status.counts
        time.sleep(0.5)
    assert status.counts == {
        "finished": 0,
        "diverged": 0,
        "failed": 0,
        "running": 0,
        "pending": 0,
        "lost": 3,
        "unknown": 0,
    }
    assert status.lost == {"Slurm task ended CANCELLED": 3} and not status.failures
    again = launch(sweep, out, "slurm")  # no --retry-failed: lost runs are not failures
    assert again.runs_launched == 3 and again.launch == 1
    wait_until_done(sweep_dir, slurm_cluster)
    assert sweep_status(sweep_dir).counts["finished"] == 3


def jobs_held(cluster) -> int:
    return len(cluster.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"]).stdout.split())


def test_a_launch_the_cluster_cannot_hold_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path):
    spec = write_spec(
        tmp_path,
        "toobig",
        "optimizer.lr = { log = [1e-4, 1e-1], num = 20 }",
        training="batch_size = 8\ntokens = 1024",
    )
    out = tmp_path / "out"
    with slurm_cluster(max_array_size=10, max_job_count=jobs_held(slurm_cluster) + 12):
        plan = plsweep("plan", spec, "-s", "runs_per_task=1", "--json")
        planned = json.loads(plan.communicate(timeout=120)[0])
        assert (
            planned["tasks"] == 20
            and "do not fit" in planned["fits"]
            and "runs_per_task=2" in planned["fits"]
        )
        refused = plsweep("launch", spec, "--executor", "slurm", "--out", out, "-s", "runs_per_task=1")
        stdout, stderr = refused.communicate(timeout=120)
        assert refused.returncode == 2 and stderr.count("\n") == 1, stderr
        assert "20 array tasks do not fit: MaxArraySize 10, MaxJobCount" in stderr
        assert "launch with -s runs_per_task=2 (10 tasks)" in stderr
        assert SweepDir(out).launches() == [] and not (out / "jobs").exists()
        fits = plsweep(
            "launch",
            spec,
            "--executor",
            "slurm",
            "--out",
            out,
            "-s",
            "runs_per_task=2",
            "--json",
            "-s",
            'sbatch_extra=["--hold"]',
        )
        assert json.loads(fits.communicate(timeout=120)[0])["tasks"] == 10
        slurm_cluster.run(["scancel", SweepDir(out).launches()[0]["array_ids"][0]])


def test_a_refused_sbatch_removes_its_files_and_the_arrays_before_it_are_recorded(slurm_cluster, tmp_path):
    """sbatch refuses the second array (the association's MaxSubmitJobs, which this launch cannot read:
    no sacctmgr on its PATH): the first array is recorded, the refused one leaves no file behind, and
    the next launch submits only the rest."""
    spec = write_spec(
        tmp_path,
        "partial",
        "optimizer.lr = { log = [1e-4, 1e-1], num = 15 }",
        training="batch_size = 8\ntokens = 1024",
    )
    out = tmp_path / "out"
    env = slurm_commands_only(tmp_path / "bin", ("sbatch", "srun", "squeue", "sacct", "scontrol", "sinfo"))
    slurm_cluster.run(["sacctmgr", "-i", "modify", "user", "where", "name=root", "set", "MaxSubmitJobs=12"])
    try:
        first = plsweep(
            "launch",
            spec,
            "--executor",
            "slurm",
            "--out",
            out,
            "-s",
            "runs_per_task=1",
            "-s",
            'sbatch_extra=["--hold"]',
            env=env,
        )
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 2 and stderr.count("\n") == 1, stderr
        assert "sbatch failed after 10 of 15 tasks were submitted" in stderr
    finally:
        slurm_cluster.run(
            ["sacctmgr", "-i", "modify", "user", "where", "name=root", "set", "MaxSubmitJobs=-1"]
        )
    sweep_dir = SweepDir(out)
    (entry,) = sweep_dir.launches()
    assert len(entry["task_jobs"]) == 10 and len(sweep_dir.tasks(0)) == 10
    # no pickles or submission file of the refused array; submitit leaves a link to each submitted array's script
    leftovers = [p.name for p in sweep_dir.jobs_dir.iterdir() if not p.is_dir() and not p.is_symlink()]
    links = [p for p in sweep_dir.jobs_dir.iterdir() if p.is_symlink()]
    assert leftovers == [] and len(links) == len(entry["array_ids"]) == 1, (leftovers, links)
    assert links[0].resolve().parent.name == entry["array_ids"][0] and links[0].resolve().is_file()
    rest = launch(
        load_sweep(spec), out, "slurm", dataclasses.replace(load_sweep(spec).launch, sbatch_extra=["--hold"])
    )
    assert rest.runs_launched == 5 and rest.skipped_queued == 10
    for array in entry["array_ids"] + rest.array_ids:
        slurm_cluster.run(["scancel", array])


def test_a_sweep_directory_with_a_space_a_quote_and_a_command_in_its_path(
    slurm_cluster, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(
        tmp_path, "hostile", "optimizer.lr = [1e-3, 1e-2]", training="batch_size = 8\ntokens = 1024"
    )
    out = tmp_path / "a b'c$(touch X)\"d"
    sweep = load_sweep(spec)
    launch(sweep, out, "slurm")
    sweep_dir = SweepDir(out)
    wait_until_done(sweep_dir, slurm_cluster)
    assert sweep_status(sweep_dir).counts["finished"] == 2
    assert list(tmp_path.rglob("X")) == [] and not (REPO_ROOT / "X").exists()


def test_an_adaptive_sweep_on_slurm_submits_a_round_per_launch_and_status_shows_the_rounds(
    slurm_cluster, tmp_path
):
    """Without --watch a launch submits one round and returns; launched again while it runs it submits
    nothing; with --watch it plans and submits every round until the sweep stops. Every run once."""
    from powerlaw_cli.rounds import launch_adaptive

    spec = tmp_path / "adaptive.toml"
    spec.write_text(
        '[sweep]\nname = "adaptive-slurm"\n' + TINY_MODEL + "[data]\nval_tokens = 1024\n"
        '[schedule]\nname = "wsd"\nwarmup_tokens = 256\ndecay_fraction = 0.25\n[training]\ndevice = "cpu"\n'
        "[grid]\ntraining.batch_size = [8, 16]\ntraining.tokens = [2048, 4096]\ntraining.seed = [0, 1]\n"
        "[adaptive]\nlr_min = 1e-3\nlr_max = 6.4e-2\nmax_rounds = 6\n"
        "[launch]\ncpus_per_task = 1\ngpus_per_task = 0\ntime_minutes = 5\nruns_per_task = 40\n"
    )
    sweep = load_sweep(spec)
    out = tmp_path / "out"
    first = launch_adaptive(sweep, out, "slurm")
    assert len(first.rounds) == 1 and not first.done and first.launches[0].array_ids
    again = launch_adaptive(sweep, out, "slurm")
    assert again.rounds == [] and "still queued or running" in again.why
    done = launch_adaptive(sweep, out, "slurm", watch=True, poll_seconds=1)
    assert done.done and len(done.rounds) >= 2, done
    sweep_dir = SweepDir(out)
    manifest = sweep_dir.manifest_run_ids()
    assert sorted(run_lines(sweep_dir)) == sorted(manifest)  # each run trained once
    assert sorted(trusted_records(sweep_dir)) == sorted(manifest)
    cli = CliRunner().invoke(app, ["status", str(out)], env={"COLUMNS": "200"})
    assert cli.exit_code == 0 and cli.stdout.count("\nround ") == len(sweep_dir.rounds()), cli.stdout
