"""Full and read-only disks, for real, on the `tmpfs` fixture's small tmpfs (tests/disks.py).

Sharding onto a full disk is one line and exit 2, and the same command, once there is room, ends with the
bytes of an uninterrupted run; a training run whose disk fills during a save stops with one line on
every rank (exit 2), its partial tag removed and the earlier one intact, and resumes once there is room.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.train.checkpoint import complete_tags, find_resume_checkpoint, read_trainer_state, tag_for_step
from shards.__main__ import main as shards_main
from tests.train.conftest import job_overrides, run_local, synth_split


@pytest.fixture(scope="module")
def raw_ssv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 tiny SSv2-layout videos (about 7 KB each)."""
    raw = tmp_path_factory.mktemp("raw-ssv2")
    synth = ["synth", "ssv2", "--out", str(raw), "--num-videos", "24", "--classes", "2", "--height", "32"]
    assert shards_main([*synth, "--frames", "16", "--splits", "train"]) == 0
    return raw


def shard_command(raw: Path, out: Path) -> list[str]:
    return ["ssv2", "--root", str(raw), "--split", "train", "--out", str(out), "--max-samples", "4"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sharding_onto_a_full_disk_is_one_line_and_the_same_command_finishes_with_the_same_bytes(
    raw_ssv2: Path, tmpfs, tmp_path: Path, capsys
) -> None:
    assert shards_main(shard_command(raw_ssv2, tmp_path / "uninterrupted")) == 0
    expected = folder_bytes(tmp_path / "uninterrupted")
    disk = tmpfs("64k")
    out = disk.path / "train"
    capsys.readouterr()
    assert shards_main(shard_command(raw_ssv2, out)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert f"cannot write shards to {out}: the file system is full (about " in errors[0]
    assert "more bytes needed" in errors[0] and "free)" in errors[0]
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.endswith(".tmp")], left  # the partial shard's temp file went
    assert "manifest.json" not in left and any(name.endswith(".tar") for name in left)
    disk.remount("size=1m")
    assert shards_main(shard_command(raw_ssv2, out)) == 0
    assert folder_bytes(out) == expected


def test_sharding_to_a_read_only_output_is_one_line(raw_ssv2: Path, tmpfs, capsys) -> None:
    disk = tmpfs("1m")
    (disk.path / "train").mkdir()
    disk.remount("ro")
    assert shards_main(shard_command(raw_ssv2, disk.path / "train")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot write to the output folder {disk.path / 'train'}: Read-only file system"
    ]


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 train and 16 val tiny clips (as tests/train's small_shards)."""
    root = tmp_path_factory.mktemp("full-disk-shards")
    return synth_split(root, "train", 32, 2, seed=1), synth_split(root, "val", 16, 2, seed=2)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_disk_that_fills_at_the_second_save_stops_every_rank_with_one_line_and_resumes_after_room(
    train_shards, tmpfs
) -> None:
    # A demo checkpoint takes ~6.9 MB: a 10 MB disk holds the first (step 2), not the second (step 4).
    disk = tmpfs("10m")
    run = job_overrides(train_shards, disk.path, "run", "optim.epochs=1", "checkpoint.every_steps=2")
    run.append("eval.every_epochs=0")
    folder = disk.path / "run" / "checkpoints"
    result = run_local(run)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[
        -3000:
    ]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(
        f"error: cannot save checkpoint {tag_for_step(4)} in {folder}: the file system is full "
        "(the save needs about "
    ), errors[0]
    assert " bytes, " in errors[0] and f"{tag_for_step(2)} is intact" in errors[0]
    # The warning came first: the last save's size no longer fitted the free space.
    assert f"[checkpoint] warning: {folder} has " in result.stderr
    assert not (folder / tag_for_step(4)).exists()
    assert [p.name for p in complete_tags(folder)] == [tag_for_step(2)]
    assert find_resume_checkpoint(folder, "auto") == folder / tag_for_step(2)  # verifies its digests

    disk.remount("size=40m")
    again = run_local(run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {folder / tag_for_step(2)}" in again.stderr
    assert read_trainer_state(find_resume_checkpoint(folder, "auto")).step == 4


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line_before_training(train_shards, tmpfs) -> None:
    disk = tmpfs("1m")
    (disk.path / "run").mkdir()
    disk.remount("ro")
    result = run_local(job_overrides(train_shards, disk.path, "run", "optim.epochs=1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        f"error: cannot write to the run folder {disk.path / 'run'}: the file system is read-only"
    ]
    assert "[train]" not in result.stderr  # no rank started
