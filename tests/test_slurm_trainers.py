"""A user's trainer on the real one-node Slurm cluster: requeued (SIGTERM) while it trains, it is started again
in its own run folder and resumes from its own checkpoint."""

from __future__ import annotations

import time

import pytest
from test_slurm_sweeps import wait_until_done
from test_trainers import RESUMABLE, read_state

from powerlaw_cli.launch import launch
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.store import SweepDir

pytestmark = pytest.mark.slurm

SPEC = """[sweep]
name = "trainer-requeue"
[trainer]
command = ["python", "resumable.py", "100"]
[launch]
cpus_per_task = 1
gpus_per_task = 0
time_minutes = 5
"""


def test_a_requeued_trainer_resumes_from_its_own_checkpoint(slurm_cluster, tmp_path):
    (tmp_path / "resumable.py").write_text(RESUMABLE)
    spec = tmp_path / "trainer-requeue.toml"
    spec.write_text(SPEC)
    sweep = load_sweep(spec)
    (run,) = sweep.runs
    sweep_dir = SweepDir(tmp_path / "out")
    assert launch(sweep, sweep_dir.root, "slurm").tasks == 1
    (job,) = sweep_dir.launches()[0]["task_jobs"]
    state_path = sweep_dir.run_dir(run.run_id) / "state.json"
    deadline = time.monotonic() + 120
    while (state := read_state(state_path)) is None or state["step"] < 5:
        assert time.monotonic() < deadline, f"the trainer ran no 5 steps in 120 s\n{slurm_cluster.log_tail()}"
        time.sleep(0.1)
    assert state["step"] < 100, "the run finished before it could be requeued"
    slurm_cluster.run(["scontrol", "requeue", job])

    history = wait_until_done(sweep_dir, slurm_cluster)
    assert all(c["lost"] == 0 and c["failed"] == 0 for c in history), history
    record = sweep_dir.read_result(run.run_id)
    assert record["status"] == "ok" and record["resumes"] >= 1 and record["slurm_job_id"]
    final = read_state(state_path)
    assert final["step"] == 100 and final["starts"] >= 2
    assert final["executed"] == 100  # each step ran once: the second start resumed, it did not start over
    assert record["final_val_loss"] == 1.0 + final["starts"]
    restarts = slurm_cluster.run(["scontrol", "show", "job", job]).stdout
    assert "Restarts=1" in restarts, restarts
