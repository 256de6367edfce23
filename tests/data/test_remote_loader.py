"""The loader reading shards from a real S3-compatible server (SeaweedFS): the same batches as from local
disk, a deleted object as counted bad samples, the local cache (no GET in a cached epoch, its bound, a
damaged copy fetched again, a full cache disk), retries across a server restart, one-line errors."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import torch

from pipeline import storage
from pipeline.config import from_dict
from pipeline.data import shard_io
from pipeline.data.config import DataConfig
from pipeline.data.loader import TrainLoader, build_eval_loader, build_train_loader
from pipeline.data.manifest import ManifestError, load_shard_set
from tests.object_store import Bucket, ObjectStore


@pytest.fixture(scope="module")
def shards(make_shards) -> Path:
    """Real ssv2 shards: 16 videos in 4 shards of 4."""
    return make_shards("ssv2", "train", num_videos=16, classes=2, max_samples=4)


@pytest.fixture
def remote(s3_bucket: Bucket, shards: Path) -> str:
    """`shards` uploaded to a fresh bucket: the URL of their folder."""
    return s3_bucket.upload(shards, "ssv2/train")


def config(folder: str, **overrides: object) -> DataConfig:
    base = {
        "train": [folder],
        "val": [folder],
        "num_frames": 4,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 4,
        "workers": 0,
        "shuffle_buffer": 4,
        "decoder": "pyav",
    }
    return from_dict(DataConfig, {**base, **overrides})


def epoch(loader: TrainLoader) -> list[dict]:
    """The batches of the loader's next epoch."""
    return list(loader)


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert a.key == b.key
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.label, b.label)


def cached_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{shard_io.CACHE_SUFFIX}"))


def test_the_shard_set_of_a_url_holds_the_local_counts_digests_and_urls(shards: Path, remote: str) -> None:
    local, far = load_shard_set([str(shards)]), load_shard_set([remote])
    assert [s.num_samples for s in far.shards] == [s.num_samples for s in local.shards]
    assert [(s.bytes, s.sha256) for s in far.shards] == [(s.bytes, s.sha256) for s in local.shards]
    assert far.label_map == local.label_map and far.frame_counts == local.frame_counts
    assert all(s.path.startswith(f"{remote}/") for s in far.shards)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_from_the_bucket_gives_the_local_batches(shards: Path, remote: str, workers: int) -> None:
    local = build_train_loader(config(str(shards), workers=workers), rank=0, world_size=1, seed=3)
    far = build_train_loader(config(remote, workers=workers), rank=0, world_size=1, seed=3)
    assert_same_batches(epoch(far), epoch(local))
    assert far.bad_samples == 0


def test_evaluation_from_the_bucket_gives_the_local_batches(shards: Path, remote: str) -> None:
    local = list(build_eval_loader(config(str(shards)), rank=0, world_size=1))
    far = list(build_eval_loader(config(remote), rank=0, world_size=1))
    assert_same_batches(far, local)


def test_a_deleted_object_is_counted_bad_samples_and_every_batch_keeps_its_rows(
    shards: Path, remote: str, s3_bucket: Bucket, tmp_path: Path
) -> None:
    loader = build_train_loader(
        config(remote, max_bad_fraction=1.0), rank=0, world_size=1, seed=0, run_dir=tmp_path
    )
    gone = loader.shard_set.shards[1]
    s3_bucket.delete(f"ssv2/train/{gone.path.rsplit('/', 1)[-1]}")
    batches = epoch(loader)
    assert len(batches) == loader.steps_per_epoch and all(len(b.key) == 4 for b in batches)
    assert loader.bad_samples >= gone.num_samples  # its own samples (stand-ins may draw it again)
    rows = (tmp_path / "bad_samples.jsonl").read_text().splitlines()
    assert len(rows) == loader.bad_samples
    assert all(gone.path in row and "no such key" in row for row in rows)


