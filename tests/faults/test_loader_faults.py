"""Loader faults on real shards: changed bytes are caught before training, a failed sample is replaced by
the same stand-in on every run and after a resume, every batch keeps its rows, each failure is counted
and written to bad_samples.jsonl, mostly broken data stops with one line, and a bug still surfaces."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.loader import BadDataError, build_eval_loader, build_train_loader
from pipeline.data.stream import ClipSampler, DecodeClips
from pipeline.errors import outcome
from tests.faults.conftest import (
    bad_sample_rows,
    copy_shards,
    cut_shard,
    flip_member_byte,
    resync_manifest,
    shard_files,
)


@pytest.fixture(scope="module")
def shards(make_shards) -> Path:
    """Real ssv2 shards of 4 samples each, 2 classes (labels "0" / "1")."""
    return make_shards("ssv2", "train", num_videos=16, classes=2, max_samples=4)


def config(folder: Path, **overrides: object) -> DataConfig:
    base = {
        "train": [str(folder)],
        "val": [str(folder)],
        "num_frames": 4,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 4,
        "workers": 0,
        "shuffle_buffer": 4,
        "decoder": "pyav",
    }
    return from_dict(DataConfig, {**base, **overrides})


def test_a_flipped_cls_byte_is_never_trained_on(shards: Path, tmp_path: Path) -> None:
    folder = copy_shards(shards, tmp_path / "shards")
    shard = shard_files(folder)[1]
    key = flip_member_byte(shard, ".cls")  # "1" <-> "0": still a valid label, silently wrong before
    run_dir = tmp_path / "run"
    loader = build_train_loader(config(folder), rank=0, world_size=1, seed=0, run_dir=run_dir)
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch
    assert all(len(batch.key) == 4 for batch in batches)  # the stand-in fills its row
    assert key not in [k for batch in batches for k in batch.key]
    assert loader.bad_samples == 1
    (row,) = bad_sample_rows(run_dir)
    assert row["key"] == key and Path(row["shard"]).name == shard.name and "sha256" in row["reason"]


def test_a_batch_whose_every_sample_fails_keeps_its_rows_and_resumes_exactly(
    shards: Path, tmp_path: Path
) -> None:
    """shuffle_buffer=1 on a shard that broke off: its batch used to be empty (a reshape error)."""
    folder = copy_shards(shards, tmp_path / "shards")
    broken = shard_files(folder)[0]
    cut_shard(broken, 0.05)  # no sample of it is left whole
    resync_manifest(folder)  # the size check before training cannot see it: the loader must cope
    cfg = config(folder, shuffle_buffer=1, workers=2)
    run_dir = tmp_path / "run"
    loader = build_train_loader(cfg, rank=0, world_size=1, seed=0, run_dir=run_dir)
    reference = list(loader)
    assert len(reference) == loader.steps_per_epoch
    assert all(batch.inputs.shape[0] == 4 for batch in reference)
    rows = bad_sample_rows(run_dir)
    assert loader.bad_samples == len(rows) >= 4
    assert {Path(row["shard"]).name for row in rows} == {broken.name}

    again = list(build_train_loader(cfg, rank=0, world_size=1, seed=0))
    assert [b.key for b in again] == [b.key for b in reference]  # the same stand-ins

    stopped = build_train_loader(cfg, rank=0, world_size=1, seed=0)
    batches = iter(stopped)
    next(batches)
    state = stopped.state()
    resumed = list(build_train_loader(cfg, rank=0, world_size=1, seed=0, state=state))
    assert [b.key for b in resumed] == [b.key for b in reference[1:]]
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(resumed, reference[1:], strict=True))


def test_mostly_broken_data_stops_with_one_line_naming_the_worst_shards(shards: Path, tmp_path: Path) -> None:
    folder = copy_shards(shards, tmp_path / "shards")
    broken = shard_files(folder)[:-1]
    for shard in broken:
        cut_shard(shard, 0.05)
    resync_manifest(folder)
    loader = build_train_loader(config(folder), rank=0, world_size=1, seed=0, run_dir=tmp_path / "run")
    with pytest.raises(BadDataError) as caught:
        list(loader)
    message = str(caught.value)
    assert outcome(caught.value).exit_status == 2 and "\n" not in message  # entry points: one line, exit 2
    assert "data.max_bad_fraction" in message and broken[0].name in message


def test_one_bad_sample_in_a_tiny_run_does_not_stop_it(shards: Path, tmp_path: Path) -> None:
    folder = copy_shards(shards, tmp_path / "shards")
    flip_member_byte(shard_files(folder)[0], ".json", index=2)
    loader = build_train_loader(config(folder, max_bad_fraction=0.0), rank=0, world_size=1, seed=0)
    assert len(list(loader)) == loader.steps_per_epoch and loader.bad_samples == 1


def test_shards_written_before_digests_still_load(shards: Path, tmp_path: Path) -> None:
    folder = copy_shards(shards, tmp_path / "shards")
    for shard in shard_files(folder):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar if not m.name.endswith(".sha256")]
        with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                tar.addfile(member, io.BytesIO(data))
    resync_manifest(folder)
    loader = build_train_loader(config(folder), rank=0, world_size=1, seed=0)
    keys = [k for batch in loader for k in batch.key]
    assert loader.bad_samples == 0 and len(set(keys)) == len(keys) == loader.steps_per_epoch * 4


def test_evaluation_pads_a_failed_sample_and_logs_it(shards: Path, tmp_path: Path) -> None:
    folder = copy_shards(shards, tmp_path / "shards")
    key = flip_member_byte(shard_files(folder)[2], ".cls")
    run_dir = tmp_path / "run"
    loader = build_eval_loader(config(folder), rank=0, world_size=1, run_dir=run_dir)
    rows = [(k, view) for batch in loader for k, view in zip(batch.key, batch.view.tolist(), strict=True)]
    assert key not in [k for k, view in rows if view >= 0] and loader.bad_samples == 1
    assert [row["key"] for row in bad_sample_rows(run_dir)] == [key]


def test_a_programming_error_is_not_swallowed_as_a_bad_sample() -> None:
    stage = DecodeClips("pyav", ClipSampler("segment", 4, 1, seed_parts=(0,)), num_classes=2)
    item = {"__key__": "ssv2/train/1", "__pos__": 0, "json": 12345, "webm": b""}  # json must be bytes
    with pytest.raises(TypeError):
        list(stage([item]))
