"""Learning end to end: the demo config learns motion direction from real encoded clips (>= 90% val
top-1), while the control with each clip's frames shuffled in time stays near chance (2 classes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.train.conftest import run_local, synth_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def motion_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """512 train and 128 val clips of a disc moving left or right (train and val from different seeds)."""
    root = tmp_path_factory.mktemp("motion")
    return synth_split(root, "train", 512, 2, seed=11), synth_split(root, "val", 128, 2, seed=12)


def overrides_for(shards: tuple[Path, Path], root: Path, name: str) -> list[str]:
    train, val = shards
    return [
        f"name={name}",
        f"out_dir={root}",
        f"data.train=[{train}]",
        f"data.val=[{val}]",
        "eval.every_epochs=0",
    ]


def final_top1(
    run_job, shards: tuple[Path, Path], root: Path, name: str, *extra: str, nproc: int = 2
) -> float:
    result = run_job([*overrides_for(shards, root, name), *extra], nproc=nproc, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / name / "eval.json").read_text())["val/top1"]


@pytest.fixture(scope="module")
def motion_at_200(motion_shards, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run on 2 ranks stopped at step 200 (of 512): its run folder. Both tests continue a copy,
    so the 200 steps they share run once."""
    root = tmp_path_factory.mktemp("motion-200")
    first = run_local([*overrides_for(motion_shards, root, "motion"), "max_steps=200"], timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    return root / "motion"


def test_demo_learns_motion_and_shuffled_control_stays_at_chance(
    run_job, motion_shards, motion_at_200, tmp_path
) -> None:
    # Continued on 2 ranks, the run ends where the uninterrupted demo does (exact resume, test_resume.py).
    shutil.copytree(motion_at_200, tmp_path / "motion")
    learned = final_top1(run_job, motion_shards, tmp_path, "motion")
    assert learned >= 90.0
    control = final_top1(run_job, motion_shards, tmp_path, "shuffled", "shuffle_frames=true")
    assert control <= 65.0, f"frames shuffled in time still reach {control:.1f}% (chance: 50%)"


def test_demo_interrupted_on_two_ranks_and_finished_on_one_still_learns(
    run_job, motion_shards, motion_at_200, tmp_path
) -> None:
    shutil.copytree(motion_at_200, tmp_path / "motion")
    rest = run_job([*overrides_for(motion_shards, tmp_path, "motion")], nproc=1, timeout=900)
    assert rest.returncode == 0, rest.stderr[-3000:]
    # its global batch of 16 rows kept on 1 rank by 2 accumulation steps of 8
    assert "saved by 2 ranks, on 1 ranks: 8 rows per rank x 2 accumulation steps" in rest.stderr
    assert json.loads((tmp_path / "motion" / "eval.json").read_text())["val/top1"] >= 90.0
