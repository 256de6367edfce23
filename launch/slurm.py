"""Submit training (or sharding) to Slurm through submitit.

    python launch/slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --config configs/x.yaml key=value ...
    python launch/slurm.py shard ssv2 --root RAW --out OUT --split train --array 16 [shards options]

Training: every task is one rank. Tasks per node = GPUs per node, which default to what the
partition's nodes offer (`sinfo`), with their CPUs shared out per task; on nodes without GPUs,
`--tasks-per-node` CPU tasks. The ranks build their process group from the Slurm environment and run
the same trainer as `launch/local.py`.

Interruptions all end the same way: the ranks save (on USR2 `--signal-delay` seconds before the time
limit, or on the SIGTERM of a preemption) and exit with EXIT_REQUEUE, or a rank dies and srun stops the
others (`--kill-on-bad-exit`); then the batch script itself requeues the job (`scontrol requeue`,
at most `--max-requeue` times) unless the job was cancelled or a task reported an error that a restart
cannot fix. The requeued job resumes from the newest complete checkpoint. Only a run that reached its
last step ends COMPLETED.

Sharding: a job array with one `--part i/N` per task, then a merge (and verify) job that starts only
when every part succeeded.

This runs on the login node: nothing heavy (torch, the trainer) is imported here. Every problem is
reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Runnable as a script from any folder: make the repository importable here and in the tasks.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.preflight import interpreter_problem  # noqa: E402
from launch.slurm_task import ShardCommandTask, TrainTask, no_requeue_marker  # noqa: E402
from pipeline.console import OneLineParser  # noqa: E402
from pipeline.errors import ConfigError, RunError, report  # noqa: E402
from pipeline.storage import is_url  # noqa: E402
from pipeline.train.config import load_train_config  # noqa: E402

PING_TIMEOUT_S = 20  # scontrol's own retries take a minute when no controller answers
SINFO_TIMEOUT_S = 60


class LaunchError(ConfigError):
    """A problem that stops the submission, worded as one line."""


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    """The resource options shared by training and sharding submissions."""
    res = parser.add_argument_group("Slurm resources")
    res.add_argument("--nodes", type=int, default=1, help="nodes per job (training only)")
    res.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="GPUs per node, one task each (default: what the partition's nodes have); "
        "0: CPU tasks (see --tasks-per-node)",
    )
    res.add_argument(
        "--tasks-per-node", type=int, default=1, help="CPU tasks per node with --gpus-per-node 0"
    )
    res.add_argument(
        "--cpus-per-task", type=int, default=None, help="CPU cores per task (default with GPUs: CPUs / GPUs)"
    )
    res.add_argument("--partition", default=None)
    res.add_argument("--account", default=None)
    res.add_argument("--qos", default=None)
    res.add_argument("--time", type=int, default=240, help="time limit per start, minutes")
    res.add_argument("--mem", default=None, help="memory per node, as sbatch takes it (e.g. 64G)")
    res.add_argument("--constraint", default=None, help="node features (sbatch --constraint)")
    res.add_argument("--exclude", default=None, help="nodes to avoid (sbatch --exclude)")
    res.add_argument("--job-dir", type=Path, default=None, help="submitit folder: scripts, pickles, logs")
    res.add_argument("--max-requeue", type=int, default=5, help="restarts allowed after preemption/timeout")
    res.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which USR2 asks the job to save and requeue",
    )
    res.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting")


def build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The training parser and the `shard` sub-command's parser."""
    # No abbreviations: `shard` passes unknown options on to the sharder, and its --part must not be
    # taken for --partition.
    train = OneLineParser(
        prog="launch/slurm.py", description="Submit a training run to Slurm.", allow_abbrev=False
    )
    add_slurm_options(train)
    train.add_argument("--config", required=True, help="training config YAML")
    train.add_argument("overrides", nargs="*", help="key=value config overrides")
    shard = OneLineParser(
        prog="launch/slurm.py shard",
        description="Shard a dataset as a Slurm job array plus a dependent merge job; "
        "unknown options are passed to `python -m shards DATASET`.",
        allow_abbrev=False,
    )
    add_slurm_options(shard)
    shard.add_argument("dataset")
    shard.add_argument("--root", type=Path, required=True, help="raw dataset folder")
    shard.add_argument(
        "--out", required=True, help="shard folder or object-store URL, as for `python -m shards`"
    )
    shard.add_argument("--array", type=int, required=True, help="number of parts, one array task each")
    return train, shard


