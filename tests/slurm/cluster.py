"""A real Slurm cluster for the launcher tests, on the machine the tests run on.

`slurm_cluster` (a session fixture) starts it once with `slurm-up.sh` next to this file: Debian's
slurmctld, one slurmd per emulated node, a private munged, and MariaDB + slurmdbd so that sacct (and
with it submitit) sees how jobs ended. It yields a `SlurmCluster` whose `env` points clients at it, and
stops everything with `slurm-down.sh` at the end of the session. Missing packages are installed with
apt; the tests skip (with the reason) only where that cannot work: not root, or no apt-get.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODES = 8  # CPU nodes node1..node8 (partitions debug and urgent): the demo runs on all 8
GPU_NODES, GPUS_PER_NODE = 2, 2  # nodes gpu1, gpu2 with fake GPUs (partition gpu)
CPUS_PER_NODE = 4  # declared, not real: config_overrides lets many nodes share a 2-core machine
GRACE_S = 30  # GraceTime of a preempted job in partition debug
UP_TIMEOUT_S = 900  # the first start installs packages
# sacct states after which a job will not run again (REQUEUED, PENDING, RUNNING are not among them).
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
)
REQUIRED_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd", "mariadbd")


@dataclass
class SlurmCluster:
    """A running test cluster: `env` is this process's environment plus SLURM_CONF pointing at it."""

    directory: Path
    env: dict[str, str]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster; output captured as text."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def job_states(self, job_id: str) -> list[str]:
        """The sacct state of `job_id`, one per array task; first word only ('CANCELLED by 0')."""
        out = self.run(
            "sacct", "--jobs", job_id, "--allocations", "--noheader", "--parsable2", "--format=State"
        )
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def job_ended(self, job_id: str, tasks: int = 1) -> bool:
        """Whether all `tasks` tasks of `job_id` are recorded in a final state (a requeued job is not).

        Accounting is asynchronous: the tasks of an array reach sacct one by one, so count them.
        """
        states = self.job_states(job_id)
        return len(states) >= tasks and all(state in FINAL_STATES for state in states)

    def wait_final(
        self, job_ids: Sequence[str], timeout_s: float, tasks: dict[str, int] | None = None
    ) -> dict[str, list[str]]:
        """Wait until every job in `job_ids` (with `tasks[job]` array tasks, default 1) has a final state;
        returns the states (fails the test on timeout)."""
        tasks = tasks or {}
        deadline = time.monotonic() + timeout_s
        while True:
            if all(self.job_ended(job_id, tasks.get(job_id, 1)) for job_id in job_ids):
                return {job_id: self.job_states(job_id) for job_id in job_ids}
            if time.monotonic() > deadline:
                states = {job_id: self.job_states(job_id) for job_id in job_ids}
                queue = self.run("squeue", "--all", "--format=%i %T %r %N").stdout
                pytest.fail(f"jobs {list(job_ids)} not finished after {timeout_s:.0f} s: {states}\n{queue}")
            time.sleep(0.5)


def skip_reason() -> str | None:
    """Why no cluster can be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the Slurm daemons of the test cluster must run as root"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing and shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get to install it"
    return None


def free_port_base(nodes: int, candidates: Sequence[int] = range(16817, 30000, 397)) -> int:
    """A port base for slurm-up.sh whose ports (ctld, dbd, MariaDB, one per node) are all free."""
    for base in candidates:
        ports = [base, base + 2, base + 3] + [base + 10 + i for i in range(1, nodes + 1)]
        if all(_port_is_free(port) for port in ports):
            return base
    raise RuntimeError("no free port range for the test cluster")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the test cluster once per session and stop it afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's temporary folder: munged refuses a socket below a folder others cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    setup_env = {
        **os.environ,
        "SLURM_TEST_DIR": str(directory),
        "SLURM_TEST_NODES": str(NODES),
        "SLURM_TEST_GPU_NODES": str(GPU_NODES),
        "SLURM_TEST_GPUS": str(GPUS_PER_NODE),
        "SLURM_TEST_GRACE": str(GRACE_S),
        "SLURM_TEST_CPUS": str(CPUS_PER_NODE),
        "SLURM_TEST_PORT_BASE": str(free_port_base(NODES + GPU_NODES)),
        "SLURM_TEST_PURGE": "1",  # slurm-down.sh removes the folder
    }
    up = subprocess.run(
        ["bash", str(HERE / "slurm-up.sh")],
        env=setup_env,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
    )
    try:
        if up.returncode != 0:
            pytest.fail(f"slurm-up.sh failed (status {up.returncode}):\n{up.stderr[-4000:]}")
        env = {**os.environ, "SLURM_CONF": str(directory / "etc" / "slurm.conf")}
        yield SlurmCluster(directory=directory, env=env)
    finally:
        subprocess.run(["bash", str(HERE / "slurm-down.sh")], env=setup_env, capture_output=True, timeout=300)
