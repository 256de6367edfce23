"""ZeRO 1, 2 and 3, each with and without activation checkpointing, train the demo model (its loss
falls), and each exported checkpoint evaluates in plain PyTorch to the accuracy of the live engine."""

from __future__ import annotations

import json
import sys

import pytest

from launch.local import run
from tests.train.conftest import DEMO_CONFIG, REPO, job_env, job_overrides

pytestmark = pytest.mark.slow


def test_zero_stages_with_and_without_activation_checkpointing(small_shards, tmp_path, monkeypatch) -> None:
    for name, value in job_env().items():
        monkeypatch.setenv(name, value)
    summary_path = tmp_path / "summary.json"
    overrides = job_overrides(
        small_shards,
        tmp_path,
        "unused",
        "optim.epochs=6",
        "optim.lr=4e-3",  # x 8/32 clips per step = 1e-3
        "data.aug.scale=[0.9,1.0]",
        "log.every_steps=4",
        "eval.every_epochs=0",
    )
    worker = REPO / "tests" / "train" / "zero_matrix_worker.py"
    assert run([sys.executable, str(worker), str(summary_path), str(DEMO_CONFIG), *overrides], 2) == 0
    summary = json.loads(summary_path.read_text())
    assert [row["name"] for row in summary] == [
        f"zero{stage}_{mode}" for stage in (1, 2, 3) for mode in ("plain", "ckpt")
    ]
    for row in summary:
        losses = row["losses"]
        assert row["step"] == 24 and len(losses) == 6, row
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, (
            f"{row['name']}: loss did not fall: {losses}"
        )
        assert row["exported_top1"] == pytest.approx(row["live_top1"]), row
