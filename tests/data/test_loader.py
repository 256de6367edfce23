"""The streaming loader on real shards: exact epochs across ranks and workers, exact resume, bad samples.

The partition tests (each sample once over ranks x workers, epochs and seeds, resume, resampled) read
the keys the loader's stream delivers from real tar shards without decoding (`planned_batches`); one
test runs the real loader on decoded video end to end and checks it delivers exactly those keys.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.loader import LoaderState, TrainLoader, build_eval_loader, build_train_loader
from pipeline.data.manifest import ManifestError, load_shard_set, sample_offsets
from pipeline.data.plan import ShardSlice
from pipeline.data.stream import ReadShardSlices

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def uneven_shards(make_shards) -> list[str]:
    """Two ssv2 shard folders (same label map): shards of 7, 7, 2 samples, then sixteen of 1 sample."""
    return [str(make_shards("ssv2", "train", max_samples=7)), str(make_shards("ssv2", "val", max_samples=1))]


def config(train: list[str], **overrides: object) -> DataConfig:
    base = {
        "train": train,
        "val": train,
        "num_frames": 4,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 2,
        "workers": 2,
        "shuffle_buffer": 4,
        "decoder": "pyav",
    }
    return from_dict(DataConfig, {**base, **overrides})


def all_keys(folders: list[str]) -> list[str]:
    keys = []
    for shard in load_shard_set(folders).shards:
        with tarfile.open(shard.path) as tar:
            keys += sorted({m.name.rsplit(".", 1)[0] for m in tar if m.isreg()}, key=lambda k: k)
    return keys


def planned_batches(loader: TrainLoader) -> list[list[str]]:
    """The keys of the batches `loader` yields next (the rest of its current epoch), without decoding.

    The loader's own stream is built for its state, and each worker's read stages (shard slices ->
    tar samples of the real shards -> shuffle buffer -> take -> number and skip) run in this process;
    the workers' batches are then taken round-robin, as the DataLoader does (physical worker p plays
    logical worker (start + p) % K). `test_resume_in_a_new_process_continues_the_exact_sequence` checks
    this against the real loader's decoded batches.
    """
    stream = loader.stream()
    plan, start = stream.plan, stream.start_batch
    per_worker = []
    for physical in range(plan.workers):
        keys = [
            item["__key__"]
            for item in wds.DataPipeline(*stream.read_stages((start + physical) % plan.workers))
        ]
        per_worker.append(
            [keys[i : i + plan.samples_per_batch] for i in range(0, len(keys), plan.samples_per_batch)]
        )
    return [batch for turn in itertools.zip_longest(*per_worker) for batch in turn if batch is not None]


def planned_keys(loader: TrainLoader) -> list[str]:
    """The keys, in order, of the rest of `loader`'s current epoch (see `planned_batches`)."""
    return [key for batch in planned_batches(loader) for key in batch]


@pytest.mark.parametrize(
    ("world_size", "workers", "batch_size"), [(2, 2, 2), (3, 2, 2), (1, 0, 4), (4, 3, 3), (2, 3, 1)]
)
def test_ranks_and_workers_over_uneven_shards_deliver_each_sample_at_most_once(
    uneven_shards: list[str], world_size: int, workers: int, batch_size: int
) -> None:
    sizes = [s.num_samples for s in load_shard_set(uneven_shards).shards]
    assert max(sizes) >= 7 and min(sizes) == 1  # very uneven
    expected = all_keys(uneven_shards)
    assert len(expected) == len(set(expected)) == sum(sizes) == 32
    cfg = config(uneven_shards, workers=workers, batch_size=batch_size)
    steps = len(expected) // (world_size * batch_size)
    delivered = []
    for rank in range(world_size):
        loader = build_train_loader(cfg, rank=rank, world_size=world_size, seed=3)
        batches = planned_batches(loader)
        assert len(batches) == loader.steps_per_epoch == steps  # equal on every rank
        assert all(len(batch) == batch_size for batch in batches)
        delivered += [key for batch in batches for key in batch]
    repeated = [key for key, n in Counter(delivered).items() if n > 1]
    assert repeated == [] and set(delivered) <= set(expected)
    assert len(expected) - len(delivered) < world_size * batch_size  # fewer than one global batch sit out
    if len(expected) % (world_size * batch_size) == 0:
        assert sorted(delivered) == sorted(expected)  # nothing left over: every sample exactly once


