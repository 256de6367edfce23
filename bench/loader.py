"""Loader throughput at Kinetics sizes, side by side on the same clips, sampling, transforms and workers.

    python bench/loader.py [--clips 24] [--frames 300] [--fps 30] [--height 336] [--workers 2]
                           [--batch-size 4] [--randaug 4] [--sampling dense segment]
                           [--segment-sources ssv2|dense] [--profile] [--digest-cost]
                           [--worker-startup GIB]
                           [--gop-sweep 16 8 4 3 2] [--frame-clips 96] [--cold] [--quick]

Builds a synthetic raw tree like downloaded Kinetics videos (H.264 at 30 fps, 10 s, short side 336,
16:9, one keyframe per 300 frames), shards it twice (as-is, and re-encoded with a GOP of 16), then,
for 16x4 dense and 16-segment sampling (segments on 96 SSv2-like clips by default: 4 s at 12 fps, 240
px high, one keyframe per clip, as the recipes that sample segments train on; `--segment-sources dense`
takes the Kinetics-like clips), 224 crops and the Kinetics recipe's training augmentation
(scale jitter, flip, RandAugment n4 m7 (`--randaug` ops), random erasing 0.25, mixup / cutmix; one
view per clip so that every loader delivers one clip per decoded video), measures clips/s of:
  (a) this loader reading the shards (webdataset stream, sampling, decode, augmentation, batching),
      on the as-is and on the short-GOP shards;
  (b) the usual raw-file loader: a list file of mp4 paths, decord opening each file, the same
      sampling and transforms (as VideoMAE's dataset does);
  (c) decode-only of the same kind of clips with the same decoder as (a), from bytes in memory, on
      both shard sets (the limit);
passes interleaved, and prints a/b, a/c, clips/s per core (the figure a cluster is sized with), and
frames decoded per frame delivered on both shard sets (PyAV's count: the frames its decoder produced;
non-reference frames it was told to skip are not decoded, not counted).
With --profile, one process times each stage of a worker's work on both shard sets: reading the tar
sample and its digest, decoding, colour conversion (yuv420p -> rgb24), crop + resize + flip,
RandAugment, the trip through worker IPC (pickling the batch of uint8 pixels into shared memory and
back) and the main process's normalise / erase / mixup.
With --digest-cost, (a) also runs on a copy of the as-is shards without their per-sample sha256
members (the loader then skips the check, as for shards from before digests), and the sha256 of every
sample is timed on its own: the cost of the integrity check, side by side.
With --worker-startup GIB, the time to the first batch of a pass of (a) on the short-GOP shards with
its workers kept from the last pass (as training does from epoch to epoch) vs new workers forked for
the pass, passes in turn, in this process as it is and holding GIB GiB more resident memory (forking
copies the page tables of a training process's host memory).
With --gop-sweep, the raw clips are re-encoded at each GOP given (the sharder's x264 settings) and
compared with the first: bytes, frames decoded per frame delivered and decode time per clip.
The frame-sample rows (`--frame-clips`, 0 = none; `--sampling` with no value runs only them) take SSv1-like
clips (`synth ssv1`: 48 JPEG frames at 12 fps, 100 px high, 4:3 or 16:9) and 16-segment sampling with the
same transforms: (a) this loader on frame samples (`shards ssv1`, the JPEGs as they are) and on short-GOP
video samples (`--store video`), (b) a TSM / mmaction2-style loader (a list file of `folder num_frames
label`, Pillow opening each sampled frame's file from the raw folder), (c) decode-only of the sampled JPEG
bytes with Pillow; they print a/b, a/c, frame vs video samples, bytes per clip (shards and raw files) and
frames decoded per frame delivered. With --cold (root: it writes /proc/sys/vm/drop_caches), each loader's
warm pass also comes after a cold one, the page cache, dentries and inodes dropped first, so that (a) reads
its shard tars and (b) looks up and opens its frame files from the disk, as where a data set does not stay
cached; the cold figures print beside the warm ones, with the bytes each pass read from storage per clip
(/proc/PID/io of this process and its workers), and the reads alone (one process, no decoding) cold and warm.
Rates are steady rates: each pass's first batch per worker (worker start-up, paid once per epoch of
thousands of clips in training) is timed apart and printed as start-up.
--quick is CI's smoke run (16 small clips, dense sampling, 16 frame-sample clips, one pass). Hardware,
versions and the resolved config are printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from collections.abc import Callable, Iterator
from multiprocessing.reduction import ForkingPickler  # torch adds its shared-memory tensor reductions
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import from_dict, to_dict
from pipeline.data.batch import Batch, ShippedBatch
from pipeline.data.config import DataConfig
from pipeline.data.decoders import PyAVDecoder, build_decoder, resolve_decoder_name
from pipeline.data.digest import DIGEST_MEMBER, sample_digest
from pipeline.data.frame_samples import JpegFrameDecoder, frame_member
from pipeline.data.loader import build_train_loader, make_dataloader
from pipeline.data.manifest import MANIFEST_NAME, Manifest, load_shard_set
from pipeline.data.plan import ShardSlice
from pipeline.data.sampling import train_indices
from pipeline.data.stream import ReadShardSlices, finish_train_batch, video_member
from pipeline.data.transforms import TrainTransform
from pipeline.randomness import Stream, make_rng
from shards.__main__ import main as shards_main
from shards.synth import encode_video
from shards.video import EncodeOptions, count_decoded_frames, transcode


@dataclasses.dataclass(frozen=True)
class Sources:
    """The raw clips a sampling is measured on."""

    clips: int
    frames: int
    fps: float
    height: int

    def __str__(self) -> str:
        return f"{self.clips} clips of {self.frames} frames at {self.fps:g} fps, short side {self.height}"


# What the recipes that sample segments train on (configs/base_finetune.yaml: SSv2, Diving-48, FineGym;
# the dense Kinetics recipe is the only one on 10 s clips). SSv2 clips are 2-6 s at about 12 fps and
# 240 px high (the publisher's figures): 4 s is 48 frames. Diving-48's (2-5 s at ~30 fps) hold 1-3x
# more frames per segment for its 32-frame recipe, no fewer.
# They decode 6x faster than the Kinetics-like clips, so 4x more of them make a pass as long.
SSV2_SOURCES = Sources(clips=96, frames=48, fps=12.0, height=240)


def make_data(root: Path, clips: int, frames: int, height: int, fps: float) -> tuple[Path, Path, Path]:
    """Raw tree, as-is shards and short-GOP re-encoded shards."""
    raw, original, short_gop = root / "raw", root / "shards-original", root / "shards-gop16"
    synth = ["synth", "diving48", "--out", str(raw), "--num-videos", str(clips), "--classes", "4"]
    synth += ["--frames", str(frames), "--height", str(height), "--fps", str(fps)]
    synth += ["--splits", "train", "--missing", "0"]
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
    """Re-encode a raw clip with one keyframe per 300 frames (10 s at 30 fps), like downloaded originals."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    encode_video(frames, path, "h264", fps, gop=300)


