"""The launchers' preflight: an interpreter that cannot import the project stops them before any task.

The interpreter cannot be swapped for one without the packages in-process, so a module that exists
nowhere stands in for them (MODULES patched); the launchers then run as from the system Python.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from launch import local, preflight, slurm
from launch.preflight import interpreter_problem

REPO = Path(__file__).resolve().parents[1]
MISSING = "no_such_module_of_issue_14"


def test_the_set_up_environment_has_every_module() -> None:
    assert interpreter_problem() is None
    assert interpreter_problem(pythonpath=[REPO]) is None


def test_a_missing_module_is_one_line_naming_the_interpreter_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(preflight, "MODULES", ("torch", MISSING))
    problem = interpreter_problem()
    assert problem is not None and "\n" not in problem
    assert f"{sys.executable} cannot import {MISSING};" in problem
    assert f"source {REPO / '.venv' / 'bin' / 'activate'}" in problem


def test_the_tasks_pythonpath_is_searched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "only_on_the_tasks_path.py").write_text("")
    monkeypatch.setattr(preflight, "MODULES", ("only_on_the_tasks_path",))
    assert interpreter_problem() is not None
    assert interpreter_problem(pythonpath=[tmp_path]) is None


def test_launchers_stop_before_any_task_but_still_dry_run(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_shards: Callable[..., Path],
) -> None:
    data = [f"data.train=[{make_shards('ssv2', 'train')}]", f"data.val=[{make_shards('ssv2', 'validation')}]"]
    monkeypatch.setattr(preflight, "MODULES", (MISSING,))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    shard = ["shard", "ssv2", "--root", "raw", "--out", "out", "--array", "2", "--split", "train"]
    assert slurm.main([*shard, "--dry-run"]) == 0
    capsys.readouterr()
    assert slurm.main(shard) == 2
    err = capsys.readouterr().err
    assert err.startswith("launch/slurm.py: error: ") and err.count("\n") == 1 and MISSING in err
    assert local.main(["--config", str(REPO / "configs" / "demo.yaml"), *data]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and MISSING in err
    assert not (tmp_path / "runs").exists()  # no rank started
