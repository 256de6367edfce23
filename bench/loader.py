"""Loader throughput, side by side on the same clips, sampling, transforms and number of workers.

    python bench/loader.py [--clips 32] [--frames 150] [--height 240] [--workers 2] [--batch-size 4]
                           [--digest-cost]

Builds a synthetic Diving-48-style raw tree (whole H.264 files, stored as-is by the sharder, with
one keyframe per 300 frames like downloaded originals), shards it twice (as-is, and re-encoded
with a GOP of 16), then measures clips/s of:
  (a) this loader reading the shards (webdataset stream, sampling, decode, augmentation, batching);
  (b) the usual raw-file loader: a list file of mp4 paths, decord opening each file, the same
      sampling and transforms (as VideoMAE's dataset does);
  (c) decode-only of the same kind of clips with the same decoder as (a), from bytes in memory;
and prints a/b, a/c, and frames decoded per frame delivered on both shard sets (PyAV's count: the
frames its decoder produced; non-reference frames it was told to skip are not decoded, not counted).
(a) also runs on the re-encoded shards with the configured decoder and with PyAV, the one decoder
here that skips non-reference B-frames.
With --digest-cost, (a) also runs on a copy of the as-is shards without their per-sample sha256
members (the loader then skips the check, as for shards from before digests), passes interleaved, and
the sha256 of every sample is timed on its own: the cost of the integrity check, side by side.
Hardware, versions and the resolved config are printed with the results.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import from_dict, to_dict
from pipeline.data.config import DataConfig
from pipeline.data.decoders import PyAVDecoder, build_decoder, resolve_decoder_name
from pipeline.data.digest import DIGEST_MEMBER, sample_digest
from pipeline.data.loader import build_train_loader
from pipeline.data.manifest import load_shard_set
from pipeline.data.plan import (
    ShardSlice,
    make_rng,
)
from pipeline.data.sampling import train_indices
from pipeline.data.stream import ReadShardSlices, video_member
from pipeline.data.transforms import TrainTransform
from shards.__main__ import main as shards_main
from shards.synth import encode_video


def make_data(root: Path, clips: int, frames: int, height: int) -> tuple[Path, Path, Path]:
    """Raw tree, as-is shards and short-GOP re-encoded shards."""
    raw, original, short_gop = root / "raw", root / "shards-original", root / "shards-gop16"
    synth = ["synth", "diving48", "--out", str(raw), "--num-videos", str(clips), "--classes", "4"]
    synth += ["--frames", str(frames), "--height", str(height), "--splits", "train", "--missing", "0"]
    common = ["diving48", "--root", str(raw), "--split", "train", "--max-samples", "8", "--workers", "2"]
    if shards_main(synth) != 0:
        raise SystemExit(f"preparing the benchmark data failed: {' '.join(synth)}")
    for path in sorted(raw.rglob("*.mp4")):
        make_long_gop(path)
    for args in (
        [*common, "--out", str(original)],
        [*common, "--out", str(short_gop), "--reencode", "--gop", "16"],
    ):
        if shards_main(args) != 0:
            raise SystemExit(f"preparing the benchmark data failed: {' '.join(args)}")
    return raw, original, short_gop


def make_long_gop(path: Path) -> None:
    """Re-encode a raw clip with one keyframe per 300 frames, like downloaded originals."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    encode_video(frames, path, "h264", fps, gop=300)


def without_digests(folder: Path, dest: Path) -> Path:
    """A copy of a shard folder whose samples have no sha256 member (the loader then skips the check)."""
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for entry in manifest["shards"]:
        path = dest / entry["name"]
        with tarfile.open(path) as tar:
            members = [
                (m, tar.extractfile(m).read()) for m in tar if not m.name.endswith(f".{DIGEST_MEMBER}")
            ]
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                tar.addfile(member, io.BytesIO(data))
        data = path.read_bytes()
        entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def digest_seconds(samples: list[dict]) -> float:
    """Seconds to recompute every sample's digest (what the loader's check costs, per pass)."""
    started = time.perf_counter()
    for sample in samples:
        sample_digest(sample)
    return time.perf_counter() - started


def read_samples(folder: Path) -> list[dict]:
    """Every sample of a shard folder in manifest order (raw members)."""
    samples = []
    for shard in load_shard_set([str(folder)]).shards:
        samples += ReadShardSlices()([ShardSlice(shard.path, 0, shard.num_samples)])
    return samples


