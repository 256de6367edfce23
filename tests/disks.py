"""A real small disk for tests: a tmpfs mounted for one test (the suite runs as root), grown with
`mount -o remount,size=...` or made read-only with `remount,ro` (chmod does not stop root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    """A tmpfs mounted at `path` for one test: `remount("size=1m")` grows it, `remount("ro")` makes it
    read-only."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or 'mount failed'}")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False)
