"""What runs inside each Slurm task that `launch/slurm.py` submits.

submitit pickles the submitted objects by reference, so they live here, in an importable module, and
not in the launcher script. Nothing heavy is imported at module level: the launcher builds these
objects on the login node; torch and the trainer are imported inside the task only.

- `TrainTask`: one rank of a training run. It turns the Slurm environment into the torchrun-style
  variables the trainer reads and runs `pipeline.train.trainer.train`. Its exit status tells the batch
  script (see `launch/slurm.py: with_requeue_on_interruption`) what to do: 0 the run is finished,
  EXIT_REQUEUE it saved on a stop signal and must continue; an error whose kind is not requeued
  (`pipeline.errors.OUTCOMES`: a restart would meet it again) leaves a no-requeue marker with its line.
- `ShardCommandTask`: one `python -m shards ...` command (a part of a job array, or the merge).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import OUTCOMES, Interrupted, RunError, outcome, report
from pipeline.train import signals
from pipeline.train.config import load_train_config

# Ports for the rendezvous: one per job id, so that jobs sharing a node do not collide and a requeued
# job (same id) finds the same one. The range stays below torchrun's default 29500 and below Linux's
# ephemeral ports (32768 and up), which outgoing connections may hold at any moment.
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 9000
# Settings every requeued run needs whatever the user asked for the first start: continue from this
# run's own newest checkpoint, with its full state (optimizer moments, loader position).
REQUEUE_OVERRIDES = ("checkpoint.resume=auto", "checkpoint.weights_only=false")
EXIT_REQUEUE = OUTCOMES[Interrupted].exit_status  # saved on a stop signal, not finished


def no_requeue_marker(job_dir: Path | str, job_id: str) -> Path:
    """The file whose presence tells the batch script not to requeue job `job_id` (it holds the reason)."""
    return Path(job_dir) / f"{job_id}_no_requeue"


def master_port(job_id: int) -> int:
    """The rendezvous port of Slurm job `job_id`."""
    return MASTER_PORT_BASE + job_id % MASTER_PORT_SPAN


def restart_count() -> int:
    """How many times Slurm has requeued this job (0 on its first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def node_address(hostname: str) -> str:
    """An address other nodes can reach `hostname` at.

    Usually the name resolves; where it does not (nodes named only in slurm.conf, as on a test
    cluster where several nodes share one host), the node's NodeAddr from Slurm is used.
    """
    try:
        socket.getaddrinfo(hostname, None)
        return hostname
    except socket.gaierror:
        pass
    out = subprocess.run(
        ["scontrol", "show", "node", "--oneliner", hostname], capture_output=True, text=True, timeout=60
    )
    for item in out.stdout.split():
        if item.startswith("NodeAddr="):
            return item.split("=", 1)[1]
    raise RuntimeError(
        f"cannot find an address for node '{hostname}': it does not resolve and "
        f"`scontrol show node` gave none ({out.stderr.strip() or 'no output'})"
    )


def torch_distributed_env(job_env: Any) -> dict[str, str]:
    """The torchrun-style variables of this task, from a `submitit.JobEnvironment` under Slurm.

    The first host of the allocation is the master; ranks are Slurm's task ids.
    """
    hosts = job_env.hostnames
    world = job_env.num_tasks
    if world % job_env.num_nodes:
        raise RuntimeError(f"{world} Slurm tasks do not split evenly over {job_env.num_nodes} nodes")
    return {
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(world // job_env.num_nodes),
        "GROUP_RANK": str(job_env.node),
        "MASTER_ADDR": node_address(hosts[0]),
        "MASTER_PORT": str(master_port(int(job_env.raw_job_id))),
    }


@dataclass
class TrainTask:
    """One rank of a training run under Slurm; every task of the job runs the same object.

    `config` is an absolute path; `overrides` are `key=value` strings as on the command line.
    """

    config: str
    overrides: list[str] = field(default_factory=list)

    def __call__(self) -> Any:
        """Train from this run's newest checkpoint (or from scratch) until done or signalled."""
        import submitit

        from pipeline.train.engine import leaving_process_group

        # Ours before anything slow: submitit's own USR2 handler would requeue the job a second time.
        signals.install()
        job_env = submitit.JobEnvironment()
        try:
            with leaving_process_group():
                result = self._train(job_env)
            if result.stopped_by_signal:
                rank, step = job_env.global_rank, result.step
                raise Interrupted(f"rank {rank} saved step {step} on {result.signal}, to go on when requeued")
        except RunError as err:
            if not outcome(err).requeued:
                no_requeue_marker(job_env.paths.folder, job_env.job_id).write_text(f"{err}\n")
            # Leave without a result (submitit writes one only when this returns): the run is not
            # finished, and a result file from this start must not be mistaken for a requeued job's. The
            # status tells the batch script whether to requeue (a preempted job whose tasks exit 0 would
            # end COMPLETED).
            sys.exit(report(err))
        return result

    def _train(self, job_env: Any) -> Any:
        """Join the job's process group from Slurm's variables and train (the config as of this start)."""
        from pipeline.train.trainer import train

        dist_env = torch_distributed_env(job_env)
        os.environ.update(dist_env)
        rank, world = job_env.global_rank, job_env.num_tasks
        print(
            f"[slurm] job {job_env.job_id} restart {restart_count()}: rank {rank} of world size {world} "
            f"(node {job_env.node} of {job_env.num_nodes}, {socket.gethostname()}, local rank "
            f"{dist_env['LOCAL_RANK']} of {dist_env['LOCAL_WORLD_SIZE']}), master "
            f"{dist_env['MASTER_ADDR']}:{dist_env['MASTER_PORT']}, pid {os.getpid()}",
            flush=True,
        )
        overrides = self.overrides
        if restart_count():
            overrides = [
                o for o in overrides if not o.startswith(("checkpoint.resume=", "checkpoint.weights_only="))
            ]
            overrides += REQUEUE_OVERRIDES
        cfg = load_train_config(self.config, overrides, world_size=world)
        return train(cfg)


@dataclass
class ShardCommandTask:
    """Run `python -m shards <argv...>` (one part of a sharding array, or merge / verify) in a task.

    The command's output goes to the task's log; a non-zero exit fails the task, and with it any
    job that depends on it.
    """

    commands: Sequence[Sequence[str]]

    def __call__(self) -> None:
        """Run each command in turn, stopping at the first that fails."""
        for argv in self.commands:
            line = " ".join(["python -m shards", *argv])
            print(f"[slurm] {line}", flush=True)
            code = subprocess.run([sys.executable, "-m", "shards", *argv], check=False).returncode
            if code != 0:
                raise RuntimeError(f"`{line}` exited with status {code} (its output is in this task's log)")
