"""Stop requests from the outside world: SIGTERM (scheduler, Ctrl-C via the launcher) and SIGUSR2 (Slurm's
warning before a time limit or preemption).

The handler only records the signal; the trainer asks `requested()` at each step boundary and the ranks
agree on it, so every rank saves the same step. The handlers ours replace (submitit's, in a Slurm task)
are put back by `uninstall()`; what happens after the save (exit, requeue) is the entry point's business.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

_received: int | None = None
_previous: dict[int, Any] = {}


def _record(signum: int, frame: FrameType | None) -> None:
    # Only a flag: a handler runs between any two bytecodes, where saving or collectives are unsafe.
    global _received
    _received = signum


def install() -> None:
    """Route SIGTERM and SIGUSR2 to the flag, remembering the handlers they replace.

    Idempotent: a second call (the Slurm task installs early, then `train()` again) keeps a signal
    already received.
    """
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not _record:
            _previous[signum] = current
        signal.signal(signum, _record)


def uninstall() -> None:
    """Put back the handlers `install()` replaced and forget any signal received."""
    global _received
    _received = None
    for signum, handler in _previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    _previous.clear()


def requested() -> int | None:
    """The signal number received since `install()`, or None."""
    return _received
