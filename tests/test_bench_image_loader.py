"""bench/image_loader.py --quick runs end to end and prints its ratio line (the bench cannot rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_image_loader_quick_prints_its_ratios() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "image_loader.py"), "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"a/b = \d+\.\d+   a/c = \d+\.\d+", done.stdout), done.stdout
    assert "images/s per core" in done.stdout