@dataclass(frozen=True)
class NodeResources:
    """What one node of a partition offers: GPUs (GRES `gpu`) and CPUs."""

    gpus: int
    cpus: int


def gres_gpus(gres: str) -> int:
    """GPUs in an sinfo GRES string: `gpu:8`, `gpu:a100:4(S:0-1)`, `gpu:2,shard:4` -> 8, 4, 2."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partition_resources(partition: str | None) -> NodeResources | None:
    """The smallest node of `partition` (the default partition when None), from sinfo; None without Slurm.

    The smallest, so that a per-node request fits every node the job may get.
    """
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "--noheader", "--format=%P|%G|%c"]
    try:
        out = subprocess.run(
            [*command, *(["--partition", partition] if partition else [])],
            capture_output=True,
            text=True,
            timeout=SINFO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:  # no controller answers: the submission will say so in one line
        return None
    nodes = []
    for line in out.stdout.splitlines():
        name, gres, cpus = [*line.split("|"), "", ""][:3]
        if (partition or name.endswith("*")) and cpus.rstrip("+").isdigit():  # '*': the default partition
            nodes.append(NodeResources(gres_gpus(gres), int(cpus.rstrip("+"))))
    if out.returncode != 0 or not nodes:
        return None
    return NodeResources(min(n.gpus for n in nodes), min(n.cpus for n in nodes))


def resolve_resources(args: argparse.Namespace, nodes: NodeResources | None) -> argparse.Namespace:
    """Fill in GPUs (and CPUs) per task from the partition's nodes where the user left them out."""
    if args.gpus_per_node is not None:
        return args
    gpus = nodes.gpus if nodes else 0
    cpus = args.cpus_per_task
    if gpus and cpus is None and nodes and nodes.cpus >= gpus:
        cpus = nodes.cpus // gpus
    return argparse.Namespace(**{**vars(args), "gpus_per_node": gpus, "cpus_per_task": cpus})


def slurm_parameters(args: argparse.Namespace, job_name: str, nodes: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) from the command-line options."""
    if args.gpus_per_node < 0 or args.tasks_per_node <= 0 or nodes <= 0:
        raise LaunchError("--nodes and --tasks-per-node must be positive and --gpus-per-node >= 0")
    if args.gpus_per_node and args.tasks_per_node != 1:
        raise LaunchError("--tasks-per-node applies only with --gpus-per-node 0 (one task per GPU otherwise)")
    if args.time <= 0 or args.signal_delay < 0 or args.max_requeue < 0:
        raise LaunchError("--time must be positive, --signal-delay and --max-requeue >= 0")
    if args.signal_delay >= args.time * 60:
        raise LaunchError(f"--signal-delay {args.signal_delay} s must be shorter than --time {args.time} min")
    params: dict[str, Any] = {
        # submitit unpickles the task by reference to launch.slurm_task: the job must import this checkout
        "setup": [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "job_name": job_name,
        "nodes": nodes,
        "ntasks_per_node": args.gpus_per_node or args.tasks_per_node,
        "time": args.time,
        "signal_delay_s": args.signal_delay,
    }
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for name in ("cpus_per_task", "partition", "account", "qos", "mem", "constraint", "exclude"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def with_requeue_on_interruption(params: dict[str, Any], job_dir: Path, max_requeue: int) -> dict[str, Any]:
    """Training parameters whose batch script requeues the job whenever it ends unfinished.

    The batch script is the one process that outlives every way a run can stop: the ranks saving on a
    preemption's SIGTERM or the time limit's USR2 (they exit EXIT_REQUEUE), or a rank dying (srun's
    `--kill-on-bad-exit` then stops the others within KillWait). A job whose tasks exit by themselves
    inside a preemption's grace time would otherwise end COMPLETED or FAILED and never run again. Not
    requeued: a job cancelled by the user (scancel signals the batch script itself, a preemption does
    not), a task that left a no-requeue marker (an error a restart cannot fix), or `max_requeue` used up.
    """
    marker = no_requeue_marker(job_dir, "${SLURM_JOB_ID}")
    restarts = "${SLURM_RESTART_COUNT:-0}"
    teardown = [
        "status=$?",
        'if [ "$status" -ne 0 ]; then',
        '  if [ "$cancelled" = 1 ]; then',
        '    echo "[slurm] cancelled: not requeueing (tasks exited with status $status)"',
        f'  elif [ -e "{marker}" ]; then',
        f'    echo "[slurm] not requeueing: $(cat "{marker}")"',
        f'  elif [ "{restarts}" -ge {max_requeue} ]; then',
        f'    echo "[slurm] not requeueing: {restarts} restarts already (--max-requeue {max_requeue})"',
        "  else",
        f'    echo "[slurm] requeueing: restart $(({restarts} + 1)) of at most {max_requeue}'
        ' (tasks exited with status $status)"',
        '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
        "  fi",
        "fi",
        'exit "$status"',
    ]
    return {
        **params,
        # bash runs a trap only after srun returns, so the teardown below still decides
        "setup": [*params["setup"], "cancelled=0", "trap 'cancelled=1' TERM"],
        "teardown": teardown,
        "srun_args": ["--kill-on-bad-exit=1"],
    }


def render_sbatch_script(job_dir: Path, params: dict[str, Any]) -> str:
    """The sbatch script submitit writes for these parameters.

    submitit has no public renderer; its private one is used so that the dry run shows exactly what
    would be submitted, also where no Slurm client is installed.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(job_dir))}"
    return _make_sbatch_string(command=command, folder=job_dir, **params)


