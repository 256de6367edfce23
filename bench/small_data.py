"""Small-dataset training: vit_tiny vs vit_tiny_spt_lsa vs tiny StructViT / UniFormer, same budget.

    python bench/small_data.py [--epochs 8] [--img-size 32] [--vit-patch 4] [--seed 0]

Data: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes; it ships
inside the package, nothing is downloaded), upsampled to --img-size, a fixed stratified 80/20
split. Every model gets the same budget: epochs, batch 64, AdamW (lr 1e-3, wd 0.05), cosine
schedule, +-2 px random translation, same seed. Prints test top-1 per model side by side.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pipeline.models import create_model
from pipeline.models.summary import count_parameters

MODELS = ["vit_tiny", "vit_tiny_spt_lsa", "structvit_tiny_4_1", "uniformer_tiny"]


def load_split(img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, S, S) floats in [0, 1] and labels, split 80/20 per class with `seed`."""
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


def translate(batch: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translation by up to `pixels` in each direction (zero fill), one shift per batch."""
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    padded = F.pad(batch, (pixels, pixels, pixels, pixels))
    height, width = batch.shape[-2:]
    return padded[..., pixels + dy : pixels + dy + height, pixels + dx : pixels + dx + width]


def train_and_test(
    name: str, data: tuple[torch.Tensor, ...], epochs: int, img_size: int, seed: int, vit_patch: int | None
) -> dict:
    """Train `name` from scratch on the split and return its test accuracy, size and wall time."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    overrides = {"patch_size": vit_patch} if vit_patch and name.startswith("vit") else {}
    model = create_model(name, 10, img_size=img_size, in_chans=1, **overrides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(train_x) / 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * 64 : (step + 1) * 64]
            loss = F.cross_entropy(model(translate(train_x[index], generator)), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(test_x[i : i + 256]).argmax(-1) for i in range(0, len(test_x), 256)])
    return {
        "model": name,
        "params_m": count_parameters(model) / 1e6,
        "top1": (predictions == test_y).float().mean().item() * 100,
        "minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    """Train each model with the same budget and print the accuracies side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs for every model")
    parser.add_argument("--img-size", type=int, default=32, help="digits are upsampled to this size")
    parser.add_argument("--vit-patch", type=int, default=None, help="ViT patch size (default img_size // 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    data = load_split(args.img_size, args.seed)
    print(
        f"# digits: {len(data[0])} train / {len(data[2])} test, {args.img_size}px, {args.epochs} epochs, "
        f"seed {args.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    rows = [
        train_and_test(name, data, args.epochs, args.img_size, args.seed, args.vit_patch)
        for name in args.models
    ]
    print(f"{'model':<22}{'params (M)':>12}{'test top-1 %':>14}{'train min':>11}")
    for row in rows:
        print(f"{row['model']:<22}{row['params_m']:>12.2f}{row['top1']:>14.2f}{row['minutes']:>11.1f}")


if __name__ == "__main__":
    main()