def without_digests(folder: Path, dest: Path) -> Path:
    """A copy of a shard folder whose samples have no sha256 member (the loader then skips the check)."""
    shutil.copytree(folder, dest)
    manifest = Manifest.load(dest / MANIFEST_NAME)
    entries = []
    for entry in manifest.shards:
        path = dest / entry.name
        with tarfile.open(path) as tar:
            members = [
                (m, tar.extractfile(m).read()) for m in tar if not m.name.endswith(f".{DIGEST_MEMBER}")
            ]
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in members:
                tar.addfile(member, io.BytesIO(data))
        data = path.read_bytes()
        entries.append(dataclasses.replace(entry, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    dataclasses.replace(manifest, shards=entries).save(dest / MANIFEST_NAME)
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
        rng = make_rng(Stream.SAMPLE, 0, index)
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
            self.cfg.sampling,
            num_frames,
            self.cfg.num_frames,
            self.cfg.frame_stride,
            make_rng(Stream.SAMPLE, 1, index),
        )
        return self.decoder.decode(data, indices)


class Throughput(NamedTuple):
    """A loader's clips/s once every worker is running, and its start-up per pass (epoch)."""

    rate: float
    startup_s: float


def timed_pass(loader, warm_batches: int) -> tuple[int, float, float]:
    """One pass over a loader: (clips, seconds) after its first `warm_batches` batches, and the seconds
    those took (worker start-up and each worker's first batch: paid once per epoch, which in training
    holds thousands of clips, not the few dozen a pass here holds)."""
    clips, started, warm_s = 0, time.perf_counter(), 0.0
    for index, batch in enumerate(loader):
        if index < warm_batches:
            warm_s = time.perf_counter() - started
            continue
        video = batch.inputs if isinstance(batch, Batch) else batch[0] if isinstance(batch, list) else batch
        clips += len(video)  # a batch tensor's rows, or a tuple of clips (frame sizes that differ)
    return clips, time.perf_counter() - started - warm_s, warm_s


def interleaved_rates(
    loaders: dict[str, object],
    repeats: int,
    warm_batches: int = 0,
    around_pass: Callable[[str], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Throughput]:
    """Throughput of each loader, passes taken in turn (a, b, c, a, b, c, ...) so that load from other
    processes on a shared machine falls on all of them alike. `warm_batches`: batches of each pass
    left out of the rate (one per worker: the steady rate), timed as start-up. `around_pass(name)`: a
    context entered around each pass of that loader (ColdPasses)."""
    totals = {name: np.zeros(3) for name in loaders}  # clips, steady seconds, start-up seconds
    for _ in range(repeats):
        for name, loader in loaders.items():
            with around_pass(name):
                totals[name] += timed_pass(loader, warm_batches)
    return {
        name: Throughput(clips / seconds, startup / repeats)
        for name, (clips, seconds, startup) in totals.items()
    }


def amplification(samples: list[dict], cfg: DataConfig) -> float:
    """Frames PyAV decodes per frame delivered, for one sampled clip of every sample."""
    decoder, delivered = PyAVDecoder(), 0
    for i, sample in enumerate(samples):
        meta = json.loads(sample["json"])
        indices = train_indices(
            cfg.sampling,
            int(meta["num_frames"]),
            cfg.num_frames,
            cfg.frame_stride,
            make_rng(Stream.SAMPLE, 2, i),
        )
        decoder.decode(video_member(sample), indices)
        delivered += len(indices)
    return decoder.frames_decoded / delivered


class TimedPyAV(PyAVDecoder):
    """PyAV's decoder with its yuv420p -> rgb24 conversion timed apart from the decoding."""

    def __init__(self) -> None:
        super().__init__()
        self.convert_s = 0.0

    def _keep(self, frames: list, wanted: set[int], decoded: dict[int, np.ndarray]) -> None:
        started = time.perf_counter()
        super()._keep(frames, wanted, decoded)
        self.convert_s += time.perf_counter() - started


class StageClock:
    """Seconds per named stage: `with clock("decode"): ...` adds the block's time to that stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def profile_worker(folder: Path, cfg: DataConfig) -> tuple[dict[str, float], int]:
    """Seconds per stage of a worker's work on every sample of `folder`, in one process, and the clips.

    The stages are those of the loader (`pipeline.data.stream`), called one by one. Crop + resize +
    flip is the transform without RandAugment, RandAugment the full transform's extra time (both from
    the same generator seed, so they draw the same crops). IPC is what a DataLoader worker does with
    each batch (ForkingPickler moves tensors to shared memory) plus the unpickling in the main process.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker; the main process's stage below gets them back
    clock, decoder = StageClock(), TimedPyAV()
    no_randaug = from_dict(DataConfig, {**to_dict(cfg), "aug": {**to_dict(cfg.aug), "randaug_n": 0}})
    plain, full = TrainTransform(no_randaug, flip=True), TrainTransform(cfg, flip=True)
    with clock("read tar"):
        samples = read_samples(folder)
    views, augment_s = [], 0.0
    for i, sample in enumerate(samples):
        with clock("sha256 check"):
            sample_digest(sample)
        meta = json.loads(sample["json"])
        indices = train_indices(
            cfg.sampling,
            int(meta["num_frames"]),
            cfg.num_frames,
            cfg.frame_stride,
            make_rng(Stream.SAMPLE, 3, i),
        )
        with clock("decode"):
            frames = decoder.decode(video_member(sample), indices)
        with clock("crop + resize + flip"):
            plain.pixel_views(frames, make_rng(Stream.AUGMENT, 4, i))
        started = time.perf_counter()
        views += full.pixel_views(frames, make_rng(Stream.AUGMENT, 4, i))
        augment_s += time.perf_counter() - started
    seconds = clock.seconds
    seconds["decode"] -= decoder.convert_s
    seconds["colour conversion"] = decoder.convert_s
    seconds["RandAugment"] = augment_s - seconds["crop + resize + flip"]
    torch.set_num_threads(threads)
    for first in range(0, len(views) - cfg.batch_size + 1, cfg.batch_size):
        group = views[first : first + cfg.batch_size]
        video = torch.stack([pixels for pixels, _ in group])  # as BatchTrain collates them
        with clock("worker IPC"):
            video = ForkingPickler.loads(ForkingPickler.dumps(video))
        batch = ShippedBatch(
            pixels=video,
            label=torch.zeros(len(group), dtype=torch.long),
            key=[""] * len(group),
            view=torch.zeros(len(group), dtype=torch.long),
            erase=[box for _, box in group],
            mix_seed=(0, first),
        )
        with clock("main process: normalise, erase, mix"):
            finish_train_batch(batch, cfg.aug, 4)
    return seconds, len(samples)


def print_profile(name: str, totals: dict[str, float], clips: int) -> None:
    """Milliseconds per clip and share of each stage."""
    total = sum(totals.values())
    print(f"worker profile, {name}: {total / clips * 1e3:.1f} ms per clip in one process")
    for stage, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {stage:<38} {seconds / clips * 1e3:8.1f} ms  {seconds / total:6.1%}")


def data_config(folder: Path, sampling: str, args: argparse.Namespace) -> DataConfig:
    """The loader's config: 16 frames (x4 dense or 16 segments), 224 crops, the Kinetics recipe's
    augmentation (RandAugment ops: --randaug) with one view per clip."""
    return from_dict(
        DataConfig,
        {
            "train": [str(folder)],
            "num_frames": 16,
            "sampling": sampling,
            "frame_stride": 4,
            "crop_size": 224,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "decoder": "auto",
            "shuffle_buffer": 16,
            "aug": {
                "scale": [0.367, 0.574],
                "ratio": [1.0, 1.0],
                "flip": True,
                "randaug_n": args.randaug,
                "randaug_m": 7.0,
                "mixup": 0.8,
                "cutmix": 1.0,
                "erasing_prob": 0.25,
            },
        },
    )


def build_loaders(
    sampling: str, args: argparse.Namespace, raw: Path, folders: dict[str, Path], tmp: Path
) -> dict[str, object]:
    """(a) on each shard set, (b) raw files + decord, (c) decode-only on each shard set."""
    cfg = data_config(folders["as-is"], sampling, args)
    decoder = resolve_decoder_name(cfg.decoder)
    loaders: dict[str, object] = {}
    for name, folder in folders.items():
        loaders[f"a {name}"] = build_train_loader(
            data_config(folder, sampling, args), rank=0, world_size=1, seed=0
        )
    samples = read_samples(folders["as-is"])
    metas = [json.loads(s["json"]) for s in samples]
    list_file = tmp / "train_list.txt"
    list_file.write_text("".join(f"{raw / m['source']} {m['label']}\n" for m in metas))
    loaders["b"] = DataLoader(
        RawFileClips(list_file, cfg),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
    )
    for name, folder in folders.items():
        videos = [(video_member(s), int(json.loads(s["json"])["num_frames"])) for s in read_samples(folder)]
        loaders[f"c {name}"] = DataLoader(
            DecodeOnly(videos, cfg, decoder),
            batch_size=args.batch_size,
            num_workers=args.workers,
            drop_last=True,
        )
    return loaders


def print_rates(
    sampling: str, sources: Sources, throughput: dict[str, Throughput], amp: dict[str, float], workers: int
) -> None:
    """The figures of one sampling: clips/s, per core, the ratios and the decode amplification."""
    cores = max(workers, 1)
    rates = {name: measured.rate for name, measured in throughput.items()}
    label = "16x4 dense" if sampling == "dense" else "16-segment"
    print(f"[{label}, sources: {sources}]")
    for name, text in (
        ("a as-is", "(a) this loader, as-is shards    "),
        ("a short-GOP", "(a) this loader, short-GOP shards"),
        ("b", "(b) raw files + decord, list file"),
        ("c as-is", "(c) decode only, as-is shards    "),
        ("c short-GOP", "(c) decode only, short-GOP shards"),
    ):
        print(
            f"  {text} {rates[name]:8.2f} clips/s  {rates[name] / cores:6.2f} clips/s per core  "
            f"(start-up {throughput[name].startup_s * 1e3:.0f} ms per pass)"
        )
    print(
        f"  a/b = {rates['a as-is'] / rates['b']:.2f} as-is, "
        f"{rates['a short-GOP'] / rates['b']:.2f} short-GOP   (goal >= 1.5 short-GOP)"
    )
    print(
        f"  a/c = {rates['a as-is'] / rates['c as-is']:.2f} as-is, "
        f"{rates['a short-GOP'] / rates['c short-GOP']:.2f} short-GOP   (goal >= 0.95)"
    )
    print(
        f"  frames decoded per frame delivered: {amp['as-is']:.2f} as-is, {amp['short-GOP']:.2f} short-GOP"
        "   (goal <= 2 short-GOP)"
    )


# SSv1 as distributed: 48-frame clips (about 4 s at 12 fps) of JPEG frames 100 px high, trained on with
# 16-segment sampling (configs/ssv1_s16.yaml).
SSV1_SOURCES = Sources(clips=96, frames=48, fps=12.0, height=100)


def make_frame_data(root: Path, clips: int) -> tuple[Path, Path, Path]:
    """A raw SSv1-like tree (`synth ssv1`: folders of 00001.jpg ...), its frame-sample shards (`shards
    ssv1`, the JPEGs as they are) and its short-GOP video shards (`--store video`)."""
    raw, frames, video = root / "raw", root / "shards-frames", root / "shards-video"
    synth = ["synth", "ssv1", "--out", str(raw), "--num-videos", str(clips), "--classes", "4"]
    synth += ["--frames", str(SSV1_SOURCES.frames), "--height", str(SSV1_SOURCES.height)]
    synth += ["--fps", str(SSV1_SOURCES.fps), "--splits", "train", "--missing", "0"]
    # One sharding process: a fork pool made after the loaders above ran (their threads) can hang.
    common = ["ssv1", "--root", str(raw), "--split", "train", "--max-samples", "8", "--workers", "1"]
    for command in (
        synth,
        [*common, "--out", str(frames)],
        [*common, "--out", str(video), "--store", "video"],
    ):
        if shards_main(command) != 0:
            raise SystemExit(f"preparing the benchmark data failed: {' '.join(command)}")
    return raw, frames, video


def decode_jpegs(jpegs: list[bytes]) -> torch.Tensor:
    """JPEG bytes -> uint8 (N, H, W, 3) RGB, one Pillow decode each (what a frame loader's decode costs)."""
    frames = []
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return torch.from_numpy(np.stack(frames))


class FolderFrames(Dataset):
    """The usual frame-folder loader (TSM's TSNDataSet, mmaction2's RawFrameDataset): `folder num_frames
    label` lines of a list file, Pillow opening each sampled frame's file (`00001.jpg` is frame 0), the same
    sampling and transforms as (a)."""

    def __init__(self, list_file: Path, cfg: DataConfig) -> None:
        self.rows = [line.split(" ") for line in list_file.read_text().splitlines()]
        self.cfg, self.transform = cfg, TrainTransform(cfg, flip=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = make_rng(Stream.SAMPLE, 0, index)
        frames = []
        for path in self.frame_paths(index, rng):
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        return self.transform(torch.from_numpy(np.stack(frames)), rng)[0], int(self.rows[index][2])

    def frame_paths(self, index: int, rng: np.random.Generator) -> list[Path]:
        """The files of clip `index`'s sampled frames."""
        folder, num_frames, _ = self.rows[index]
        indices = train_indices(self.cfg.sampling, int(num_frames), self.cfg.num_frames, 1, rng)
        return [Path(folder) / f"{i + 1:05d}.jpg" for i in indices]


class DecodeOnlyFrames(Dataset):
    """Decode the sampled JPEGs of in-memory frame lists and nothing else (the limit)."""

    def __init__(self, clips: list[list[bytes]], cfg: DataConfig) -> None:
        self.clips, self.cfg = clips, cfg

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> torch.Tensor:
        jpegs = self.clips[index]
        indices = train_indices(
            self.cfg.sampling, len(jpegs), self.cfg.num_frames, 1, make_rng(Stream.SAMPLE, 1, index)
        )
        return decode_jpegs([jpegs[i] for i in indices])


def frame_amplification(samples: list[dict], cfg: DataConfig) -> float:
    """JPEGs the loader's frame decoder decodes per frame delivered, for one sampled clip of every sample."""
    decoder, delivered = JpegFrameDecoder(), 0
    for i, sample in enumerate(samples):
        meta = json.loads(sample["json"])
        indices = train_indices(
            cfg.sampling, int(meta["num_frames"]), cfg.num_frames, 1, make_rng(Stream.SAMPLE, 2, i)
        )
        decoder.decode(sample, meta, indices)
        delivered += len(indices)
    return decoder.frames_decoded / delivered


def bytes_per_clip(folder: Path) -> float:
    """Shard bytes per sample of a shard folder (its manifest's figures)."""
    manifest = Manifest.load(folder / MANIFEST_NAME)
    return sum(entry.bytes for entry in manifest.shards) / manifest.total


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> None:
    """Write dirty pages out, then drop the page cache, dentries and inodes: the next pass reads every file
    and looks up every path from the disk (needs root)."""
    os.sync()
    DROP_CACHES.write_text("3\n")


def storage_read_bytes() -> int:
    """Bytes this process and its live children (the loaders' workers) have read from storage, page-cache
    hits not counted (`read_bytes` of /proc/PID/io; a reaped child's count moves to its parent's)."""
    me, total = os.getpid(), 0
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # a process that exited meanwhile
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])  # after "(comm) state"
            if me in (int(proc.name), ppid):
                io_lines = (proc / "io").read_text().splitlines()
                total += int(next(line for line in io_lines if line.startswith("read_bytes:")).split()[1])
    return total