def check_task_interpreter() -> None:
    """Raise LaunchError unless this interpreter, which every task runs, can import the project."""
    if problem := interpreter_problem(pythonpath=[REPO]):  # the tasks' PYTHONPATH (see `setup` above)
        raise LaunchError(problem)


def check_slurm_reachable() -> None:
    """Raise LaunchError unless a Slurm client is installed and its controller answers."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise LaunchError("no Slurm found: sbatch/srun are not on PATH (run this on a Slurm login node)")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        raise LaunchError(f"no Slurm config: SLURM_CONF points to '{conf}', which does not exist")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"Slurm controller did not answer `scontrol ping` in {PING_TIMEOUT_S} s") from None
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = " ".join((ping.stdout.splitlines() or ping.stderr.splitlines() or ["no output"])[0].split())
        raise LaunchError(f"Slurm controller is not reachable: `scontrol ping` says '{said}'")


def check_partition(partition: str | None) -> None:
    """Raise LaunchError naming the partitions that exist when `partition` is not one of them."""
    if partition is None:
        return
    out = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=60)
    known = sorted(set(out.stdout.split()))
    if out.returncode == 0 and partition not in known:
        raise LaunchError(f"invalid partition '{partition}' (partitions on this cluster: {', '.join(known)})")


def make_executor(job_dir: Path, params: dict[str, Any], max_requeue: int) -> Any:
    """A submitit SlurmExecutor writing into `job_dir`."""
    import submitit

    executor = submitit.SlurmExecutor(folder=job_dir, max_num_timeout=max_requeue)
    executor.update_parameters(**params)
    return executor


@contextlib.contextmanager
def one_line_submission_errors() -> Any:
    """Turn a failed sbatch into one LaunchError line (submitit would print sbatch's stderr as well)."""
    import submitit

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines or ["no message"]
        raise LaunchError(f"submission failed: {errors[-1]}") from None


def log_paths(job_dir: Path, job_id: str, num_tasks: int) -> str:
    """Where submitit's per-task logs of `job_id` go (task 0 is rank 0)."""
    tasks = "0" if num_tasks == 1 else f"{{0..{num_tasks - 1}}}"
    return f"{job_dir}/{job_id}_{tasks}_log.out (and _log.err)"


def submit_training(args: argparse.Namespace) -> int:
    """Check the config, then submit one multi-task job (or print its script)."""
    args = resolve_resources(args, partition_resources(args.partition))
    ntasks = args.nodes * (args.gpus_per_node or args.tasks_per_node)
    cfg = load_train_config(args.config, args.overrides, world_size=ntasks)
    job_dir = (args.job_dir or cfg.run_dir / "slurm").absolute()
    params = slurm_parameters(args, job_name=cfg.name, nodes=args.nodes)
    params = with_requeue_on_interruption(params, job_dir, args.max_requeue)
    task = TrainTask(config=str(Path(args.config).absolute()), overrides=list(args.overrides))
    if args.dry_run:
        print(render_sbatch_script(job_dir, params))
        return 0
    check_task_interpreter()
    check_slurm_reachable()
    check_partition(args.partition)
    executor = make_executor(job_dir, params, args.max_requeue)
    with one_line_submission_errors():
        job = executor.submit(task)
    per_node = f"{args.gpus_per_node} GPUs" if args.gpus_per_node else f"{args.tasks_per_node} CPU tasks"
    print(
        f"submitted job {job.job_id}: {ntasks} tasks on {args.nodes} node(s) ({per_node} each), "
        f"run folder {cfg.run_dir}"
    )
    print(f"logs: {log_paths(job_dir, job.job_id, ntasks)}")
    print(f"tensorboard: tensorboard --logdir {cfg.run_dir / 'tensorboard'}")
    return 0


def submit_sharding(args: argparse.Namespace, shard_options: list[str]) -> int:
    """Submit `--array` part jobs (one `--part i/N` each) and a merge+verify job that waits for all."""
    if args.array <= 0:
        raise LaunchError(f"--array must be positive, got {args.array}")
    if args.nodes != 1:
        raise LaunchError("--nodes applies to training only: each sharding part runs on one node")
    args.gpus_per_node = args.gpus_per_node or 0  # sharding decodes and encodes on CPUs
    named = {option.split("=", 1)[0] for option in shard_options if option.startswith("--")}
    if "--part" in named:
        raise LaunchError("--part is set for each array task by --array; leave it out")
    if "--split" not in named:
        raise LaunchError("--split is required (passed to `python -m shards` with the other options)")
    # A URL stays a URL: made absolute it would become a local folder named `s3:`.
    root, out = args.root.absolute(), args.out if is_url(args.out) else Path(args.out).absolute()
    if not root.is_dir():
        raise LaunchError(f"--root '{args.root}' is not a folder")
    base = [args.dataset, "--root", str(root), "--out", str(out), *shard_options]
    parts = [ShardCommandTask([[*base, "--part", f"{i}/{args.array}"]]) for i in range(args.array)]
    merge = ShardCommandTask([["merge", str(out)], ["verify", str(out)]])
    params = slurm_parameters(args, job_name=f"shard-{args.dataset}", nodes=1)
    job_dir = (args.job_dir or Path("runs") / f"shard-{args.dataset}" / "slurm").absolute()
    # A failed part makes the dependency unsatisfiable: Slurm then cancels the merge job instead of
    # leaving it pending forever.
    merge_params = {
        **params,
        "job_name": f"merge-{args.dataset}",
        "additional_parameters": {"kill-on-invalid-dep": "yes"},
    }
    if args.dry_run:
        print(render_sbatch_script(job_dir, {**params, "map_count": args.array}))
        print(render_sbatch_script(job_dir, {**merge_params, "dependency": "afterok:<array job id>"}))
        return 0
    check_task_interpreter()
    check_slurm_reachable()
    check_partition(args.partition)
    executor = make_executor(job_dir, params, args.max_requeue)
    with one_line_submission_errors():
        with executor.batch():
            part_jobs = [executor.submit(part) for part in parts]
        array_id = part_jobs[0].job_id.split("_")[0]
        executor.update_parameters(**merge_params, dependency=f"afterok:{array_id}")
        merge_job = executor.submit(merge)
    print(f"submitted array job {array_id}: {args.array} parts of {args.dataset} into {out}")
    print(f"submitted merge job {merge_job.job_id} (after all parts succeed)")
    print(
        f"logs: {job_dir}/{array_id}_{{0..{args.array - 1}}}_0_log.out (parts), "
        f"{job_dir}/{merge_job.job_id}_0_log.out (merge)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    train_parser, shard_parser = build_parsers()
    try:
        if argv[:1] == ["shard"]:
            args, shard_options = shard_parser.parse_known_args(argv[1:])
            return submit_sharding(args, shard_options)
        return submit_training(train_parser.parse_args(argv))
    except RunError as err:
        return report(err, prog="launch/slurm.py")


if __name__ == "__main__":
    sys.exit(main())
