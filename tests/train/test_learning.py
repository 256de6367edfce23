"""Learning end to end: the demo config learns motion direction from real encoded clips (>= 90% val
top-1), while the control with each clip's frames shuffled in time stays near chance (2 classes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import synth_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def motion_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """512 train and 128 val clips of a disc moving left or right (train and val from different seeds)."""
    root = tmp_path_factory.mktemp("motion")
    return synth_split(root, "train", 512, 2, seed=11), synth_split(root, "val", 128, 2, seed=12)


def final_top1(run_job, shards: tuple[Path, Path], root: Path, name: str, *extra: str) -> float:
    train, val = shards
    overrides = [f"name={name}", f"out_dir={root}", f"data.train=[{train}]", f"data.val=[{val}]"]
    result = run_job([*overrides, "eval.every_epochs=0", *extra], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / name / "eval.json").read_text())["val/top1"]


def test_demo_learns_motion_and_shuffled_control_stays_at_chance(run_job, motion_shards, tmp_path) -> None:
    learned = final_top1(run_job, motion_shards, tmp_path, "motion")
    assert learned >= 90.0
    control = final_top1(run_job, motion_shards, tmp_path, "shuffled", "shuffle_frames=true")
    assert control <= 65.0, f"frames shuffled in time still reach {control:.1f}% (chance: 50%)"


def test_demo_interrupted_on_two_ranks_and_finished_on_one_still_learns(
    run_job, motion_shards, tmp_path
) -> None:
    train, val = motion_shards
    overrides = ["name=elastic", f"out_dir={tmp_path}", f"data.train=[{train}]", f"data.val=[{val}]"]
    first = run_job([*overrides, "eval.every_epochs=0", "max_steps=200"], timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rest = run_job([*overrides, "eval.every_epochs=0"], nproc=1, timeout=900)
    assert rest.returncode == 0, rest.stderr[-3000:]
    # its global batch of 16 clips kept on 1 rank by 2 accumulation steps of 8
    assert "saved by 2 ranks, on 1 ranks: 8 clips per rank x 2 accumulation steps" in rest.stderr
    assert json.loads((tmp_path / "elastic" / "eval.json").read_text())["val/top1"] >= 90.0
