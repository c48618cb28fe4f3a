"""The one-node Slurm test cluster behaves as the other Slurm tests assume (tests/slurm_cluster.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

pytestmark = pytest.mark.slurm

# The job unpickles the submitted function; this module is not importable there (tests/ is not a
# package and not on the job's sys.path), so pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def configured_max_array_size(cluster) -> int:
    config = cluster.run(["scontrol", "show", "config"]).stdout
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    assert match, config
    return int(match.group(1))


def sbatch_array(cluster, last_index: int) -> subprocess.CompletedProcess[str]:
    """Ask slurmctld to validate (not run: --test-only) an array with indices 0..last_index."""
    return cluster.run(
        ["sbatch", "--test-only", f"--array=0-{last_index}", "-o", "/dev/null", "--wrap", "true"], check=False
    )


def test_cluster_reports_max_array_size(slurm_cluster):
    assert slurm_cluster.max_array_size == 10
    assert configured_max_array_size(slurm_cluster) == 10
    state, partition = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%T %P"]).stdout.split()
    assert partition == "debug*"  # the default partition
    assert state in {"idle", "mixed", "allocated", "completing"}, slurm_cluster.log_tail()


def test_submitit_array_completes_and_sacct_reports_it(slurm_cluster, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=5, cpus_per_task=1)
    inputs = list(range(6))
    jobs = executor.map_array(square, inputs)
    assert len(jobs) == len(inputs)

    assert [job.result() for job in jobs] == [x * x for x in inputs]

    array_id = jobs[0].job_id.split("_")[0]
    assert {job.job_id for job in jobs} == {f"{array_id}_{i}" for i in inputs}
    states = slurm_cluster.wait_sacct(array_id, count=len(inputs))
    assert states == {f"{array_id}_{i}": "COMPLETED" for i in inputs}
    # submitit reads the same states through sacct (forced: its watcher may hold a state polled before the end).
    assert {job.get_info(mode="force").get("State") for job in jobs} == {"COMPLETED"}


def test_array_larger_than_max_array_size_is_rejected(slurm_cluster, tmp_path):
    assert sbatch_array(slurm_cluster, 9).returncode == 0  # 10 tasks, indices 0..9: fits
    too_big = sbatch_array(slurm_cluster, 10)  # 11 tasks
    assert too_big.returncode != 0
    assert "Invalid job array specification" in too_big.stderr

    # submitit does not chunk: map_array over more items than MaxArraySize fails at submission.
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=5)
    with pytest.raises(FailedJobError, match="Invalid job array specification"):
        executor.map_array(square, range(11))


def test_max_array_size_can_be_changed_and_is_restored(slurm_cluster):
    with slurm_cluster(max_array_size=20) as cluster:
        assert cluster.max_array_size == 20
        assert configured_max_array_size(cluster) == 20
        assert sbatch_array(cluster, 15).returncode == 0
        assert sbatch_array(cluster, 20).returncode != 0
    assert slurm_cluster.max_array_size == 10
    assert configured_max_array_size(slurm_cluster) == 10
    assert sbatch_array(slurm_cluster, 15).returncode != 0