def test_epochs_and_seeds_change_the_order_but_not_the_set(uneven_shards: list[str]) -> None:
    cfg = config(uneven_shards)
    loader = build_train_loader(cfg, rank=0, world_size=1, seed=5)
    epoch0 = planned_keys(loader)
    loader.restore(LoaderState(epoch=1, samples_consumed=0, seed=5))
    epoch1 = planned_keys(loader)
    again = planned_keys(build_train_loader(cfg, rank=0, world_size=1, seed=5))
    other_seed = planned_keys(build_train_loader(cfg, rank=0, world_size=1, seed=6))
    assert epoch0 == again
    assert epoch0 != epoch1 and epoch0 != other_seed
    assert sorted(epoch0) == sorted(epoch1) == sorted(other_seed) == sorted(all_keys(uneven_shards))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_loader_built_from_a_state_continues_the_exact_sequence(
    uneven_shards: list[str], workers: int
) -> None:
    cfg = config(uneven_shards, workers=workers, shuffle_buffer=6)
    full = build_train_loader(cfg, rank=1, world_size=2, seed=4)
    reference = planned_batches(full)
    full.restore(LoaderState(epoch=1, samples_consumed=0, seed=4))
    next_epoch = planned_batches(full)
    assert len(reference) == full.steps_per_epoch == 8
    for k in range(full.steps_per_epoch + 1):  # every stop, odd ones start on another worker
        state = LoaderState(epoch=0, samples_consumed=k * 2, seed=4)
        resumed = build_train_loader(cfg, rank=1, world_size=2, seed=4, state=state)
        if k < full.steps_per_epoch:
            assert planned_batches(resumed) == reference[k:], f"stopped after {k} batches"
        else:  # a finished epoch reads as the start of the next one
            assert resumed.state() == LoaderState(epoch=1, samples_consumed=0, seed=4)
            assert planned_batches(resumed) == next_epoch


