"""Start a training job on this machine: `python launch/local.py --config CONFIG [--nproc N] [key=value ...]`.

The config is checked here first (one error line, exit status 2, before any process starts). Then N
processes run `python -m pipeline.train` (the entry point the Slurm launcher uses too) with
torchrun-style variables and a free rendezvous port; DeepSpeed picks gloo on CPU and NCCL on GPUs.
Ctrl-C or SIGTERM to this launcher is forwarded to every rank as SIGTERM, so they save and exit; a
second one kills them. If a rank fails (an error, SIGKILL, the OOM killer), one line names it and its
signal or status, the others are stopped and its exit status is returned. If the launcher itself dies,
the kernel sends its ranks SIGTERM (they save and stop). A run folder another job holds is refused here.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Runnable as a script from any folder: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.preflight import interpreter_problem
from pipeline.errors import ConfigError, RunError, StorageError, report
from pipeline.io import folder_problem
from pipeline.train.config import load_train_config
from pipeline.train.run_lock import RunLock

GRACE_S = 30.0  # how long ranks get to exit after a failed peer before they are killed
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


def free_port() -> int:
    """A TCP port nothing listens on now (the rendezvous of the ranks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The variables torchrun would set for `rank` of `nproc` on one machine."""
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    return env


def stop_with_launcher(launcher_pid: int) -> None:
    """In a rank, before it starts: ask the kernel for SIGTERM when the launcher dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher_pid:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def describe_exit(code: int) -> str:
    """`killed by SIGKILL` or `exited with status 2` for a Popen return code."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def run(command: list[str], nproc: int) -> int:
    """Start `nproc` ranks of `command` and wait for them; returns the job's exit status."""
    port = free_port()
    ranks: list[subprocess.Popen] = []
    forwarded = 0

    def forward(signum: int, frame: object) -> None:
        nonlocal forwarded
        forwarded += 1
        stop = signal.SIGTERM if forwarded == 1 else signal.SIGKILL
        print(
            f"[launch] {signal.Signals(signum).name}: sending {stop.name} to {nproc} ranks",
            file=sys.stderr,
            flush=True,
        )
        for proc in ranks:
            if proc.poll() is None:
                proc.send_signal(stop)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(nproc):
            # Own sessions: a terminal Ctrl-C reaches only this launcher, which makes it a SIGTERM (a save).
            env = rank_environment(rank, nproc, port)
            ranks.append(
                subprocess.Popen(
                    command,
                    env=env,
                    start_new_session=True,
                    preexec_fn=functools.partial(stop_with_launcher, os.getpid()),
                )
            )
        return wait_for_ranks(ranks)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_for_ranks(ranks: list[subprocess.Popen]) -> int:
    """Wait until every rank has exited; after a failure the others get GRACE_S to stop, then a kill.

    Returns the status of the rank that failed first (the others' are only the stop it caused).
    """
    failed_at, first_failure = None, 0
    while any(proc.poll() is None for proc in ranks):
        codes = [proc.poll() for proc in ranks]
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = time.monotonic()
            rank, first_failure = next((r, c) for r, c in enumerate(codes) if c not in (None, 0))
            code = first_failure
            where = f"pid {ranks[rank].pid} on {socket.gethostname()}"
            print(
                f"[launch] rank {rank} ({where}) {describe_exit(code)}; stopping the other ranks",
                file=sys.stderr,
                flush=True,
            )
            for proc in ranks:
                if proc.poll() is None:
                    proc.terminate()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for proc in ranks:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.2)
    failure = first_failure or next((proc.returncode for proc in ranks if proc.returncode != 0), 0)
    return 128 - failure if failure < 0 else failure  # killed by signal N: the shell's 128 + N


def main(argv: list[str] | None = None) -> int:
    """Validate the config, then run the job."""
    parser = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (one per GPU; CPU: 2 is plenty)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    args = parser.parse_args(argv)
    try:
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        cfg = load_train_config(args.config, args.overrides, world_size=args.nproc)
        if problem := folder_problem(cfg.run_dir):  # a read-only run folder: before any process starts
            raise StorageError(f"cannot write to the run folder {cfg.run_dir}: {problem}")
        if cfg.run_dir.is_dir():  # refused here once, rather than by rank 0 after every rank started
            lock = RunLock(cfg.run_dir)
            lock.acquire()
            lock.release()
        if problem := interpreter_problem():  # every rank runs this interpreter
            raise ConfigError(problem)
    except RunError as err:
        return report(err)
    return run([sys.executable, "-m", "pipeline.train", "--config", args.config, *args.overrides], args.nproc)


if __name__ == "__main__":
    sys.exit(main())
