"""Small-dataset training: vit_tiny vs vit_tiny_spt_lsa vs tiny StructViT / UniFormer, one recipe, 3 seeds.

    python bench/small_data.py [--epochs 10] [--seeds 0 1 2] [--img-size 32] [--vit-patch 8]
    python bench/small_data.py --shards data/shards/cifar10 [--max-train N] [--max-test N]
    python bench/small_data.py --shards DIR --quick    # one epoch, seed 0, the two ViTs (CI)

Data: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes; it ships
inside the package, nothing is downloaded), upsampled to --img-size, one fixed stratified 80/20
split (the seeds vary initialisation, batch order and augmentation, not the split). Or, with
--shards, an image shard set as `python -m shards` writes it (CIFAR-10 / CIFAR-100 / SVHN /
Tiny-ImageNet, ImageNet): DIR/train against DIR/test (or DIR/val; an unlabelled test split, as
Tiny-ImageNet's, is passed over), each image's PNG or JPEG member decoded and brought to --img-size
(default: the first image's short side, so 32 px sets stay as they are) by the loader's evaluation
transform (short-side resize, centre crop), normalised with the training images' channel statistics;
the ViTs then take the paper's patch (img_size // 8, an 8x8 grid).

Recipe: the small-datasets ViT paper's (Lee et al. 2021: AdamW lr 1e-3, wd 0.05, 10% linear
warm-up then cosine, label smoothing 0.1, stochastic depth 0.1, 100 epochs of CIFAR's 50k images)
scaled to 1,433 training images and a 10-minute budget on 2 CPU cores: batch 64 (23 steps an
epoch), 10 epochs of which 2 warm up (230 optimizer steps; the previous recipe, 8 epochs at lr 1e-3
without warm-up on 8x8 tokens, left the plain ViT at chance). Longer runs (--epochs 20) raise the
ViTs further. Augmentation: +-2 px random translation. The ViTs cut
the 32 px image into 8 px patches: a 4x4 token grid, each token a 2x2 block of the original 8x8
digit (the paper's 8x8 grid on 32 px CIFAR would be a token per original pixel here, at 4x the
cost). Prints each model's test top-1 per seed, then mean, sample standard deviation and range.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.data.config import DataConfig
from pipeline.data.decoders import decode_image
from pipeline.data.manifest import load_shard_set
from pipeline.data.stream import read_label
from pipeline.data.transforms import EvalTransform
from pipeline.models import create_model
from pipeline.models.summary import count_parameters

MODELS = ["vit_tiny", "vit_tiny_spt_lsa", "structvit_tiny_4_1", "uniformer_tiny"]
BATCH = 64
LR, WEIGHT_DECAY, MIN_LR = 1e-3, 0.05, 1e-5
LABEL_SMOOTHING, DROP_PATH = 0.1, 0.1
SPLIT_SEED = 0


Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, train y, test x, test y
IMAGE_MEMBERS = ("png", "jpg")


def load_split(img_size: int, seed: int) -> Split:
    """Digits as (N, 1, S, S) floats in [0, 1] and labels, split 80/20 per class with `seed`."""
    from sklearn.datasets import load_digits  # the `bench` extra; --shards runs without it

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for label in range(10):
        members = torch.nonzero(labels == label).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        cut = int(0.8 * len(members))
        train_idx.append(members[:cut])
        test_idx.append(members[cut:])
    train, test = torch.cat(train_idx), torch.cat(test_idx)
    return images[train], labels[train], images[test], labels[test]


def read_image_shards(
    folder: Path, img_size: int | None, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` images of a shard folder as uint8 (N, 3, S, S) and their labels (N,).

    Reads each tar in manifest order; a sample's image is its PNG or JPEG member. S is `img_size`, or
    the first image's short side; other sizes go through the evaluation transform (resize, centre crop).
    """
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for shard in load_shard_set([str(folder)]).shards:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard.path) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for sample in samples.values():
            data = next((sample[ext] for ext in IMAGE_MEMBERS if ext in sample), None)
            if data is None:
                continue
            frames = decode_image(data)
            img_size = img_size or min(frames.shape[1:3])
            transform = EvalTransform(DataConfig(modality="image", num_frames=1, crop_size=img_size))
            images.append(transform.pixel_views(frames)[0][0])
            labels.append(read_label(sample, json.loads(sample.get("json", b"{}"))))
            if limit is not None and len(images) == limit:
                return torch.stack(images), torch.tensor(labels)
    if not images:
        raise SystemExit(f"error: no PNG or JPEG samples in the shards of {folder}")
    return torch.stack(images), torch.tensor(labels)


