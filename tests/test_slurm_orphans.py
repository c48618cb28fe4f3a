"""A Slurm launch killed while it submits leaves nothing untracked (on the real cluster, tests/slurm_cluster.py).

The launch runs as a real ``plsweep launch`` process whose PATH has an ``sbatch`` that stops at one call,
before it reaches Slurm or after Slurm took the job and before its answer (the test's stand-in for the moment
a user's Ctrl-C or a dropped ssh session hits; no hook in plsweep). The launch is killed there (SIGKILL, or
SIGINT as Ctrl-C sends), then ``status`` or the next ``launch`` finds its arrays by their tag: a healthy one
is adopted (its runs count as queued), one whose submitit files were never written is cancelled, and every
run is trained exactly once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

import pytest
from test_slurm_sweeps import plsweep, run_lines, wait_until_done, write_spec

from powerlaw_cli.slurm import QUEUED_STATES, RUNNING_STATES
from powerlaw_cli.spec import load_sweep
from powerlaw_cli.status import sweep_status
from powerlaw_cli.store import SweepDir

pytestmark = pytest.mark.slurm

STOPPING_SBATCH = """#!/bin/bash
# sbatch that stops at call {call}, {when} the real sbatch, until the file "go" appears
n=$(( $(cat {dir}/calls 2>/dev/null || echo 0) + 1 )); echo $n > {dir}/calls
stop() {{ touch {dir}/stopped; while [ ! -e {dir}/go ]; do sleep 0.1; done; }}
if [ $n = {call} ] && [ {when} = before ]; then stop; exit 1; fi
out=$({real} "$@"); rc=$?
if [ $n = {call} ]; then stop; fi
echo "$out"; exit $rc
"""

# 3 runs, one per task, MaxArraySize 2: two arrays (2 tasks, then a lone task, which submitit sends as a job).
# case: (sbatch call that stops, before/after the real sbatch, signal, who settles, adopted runs, what is said)
CASES = {
    "before-sbatch": (1, "before", signal.SIGKILL, "launch", 0, ["no array of it reached Slurm"]),
    "after-sbatch": (1, "after", signal.SIGKILL, "status", 0, ["cancelled Slurm array"]),
    "between-arrays": (2, "before", signal.SIGKILL, "status", 2, ["adopted Slurm array", "(2 tasks, 2 runs"]),
    "sigint-after-second-sbatch": (
        2,
        "after",
        signal.SIGINT,
        "launch",
        2,
        ["adopted Slurm array", "cancelled Slurm array"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_launch_killed_while_submitting_leaves_no_untracked_array(slurm_cluster, tmp_path, case):
    call, when, sig, settler, adopted, said = CASES[case]
    spec = write_spec(
        tmp_path, "orphan", "optimizer.lr = [1e-3, 3e-3, 1e-2]", training="batch_size = 8\ntokens = 1024"
    )
    sweep = load_sweep(spec)
    out = tmp_path / "out"
    sweep_dir = SweepDir(out)
    stops = tmp_path / "stops"
    stops.mkdir()
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(STOPPING_SBATCH.format(call=call, when=when, dir=stops, real=shutil.which("sbatch")))
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    launch_args = ("launch", spec, "--executor", "slurm", "--out", out, "-s", "runs_per_task=1", "--json")
    with slurm_cluster(max_array_size=2):
        killed = plsweep(*launch_args, env=env)
        try:
            deadline = time.monotonic() + 120
            while not (stops / "stopped").exists():
                assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
                time.sleep(0.1)
            os.kill(killed.pid, sig)
            _, stderr = killed.communicate(timeout=120)
        finally:
            (stops / "go").touch()
            killed.kill()
        assert killed.returncode != 0 and "Traceback" not in stderr, stderr
        assert sweep_dir.launches() == []
        (intent,) = sweep_dir.intents()  # the write-ahead entry is all the killed launch recorded

        if settler == "status":
            shown = plsweep("status", out, "--json")
            stdout, stderr = shown.communicate(timeout=120)
            assert shown.returncode == 0, stderr
            status = json.loads(stdout)
            messages = status["orphans"]
            assert status["counts"]["pending"] + status["counts"]["running"] == adopted, status
            assert status["counts"]["lost"] == len(sweep.runs) - adopted, status
        again = plsweep(*launch_args)
        stdout, stderr = again.communicate(timeout=120)
        assert again.returncode == 0, stderr
        relaunched = json.loads(stdout)
        if settler == "launch":
            messages = relaunched["orphans"]
        else:
            assert relaunched["orphans"] == []
        assert len(messages) == 1 and messages[0].startswith("launch 0 died while submitting: "), messages
        assert all(words in messages[0] for words in said), messages
        assert relaunched["launch"] == 1 and relaunched["skipped_queued"] == adopted
        assert relaunched["runs_launched"] == len(sweep.runs) - adopted
        assert sweep_dir.intents() == []
        entries = sweep_dir.launches()
        assert [e["launch"] for e in entries] == ([0, 1] if adopted else [1])

        wait_until_done(sweep_dir, slurm_cluster)
    assert sorted(run_lines(sweep_dir)) == sorted(run.run_id for run in sweep.runs)  # each run trained once
    assert sweep_status(sweep_dir).counts["finished"] == len(sweep.runs)
    # Every array the killed launch sent is recorded, or has ended (cancelled, or failed at once for want of
    # submitit's folder): none is left untracked.
    recorded = {array for entry in entries for array in entry["array_ids"]}
    tagged = slurm_cluster.run(["squeue", "-h", "-t", "all", "-n", "plsweep-orphan", "-o", "%F|%T|%k"]).stdout
    sent = [line.split("|", 2) for line in tagged.splitlines() if line.endswith(intent["token"])]
    assert len({array for array, _, _ in sent}) == {"before": call - 1, "after": call}[when], tagged
    for array, state, comment in sent:
        assert array in recorded or state not in QUEUED_STATES | RUNNING_STATES, (array, state, comment)


def test_with_the_scheduler_unreachable_status_calls_queued_runs_unknown_not_lost(slurm_cluster, tmp_path):
    """A held task, then a status whose slurm.conf names a controller and accounting daemon that do not
    answer: its run is unknown (not lost, no advice to relaunch), the warning says why, and launch refuses."""
    spec = write_spec(
        tmp_path, "unreachable", "optimizer.lr = [1e-3]", training="batch_size = 8\ntokens = 1024"
    )
    out = tmp_path / "out"
    held = plsweep(
        "launch", spec, "--executor", "slurm", "--out", out, "-s", 'sbatch_extra=["--hold"]', "--json"
    )
    stdout, stderr = held.communicate(timeout=120)
    assert held.returncode == 0, stderr
    (array,) = json.loads(stdout)["array_ids"]
    try:
        conf = tmp_path / "elsewhere" / "slurm.conf"
        conf.parent.mkdir()
        text = slurm_cluster.conf_path.read_text()
        for key in ("SlurmctldPort", "AccountingStoragePort"):
            text = re.sub(rf"^{key}=\d+", f"{key}=1", text, flags=re.MULTILINE)  # nothing listens on port 1
        conf.write_text(text)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        shown = plsweep("status", out, "--json", env=env)
        stdout, stderr = shown.communicate(timeout=300)
        assert shown.returncode == 0, stderr
        status = json.loads(stdout)
        assert status["counts"]["unknown"] == 1 and status["counts"]["lost"] == 0 and not status["done"], (
            status
        )
        assert "squeue failed" in status["warning"] and stderr.count("warning: ") == 1, stderr
        text_status = plsweep("status", out, env={**env, "COLUMNS": "200"})
        stdout, stderr = text_status.communicate(timeout=300)
        assert text_status.returncode == 0, stderr
        assert "unknown 1: the scheduler could not be asked" in stdout and "launch again" not in stdout, (
            stdout
        )
        refused = plsweep("launch", spec, "--executor", "slurm", "--out", out, env=env)
        _, stderr = refused.communicate(timeout=300)
        assert refused.returncode == 2 and "cannot ask Slurm which tasks are still queued" in stderr, stderr
        assert sweep_status(SweepDir(out)).counts["pending"] == 1  # the scheduler that answers: still queued
    finally:
        slurm_cluster.run(["scancel", array])