class RawFileClips(Dataset):
    """The usual raw-file loader: `path label` lines of a list file, decord opening each mp4."""

    def __init__(self, list_file: Path, cfg: DataConfig) -> None:
        self.rows = [line.rsplit(" ", 1) for line in list_file.read_text().splitlines()]
        self.cfg = cfg
        self.transform = TrainTransform(cfg, flip=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import decord

        path, label = self.rows[index]
        reader = decord.VideoReader(path, num_threads=1)
        rng = make_rng(0, index)
        indices = train_indices(
            self.cfg.sampling, len(reader), self.cfg.num_frames, self.cfg.frame_stride, rng
        )
        frames = torch.from_numpy(reader.get_batch(indices).asnumpy())
        return self.transform(frames, rng)[0], int(label)


class DecodeOnly(Dataset):
    """Decode the sampled frames of in-memory videos and nothing else (the limit)."""

    def __init__(self, videos: list[tuple[bytes, int]], cfg: DataConfig, decoder: str) -> None:
        self.videos, self.cfg, self.decoder = videos, cfg, build_decoder(decoder)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> torch.Tensor:
        data, num_frames = self.videos[index]
        indices = train_indices(
            self.cfg.sampling, num_frames, self.cfg.num_frames, self.cfg.frame_stride, make_rng(1, index)
        )
        return self.decoder.decode(data, indices)


def timed_pass(loader) -> tuple[int, float]:
    """(clips, seconds) of one pass over a loader, worker start-up included as in training."""
    clips, started = 0, time.perf_counter()
    for batch in loader:
        video = batch["video"] if isinstance(batch, dict) else batch[0] if isinstance(batch, list) else batch
        clips += video.shape[0]
    return clips, time.perf_counter() - started


def interleaved_rates(loaders: dict[str, object], repeats: int) -> dict[str, float]:
    """Clips/s of each loader, passes taken in turn (a, b, c, a, b, c, ...) so that load from other
    processes on a shared machine falls on all of them alike."""
    totals = {name: [0, 0.0] for name in loaders}
    for _ in range(repeats):
        for name, loader in loaders.items():
            clips, seconds = timed_pass(loader)
            totals[name][0] += clips
            totals[name][1] += seconds
    return {name: clips / seconds for name, (clips, seconds) in totals.items()}


def amplification(samples: list[dict], cfg: DataConfig) -> float:
    """Frames PyAV decodes per frame delivered, for one sampled clip of every sample."""
    decoder, delivered = PyAVDecoder(), 0
    for i, sample in enumerate(samples):
        meta = json.loads(sample["json"])
        indices = train_indices(
            cfg.sampling, int(meta["num_frames"]), cfg.num_frames, cfg.frame_stride, make_rng(2, i)
        )
        decoder.decode(video_member(sample), indices)
        delivered += len(indices)
    return decoder.frames_decoded / delivered


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=150, help="frames per raw clip (150 = 10 s at 15 fps)")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--digest-cost", action="store_true", help="also measure the sha256 check's cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, original, short_gop = make_data(Path(tmp), args.clips, args.frames, args.height)
        cfg = from_dict(
            DataConfig,
            {
                "train": [str(original)],
                "num_frames": 16,
                "sampling": "dense",
                "frame_stride": 4,
                "crop_size": 224,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "decoder": "auto",
                "shuffle_buffer": 16,
            },
        )
        samples = read_samples(original)
        metas = [json.loads(s["json"]) for s in samples]
        list_file = Path(tmp) / "train_list.txt"
        list_file.write_text("".join(f"{raw / m['source']} {m['label']}\n" for m in metas))
        decoder = resolve_decoder_name(cfg.decoder)
        loaders = {
            "a": build_train_loader(cfg, rank=0, world_size=1, seed=0),
            "b": DataLoader(
                RawFileClips(list_file, cfg),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                drop_last=True,
            ),
            "c": DataLoader(
                DecodeOnly(
                    [(video_member(s), int(m["num_frames"])) for s, m in zip(samples, metas, strict=True)],
                    cfg,
                    decoder,
                ),
                batch_size=args.batch_size,
                num_workers=args.workers,
                drop_last=True,
            ),
        }
        short_gop_cfg = from_dict(DataConfig, {**to_dict(cfg), "train": [str(short_gop)]})
        loaders["a-short-gop"] = build_train_loader(short_gop_cfg, rank=0, world_size=1, seed=0)
        pyav_cfg = from_dict(DataConfig, {**to_dict(short_gop_cfg), "decoder": "pyav"})
        loaders["a-short-gop-pyav"] = build_train_loader(pyav_cfg, rank=0, world_size=1, seed=0)
        if args.digest_cost:
            unchecked = without_digests(original, Path(tmp) / "shards-no-digest")
            unchecked_cfg = from_dict(DataConfig, {**to_dict(cfg), "train": [str(unchecked)]})
            loaders["a-no-digest"] = build_train_loader(unchecked_cfg, rank=0, world_size=1, seed=0)
            hashing = digest_seconds(samples) / len(samples)
        rates = interleaved_rates(loaders, args.repeats)
        amp = {
            "original": amplification(samples, cfg),
            "short-GOP (16) re-encoded": amplification(read_samples(short_gop), cfg),
        }
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    print(
        f"clips: {args.clips} x {args.frames} frames at {args.height}p, decoder for (a) and (c): {decoder}, "
        f"workers: {args.workers}, batch: {args.batch_size}, passes: {args.repeats}"
    )
    print(f"config: {json.dumps(to_dict(cfg), sort_keys=True)}")
    print(
        f"(a) this loader, shards           {rates['a']:8.1f} clips/s   "
        f"(short-GOP shards: {rates['a-short-gop']:.1f}, with pyav: {rates['a-short-gop-pyav']:.1f})"
    )
    print(f"(b) raw files + decord, list file {rates['b']:8.1f} clips/s")
    print(f"(c) decode only (the limit)       {rates['c']:8.1f} clips/s")
    print(f"a/b = {rates['a'] / rates['b']:.2f}   (target >= 1.0)")
    print(f"a/c = {rates['a'] / rates['c']:.2f}   (target >= 0.85)")
    for name, value in amp.items():
        print(f"frames decoded per frame delivered, {name}: {value:.2f}")
    if args.digest_cost:
        per_clip = args.workers / rates["a"] if args.workers else 1 / rates["a"]  # CPU seconds per clip
        print(
            f"integrity check: (a) with / without sha256 = {rates['a'] / rates['a-no-digest']:.3f} "
            f"({rates['a']:.1f} vs {rates['a-no-digest']:.1f} clips/s); sha256 alone "
            f"{hashing * 1e3:.2f} ms per sample = {hashing / per_clip:.2%} of a clip's worker time"
        )


if __name__ == "__main__":
    main()
