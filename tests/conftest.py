"""Fixtures shared by every test folder: real shards made by the real sharder from synthetic raw data."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from shards.__main__ import main as shards_main
from tests.disks import Tmpfs
from tests.object_store import Bucket, ObjectStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding long tests first (each file's tests stay together, in order): `scripts/test.sh`
    spreads whole files over two processes (`-n 2 --dist loadfile`), and long files started first leave
    the many short ones to fill the end instead of one long file running alone."""
    long_files = {
        item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("slurm")
    }
    items.sort(key=lambda item: item.path not in long_files)


@pytest.fixture(scope="session")
def make_shards(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A factory: `make_shards(dataset, split, ...)` -> the shard folder (with manifest.json).

    It runs `python -m shards synth` and then `python -m shards <dataset>` in-process, once per
    distinct set of arguments in the whole session; the raw tree (every publisher split) is made once
    per (dataset, num_videos, classes, seed) and shared by the shard folders made from it.
    """
    made: dict[tuple, Path] = {}
    raws: dict[tuple, Path] = {}

    def make(
        dataset: str = "ssv2",
        split: str = "train",
        num_videos: int = 16,
        classes: int = 4,
        seed: int = 0,
        reencode: bool = False,
        max_samples: int = 4,
        extra_args: Sequence[str] = (),
    ) -> Path:
        key = (dataset, split, num_videos, classes, seed, reencode, max_samples, tuple(extra_args))
        if key in made:
            return made[key]
        raw_key = (dataset, num_videos, classes, seed)
        if raw_key not in raws:
            raw = tmp_path_factory.mktemp(f"{dataset}-raw") / "raw"
            synth_args = ["synth", dataset, "--out", str(raw), "--num-videos", str(num_videos)]
            synth_args += ["--classes", str(classes), "--seed", str(seed)]
            if shards_main(synth_args) != 0:
                raise RuntimeError(f"synth failed for {dataset} (arguments {synth_args})")
            raws[raw_key] = raw
        raw, out = raws[raw_key], tmp_path_factory.mktemp(f"{dataset}-{split}") / "shards"
        shard_args = [dataset, "--root", str(raw), "--split", split, "--out", str(out)]
        shard_args += ["--max-samples", str(max_samples), "--shuffle-seed", str(seed), *extra_args]
        if reencode:
            shard_args.append("--reencode")
        if shards_main(shard_args) != 0:
            raise RuntimeError(f"sharding failed for {dataset} (arguments {shard_args})")
        made[key] = out
        return out

    return make


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """A real S3-compatible server (SeaweedFS on 127.0.0.1, free ports) for the whole session."""
    store = ObjectStore(tmp_path_factory.mktemp("object-store"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def s3_bucket(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket on `object_store`; this process's AWS variables point at it (as a user sets them)."""
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return object_store.bucket()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Tmpfs]]:
    """`tmpfs(size)` mounts a tmpfs of `size` (e.g. "64k") under tmp_path; unmounted after the test."""
    mounted: list[Tmpfs] = []

    def mount(size: str) -> Tmpfs:
        mounted.append(Tmpfs(tmp_path / f"tmpfs{len(mounted)}", size))
        return mounted[-1]

    yield mount
    for disk in mounted:
        disk.unmount()