def test_a_cached_epoch_makes_no_request(shards: Path, remote: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    local = build_train_loader(config(str(shards)), rank=0, world_size=1, seed=1)
    far = build_train_loader(config(remote, cache_dir=str(cache)), rank=0, world_size=1, seed=1)
    before = shard_io.REQUESTS["shard"]
    assert_same_batches(epoch(far), epoch(local))
    fetched = shard_io.REQUESTS["shard"] - before
    assert fetched >= len(far.shard_set.shards) and len(cached_files(cache)) == len(far.shard_set.shards)
    assert_same_batches(epoch(far), epoch(local))  # the second epoch, from the cache
    assert shard_io.REQUESTS["shard"] - before == fetched


def test_the_cache_bound_holds(shards: Path, remote: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sizes = sorted(s.bytes for s in load_shard_set([remote]).shards)
    bound = sizes[-1] + sizes[-2]  # room for two shards of four
    local = build_train_loader(config(str(shards)), rank=0, world_size=1, seed=2)
    far = build_train_loader(
        config(remote, cache_dir=str(cache), cache_gb=bound / 1e9), rank=0, world_size=1, seed=2
    )
    for _ in range(2):
        assert_same_batches(epoch(far), epoch(local))
        files = cached_files(cache)
        assert 1 <= len(files) <= 2 and sum(f.stat().st_size for f in files) <= bound


def test_a_damaged_cached_shard_is_fetched_again(shards: Path, remote: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    local = build_train_loader(config(str(shards)), rank=0, world_size=1, seed=4)
    far = build_train_loader(config(remote, cache_dir=str(cache)), rank=0, world_size=1, seed=4)
    assert_same_batches(epoch(far), epoch(local))
    damaged = cached_files(cache)[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    before = shard_io.REQUESTS["shard"]
    assert_same_batches(epoch(far), epoch(local))
    assert shard_io.REQUESTS["shard"] - before == 1  # that shard alone, in one GET
    assert far.bad_samples == 0
    assert len(cached_files(cache)) == len(far.shard_set.shards)


def test_a_full_cache_disk_warns_once_and_streams(
    shards: Path, remote: str, tmpfs, capsys: pytest.CaptureFixture
) -> None:
    disk = tmpfs("16k")  # smaller than any shard
    local = build_train_loader(config(str(shards)), rank=0, world_size=1, seed=5)
    far = build_train_loader(config(remote, cache_dir=str(disk.path)), rank=0, world_size=1, seed=5)
    assert_same_batches(epoch(far), epoch(local))
    assert_same_batches(epoch(far), epoch(local))
    assert far.bad_samples == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cannot be written" in line]
    assert len(warnings) == 1 and "the file system is full" in warnings[0]


def test_reads_retry_across_a_server_restart(shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    store = ObjectStore(tmp_path / "store")
    store.start()
    try:
        for name, value in store.env.items():
            monkeypatch.setenv(name, value)
        folder = store.bucket().upload(shards, "train")
        local = build_train_loader(config(str(shards)), rank=0, world_size=1, seed=6)
        far = build_train_loader(config(folder), rank=0, world_size=1, seed=6)
        expected, batches = epoch(local), iter(far)
        got = [next(batches)]
        store.stop()  # killed between two shards: the next GET meets a dead endpoint
        restart = threading.Timer(1.5, store.start)
        restart.start()
        got += list(batches)
        restart.join()
    finally:
        store.stop()
    assert_same_batches(got, expected)
    assert far.bad_samples == 0
    assert "cannot connect" in capsys.readouterr().err  # the retries said why they waited


def test_a_server_that_never_comes_back_fails_the_read_as_one_line(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.object_store import free_ports

    url = f"{s3_bucket.url}/object.bin"
    storage.write_bytes(url, b"x" * 100)
    waits: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", waits.append)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes(url, 0, 10)
    assert caught.value.cause == "cannot connect" and "\n" not in str(caught.value)
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]  # exponential backoff between the six tries


def test_a_stalled_read_times_out(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    monkeypatch.setattr(storage, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(storage, "RETRIES", 2)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    try:
        with pytest.raises(storage.StorageError) as caught:
            storage.read_bytes(f"{s3_bucket.url}/object.bin")
    finally:
        silent.close()
    assert caught.value.cause == "timeout"


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (
            "s3://no-such-bucket-xyz/train",
            "s3://no-such-bucket-xyz/train/manifest.json: the bucket does not exist",
        ),
        ("{bucket}/nothing-here", "shard folder {bucket}/nothing-here has no manifest.json"),
    ],
)
def test_a_missing_bucket_or_manifest_is_one_line(s3_bucket: Bucket, folder: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_shard_set([folder.format(bucket=s3_bucket.url)])
    assert str(caught.value) == expected.format(bucket=s3_bucket.url)


def resumed_batches(folder: str) -> list[dict]:
    """Batches of a run stopped after 2 batches per rank on 2 ranks: an exact resume of rank 0 on 2 ranks,
    then the rest of the epoch continued on 1 rank (an elastic resume), as the trainer does them."""
    from pipeline.train.checkpoint import RankState, TrainerState
    from pipeline.train.elastic import continued_loader_state

    cfg = config(folder, batch_size=2, workers=2, shuffle_buffer=4)
    old = [build_train_loader(cfg, rank=r, world_size=2, seed=7) for r in range(2)]
    batches = [batch for loader in old for batch in itertools.islice(loader, 2)]
    exact = build_train_loader(cfg, rank=0, world_size=2, seed=7, state=old[0].state())
    batches += list(itertools.islice(exact, 2))
    ranks = [RankState(loader.state(), {}, None) for loader in old]
    config_dict = {"data": {"batch_size": 2}, "engine": {"grad_accum_steps": 1}}
    saved = TrainerState(2, 0, 2, config_dict, "", {}, ranks, micro_batch=2, grad_accum=1)
    elastic = build_train_loader(
        config(folder, batch_size=4, workers=2, shuffle_buffer=4), rank=0, world_size=1, seed=7
    )
    elastic.restore(continued_loader_state(saved, elastic, shuffle_buffer=4))
    return batches + list(elastic)


def test_exact_and_elastic_resume_from_the_bucket_give_the_local_batches(shards: Path, remote: str) -> None:
    assert_same_batches(resumed_batches(remote), resumed_batches(str(shards)))