class ColdPasses:
    """`with cold(name): ...` adds what the block read from storage to that loader's bytes, after dropping
    the page cache first where `name` is one of `cold_names`."""

    def __init__(self, cold_names: set[str]) -> None:
        self.cold_names, self.read_bytes = cold_names, {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name in self.cold_names:
            drop_page_cache()
        before = storage_read_bytes()
        yield
        self.read_bytes[name] = self.read_bytes.get(name, 0) + storage_read_bytes() - before


FRAME_ROWS = {
    "a frames": "(a) this loader, frame samples     ",
    "a video": "(a) this loader, short-GOP video   ",
    "b": "(b) frame folders + Pillow, list   ",
    "c": "(c) decode only, the sampled JPEGs ",
}


def cold_rows_possible() -> bool:
    """Whether the page cache can be dropped here (opened for writing, nothing written); if not, one line
    saying so."""
    try:
        DROP_CACHES.open("w").close()
    except OSError as error:
        print(f"cold frame rows skipped: cannot write {DROP_CACHES} ({error.strerror}; it needs root)")
        return False
    return True


def read_ms(paths: list[Path], clips: int) -> tuple[float, float]:
    """Milliseconds per clip to read `paths` whole, one after the other in one process (the I/O a worker
    waits for, without its decoding): from a dropped page cache, then again from the warm one."""
    drop_page_cache()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        for path in paths:
            path.read_bytes()
        seconds.append(time.perf_counter() - started)
    return seconds[0] * 1e3 / clips, seconds[1] * 1e3 / clips


def print_cold_frame_rows(
    rates: dict[str, float], passes: ColdPasses, args: argparse.Namespace, folder: FolderFrames, shards: Path
) -> None:
    """The cold passes' figures beside the warm ones, the bytes each read from storage per clip, and the
    reads alone: (a)'s shard tars vs the files of (b)'s sampled frames, cold and warm."""
    clips = len(folder)
    shard_ms = read_ms([Path(shard.path) for shard in load_shard_set([str(shards)]).shards], clips)
    files = [path for i in range(clips) for path in folder.frame_paths(i, make_rng(Stream.SAMPLE, 0, i))]
    file_ms = read_ms(files, clips)
    print("  cold (page cache, dentries and inodes dropped before every pass), each before a warm pass:")
    for name, text in FRAME_ROWS.items():
        print(
            f"  {text} {rates[f'{name} cold']:8.2f} clips/s  (warm {rates[name]:.2f})  B per clip read from "
            f"storage {passes.read_bytes[f'{name} cold'] / (clips * args.repeats):,.0f} "
            f"(warm {passes.read_bytes[name] / (clips * args.repeats):,.0f})"
        )
    warm_ab, warm_ac = rates["a frames"] / rates["b"], rates["a frames"] / rates["c"]
    print(
        f"  cold a/b = {rates['a frames cold'] / rates['b cold']:.2f} (warm {warm_ab:.2f})   "
        f"cold a/c = {rates['a frames cold'] / rates['c cold']:.2f} (warm {warm_ac:.2f})   "
        f"cold frames / video = {rates['a frames cold'] / rates['a video cold']:.2f}"
    )
    print(
        f"  reads alone, one process, ms per clip cold / warm: frame-sample tars {shard_ms[0]:.2f} / "
        f"{shard_ms[1]:.2f}, the {len(files) // clips} sampled frame files "
        f"{file_ms[0]:.2f} / {file_ms[1]:.2f}"
    )


def run_frame_rows(args: argparse.Namespace, tmp: Path) -> None:
    """SSv1-like clips, 16 segments: (a) this loader on frame samples and on short-GOP video samples vs (b)
    a frame-folder loader on the raw folders vs (c) decode-only of the sampled JPEGs, passes interleaved."""
    raw, frames, video = make_frame_data(tmp / "ssv1", args.frame_clips)
    cfg = data_config(frames, "segment", args)
    samples = read_samples(frames)
    metas = [json.loads(sample["json"]) for sample in samples]
    list_file = tmp / "ssv1_list.txt"
    list_file.write_text("".join(f"{raw / m['source']} {m['num_frames']} {m['label']}\n" for m in metas))
    clips = [
        [sample[frame_member(i)] for i in range(int(m["num_frames"]))]
        for sample, m in zip(samples, metas, strict=True)
    ]
    loaders: dict[str, object] = {
        "a frames": build_train_loader(cfg, rank=0, world_size=1, seed=0),
        "a video": build_train_loader(data_config(video, "segment", args), rank=0, world_size=1, seed=0),
        "b": DataLoader(
            FolderFrames(list_file, cfg),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
        ),
        "c": DataLoader(  # SSv1's frames are 4:3 or 16:9: the decoded clips come as a tuple
            DecodeOnlyFrames(clips, cfg),
            batch_size=args.batch_size,
            num_workers=args.workers,
            drop_last=True,
            collate_fn=tuple,
        ),
    }
    cold = args.cold and cold_rows_possible()
    # With --cold, each loader's warm pass follows its cold one (the page cache dropped first), which has
    # read back the files the warm one reads.
    timed: dict[str, object] = {}
    for name, loader in loaders.items():
        timed |= {f"{name} cold": loader, name: loader} if cold else {name: loader}
    passes = ColdPasses(set(timed) - set(loaders))
    os.sync()  # the trees just written go to disk now, not during the first passes (as before the cold ones)
    throughput = interleaved_rates(timed, args.repeats, args.workers, passes)
    rates = {name: measured.rate for name, measured in throughput.items()}
    cores = max(args.workers, 1)
    source = dataclasses.replace(SSV1_SOURCES, clips=args.frame_clips)
    print(f"[16-segment, SSv1-like frame samples, sources: {source}]")
    print(f"  config: {json.dumps(to_dict(cfg), sort_keys=True)}")
    for name, text in FRAME_ROWS.items():
        print(
            f"  {text} {rates[name]:8.2f} clips/s  {rates[name] / cores:6.2f} clips/s per core  "
            f"(start-up {throughput[name].startup_s * 1e3:.0f} ms per pass)"
        )
    print(
        f"  a/b = {rates['a frames'] / rates['b']:.2f} frames (goal >= 1.5)   "
        f"a/c = {rates['a frames'] / rates['c']:.2f} frames (goal >= 0.9)   "
        f"frames / video = {rates['a frames'] / rates['a video']:.2f}"
    )
    folder_bytes = sum(path.stat().st_size for path in (raw / "20bn-something-something-v1").rglob("*.jpg"))
    print(
        f"  bytes per clip: {bytes_per_clip(frames):,.0f} frame samples, "
        f"{bytes_per_clip(video):,.0f} short-GOP video, {folder_bytes / len(samples):,.0f} raw JPEG files"
    )
    print(
        f"  frames decoded per frame delivered: {frame_amplification(samples, cfg):.2f} frame samples, "
        f"{amplification(read_samples(video), cfg):.2f} short-GOP video"
    )
    if cold:
        print_cold_frame_rows(rates, passes, args, loaders["b"].dataset, frames)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=300, help="frames per raw clip (300 = 10 s at 30 fps)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--height", type=int, default=336, help="short side of the raw clips")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the clips per loader")
    parser.add_argument("--randaug", type=int, default=4, help="RandAugment ops per clip (the recipe's 4)")
    parser.add_argument(
        "--sampling",
        nargs="*",
        choices=("dense", "segment"),
        default=["dense", "segment"],
        help="the video rows' samplings (none: only the frame-sample rows)",
    )
    parser.add_argument(
        "--segment-sources",
        choices=("ssv2", "dense"),
        default="ssv2",
        help="segment rows' raw clips: SSv2-like (48 frames at 12 fps, 240 px) or the dense rows' clips",
    )
    parser.add_argument("--profile", action="store_true", help="also time each stage of a worker's work")
    parser.add_argument("--digest-cost", action="store_true", help="also measure the sha256 check's cost")
    parser.add_argument(
        "--worker-startup",
        type=float,
        metavar="GIB",
        help="also time a pass's first batch with kept vs new workers, then with GIB GiB more resident",
    )
    parser.add_argument(
        "--gop-sweep", type=int, nargs="+", default=[], help="also compare re-encoding GOPs (e.g. 16 8 4 3 2)"
    )
    parser.add_argument(
        "--frame-clips",
        type=int,
        default=SSV1_SOURCES.clips,
        help="SSv1-like clips of the frame-sample rows (48 JPEG frames 100 px high, 16 segments; 0 = none)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also run the frame-sample rows with the page cache dropped before every pass (needs root)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 clips of 64 frames at 128p, dense sampling, and 16 SSv1-like frame clips, one pass (CI)",
    )
    args = parser.parse_args()
    if not args.sampling and (args.worker_startup is not None or args.digest_cost):
        parser.error(
            "--worker-startup and --digest-cost measure the video rows: give --sampling dense|segment"
        )
    if args.cold and not args.frame_clips:
        parser.error("--cold runs the frame-sample rows again: give --frame-clips N > 0")
    if args.quick:
        args.clips, args.frames, args.height, args.repeats, args.sampling = 16, 64, 128, 1, ["dense"]
        args.frame_clips = 16  # 4 batches: one steady batch per worker after its first
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch {torch.__version__}, av {av.__version__}"
    )
    print(
        f"clips: {args.clips} x {args.frames} frames at {args.fps:g} fps, short side {args.height}, "
        f"workers: {args.workers}, batch: {args.batch_size}, passes: {args.repeats}, "
        f"RandAugment ops: {args.randaug}",
        flush=True,
    )
    dense_sources = Sources(args.clips, args.frames, args.fps, args.height)
    sources = {"dense": dense_sources, "segment": dense_sources}
    if args.segment_sources == "ssv2":
        sources["segment"] = SSV2_SOURCES
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        made: dict[Sources, tuple[Path, Path, Path]] = {}
        for sampling in args.sampling:
            source = sources[sampling]
            if source not in made:
                folder = tmp / f"{source.frames}x{source.height}"
                made[source] = make_data(folder, source.clips, source.frames, source.height, source.fps)
            raw, original, short_gop = made[source]
            folders = {"as-is": original, "short-GOP": short_gop}
            cfg = data_config(original, sampling, args)
            if sampling == args.sampling[0]:
                print(f"decoder for (a) and (c): {resolve_decoder_name(cfg.decoder)}")
                print(f"config: {json.dumps(to_dict(cfg), sort_keys=True)}")
            loaders = build_loaders(sampling, args, raw, folders, tmp)
            throughput = interleaved_rates(loaders, args.repeats, warm_batches=args.workers)
            amp = {name: amplification(read_samples(folder), cfg) for name, folder in folders.items()}
            print_rates(sampling, source, throughput, amp, args.workers)
            if args.profile:
                for name, folder in folders.items():
                    print_profile(f"{sampling}, {name} shards", *profile_worker(folder, cfg))
            if args.gop_sweep:
                print_gop_sweep(args, sampling, raw)
            sys.stdout.flush()
        if args.frame_clips:
            run_frame_rows(args, tmp)
            sys.stdout.flush()
        if args.worker_startup is not None:
            _, _, short_gop = made[sources[args.sampling[0]]]
            print_worker_startup(args, short_gop)
        if args.digest_cost:
            _, original, _ = made[sources[args.sampling[0]]]
            print_digest_cost(args, original, tmp)