RESUME_SCRIPT = """
import json, sys, torch
from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.loader import LoaderState, build_train_loader
cfg = from_dict(DataConfig, json.loads(sys.argv[1]))
state = LoaderState.from_dict(json.loads(sys.argv[2]))
loader = build_train_loader(cfg, rank=1, world_size=2, seed=0, state=state)
out = []
for _ in range(2):  # the rest of this epoch, then the whole next one
    out += [[b.key, b.label.tolist(), b.inputs.double().sum().item()] for b in loader]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_resume_in_a_new_process_continues_the_exact_sequence(uneven_shards: list[str]) -> None:
    """The one end-to-end check of the training stream on real decoded video: the DataLoader's workers
    deliver the planned keys (`planned_batches`), and a loader resumed in a new process continues with
    the same keys, augmentation and mixing, bit for bit."""
    cfg_dict = {
        "train": uneven_shards,
        "num_frames": 4,
        "sampling": "dense",
        "frame_stride": 2,
        "crop_size": 32,
        "batch_size": 2,
        "workers": 2,
        "shuffle_buffer": 6,
        "decoder": "pyav",
        "aug": {"randaug_n": 2, "mixup": 0.8, "cutmix": 1.0, "erasing_prob": 0.5},
    }
    cfg = from_dict(DataConfig, cfg_dict)
    full = build_train_loader(cfg, rank=1, world_size=2, seed=0)
    planned = planned_batches(full)
    full.restore(LoaderState(epoch=1, samples_consumed=0, seed=0))
    planned += planned_batches(full)
    full.restore(LoaderState(epoch=0, samples_consumed=0, seed=0))
    reference = []
    for _ in range(2):  # the loader advances itself to the next epoch
        reference += [[b.key, b.label.tolist(), b.inputs.double().sum().item()] for b in full]
    assert full.state() == LoaderState(epoch=2, samples_consumed=0, seed=0)
    assert [r[0] for r in reference] == planned
    assert all(len(set(keys)) == 2 for keys in planned)
    # stop after an odd number of batches, so the resumed loader must start on worker 1's batch
    stopped = build_train_loader(cfg, rank=1, world_size=2, seed=0)
    k = 3
    for step, _ in enumerate(stopped, start=1):
        if step == k:
            break
    state = stopped.state()
    assert state == LoaderState(epoch=0, samples_consumed=k * 2, seed=0)
    result = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, json.dumps(cfg_dict), json.dumps(state.to_dict())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    resumed = json.loads(result.stdout)
    assert [r[0] for r in resumed] == [r[0] for r in reference[k:]]  # the keys, exactly
    assert resumed == reference[k:]  # and the same augmentation and mixing, bit for bit


def test_workers_persist_across_epochs_and_a_pass_left_early_resumes_where_it_stopped(
    uneven_shards: list[str],
) -> None:
    """The DataLoader (and its workers) is kept from epoch to epoch; a pass left after 3 batches and
    iterated again continues with batch 3 (the workers drop what they had prefetched), and the next
    epoch follows, with the keys the plan says."""
    cfg = config(uneven_shards, sampling="dense", num_frames=2, frame_stride=1, crop_size=16)
    loader = build_train_loader(cfg, rank=0, world_size=2, seed=5)
    planned = planned_batches(loader)
    loader.restore(LoaderState(epoch=1, samples_consumed=0, seed=5))
    planned += planned_batches(loader)
    loader.restore(LoaderState(epoch=0, samples_consumed=0, seed=5))
    first_pass = loader.batches()
    assert first_pass.persistent_workers
    keys = []
    for step, batch in enumerate(loader, start=1):
        keys.append(batch.key)
        if step == 3:
            break
    keys += [batch.key for batch in loader]  # the rest of epoch 0
    keys += [batch.key for batch in loader]  # epoch 1
    assert keys == planned
    assert loader.batches() is first_pass  # the same workers served both epochs


def test_resampled_mode_keeps_equal_steps_and_is_seeded(uneven_shards: list[str]) -> None:
    cfg = config(uneven_shards, resampled=True)
    runs = []
    for rank in (0, 1):
        loader = build_train_loader(cfg, rank=rank, world_size=2, seed=1)
        batches = planned_batches(loader)
        assert len(batches) == loader.steps_per_epoch == 8 and all(len(b) == 2 for b in batches)
        runs.append([k for b in batches for k in b])
    assert runs[0] != runs[1]
    assert set(runs[0] + runs[1]) <= set(all_keys(uneven_shards))
    loader = build_train_loader(cfg, rank=0, world_size=2, seed=1)
    assert planned_keys(loader) == runs[0]  # seeded
    loader.restore(LoaderState(epoch=1, samples_consumed=0, seed=1))
    assert planned_keys(loader) != runs[0]  # and drawn again each epoch


def corrupt_copy(source: str, destination: Path) -> str:
    """A copy of a shard folder whose first shard's second sample has a garbage video member.

    The sample loses its digest member (as in shards from before digests) so that decoding is what
    fails, and the manifest gets the shard's new size (which the loader checks before reading).
    """
    shutil.copytree(source, destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    path = destination / manifest["shards"][0]["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isreg()]
    keys = list(dict.fromkeys(m.name.rsplit(".", 1)[0] for m, _ in members))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            if member.name == f"{keys[1]}.sha256":
                continue
            if member.name.startswith(keys[1]) and member.name.endswith((".webm", ".mp4")):
                data = b"\x1a\x45garbage" * 100
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    manifest["shards"][0]["bytes"] = path.stat().st_size
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return keys[1]


def test_corrupt_sample_is_replaced_counted_and_logged_once(
    make_shards, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "corrupt"
    bad_key = corrupt_copy(str(make_shards("ssv2", "train", max_samples=7)), folder)
    loader = build_train_loader(config([str(folder)], batch_size=4), rank=0, world_size=1, seed=0)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == loader.steps_per_epoch == 4
        keys = [k for b in batches for k in b.key]
        assert bad_key not in keys and len(keys) == 16  # a stand-in takes its row
        assert [len(b.key) for b in batches] == [4, 4, 4, 4]
    assert loader.bad_samples == 2  # once per epoch
    logged = [line for line in capsys.readouterr().err.splitlines() if bad_key in line]
    assert len(logged) == 1 and "DecodeError" in logged[0]


def test_eval_gives_every_view_of_every_sample_on_exactly_one_rank(make_shards) -> None:
    folder = str(make_shards("ssv2", "val", max_samples=5))
    cfg = config([folder], test_clips=2, test_crops=3, eval_batch_size=4)
    expected = all_keys([folder])
    rows: dict[str, list[int]] = {}
    steps = set()
    for rank in (0, 1, 2):
        loader = build_eval_loader(cfg, rank=rank, world_size=3)
        batches = list(loader)
        steps.add(len(batches))
        assert len(batches) == loader.steps
        for batch in batches:
            assert batch.inputs.shape == (4, 3, 4, 32, 32) and batch.label.dtype == torch.long
            for key, view in zip(batch.key, batch.view.tolist(), strict=True):
                if view >= 0:
                    rows.setdefault(key, []).append(view)
    assert len(steps) == 1  # equal batch counts on every rank
    assert sorted(rows) == sorted(expected)
    assert all(sorted(views) == list(range(6)) for views in rows.values())


def test_a_slice_starting_mid_shard_reads_the_same_samples(uneven_shards: list[str]) -> None:
    shard = load_shard_set(uneven_shards).shards[0]
    assert len(sample_offsets(shard.path)) == shard.num_samples
    whole = [s["__key__"] for s in ReadShardSlices()([ShardSlice(shard.path, 0, shard.num_samples)])]
    tail = [s["__key__"] for s in ReadShardSlices()([ShardSlice(shard.path, 3, shard.num_samples)])]
    assert tail == whole[3:]
    too_many = list(ReadShardSlices()([ShardSlice(shard.path, 5, shard.num_samples + 2)]))
    assert [s.get("__error__", "").startswith("shard") for s in too_many][-2:] == [True, True]


def test_manifest_problems_are_one_line_errors(tmp_path: Path, uneven_shards: list[str]) -> None:
    with pytest.raises(ManifestError, match=r"has no manifest\.json"):
        load_shard_set([str(tmp_path)])
    other = tmp_path / "other"
    shutil.copytree(uneven_shards[0], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["label_map"]["0"] = "something else"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="label_map differs"):
        load_shard_set([uneven_shards[0], str(other)])
    with pytest.raises(ValueError, match="samples_consumed"):
        build_train_loader(config(uneven_shards), rank=0, world_size=2, seed=0, state=LoaderState(0, 3, 0))
