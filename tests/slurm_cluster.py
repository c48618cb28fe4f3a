"""A real one-node Slurm cluster for tests, as a session-scoped pytest fixture.

The cluster is started by ``scripts/slurm-cluster.sh`` (munge, MariaDB + slurmdbd, slurmctld,
slurmd, all on loopback, everything in a pytest temporary folder) once per test session, with
``MaxArraySize=10`` so that chunking of many runs into job arrays is exercised. ``SLURM_CONF`` is
set in ``os.environ`` for the whole session, so submitit and ``sbatch``/``sacct``/``squeue``/
``scontrol`` called from the test process all talk to it::

    @pytest.mark.slurm
    def test_sweep(slurm_cluster, tmp_path):
        assert slurm_cluster.max_array_size == 10
        executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
        executor.update_parameters(slurm_partition="debug")
        ...
        slurm_cluster.run(["scontrol", "requeue", job_id])

    @pytest.mark.slurm
    def test_other_limit(slurm_cluster):
        with slurm_cluster(max_array_size=1001):  # restored to 10 on exit
            ...

Why one session cluster with a default of 10 plus an in-place change, rather than one cluster per
MaxArraySize: starting a cluster costs 3-10 s, changing MaxArraySize costs a slurmctld restart
(~3 s, queued and running jobs survive it), and only one cluster at a time can use the default
ports. ``scontrol reconfigure`` is not enough for MaxArraySize in Slurm 22.05 (``scontrol show
config`` shows the new value, sbatch keeps enforcing the old one), hence the restart.

Timing facts of this cluster that tests can rely on: about 2 array tasks/s (2 cores, one task
start per core per second); ``KillWait=5``; a requeued job pends (reason BeginTime) ~10-15 s, not
90-120 s, before it runs again (``AuthInfo=cred_expire=10``, ``sched_interval=2``); sacct learns of
a finished task up to ~4 s after it left squeue (use :meth:`SlurmCluster.wait_sacct`). Daemon logs
stay in ``slurm_cluster.dir / "log"`` (``slurm_cluster.log_tail()``); ``stop`` at session end
cancels whatever jobs are left.

Skips (with the reason) when the cluster cannot run here: not root, not Linux, or Slurm/munge/
MariaDB commands missing. With ``PLSWEEP_REQUIRE_SLURM=1`` (set by CI) those are failures instead.
A cluster that has everything it needs but fails to start is always a failure, showing the
script's output (which ends with the relevant daemon log).

Functions submitted by submitit are pickled by reference when their module is importable in the
test process; test modules (``tests/`` is not a package) are not importable in the job, so tests
that submit their own top-level functions should call
``cloudpickle.register_pickle_by_value(sys.modules[__name__])`` (see test_slurm_cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "slurm-cluster.sh"

#: MaxArraySize the session cluster starts with (Slurm's own default is 1001).
DEFAULT_MAX_ARRAY_SIZE = 10
#: First of the four loopback ports (slurmctld, slurmd, slurmdbd, MariaDB); see the script.
DEFAULT_PORT_BASE = 16817
#: Environment variable that turns "cannot run a cluster here" from a skip into a failure.
REQUIRE_ENV = "PLSWEEP_REQUIRE_SLURM"

# Commands the script needs, from the Debian packages slurm-wlm, munge, slurmdbd, mariadb-server.
REQUIRED_COMMANDS = (
    "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "squeue", "scontrol",
    "munged", "munge", "mariadbd", "mariadb-install-db", "mariadb",
)  # fmt: skip
APT_INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge slurmdbd mariadb-server"


class SlurmCommandError(subprocess.CalledProcessError):
    """A command run with :meth:`SlurmCluster.run` failed; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class SlurmCluster:
    """A one-node cluster run by scripts/slurm-cluster.sh in ``dir``.

    Attributes: ``dir`` (Path), ``conf_path`` (Path of slurm.conf), ``env_sh`` (Path of env.sh),
    ``max_array_size`` and ``max_job_count`` (ints, the values in force; None: the script's default
    MaxJobCount), ``port_base`` (int).
    """

    def __init__(self, directory: Path, port_base: int = DEFAULT_PORT_BASE) -> None:
        self.dir = Path(directory)
        self.conf_path = self.dir / "slurm.conf"
        self.env_sh = self.dir / "env.sh"
        self.port_base = port_base
        self.max_array_size: int | None = None
        self.max_job_count: int | None = None
        self._restore: list[tuple[int, int | None]] = []

    def __repr__(self) -> str:
        return f"SlurmCluster(dir={str(self.dir)!r}, max_array_size={self.max_array_size})"

    # -- lifecycle ---------------------------------------------------------------------------

    def _script(self, command: str, *args: str, timeout: float = 400) -> str:
        proc = subprocess.run(
            ["bash", str(SCRIPT), command, str(self.dir), *args, "--port-base", str(self.port_base)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"scripts/slurm-cluster.sh {command} {self.dir} {' '.join(args)} failed "
                f"(exit {proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc.stderr

    def start(
        self, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE, max_job_count: int | None = None
    ) -> SlurmCluster:
        """Start the cluster, or, if it runs, make sure ``max_array_size`` and ``max_job_count`` are in force."""
        if (max_array_size, max_job_count) != (self.max_array_size, self.max_job_count):
            extra = ["--max-job-count", str(max_job_count)] if max_job_count else []
            self._script("start", "--max-array-size", str(max_array_size), *extra)
            self.max_array_size, self.max_job_count = max_array_size, max_job_count
        return self

    def stop(self) -> None:
        self._script("stop", timeout=120)
        self.max_array_size = self.max_job_count = None

    def __call__(
        self, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE, max_job_count: int | None = None
    ) -> SlurmCluster:
        """Make these the cluster's MaxArraySize and MaxJobCount (a ~3 s slurmctld restart if they
        change) and return the cluster. Used as a context manager, the previous values come back
        on exit: ``with slurm_cluster(max_array_size=1001) as cluster: ...``."""
        self._restore.append((self.max_array_size or DEFAULT_MAX_ARRAY_SIZE, self.max_job_count))
        return self.start(max_array_size, max_job_count)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._restore:
            self.start(*self._restore.pop())

    # -- helpers -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """os.environ with this cluster's SLURM_CONF."""
        return {**os.environ, "SLURM_CONF": str(self.conf_path)}

    def run(
        self, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 60, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster (a string is split with shlex) and
        return the CompletedProcess with text stdout/stderr. Raises SlurmCommandError (with the
        output in its message) on a non-zero exit unless ``check=False``."""
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(
            args, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False, **kwargs
        )
        if check and proc.returncode != 0:
            raise SlurmCommandError(proc.returncode, args, proc.stdout, proc.stderr)
        return proc

    def sacct_states(self, job_id: str | int) -> dict[str, str]:
        """``{JobID: State}`` of a job's allocations (array tasks appear as ``<id>_<index>``;
        steps such as ``.batch`` are left out), from ``sacct -X``."""
        out = self.run(["sacct", "-X", "-n", "--parsable2", "-j", str(job_id), "-o", "JobID,State"]).stdout
        states = {}
        for line in out.splitlines():
            if line.strip():
                jid, state = line.split("|", 1)
                states[jid] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        return states

    def wait_sacct(
        self, job_id: str | int, count: int, states: Sequence[str] = ("COMPLETED",), timeout: float = 30
    ) -> dict[str, str]:
        """Wait until sacct lists ``count`` allocations of ``job_id``, all in ``states`` (the end
        record reaches slurmdbd a moment after the job ends); return them, or fail with the last
        ones seen."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.sacct_states(job_id)
            if len(found) == count and all(s in states for s in found.values()):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"sacct for job {job_id} after {timeout}s: {found}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the daemons' logs, for assertion messages."""
        parts = []
        for log in sorted((self.dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log} -----\n" + "\n".join(text))
        return "\n".join(parts)


def unavailable_reason() -> str | None:
    """Why a cluster cannot run on this machine, or None."""
    if not sys.platform.startswith("linux"):
        return "the Slurm test cluster needs Linux"
    if os.geteuid() != 0:
        return "the Slurm test cluster must run as root (scripts/slurm-cluster.sh)"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if missing:
        return f"Slurm test cluster: missing {', '.join(missing)}; install with: {APT_INSTALL}"
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    return None


def _port_base() -> int:
    """Ports for this session: PLSWEEP_SLURM_PORT_BASE (or the default), shifted per pytest-xdist
    worker so that parallel sessions each get their own cluster."""
    base = int(os.environ.get("PLSWEEP_SLURM_PORT_BASE", DEFAULT_PORT_BASE))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    if worker.startswith("gw") and worker[2:].isdigit():
        base += 10 * int(worker[2:])
    return base


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The session's one-node Slurm cluster (MaxArraySize=10; see the module docstring)."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), port_base=_port_base())
    error = None
    try:
        cluster.start(DEFAULT_MAX_ARRAY_SIZE)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        error = str(exc)
        with contextlib.suppress(Exception):
            cluster.stop()
    if error is not None:
        pytest.fail(f"could not start the Slurm test cluster: {error}", pytrace=False)

    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf_path)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()
