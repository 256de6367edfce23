"""CI runs every benchmark's `--quick` form: each still runs end to end and prints its ratio lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shards.__main__ import main as shards_main

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> str:
    """Run `bench/<script>` with `args`; its output (the test fails on a non-zero exit)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_loader_quick_prints_its_ratios() -> None:
    out = run_bench("loader.py", "--quick")
    assert re.search(r"a/b = \d+\.\d+ as-is, \d+\.\d+ short-GOP", out), out
    assert re.search(r"a/c = \d+\.\d+ as-is, \d+\.\d+ short-GOP", out), out
    assert re.search(r"frames decoded per frame delivered: \d+\.\d+ as-is, \d+\.\d+ short-GOP", out), out
    assert "clips/s per core" in out


@pytest.mark.slow
def test_train_step_quick_prints_its_ratios() -> None:
    out = run_bench("train_step.py", "--quick")
    assert re.search(
        r"time ratio structvit/uniformer .*: [\d.]+-[\d.]+x against a forward FLOP ratio", out
    ), out
    assert re.search(r"checkpointing on/off peak memory: [\d.]+-[\d.]+x", out), out
    assert len(re.findall(r"^\s+[023]\s+(on|off) \|", out, re.M)) == 6, out  # ZeRO 0/2/3 x checkpointing


@pytest.mark.slow
def test_image_loader_quick_prints_its_ratios() -> None:
    out = run_bench("image_loader.py", "--quick")
    assert re.search(r"a/b = \d+\.\d+   a/c = \d+\.\d+", out), out
    assert "images/s per core" in out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU bench runs for minutes on a CUDA device")
def test_gpu_bench_says_there_is_no_device_and_exits_cleanly() -> None:
    assert run_bench("gpu.py", "--quick").strip().splitlines() == [
        "no CUDA device: bench/gpu.py measures the GPU path only (nothing run)"
    ]


def test_small_data_quick_trains_both_vits_on_an_image_shard_set(tmp_path: Path) -> None:
    raw, shard_set = tmp_path / "raw", tmp_path / "shards"
    assert shards_main(["synth", "imagenet", "--out", str(raw), "--num-videos", "24", "--classes", "3"]) == 0
    for split in ("train", "val"):
        assert (
            shards_main(["imagenet", "--root", str(raw), "--split", split, "--out", str(shard_set / split)])
            == 0
        )
    out = run_bench("small_data.py", "--shards", str(shard_set), "--quick", "--img-size", "32")
    assert re.search(r"24 train / \d+ test, 3 classes, 32px, 1 epochs", out), out
    for model in ("vit_tiny", "vit_tiny_spt_lsa"):
        assert re.search(rf"^{model}\s+0\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.M), out
        assert re.search(rf"^{model}\s+[\d.]+\s+0\.0\s+[\d.]+\s+[\d.]+$", out, re.M), out  # one seed
