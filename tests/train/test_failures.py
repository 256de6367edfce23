"""Dead processes on one machine: a rank killed by SIGKILL, the launcher killed, two jobs on one run.

Each ends in one line and a bounded stop, and the same command then resumes the run to its end.
Real processes: launch/local.py, its ranks, DeepSpeed over gloo.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.train.checkpoint import find_resume_checkpoint, read_trainer_state
from tests.train.conftest import job_overrides, start_job
from tests.train.test_resume import wait_for_step

pytestmark = pytest.mark.slow
STEPS = 24  # 6 epochs of 4 steps


def overrides(shards: tuple[Path, Path], root: Path, name: str) -> list[str]:
    """A 24-step job that checkpoints every 3 steps and logs every step."""
    return job_overrides(
        shards, root, name, "optim.epochs=6", "checkpoint.every_steps=3", "log.every_steps=1"
    )


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the processes the launcher started."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(int(item.split(b"=", 1)[1]) for item in env if item.startswith(b"RANK="))
        ranks[rank] = pid
    return ranks


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every pid has ended (fails after `timeout`)."""
    started = time.monotonic()
    while any(alive(pid) for pid in pids):
        assert time.monotonic() - started < timeout, (
            f"processes still running: {[p for p in pids if alive(p)]}"
        )
        time.sleep(0.05)
    return time.monotonic() - started


def finish_run(run_job, job_overrides: list[str], run_dir: Path) -> str:
    """Run the same command again to the end; returns its stderr."""
    result = run_job(job_overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_trainer_state(find_resume_checkpoint(run_dir / "checkpoints", "auto")).step == STEPS
    return result.stderr


def test_a_rank_killed_ends_the_job_with_one_line_and_the_same_command_resumes(
    small_shards, tmp_path: Path, run_job
) -> None:
    same = overrides(small_shards, tmp_path, "killed-rank")
    run_dir, log = tmp_path / "killed-rank", tmp_path / "job.log"
    job = start_job(same, log)
    wait_for_step(job, run_dir, 7)
    ranks = rank_pids(job.pid)
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    assert job.wait(timeout=120) == 128 + signal.SIGKILL
    seconds = time.monotonic() - killed_at
    print(f"rank killed -> launcher exited in {seconds:.1f} s")
    assert seconds < 45  # the launcher's grace for the other ranks is 30 s
    assert not alive(ranks[0])
    lines = [line for line in log.read_text().splitlines() if line.startswith("[launch] rank")]
    where = f"pid {ranks[1]} on {os.uname().nodename}"
    assert lines == [f"[launch] rank 1 ({where}) killed by SIGKILL; stopping the other ranks"]
    saved = read_trainer_state(find_resume_checkpoint(run_dir / "checkpoints", "auto")).step
    assert saved >= 6
    assert f"resuming {run_dir}/checkpoints/step_{saved:08d}" in finish_run(run_job, same, run_dir)


def test_a_second_job_is_refused_and_a_killed_launcher_stops_its_ranks(
    small_shards, tmp_path: Path, run_job
) -> None:
    same = overrides(small_shards, tmp_path, "held")
    run_dir = tmp_path / "held"
    job = start_job(same, tmp_path / "job.log")
    wait_for_step(job, run_dir, 2)
    ranks = rank_pids(job.pid)

    # Frozen, the first job holds its lock however slowly the second one starts on a loaded machine.
    for pid in ranks.values():
        os.kill(pid, signal.SIGSTOP)
    second = run_job(same)
    for pid in ranks.values():
        os.kill(pid, signal.SIGCONT)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, second.stderr
    assert errors[0].startswith(f"error: run folder {run_dir} is in use by pid {ranks[0]} on ")

    job.kill()  # the launcher dies; the kernel sends its ranks SIGTERM: they save and stop
    job.wait()
    seconds = wait_gone(list(ranks.values()), timeout=120)
    print(f"launcher killed -> ranks stopped in {seconds:.1f} s")
    saved = read_trainer_state(find_resume_checkpoint(run_dir / "checkpoints", "auto")).step
    assert saved >= 2
    # the lock died with its holder: the same command resumes
    assert f"resuming {run_dir}/checkpoints/step_{saved:08d}" in finish_run(run_job, same, run_dir)
    assert (
        subprocess.run(["pgrep", "-f", f"name=held.*out_dir={tmp_path}"], capture_output=True).stdout == b""
    )
