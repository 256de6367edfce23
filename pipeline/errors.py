"""What an error is: the kinds of expected stop, each with its exit status and whether Slurm requeues it.

A `RunError` is a stop a user can act on, worded as one line that names the key, file or value. Every
entry point ends one the same way (`report`): the line on stderr, the exit status of its kind from
`OUTCOMES`. Anything else is a bug and keeps its traceback. A subclass (`BadDataError`, `RunBusyError`,
the sharder's `OutputError`, the object store's `pipeline.storage.StorageError`...) takes its kind's
row: a new kind is a class here and a row in `OUTCOMES` (and in the README's table of errors, which
tests/test_errors.py holds to this one).

An error every rank raised together (`every_rank`: rank 0 decided it for all, or each rank computed the
same) is printed once, by rank 0, and the ranks leave the process group together.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipeline.console import one_line


class RunError(Exception):
    """An expected stop, worded as one line. It pickles (rank 0 hands it to every rank)."""

    def __init__(self, line: str, *, every_rank: bool = False) -> None:
        super().__init__(line)
        self.every_rank = every_rank


class ConfigError(RunError, ValueError):
    """The run or command was asked for wrongly: a config key, a file it names, a changed config."""


class DataError(RunError):
    """The data is broken, not one sample: most of it fails, or its annotations do not parse."""


class StorageError(RunError):
    """The storage refused: a full disk, a read-only folder, a bucket that is missing or denied."""


class DivergenceError(RunError):
    """Training diverged: the loss or the weights stopped being finite."""


class Interrupted(RunError):
    """A stop signal (Slurm's time limit, a preemption): the run saved and must continue."""


@dataclass(frozen=True)
class Outcome:
    """How a process ends on an error of one kind."""

    exit_status: int
    requeued: bool  # by the Slurm batch script (a restart that would meet the same error is not)
    word: str = "error"  # the line's first word


# The one table of exit statuses; the README's "Errors" table shows these rows.
OUTCOMES: dict[type[RunError], Outcome] = {
    ConfigError: Outcome(2, requeued=False),
    DataError: Outcome(2, requeued=False),
    StorageError: Outcome(2, requeued=False),
    DivergenceError: Outcome(3, requeued=False),
    Interrupted: Outcome(75, requeued=True, word="stopped"),  # 75: EX_TEMPFAIL, saved but not finished
}


def outcome(err: RunError) -> Outcome:
    """The row of `err`'s kind (its nearest class in the table)."""
    return next(OUTCOMES[cls] for cls in type(err).__mro__ if cls in OUTCOMES)


def report(err: RunError, prog: str = "") -> int:
    """Print `err` as its one line on stderr (an error every rank raised: on rank 0 only) and return
    the exit status of its kind. `prog` prefixes the line (`launch/slurm.py: error: ...`)."""
    if not err.every_rank or os.environ.get("RANK", "0") == "0":
        prefix = f"{prog}: " if prog else ""
        print(f"{prefix}{outcome(err).word}: {one_line(err)}", file=sys.stderr, flush=True)
    return outcome(err).exit_status
