"""One job per run folder: rank 0 of a training job holds an exclusive lock on `<run>/LOCK` while it runs.

A second job on the same run (a command typed twice, a resubmission while the first still runs) stops
with one line naming the holder, instead of interleaving its checkpoints with the first's. The lock is
the kernel's (`flock`), so it dies with its process: a job killed by SIGKILL, the OOM killer or a lost
node leaves no lock behind to block the resume. (On NFS, Linux maps flock to POSIX locks, which the
server releases when the client holding them goes away.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from pipeline.config import ConfigError
from pipeline.errors import StorageError
from pipeline.io import storage_problem

LOCK_FILE = "LOCK"


class RunBusyError(ConfigError):
    """Another job holds the run folder."""


def holder_description() -> str:
    """Who this process is, as written into the lock file: host, pid and Slurm job when there is one."""
    job = os.environ.get("SLURM_JOB_ID")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"pid {os.getpid()} on {socket.gethostname()}"
        + (f", Slurm job {job}" if job else "")
        + f", since {started}"
    )


class RunLock:
    """The exclusive lock of a run folder; `acquire` raises RunBusyError naming the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (without waiting) and write this process's description into it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = self.path.open("a+", encoding="utf-8")
        except OSError as err:  # a read-only or foreign folder: the run could never save
            why = storage_problem(err) or err.strerror or str(err)
            raise StorageError(f"cannot write to the run folder {self.path.parent}: {why}") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunBusyError(
                f"run folder {self.path.parent} is in use by {holder}: wait for that job to end, or give "
                "this one another name="
            ) from None
        file.seek(0)
        file.truncate()
        file.write(holder_description() + "\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self.file is not None:
            self.file.close()
            self.file = None