def load_shards(
    root: Path, img_size: int | None, max_train: int | None, max_test: int | None
) -> tuple[Split, int]:
    """DIR/train and DIR/test (or DIR/val) as normalised float (N, 3, S, S) and labels; the class count
    of the training manifest. A test split without labels (Tiny-ImageNet's) is passed over for val/."""
    test_folders = [root / name for name in ("test", "val") if (root / name).is_dir()]
    if not (root / "train").is_dir() or not test_folders:
        raise SystemExit(f"error: --shards {root} needs train/ and test/ (or val/) shard folders")
    train_x, train_y = read_image_shards(root / "train", img_size, max_train)
    for folder in test_folders:
        test_x, test_y = read_image_shards(folder, train_x.shape[-1], max_test)
        if (test_y >= 0).all():
            break
    else:
        raise SystemExit(f"error: --shards {root}: no labelled test/ or val/ shards (label -1)")
    train_x, test_x = train_x.float() / 255, test_x.float() / 255
    mean, std = train_x.mean(dim=(0, 2, 3), keepdim=True), train_x.std(dim=(0, 2, 3), keepdim=True)
    split = ((train_x - mean) / std, train_y, (test_x - mean) / std, test_y)
    return split, load_shard_set([str(root / "train")]).num_classes


def translate(batch: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translation by up to `pixels` in each direction (zero fill), one shift per batch."""
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    padded = F.pad(batch, (pixels, pixels, pixels, pixels))
    height, width = batch.shape[-2:]
    return padded[..., pixels + dy : pixels + dy + height, pixels + dx : pixels + dx + width]


def learning_rate(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 0 to LR over `warmup` steps, then cosine down to MIN_LR at `total`."""
    if step < warmup:
        return LR * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def train_and_test(
    name: str,
    data: Split,
    num_classes: int,
    epochs: int,
    warmup_epochs: int,
    seed: int,
    vit_patch: int | None,
) -> dict:
    """Train `name` from scratch with the recipe and return its test accuracy, size and wall time."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    overrides = {"patch_size": vit_patch} if name.startswith("vit") and vit_patch else {}
    model = create_model(
        name,
        num_classes,
        img_size=train_x.shape[-1],
        in_chans=train_x.shape[1],
        drop_path_rate=DROP_PATH,
        **overrides,
    )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in model.no_weight_decay()]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    steps_per_epoch = math.ceil(len(train_x) / BATCH)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for batch in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, warmup)
            index = order[batch * BATCH : (batch + 1) * BATCH]
            logits = model(translate(train_x[index], generator))
            loss = F.cross_entropy(logits, train_y[index], label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(test_x[i : i + 256]).argmax(-1) for i in range(0, len(test_x), 256)])
    return {
        "model": name,
        "seed": seed,
        "params_m": count_parameters(model) / 1e6,
        "top1": (predictions == test_y).float().mean().item() * 100,
        "final_loss": loss.item(),
        "minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    """Train each model with the recipe for every seed and print per-seed and aggregate accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs for every model")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="linear warm-up epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--img-size", type=int, help="image side in pixels (digits: 32, upsampled; shards: the first image's)"
    )
    parser.add_argument(
        "--vit-patch", type=int, help="ViT patch in pixels (digits: 8, a 4x4 grid; shards: img_size // 8)"
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--shards", type=Path, help="an image shard set: DIR/train and DIR/test (or DIR/val)")
    parser.add_argument("--max-train", type=int, help="use the first N training images of --shards")
    parser.add_argument("--max-test", type=int, help="use the first N test images of --shards")
    parser.add_argument("--quick", action="store_true", help="1 epoch, no warm-up, seed 0, the two ViTs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.warmup_epochs, args.seeds, args.models = 1, 0, [0], MODELS[:2]
    if args.shards is not None:
        data, num_classes = load_shards(args.shards, args.img_size, args.max_train, args.max_test)
        source = str(args.shards)
    else:
        data, num_classes = load_split(args.img_size or 32, SPLIT_SEED), 10
        args.vit_patch = args.vit_patch or 8
        source = "digits"
    print(
        f"# {source}: {len(data[0])} train / {len(data[2])} test, {num_classes} classes, "
        f"{data[0].shape[-1]}px, {args.epochs} epochs "
        f"({args.warmup_epochs} warm-up), batch {BATCH}, lr {LR}, seeds {args.seeds}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'model':<22}{'seed':>5}{'params (M)':>12}{'test top-1 %':>14}{'last loss':>11}{'train min':>11}")
    results: dict[str, list[float]] = {}
    for name in args.models:
        for seed in args.seeds:
            row = train_and_test(
                name, data, num_classes, args.epochs, args.warmup_epochs, seed, args.vit_patch
            )
            results.setdefault(name, []).append(row["top1"])
            print(
                f"{name:<22}{seed:>5}{row['params_m']:>12.2f}{row['top1']:>14.2f}{row['final_loss']:>11.3f}"
                f"{row['minutes']:>11.1f}",
                flush=True,
            )
    print(
        f"\n{'model':<22}{'mean top-1 %':>14}{'std':>7}{'min':>8}{'max':>8}  (over {len(args.seeds)} seeds)"
    )
    for name, accuracies in results.items():
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(
            f"{name:<22}{statistics.mean(accuracies):>14.1f}{spread:>7.1f}{min(accuracies):>8.1f}{max(accuracies):>8.1f}"
        )


if __name__ == "__main__":
    main()
