"""launch/slurm.py: the checks that need no cluster, then real jobs on a local Slurm cluster (tests/slurm).

The launcher always runs as a subprocess, as a user would run it. On the cluster: array sharding
against a single sharding run, a 2-node x 2-task training run, and the same run interrupted every way a
cluster does it, each of which must end COMPLETED with the same step and the same parameters: USR2
twice (as Slurm sends before a time limit), a preemption by a job of a higher-priority partition
(SIGTERM, grace time), a rank killed by SIGKILL. A cancelled job is not requeued and continues on
fewer nodes; GPU partitions get one task per GPU by default; the demo runs on 8 nodes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shards.__main__ import main as shards_main

if TYPE_CHECKING:
    from tests.slurm.cluster import SlurmCluster

# the session fixture `slurm_cluster`
pytest_plugins = ["tests.slurm.cluster"]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch" / "slurm.py"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
JOB_TIMEOUT_S = 240
# Training small enough for 4 ranks on 2 cores, long enough to be interrupted twice in the middle; a
# metrics row every step shows how far it got.
TRAIN_STEPS = 30
TINY_TRAINING = [
    f"max_steps={TRAIN_STEPS}",
    "data.batch_size=1",
    "data.workers=0",
    "log.every_steps=1",
    "checkpoint.every_steps=1000",
    "eval.every_epochs=0",
]
# a sharding submission of raw/ (which the test creates) into out/, relative to the launcher's folder
SHARD_ARGS = ("shard", "ssv2", "--root", "raw", "--out", "out", "--array", "2", "--split", "train")
TRAIN_RESOURCES = ["--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "2", "--time", "60"]


def launch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run launch/slurm.py with `args` in `cwd`, output captured."""
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a launcher run that must have failed with status 2."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    return lines[0]


