"""CI runs every benchmark's `--quick` form: each still runs end to end, prints every figure line it should,
and its ratios and rates are finite and positive."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from shards.__main__ import main as shards_main

REPO = Path(__file__).resolve().parents[1]
# A printed figure; nan and inf are matched too, so that a broken ratio fails the value check, not the match.
NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|inf|nan))"


def figures(pattern: str, out: str) -> list[tuple[str, ...]]:
    """The groups of every line of `out` that `pattern` matches (re.M), in order."""
    return [match.groups() for match in re.finditer(pattern, out, re.M)]


def assert_positive(printed: Sequence[str], out: str) -> list[float]:
    """The printed figures as numbers, after checking each is finite and above zero (`out` is shown
    when one is not)."""
    values = [float(text) for text in printed]
    bad = [value for value in values if not (math.isfinite(value) and value > 0)]
    assert values and not bad, f"not finite and positive: {bad}\n{out}"
    return values


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
    rates = figures(rf"^  \((a|b|c)\) .*? {NUMBER} clips/s +{NUMBER} clips/s per core", out)
    assert [letter for letter, *_ in rates] == ["a", "a", "b", "c", "c"], out  # --quick: dense sampling only
    assert_positive([value for _, *values in rates for value in values], out)
    for pattern in (
        rf"^  a/b = {NUMBER} as-is, {NUMBER} short-GOP",
        rf"^  a/c = {NUMBER} as-is, {NUMBER} short-GOP",
        rf"^  frames decoded per frame delivered: {NUMBER} as-is, {NUMBER} short-GOP",
    ):
        (line,) = figures(pattern, out)
        assert_positive(line, out)


@pytest.mark.slow
def test_train_step_quick_prints_its_ratios() -> None:
    out = run_bench("train_step.py", "--quick")
    cell = rf" +{NUMBER}"
    rows = figures(rf"^ +([023]) +(on|off) \|{cell * 3} \|{cell * 3} \|{cell * 2}$", out)
    assert [(stage, mode) for stage, mode, *_ in rows] == [  # ZeRO 0/2/3 x checkpointing off/on
        (stage, mode) for stage in "023" for mode in ("off", "on")
    ], out
    assert_positive([value for _, _, *values in rows for value in values], out)
    (time_ratios,) = figures(
        rf"^time ratio structvit/uniformer .*: {NUMBER}-{NUMBER}x against a forward FLOP ratio of {NUMBER}x",
        out,
    )
    (memory_ratios,) = figures(rf"^checkpointing on/off peak memory: {NUMBER}-{NUMBER}x", out)
    low, high, _ = assert_positive(time_ratios, out)
    assert low <= high, out
    low, high = assert_positive(memory_ratios, out)
    assert low <= high, out


@pytest.mark.slow
def test_image_loader_quick_prints_its_ratios() -> None:
    out = run_bench("image_loader.py", "--quick")
    rates = figures(rf"^  \((a|b|c)\) .*? {NUMBER} images/s +{NUMBER} images/s per core", out)
    assert [letter for letter, *_ in rates] == ["a", "b", "c"], out
    assert_positive([value for _, *values in rates for value in values], out)
    (ratios,) = figures(rf"^  a/b = {NUMBER}   a/c = {NUMBER}$", out)
    assert_positive(ratios, out)


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
    (header,) = figures(
        rf"^# .*: {NUMBER} train / {NUMBER} test, {NUMBER} classes, {NUMBER}px, {NUMBER} epochs", out
    )
    train, test, classes, size, epochs = (float(value) for value in header)
    assert (train, classes, size, epochs) == (24, 3, 32, 1) and test > 0 and test.is_integer(), out
    name = r"(vit_tiny|vit_tiny_spt_lsa)"
    column = rf"\s+{NUMBER}"
    runs = figures(rf"^{name}{column * 5}$", out)  # seed, params (M), top-1 %, last loss, minutes
    summaries = figures(rf"^{name}{column * 4}$", out)  # mean top-1 %, std, min, max (over the seeds)
    models = ["vit_tiny", "vit_tiny_spt_lsa"]
    assert [model for model, *_ in runs] == [model for model, *_ in summaries] == models, out
    for (_, *run), (_, *summary) in zip(runs, summaries, strict=True):
        seed, params, top1, loss, minutes = (float(value) for value in run)
        mean, std, low, high = (float(value) for value in summary)
        assert seed == 0 and 0 < params < 10 and math.isfinite(loss) and 0 <= minutes < 60, out
        assert 0 <= top1 <= 100 and abs(mean - top1) < 0.06, out
        assert std == 0 and low == high == mean, out  # one seed


@pytest.mark.slow
def test_remote_quick_prints_its_ratios() -> None:
    out = run_bench("remote.py", "--quick")
    passes = ("local", "streamed", "first", "second")
    for title, unit in (("read only", "MB/s"), ("training loader", "clips/s")):
        section = out[out.index(title) :]
        rates = figures(rf"^  (\w+) +{NUMBER} {re.escape(unit)}\b", section)[:4]
        assert [name for name, _ in rates] == list(passes), out
        assert_positive([value for _, value in rates], out)
        (ratios,) = figures(
            rf"^  ratio to local disk: streamed {NUMBER}, first {NUMBER}, second {NUMBER}$", section
        )[:1]
        assert_positive(ratios, out)