def print_worker_startup(args: argparse.Namespace, folder: Path) -> None:
    """Time to the first batch of a pass: (a)'s workers kept from the last pass vs new workers per pass
    (the DataLoader built anew, as before workers persisted), passes in turn; then again with
    `args.worker_startup` GiB more resident memory in this process."""
    cfg = data_config(folder, args.sampling[0], args)
    kept, renewed = (build_train_loader(cfg, rank=0, world_size=1, seed=0) for _ in range(2))

    def first_batch_s(batches: Iterator[dict]) -> float:
        started = time.perf_counter()
        next(batches)
        seconds = time.perf_counter() - started
        for _ in batches:  # finish the pass, as an epoch does
            pass
        return seconds

    def passes() -> tuple[float, float]:
        kept_s = renewed_s = 0.0
        for _ in range(args.repeats + 1):
            kept_s += first_batch_s(iter(kept))
            batches = make_dataloader(renewed.stream(), cfg.workers)
            renewed_s += first_batch_s(finish_train_batch(b, cfg.aug, renewed.num_classes) for b in batches)
        return kept_s / (args.repeats + 1), renewed_s / (args.repeats + 1)

    passes()  # both loaders' first passes fork their workers: not timed
    for label, ballast in (("as it is", None), (f"+{args.worker_startup:g} GiB", args.worker_startup)):
        held = torch.ones(int(ballast * 2**28)) if ballast else None  # float32: 2**28 per GiB, touched
        kept_s, renewed_s = passes()
        print(
            f"first batch of a pass ({label}): workers kept {kept_s * 1e3:.0f} ms, "
            f"new workers {renewed_s * 1e3:.0f} ms"
        )
        del held


