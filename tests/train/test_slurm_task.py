"""A Slurm training task's ending, run for real outside a cluster: the task reads the variables srun
sets for one task (set here), trains the demo on small shards, and its exit status and no-requeue
marker tell the batch script what to do (`pipeline.errors.OUTCOMES`). The batch script's side runs on
the local Slurm cluster (tests/launch/test_slurm.py)."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.slurm_task import master_port, no_requeue_marker
from pipeline.errors import OUTCOMES, DivergenceError, Interrupted
from pipeline.train.checkpoint import is_complete, tag_for_step
from tests.train.conftest import DEMO_CONFIG, REPO, job_env, job_overrides

pytestmark = pytest.mark.slow


def free_job_id() -> str:
    """A job id whose rendezvous port nothing listens on now."""
    for _ in range(100):
        job_id = random.randrange(9000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", master_port(job_id)))
            except OSError:
                continue
        return str(job_id)
    raise AssertionError("no free rendezvous port")


def start_task(job_dir: Path, job_id: str, overrides: list[str]) -> subprocess.Popen:
    """Run one `TrainTask` (rank 0 of 1) as srun would start it, its job folder `job_dir`."""
    job_dir.mkdir(parents=True, exist_ok=True)  # submitit's folder of the job's logs
    env = job_env()
    env.pop("SLURM_RESTART_COUNT", None)
    env.update(
        SUBMITIT_EXECUTOR="slurm",
        SUBMITIT_FOLDER=str(job_dir),
        SLURM_JOB_ID=job_id,
        SLURM_NTASKS="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_JOB_NODELIST="localhost",
    )
    code = "import sys; from launch.slurm_task import TrainTask; TrainTask(sys.argv[1], sys.argv[2:])()"
    command = [sys.executable, "-c", code, str(DEMO_CONFIG), *overrides]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def last_logged_step(run_dir: Path) -> int:
    """The newest step in the run's metrics (0 before the first)."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


def test_a_diverged_task_exits_with_the_divergence_status_and_leaves_its_line_as_the_no_requeue_marker(
    small_shards, tmp_path: Path
) -> None:
    job_id = free_job_id()
    task = start_task(
        tmp_path / "jobs", job_id, job_overrides(small_shards, tmp_path, "run", "optim.lr=1e30")
    )
    _, stderr = task.communicate(timeout=300)
    assert task.returncode == OUTCOMES[DivergenceError].exit_status == 3, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged at step" in errors[0], stderr[-3000:]
    marker = no_requeue_marker(tmp_path / "jobs", job_id)
    assert marker.read_text() == errors[0].removeprefix("error: ") + "\n"


def test_a_task_stopped_by_usr2_saves_and_exits_to_be_requeued_without_a_marker(
    small_shards, tmp_path: Path
) -> None:
    job_id, run_dir = free_job_id(), tmp_path / "run"
    task = start_task(
        tmp_path / "jobs", job_id, job_overrides(small_shards, tmp_path, "run", "log.every_steps=1")
    )
    deadline = time.monotonic() + 240
    while last_logged_step(run_dir) < 2:
        assert task.poll() is None and time.monotonic() < deadline, task.communicate()[1][-3000:]
        time.sleep(0.05)
    task.send_signal(signal.SIGUSR2)  # Slurm's warning before the time limit
    _, stderr = task.communicate(timeout=120)
    assert task.returncode == OUTCOMES[Interrupted].exit_status == 75, stderr[-3000:]
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped: rank 0 saved step ")]
    assert len(stopped) == 1 and "on SIGUSR2" in stopped[0], stderr[-3000:]
    step = int(stopped[0].split("saved step ")[1].split()[0])
    assert is_complete(run_dir / "checkpoints" / tag_for_step(step))
    assert not no_requeue_marker(tmp_path / "jobs", job_id).exists()
    assert not [line for line in stderr.splitlines() if line.startswith("error:")]
