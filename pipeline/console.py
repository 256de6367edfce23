"""What the tools say to a person: one line each, never a traceback or a usage block.

`one_line` turns an exception into that line's text; `OneLineParser` is the argparse parser whose
usage errors are one line; `note` writes a diagnostic line from inside a run (a warning, a notice).
Results go to stdout with print, errors to stderr as `error: ...`. No torch: the sharder and the
launchers import this on CPU and login nodes.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def one_line(err: BaseException) -> str:
    """The exception's message with its whitespace (newlines included) collapsed; the type name if empty.

    An OSError gives its strerror: the errno and file name it adds are the caller's to name (FFmpeg's
    errors carry the file name separately, and the sharder's messages already name the source).
    """
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(text.split()) or type(err).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def note(component: str, message: str) -> None:
    """`[component] message` on stderr, flushed (every rank writes there; Slurm keeps it per task)."""
    print(f"[{component}] {message}", file=sys.stderr, flush=True)