def print_digest_cost(args: argparse.Namespace, original: Path, tmp: Path) -> None:
    """(a) with and without the per-sample sha256 check, passes interleaved, and sha256 timed alone."""
    samples = read_samples(original)
    unchecked = without_digests(original, tmp / "shards-no-digest")
    cfg = data_config(original, args.sampling[0], args)
    loaders = {
        "with": build_train_loader(cfg, rank=0, world_size=1, seed=0),
        "without": build_train_loader(
            data_config(unchecked, args.sampling[0], args), rank=0, world_size=1, seed=0
        ),
    }
    rates = {
        name: measured.rate
        for name, measured in interleaved_rates(loaders, args.repeats, args.workers).items()
    }
    hashing = digest_seconds(samples) / len(samples)
    per_clip = max(args.workers, 1) / rates["with"]  # CPU seconds per clip
    print(
        f"integrity check: (a) with / without sha256 = {rates['with'] / rates['without']:.3f} "
        f"({rates['with']:.1f} vs {rates['without']:.1f} clips/s); sha256 alone "
        f"{hashing * 1e3:.2f} ms per sample = {hashing / per_clip:.2%} of a clip's worker time"
    )


def print_gop_sweep(args: argparse.Namespace, sampling: str, raw: Path) -> None:
    """Re-encode the raw clips at each GOP of --gop-sweep with the sharder's settings: bytes, frames
    decoded per frame delivered and PyAV decode time per clip of `sampling`, each against the first GOP,
    clips in turn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker; the next sampling's loaders get them back
    paths = sorted(raw.rglob("*.mp4"))
    videos = {gop: [transcode(path, EncodeOptions(gop=gop)) for path in paths] for gop in args.gop_sweep}
    first = args.gop_sweep[0]
    lengths = [count_decoded_frames(video) for video in videos[first]]
    PyAVDecoder().decode(videos[first][0], [0])  # PyAV's first decode in a process pays its set-up: not timed
    decoded, seconds = dict.fromkeys(args.gop_sweep, 0), dict.fromkeys(args.gop_sweep, 0.0)
    delivered = 0
    for i in range(len(paths) * args.repeats):
        indices = train_indices(sampling, lengths[i % len(paths)], 16, 4, make_rng(Stream.SAMPLE, 5, i))
        delivered += len(indices)
        for gop in args.gop_sweep:
            decoder, started = PyAVDecoder(), time.perf_counter()
            decoder.decode(videos[gop][i % len(paths)], indices)
            seconds[gop] += time.perf_counter() - started
            decoded[gop] += decoder.frames_decoded
    for gop in args.gop_sweep:
        size = sum(map(len, videos[gop])) / sum(map(len, videos[first]))
        print(
            f"  {sampling} GOP {gop:3d}: bytes x{size:.2f}, {decoded[gop] / delivered:.2f} frames "
            f"decoded per frame delivered, decode time x{seconds[gop] / seconds[first]:.2f}"
        )
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