def submitted_id(proc: subprocess.CompletedProcess[str], kind: str = "job") -> str:
    """The job id a successful launcher run printed (`submitted job 12: ...`)."""
    assert proc.returncode == 0, proc.stderr
    match = re.search(rf"submitted {kind} (\d+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


@pytest.fixture(scope="module")
def demo_overrides(make_shards: Callable[..., Path]) -> list[str]:
    """Overrides that point the demo config at shards made for this session."""
    train = make_shards("ssv2", "train", num_videos=32, classes=4)  # one clip for each of 32 ranks
    val = make_shards("ssv2", "validation", num_videos=16, classes=4)
    return [f"data.train=[{train}]", f"data.val=[{val}]", *TINY_TRAINING]


# ---------------------------------------------------------------- no cluster needed


# launcher option, its value, and the line it must put in the sbatch script
DRY_RUN_OPTIONS = [
    ("--nodes", "2", "--nodes=2"),
    ("--tasks-per-node", "2", "--ntasks-per-node=2"),
    ("--cpus-per-task", "3", "--cpus-per-task=3"),
    ("--partition", "batch", "--partition=batch"),
    ("--account", "vision", "--account=vision"),
    ("--qos", "high", "--qos=high"),
    ("--time", "90", "--time=90"),
    ("--mem", "8G", "--mem=8G"),
    ("--constraint", "fast", "--constraint=fast"),
    ("--exclude", "node9", "--exclude=node9"),
    ("--signal-delay", "45", "--signal=USR2@45"),
]


@pytest.mark.slow
def test_dry_run_prints_the_sbatch_script(tmp_path: Path, demo_overrides: list[str]) -> None:
    options = [word for option, value, _ in DRY_RUN_OPTIONS for word in (option, value)]
    jobs = tmp_path / "jobs"
    proc = launch(
        "--dry-run", *options, "--job-dir", str(jobs), "--config", str(DEMO_CONFIG), "name=dry",
        *demo_overrides, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for flag in [line for _, _, line in DRY_RUN_OPTIONS] + ["--job-name=dry"]:
        assert f"#SBATCH {flag}\n" in script, flag
    assert "--gpus-per-node" not in script
    assert f"-m submitit.core._submit {jobs}" in script
    # the batch script requeues an unfinished run itself (see test_preempted_by_a_higher_priority_job...)
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script
    assert "trap 'cancelled=1' TERM" in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert not jobs.exists() and not (tmp_path / "runs").exists()


def test_gpus_are_read_from_every_gres_form_sinfo_prints() -> None:
    from launch.slurm import gres_gpus

    forms = ("gpu:8", "gpu:a100:4(S:0-1)", "gpu:2,shard:4", "(null)", "")
    assert [gres_gpus(gres) for gres in forms] == [8, 4, 2, 0, 0]


@pytest.mark.slow
def test_dry_run_with_gpus_runs_one_task_per_gpu(tmp_path: Path, demo_overrides: list[str]) -> None:
    gpus = ["--nodes", "4", "--gpus-per-node", "8"]
    proc = launch("--dry-run", *gpus, "--config", str(DEMO_CONFIG), *demo_overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=8"):
        assert f"#SBATCH {flag}\n" in proc.stdout, flag
    # the default submitit folder is under runs/, next to the run it belongs to
    assert f"--output={tmp_path}/runs/" in proc.stdout


def test_dry_run_of_array_sharding_shows_the_array_and_the_dependent_merge(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    proc = launch("shard", "ssv2", "--root", "raw", "--out", "out", "--array", "6", "--split", "train",
                  "--dry-run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    array_script, merge_script = proc.stdout.split("#!/bin/bash")[1:]
    assert "#SBATCH --array=0-5%6\n" in array_script
    assert "#SBATCH --dependency='afterok:<array job id>'\n" in merge_script
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in merge_script


@pytest.mark.slow
def test_config_error_is_one_line(tmp_path: Path, demo_overrides: list[str]) -> None:
    proc = launch("--config", str(DEMO_CONFIG), *demo_overrides, "optim.lrr=0.1", cwd=tmp_path)
    assert "optim.lrr" in one_error_line(proc)
    assert not (tmp_path / "runs").exists()


def test_no_slurm_on_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    proc = launch(*SHARD_ARGS, cwd=tmp_path, env=env)
    assert "no Slurm found" in one_error_line(proc)


@pytest.mark.slow
def test_bad_resource_options_are_one_line(tmp_path: Path, demo_overrides: list[str]) -> None:
    gpus = ["--gpus-per-node", "4", "--tasks-per-node", "2"]
    proc = launch(*gpus, "--config", str(DEMO_CONFIG), *demo_overrides, cwd=tmp_path)
    assert "--tasks-per-node" in one_error_line(proc)
    proc = launch(
        "--time", "1", "--signal-delay", "90", "--config", str(DEMO_CONFIG), *demo_overrides, cwd=tmp_path
    )
    assert "--signal-delay" in one_error_line(proc)
    proc = launch("--nodes", "two", "--config", str(DEMO_CONFIG), cwd=tmp_path)
    assert "argument --nodes: invalid int value: 'two'" in one_error_line(proc)


# ---------------------------------------------------------------- on the test cluster


@pytest.mark.slurm
def test_unreachable_controller_and_missing_config_are_one_line(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    (tmp_path / "raw").mkdir()
    conf = Path(slurm_cluster.env["SLURM_CONF"]).read_text()
    # a controller port nothing listens on: the client is installed, the controller is not reachable
    dead = re.sub(r"(?m)^SlurmctldPort=\d+$", "SlurmctldPort=1", conf)
    (tmp_path / "dead.conf").write_text(dead)
    env = {**slurm_cluster.env, "SLURM_CONF": str(tmp_path / "dead.conf")}
    assert "controller is not reachable" in one_error_line(launch(*SHARD_ARGS, cwd=tmp_path, env=env))
    env = {**slurm_cluster.env, "SLURM_CONF": str(tmp_path / "none.conf")}
    proc = launch(*SHARD_ARGS, cwd=tmp_path, env=env)
    assert "none.conf" in one_error_line(proc)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slurm
def test_invalid_partition_is_one_line(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    proc = launch(*SHARD_ARGS, "--partition", "nosuch", cwd=tmp_path, env=slurm_cluster.env)
    line = one_error_line(proc)
    assert "invalid partition 'nosuch'" in line and "debug" in line
    # an option Slurm itself rejects at submission is one line too
    proc = launch(*SHARD_ARGS, "--constraint", "nosuchfeature", cwd=tmp_path, env=slurm_cluster.env)
    assert "Invalid feature specification" in one_error_line(proc)
    assert slurm_cluster.run("squeue", "--noheader").stdout.strip() == ""


def shard_samples(folder: Path) -> list[tuple[str, bytes]]:
    """Every member (name, bytes) of every shard, in manifest order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    members = []
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return members


@pytest.mark.slurm
def test_array_sharding_gives_the_samples_of_a_single_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    raw, single, merged = tmp_path / "raw", tmp_path / "single", tmp_path / "merged"
    assert shards_main(["synth", "ssv2", "--out", str(raw), "--num-videos", "14", "--classes", "3"]) == 0
    options = ["--split", "train", "--max-samples", "2", "--shuffle-seed", "3"]
    assert shards_main(["ssv2", "--root", str(raw), "--out", str(single), *options]) == 0
    proc = launch(
        "shard", "ssv2", "--root", str(raw), "--out", str(merged), "--array", "4", *options, "--time", "10",
        cwd=tmp_path, env=slurm_cluster.env,
    )  # fmt: skip
    array_id, merge_id = submitted_id(proc, "array job"), submitted_id(proc, "merge job")
    states = slurm_cluster.wait_final([array_id, merge_id], JOB_TIMEOUT_S, tasks={array_id: 4})
    assert states == {array_id: ["COMPLETED"] * 4, merge_id: ["COMPLETED"]}
    assert len(list(merged.glob("manifest-p*-of-004.json"))) == 4
    expected, got = shard_samples(single), shard_samples(merged)
    before, after = (json.loads((d / "manifest.json").read_text()) for d in (single, merged))
    assert before["total"] > 8 and len(expected) == 4 * before["total"]  # .webm, .json, .cls, .sha256 each
    assert got == expected
    for key in ("total", "label_map", "rejects", "missing"):
        assert after[key] == before[key], key
    assert shards_main(["verify", str(merged)]) == 0


@dataclass
class SlurmRun:
    """A training job submitted through the launcher: its id, run folder and submitit folder."""

    job_id: str
    run_dir: Path
    job_dir: Path
    launcher_output: str

    def log(self, task: int, stream: str = "out") -> str:
        """Task `task`'s log so far (all starts of the job append to the same file)."""
        path = self.job_dir / f"{self.job_id}_{task}_log.{stream}"
        return path.read_text() if path.exists() else ""

    def last_step(self) -> int:
        """The last optimizer step rank 0 logged to metrics.jsonl (0 before the first)."""
        path = self.run_dir / "metrics.jsonl"
        rows = path.read_text().splitlines() if path.exists() else []
        return json.loads(rows[-1])["step"] if rows else 0

    def results(self) -> list[object]:
        """What every task's `TrainTask` returned (read from submitit's result files)."""
        import submitit

        return submitit.SlurmJob(folder=self.job_dir, job_id=self.job_id, tasks=(0, 1, 2, 3)).results()


def submit_training(
    cluster: SlurmCluster, cwd: Path, name: str, overrides: list[str], options: tuple[str, ...] = ()
) -> SlurmRun:
    """Submit the demo config as 2 nodes x 2 CPU tasks through the launcher."""
    out_dir = cwd / "runs"
    proc = launch(
        *TRAIN_RESOURCES,
        *options,
        "--config",
        str(DEMO_CONFIG),
        f"name={name}",
        f"out_dir={out_dir}",
        *overrides,
        cwd=cwd,
        env=cluster.env,
    )
    return SlurmRun(submitted_id(proc), out_dir / name, out_dir / name / "slurm", proc.stdout)


def step_reached(run: SlurmRun, step: int) -> Callable[[], bool]:
    """A condition: rank 0 has logged optimizer step `step` (or a later one)."""
    return lambda: run.last_step() >= step


def rank0_logged(run: SlurmRun, text: str) -> Callable[[], bool]:
    """A condition: rank 0's stdout log contains `text`."""
    return lambda: text in run.log(0)


def wait_until(cluster: SlurmCluster, run: SlurmRun, what: str, done: Callable[[], bool]) -> None:
    """Poll `done` until true; fail with rank 0's log tail on timeout or when the job ended first."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not done():
        ended = cluster.job_ended(run.job_id)
        if ended or time.monotonic() > deadline:
            states = cluster.job_states(run.job_id)
            pytest.fail(
                f"job {run.job_id} {'ended' if ended else 'timed out'} ({states}) before {what}; "
                f"rank 0 log:\n{run.log(0, 'err')[-3000:]}"
            )
        time.sleep(0.2)


def exported_weights(run_dir: Path) -> dict[str, object]:
    """The consolidated fp32 weights of the run's latest checkpoint."""
    import torch

    from pipeline.export import export_checkpoint

    return torch.load(export_checkpoint(run_dir), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted_run(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path_factory: pytest.TempPathFactory
) -> SlurmRun:
    """The demo config trained to the end on 2 nodes x 2 tasks, without interruption."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run = submit_training(slurm_cluster, cwd, "reference", demo_overrides)
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["COMPLETED"], run.log(0, "err")[-3000:]
    return run


@pytest.mark.slurm
def test_two_nodes_train_as_four_ranks_to_the_end(uninterrupted_run: SlurmRun) -> None:
    run = uninterrupted_run
    assert f"logs: {run.job_dir}/{run.job_id}_{{0..3}}_log.out" in run.launcher_output
    assert f"tensorboard --logdir {run.run_dir / 'tensorboard'}" in run.launcher_output
    for rank in range(4):
        line = f"[slurm] job {run.job_id} restart 0: rank {rank} of world size 4 (node {rank // 2} of 2,"
        assert line in run.log(rank), run.log(rank)[-2000:]
    results = run.results()
    assert [(r.step, r.stopped_by_signal) for r in results] == [(TRAIN_STEPS, False)] * 4
    assert (run.run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{TRAIN_STEPS:08d}"


@pytest.mark.slurm
def test_preempted_twice_resumes_to_the_same_parameters(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], uninterrupted_run: SlurmRun, tmp_path: Path
) -> None:
    import torch

    run = submit_training(slurm_cluster, tmp_path, "preempted", demo_overrides)
    stopped_at = [0]
    for restart in (1, 2):
        # USR2 in the middle of training, as Slurm sends it before a time limit or a preemption
        wait_until(slurm_cluster, run, f"step {stopped_at[-1] + 3}", step_reached(run, stopped_at[-1] + 3))
        assert slurm_cluster.run("scancel", "--signal=USR2", run.job_id).returncode == 0
        started_again = f"[slurm] job {run.job_id} restart {restart}: rank 0"
        wait_until(slurm_cluster, run, f"restart {restart}", rank0_logged(run, started_again))
        stops = re.findall(r"stopped by SIGUSR2 at step (\d+) after saving", run.log(0, "err"))
        assert len(stops) == restart, run.log(0, "err")[-3000:]
        stopped_at.append(int(stops[-1]))
        assert f"[slurm] requeueing: restart {restart} of at most 5" in run.log(0)
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["COMPLETED"], run.log(0, "err")[-3000:]
    assert 0 < stopped_at[1] < stopped_at[2] < TRAIN_STEPS
    history = slurm_cluster.run(
        "sacct", "--jobs", run.job_id, "--duplicates", "--allocations", "--noheader", "--format=State"
    ).stdout.split()
    assert history == ["REQUEUED", "REQUEUED", "COMPLETED"]
    for step in stopped_at[1:]:
        assert f"resuming {run.run_dir}/checkpoints/step_{step:08d}" in run.log(0, "err")
    results = run.results()
    assert [(r.step, r.stopped_by_signal) for r in results] == [(TRAIN_STEPS, False)] * 4
    expected, got = exported_weights(uninterrupted_run.run_dir), exported_weights(run.run_dir)
    assert expected.keys() == got.keys() and len(got) > 10
    different = [name for name in got if not torch.equal(got[name], expected[name])]
    assert not different, f"parameters differ from the uninterrupted run: {different[:5]}"


@pytest.mark.slurm
def test_no_requeue_beyond_max_requeue(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path: Path
) -> None:
    run = submit_training(slurm_cluster, tmp_path, "bounded", demo_overrides, ("--max-requeue", "0"))
    wait_until(slurm_cluster, run, "step 3", step_reached(run, 3))
    assert slurm_cluster.run("scancel", "--signal=USR2", run.job_id).returncode == 0
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["FAILED"]
    assert "[slurm] not requeueing: 0 restarts already (--max-requeue 0)" in run.log(0)
    # the ranks still saved where they stopped, so a later resubmission continues from there
    stops = re.findall(r"stopped by SIGUSR2 at step (\d+) after saving", run.log(0, "err"))
    assert len(stops) == 1 and 3 <= int(stops[0]) < TRAIN_STEPS
    assert (run.run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{int(stops[0]):08d}"


def sacct_history(cluster: SlurmCluster, job_id: str) -> list[str]:
    """Every start of `job_id` as sacct recorded it (REQUEUED for each requeue), oldest first."""
    out = cluster.run(
        "sacct", "--jobs", job_id, "--duplicates", "--allocations", "--noheader", "--format=State"
    )
    return out.stdout.split()


def assert_same_parameters(run: SlurmRun, reference: SlurmRun) -> None:
    """The run's final exported weights equal the uninterrupted reference's, bit for bit."""
    import torch

    expected, got = exported_weights(reference.run_dir), exported_weights(run.run_dir)
    assert expected.keys() == got.keys() and len(got) > 10
    different = [name for name in got if not torch.equal(got[name], expected[name])]
    assert not different, f"parameters differ from the uninterrupted run: {different[:5]}"


def rank_pid(run: SlurmRun, rank: int) -> int:
    """The process id rank `rank` printed in its start line (all emulated nodes are this machine)."""
    return int(re.findall(r"restart \d+: rank \d+ .*, pid (\d+)", run.log(rank))[-1])


@pytest.mark.slurm
def test_preempted_by_a_higher_priority_job_requeues_and_resumes_to_the_same_parameters(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], uninterrupted_run: SlurmRun, tmp_path: Path
) -> None:
    run = submit_training(slurm_cluster, tmp_path, "preempted-by-priority", demo_overrides)
    wait_until(slurm_cluster, run, "step 3", step_reached(run, 3))
    nodes = slurm_cluster.run("squeue", "--jobs", run.job_id, "--noheader", "--format=%N").stdout.strip()
    # A job of the higher-priority partition that needs exactly those nodes, whole.
    urgent = slurm_cluster.run(
        "sbatch", "--parsable", "--partition=urgent", "--exclusive", f"--nodelist={nodes}", "--nodes=2",
        f"--output={tmp_path}/urgent.out", "--wrap", "echo urgent ran on $SLURM_JOB_NODELIST; sleep 2",
    )  # fmt: skip
    assert urgent.returncode == 0, urgent.stderr
    urgent_id = urgent.stdout.strip()
    requeued_at = None
    while requeued_at is None:  # restart overhead: requeue (sacct) -> first new step logged
        if "REQUEUED" in sacct_history(slurm_cluster, run.job_id):
            requeued_at = time.monotonic()
        assert not slurm_cluster.job_ended(run.job_id), run.log(0, "err")[-3000:]
        time.sleep(0.2)
    stops = re.findall(r"stopped by SIGTERM at step (\d+) after saving", run.log(0, "err"))
    assert len(stops) == 1, run.log(0, "err")[-3000:]
    stopped = int(stops[0])
    wait_until(slurm_cluster, run, f"step {stopped + 1}", step_reached(run, stopped + 1))
    print(f"preemption: requeued -> first step after restart in {time.monotonic() - requeued_at:.1f} s")
    states = slurm_cluster.wait_final([run.job_id, urgent_id], JOB_TIMEOUT_S)
    assert states == {run.job_id: ["COMPLETED"], urgent_id: ["COMPLETED"]}, run.log(0, "err")[-3000:]
    assert sacct_history(slurm_cluster, run.job_id) == ["REQUEUED", "COMPLETED"]
    assert "[slurm] requeueing: restart 1 of at most 5" in run.log(0)
    assert f"resuming {run.run_dir}/checkpoints/step_{stopped:08d}" in run.log(0, "err")
    assert (tmp_path / "urgent.out").read_text().startswith("urgent ran on")
    assert [(r.step, r.stopped_by_signal) for r in run.results()] == [(TRAIN_STEPS, False)] * 4
    assert_same_parameters(run, uninterrupted_run)


@pytest.mark.slurm
def test_a_rank_killed_ends_the_job_at_once_and_the_requeued_job_resumes(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], uninterrupted_run: SlurmRun, tmp_path: Path
) -> None:
    overrides = [*demo_overrides, "checkpoint.every_steps=5"]
    run = submit_training(slurm_cluster, tmp_path, "killed-rank", overrides)
    wait_until(slurm_cluster, run, "step 7", step_reached(run, 7))
    os.kill(rank_pid(run, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    while "REQUEUED" not in sacct_history(slurm_cluster, run.job_id):
        assert time.monotonic() - killed_at < 60, run.log(0, "err")[-3000:]
        time.sleep(0.2)
    print(f"rank killed -> job ended and requeued in {time.monotonic() - killed_at:.1f} s")
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["COMPLETED"], run.log(0, "err")[-3000:]
    assert re.search(r"srun: error: node\d: task 1: Killed", run.log(0, "err")), run.log(0, "err")[-3000:]
    assert "[slurm] requeueing: restart 1 of at most 5" in run.log(0)
    resumed = re.findall(r"resuming \S+/checkpoints/step_(\d+)", run.log(0, "err"))
    assert len(resumed) == 1 and int(resumed[0]) in (5, 10), run.log(0, "err")[-3000:]
    assert [(r.step, r.stopped_by_signal) for r in run.results()] == [(TRAIN_STEPS, False)] * 4
    assert_same_parameters(run, uninterrupted_run)


@pytest.mark.slurm
def test_a_cancelled_job_is_not_requeued_and_the_run_continues_on_fewer_nodes(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path: Path
) -> None:
    run = submit_training(slurm_cluster, tmp_path, "fewer-nodes", demo_overrides)
    wait_until(slurm_cluster, run, "step 3", step_reached(run, 3))
    assert slurm_cluster.run("scancel", run.job_id).returncode == 0
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["CANCELLED"]
    time.sleep(5)  # a requeue by the batch script would show by now (Slurm kills it after KillWait)
    history = sacct_history(slurm_cluster, run.job_id)
    assert [state.rstrip("+") for state in history] == ["CANCELLED"], run.log(0)[-3000:]  # + : cut short
    saved = int((run.run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 3 <= saved < TRAIN_STEPS
    # the same command on one node: 2 ranks continue what 4 saved, with its global batch
    again = submit_training(slurm_cluster, tmp_path, "fewer-nodes", demo_overrides, ("--nodes", "1"))
    states = slurm_cluster.wait_final([again.job_id], JOB_TIMEOUT_S)
    assert states[again.job_id] == ["COMPLETED"], again.log(0, "err")[-3000:]
    elastic = f"step_{saved:08d} saved by 4 ranks, on 2 ranks: 1 rows per rank x 2 accumulation steps"
    assert elastic in again.log(0, "err")
    final = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["step"] == TRAIN_STEPS


@pytest.mark.slurm
def test_gpu_nodes_get_one_task_per_gpu_by_default(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path: Path
) -> None:
    def script(*options: str) -> str:
        proc = launch("--dry-run", *options, "--config", str(DEMO_CONFIG), *demo_overrides, cwd=tmp_path,
                      env=slurm_cluster.env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    gpu = script("--nodes", "2", "--partition", "gpu")  # gpu1, gpu2: 2 fake GPUs and 4 CPUs each
    for flag in ("--nodes=2", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=2"):
        assert f"#SBATCH {flag}\n" in gpu, flag
    cpu = script("--nodes", "8")  # the default partition: CPU nodes
    assert "#SBATCH --ntasks-per-node=1\n" in cpu and "gpus" not in cpu
    explicit = script("--nodes", "2", "--partition", "gpu", "--gpus-per-node", "0")
    assert "#SBATCH --gpus-per-node" not in explicit


@pytest.mark.slurm
def test_the_demo_on_eight_nodes_runs_to_completed(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path: Path
) -> None:
    proc = launch(
        "--nodes", "8", "--time", "60", "--config", str(DEMO_CONFIG), "name=eight", f"out_dir={tmp_path}",
        *demo_overrides, "max_steps=4", cwd=tmp_path, env=slurm_cluster.env,
    )  # fmt: skip
    job_id = submitted_id(proc)
    assert "8 tasks on 8 node(s) (1 CPU tasks each)" in proc.stdout
    states = slurm_cluster.wait_final([job_id], JOB_TIMEOUT_S)
    log = (tmp_path / "eight" / "slurm" / f"{job_id}_0_log.err").read_text()
    assert states[job_id] == ["COMPLETED"], log[-3000:]
    assert json.loads((tmp_path / "eight" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


@pytest.mark.slurm
def test_diverged_training_ends_failed_with_one_line_and_is_not_requeued(
    slurm_cluster: SlurmCluster, demo_overrides: list[str], tmp_path: Path
) -> None:
    run = submit_training(slurm_cluster, tmp_path, "diverged", [*demo_overrides, "optim.lr=1e30"])
    states = slurm_cluster.wait_final([run.job_id], JOB_TIMEOUT_S)
    assert states[run.job_id] == ["FAILED"], run.log(0, "err")[-3000:]
    assert sacct_history(slurm_cluster, run.job_id) == ["FAILED"]  # never requeued
    reason = re.findall(r"\[slurm\] not requeueing: (training diverged at step \d+.*)", run.log(0))
    assert len(reason) == 1, run.log(0)[-3000:]
    assert f"error: {reason[0]}" in run.log(0, "err")
