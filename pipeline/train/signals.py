"""Stop requests from the outside world: SIGTERM (scheduler, Ctrl-C via the launcher) and SIGUSR2 (Slurm's
warning before a time limit or preemption).

The handler only records the signal; the trainer asks `requested()` at each step boundary and the ranks
agree on it, so every rank saves the same step. The handler that was installed before ours (submitit
installs one for SIGUSR2 on rank 0 before calling the task) is remembered: once `train()` has saved and
returned, the Slurm task calls `call_previous_handler(signum)` so submitit can checkpoint and requeue.
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
    """Route SIGTERM and SIGUSR2 to the flag, remembering the handlers they replace (idempotent)."""
    global _received
    _received = None
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not _record:
            _previous[signum] = current
        signal.signal(signum, _record)


def uninstall() -> None:
    """Put back the handlers `install()` replaced."""
    for signum, handler in _previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def requested() -> int | None:
    """The signal number received since `install()`, or None."""
    return _received


def previous_handler(signum: int) -> Any:
    """The handler that was installed for `signum` before `install()` (SIG_DFL if none was)."""
    return _previous.get(signum, signal.SIG_DFL)


def call_previous_handler(signum: int) -> bool:
    """Run the remembered handler for `signum` if it is a Python callable; True when one ran.

    For a default or ignored disposition nothing is done (re-raising SIGTERM after a clean save
    would only turn a clean exit into a killed one).
    """
    handler = previous_handler(signum)
    if callable(handler):
        handler(signum, None)
        return True
    return False
