"""Config faults are one line before any process starts: an unknown model, fewer samples than one global
batch (at the world size given), a shard listed but missing or cut short, clips too short for the
sampling (an error by default, or data.short_clips=repeat with a warning that counts them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.train.config import load_train_config
from tests.faults.conftest import copy_shards, cut_shard, shard_files
from tests.train.conftest import DEMO_CONFIG, run_local, synth_split


@pytest.fixture(scope="module")
def clips16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """16 train and 8 val clips of 16 frames (2 classes), one shard folder each."""
    root = tmp_path_factory.mktemp("clips16")
    return synth_split(root, "train", 16, 2, seed=1), synth_split(root, "val", 8, 2, seed=2)


def load(shards: tuple[Path, Path], *overrides: str, world_size: int = 1) -> None:
    train, val = shards
    base = [f"data.train=[{train}]", f"data.val=[{val}]", "data.batch_size=2"]
    load_train_config(DEMO_CONFIG, [*base, *overrides], world_size=world_size)


def error_line(shards: tuple[Path, Path], *overrides: str, world_size: int = 1) -> str:
    with pytest.raises(ConfigError) as caught:
        load(shards, *overrides, world_size=world_size)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_model_name_is_one_line(clips16) -> None:
    message = error_line(clips16, "model.name=nope")
    assert message.startswith("model.name:") and "'nope'" in message


def test_fewer_samples_than_one_global_batch_is_one_line_at_the_world_size_given(clips16) -> None:
    message = error_line(clips16, "data.batch_size=1000")
    assert "data.batch_size" in message and "holds 16" in message
    load(clips16, "data.batch_size=4", world_size=4)  # 16 clips: exactly one global batch
    message = error_line(clips16, "data.batch_size=4", world_size=5)
    assert "world size 5" in message
    assert "engine.grad_accum_steps 2" in error_line(clips16, "engine.grad_accum_steps=2", world_size=5)


def test_a_shard_listed_but_missing_or_cut_short_is_one_line(clips16, tmp_path: Path) -> None:
    train = copy_shards(clips16[0], tmp_path / "train")
    (shard,) = shard_files(train)
    cut_shard(shard, 0.5)
    message = error_line((train, clips16[1]))
    assert message.startswith("data.train:") and shard.name in message and "the manifest says" in message
    shard.unlink()
    assert "does not exist" in error_line((train, clips16[1]))


def test_clips_shorter_than_dense_sampling_takes_are_one_line_or_repeated_with_a_warning(
    clips16, capsys
) -> None:
    dense = ["data.sampling=dense", "data.frame_stride=1"]
    message = error_line(clips16, *dense, "data.num_frames=64")
    assert "16 of the 16 clips in data.train" in message and "64 frames per clip" in message
    assert "data.short_clips=repeat" in message
    load(clips16, *dense, "data.num_frames=16")  # exactly long enough
    capsys.readouterr()
    load(clips16, *dense, "data.num_frames=64", "data.short_clips=repeat")
    warnings = capsys.readouterr().err
    assert "16 of the 16 clips in data.train" in warnings and "repeated" in warnings


@pytest.mark.slow
def test_the_launcher_prints_a_config_fault_once_and_starts_nothing(clips16, tmp_path: Path) -> None:
    train, val = clips16
    overrides = [f"out_dir={tmp_path}", f"data.train=[{train}]", f"data.val=[{val}]", "model.name=nope"]
    result = run_local(overrides, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.name" in lines[0], result.stderr
    assert not any(tmp_path.iterdir())
