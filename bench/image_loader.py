"""Image loader throughput at ImageNet sizes, side by side on the same JPEGs, decoder and transforms.

    python bench/image_loader.py [--images 256] [--height 374] [--workers 2] [--batch-size 32]
        [--main-threads N] [--quick]

Writes a synthetic ILSVRC-2012 train tree (`python -m shards synth imagenet`: JPEGs of ImageNet's
typical 500x375-like size, quality 90), shards it as-is, then, with 224 crops and the DeiT recipe's
training augmentation (random resized crop, flip, RandAugment n2 m9, random erasing 0.25, mixup /
cutmix), measures images/s of:
  (a) this loader reading the shards (webdataset stream, decode, augmentation, batching, mixing);
  (b) the usual folder-of-JPEGs loader: `train/<wnid>/*.JPEG` listed once, each file opened and decoded
      by the same decoder (Pillow) and put through the same TrainTransform in a map-style Dataset
      (as torchvision's ImageFolder does; mixup left out: it runs once per batch in the main process);
  (c) decode-only of the same JPEGs from bytes in memory with the same decoder (the limit);
passes interleaved, and prints a/b, a/c and images/s per core. Hardware, versions and the resolved
config are printed with the results. --quick is a smoke run (32 small images, one pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import PIL
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loader import interleaved_rates, read_samples
from pipeline.config import from_dict, to_dict
from pipeline.data.config import DataConfig
from pipeline.data.decoders import decode_image
from pipeline.data.loader import build_train_loader
from pipeline.data.transforms import TrainTransform
from pipeline.randomness import Stream, make_rng
from shards.__main__ import main as shards_main


def make_data(root: Path, images: int, height: int) -> tuple[Path, Path]:
    """The raw ImageNet-layout tree and its as-is shards."""
    raw, shards = root / "raw", root / "shards"
    synth = ["synth", "imagenet", "--out", str(raw), "--num-videos", str(images), "--classes", "6"]
    if shards_main([*synth, "--height", str(height), "--splits", "train", "--missing", "0"]) != 0:
        raise SystemExit("synth failed")
    if shards_main(["imagenet", "--root", str(raw), "--split", "train", "--out", str(shards)]) != 0:
        raise SystemExit("sharding failed")
    return raw, shards


class ImageFolderJpegs(Dataset):
    """The usual folder loader: `train/<wnid>/*.JPEG`, class index = sorted wnid, one file per item."""

    def __init__(self, folder: Path, cfg: DataConfig) -> None:
        wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
        self.rows = [
            (path, label)
            for label, wnid in enumerate(wnids)
            for path in sorted((folder / wnid).glob("*.JPEG"))
        ]
        self.transform = TrainTransform(cfg, flip=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.rows[index]
        frames = decode_image(path.read_bytes())
        return self.transform(frames, make_rng(Stream.AUGMENT, 0, index))[0], label


class DecodeOnly(Dataset):
    """Decode in-memory JPEGs and nothing else (the limit)."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_image(self.images[index])


def count_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Collate of decode-only: images of different sizes do not stack; the batch is one row per image."""
    return torch.ones(len(images))


def data_config(folder: Path, args: argparse.Namespace) -> DataConfig:
    """The image loader's config: 224 crops, the DeiT recipe's augmentation, one view per image."""
    return from_dict(
        DataConfig,
        {
            "train": [str(folder)],
            "modality": "image",
            "num_frames": 1,
            "crop_size": 224,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "shuffle_buffer": 64,
            "aug": {
                "flip": True,
                "randaug_n": 2,
                "randaug_m": 9.0,
                "mixup": 0.8,
                "cutmix": 1.0,
                "erasing_prob": 0.25,
            },
        },
    )


def build_loaders(args: argparse.Namespace, raw: Path, shards: Path) -> dict[str, object]:
    """(a) this loader on the shards, (b) the folder of JPEGs, (c) decode-only."""
    cfg = data_config(shards, args)
    common = {"batch_size": args.batch_size, "num_workers": args.workers, "drop_last": True}
    return {
        "a": build_train_loader(cfg, rank=0, world_size=1, seed=0),
        "b": DataLoader(ImageFolderJpegs(raw / "train", cfg), shuffle=True, **common),
        "c": DataLoader(
            DecodeOnly([s["jpg"] for s in read_samples(shards)]), collate_fn=count_images, **common
        ),
    }


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--height", type=int, default=374, help="image height, even (widths 0.75-1.5x)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images per loader")
    parser.add_argument(
        "--main-threads",
        type=int,
        default=0,
        help="torch threads of the main process (0: torch's default; the trainer sets cores // ranks)",
    )
    parser.add_argument("--quick", action="store_true", help="32 images of 128 px, one pass")
    args = parser.parse_args()
    if args.main_threads > 0:
        torch.set_num_threads(args.main_threads)
    if args.quick:
        args.images, args.height, args.repeats, args.batch_size = 32, 128, 1, 8
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch {torch.__version__}, Pillow {PIL.__version__}"
    )
    print(
        f"images: {args.images} at height {args.height}, workers: {args.workers}, batch: {args.batch_size}, "
        f"passes: {args.repeats}, main-process torch threads: {torch.get_num_threads()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as name:
        raw, shards = make_data(Path(name), args.images, args.height)
        print(f"config: {json.dumps(to_dict(data_config(shards, args)), sort_keys=True)}")
        throughput = interleaved_rates(
            build_loaders(args, raw, shards), args.repeats, warm_batches=args.workers
        )
    cores = max(args.workers, 1)
    for key, text in (
        ("a", "(a) this loader, shards         "),
        ("b", "(b) folder of JPEGs, same decoder"),
        ("c", "(c) decode only                  "),
    ):
        rate, startup = throughput[key]
        print(
            f"  {text} {rate:8.1f} images/s  {rate / cores:7.1f} images/s per core  "
            f"(start-up {startup * 1e3:.0f} ms per pass)"
        )
    rates = {key: measured.rate for key, measured in throughput.items()}
    print(f"  a/b = {rates['a'] / rates['b']:.2f}   a/c = {rates['a'] / rates['c']:.2f}")


if __name__ == "__main__":
    main()
