"""The launchers' check, before any task starts, that the tasks' interpreter can import the project.

Both launchers hand their own interpreter (`sys.executable`) to every task. Started from an
interpreter without the project's packages (the system Python instead of the set-up's `.venv`), a
local job would fail in every rank and a Slurm job only once it leaves the queue, with one traceback
per task. `interpreter_problem` says so first, in one line naming the interpreter and the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"  # where the README's set-up (scripts/env.sh) makes the environment
# Top-level modules every task imports: the project's packages and its install_requires.
MODULES = (
    "pipeline",
    "shards",
    "launch",
    "torch",
    "numpy",
    "yaml",
    "tqdm",
    "webdataset",
    "av",
    "decord",
    "deepspeed",
    "tensorboard",
    "submitit",
)
# Finds the modules without importing them: torch and DeepSpeed alone take seconds to import.
PROBE = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])"


def interpreter_problem(pythonpath: Sequence[Path] = ()) -> str | None:
    """None when `sys.executable` finds every module of MODULES, else the one-line problem and fix.

    It runs as the tasks will: a fresh process of this interpreter, in this folder, with this
    environment and `pythonpath` in front of PYTHONPATH (what the Slurm tasks get).
    """
    env = dict(os.environ)
    paths = [str(path) for path in pythonpath]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *MODULES], env=env, capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the tasks' interpreter {sys.executable} cannot check its modules ({said}); {fix()}"
    missing = probe.stdout.split()
    if not missing:
        return None
    return f"the tasks' interpreter {sys.executable} cannot import {', '.join(missing)}; {fix()}"


def fix() -> str:
    """What to do: enter the set-up's environment, or make it first where there is none to enter."""
    activate = VENV / "bin" / "activate"
    enter = f"source {activate}"
    if activate.is_file() and Path(sys.prefix).resolve() != VENV.resolve():
        return f"enter the set-up's environment first: {enter}"
    setup = REPO / "scripts" / "demo.sh"
    return f"set up the environment first (README, Set-up: bash {setup}), then: {enter}"
