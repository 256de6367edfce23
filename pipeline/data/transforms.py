"""Clip augmentation and batch mixing in plain torch.

Decoders give uint8 frames (T, H, W, 3); the transforms here turn them into normalised float
clips (C, T, S, S). Every random choice comes from the numpy generator passed in, so a sample's
views depend only on (seed, epoch, its place in the stream), never on the process that made them.
Spatial choices (crop box, flip, RandAugment op, erased box) are drawn once per view and applied to
every frame, so motion between frames is never distorted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.config import AugConfig, DataConfig
from pipeline.data.memory import empty_batch
from pipeline.data.randaugment import auto_augment, rand_augment
from pipeline.data.sampling import eval_crop_boxes, eval_resized_shape

# Datasets whose labels name left and right: a horizontal flip would change the class.
NO_FLIP_DATASETS = frozenset({"ssv1", "ssv2"})


def should_flip(aug: AugConfig, dataset: str) -> bool:
    """Whether training flips horizontally: the explicit setting, else on except for NO_FLIP_DATASETS."""
    if aug.flip is not None:
        return aug.flip
    return dataset not in NO_FLIP_DATASETS


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random area fraction in `scale` with aspect in `ratio`.

    Like the usual RandomResizedCrop: ten tries to fit a random box, then a centre crop with the
    aspect ratio clamped into range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def padded_crop(clip: torch.Tensor, size: int, padding: int, rng: np.random.Generator) -> torch.Tensor:
    """CIFAR's random crop of a (T, 3, H, W) clip: zero-pad by `padding` on each side, cut size x size.

    A clip whose short side is not `size` is first resized to it (aspect kept), so the crop sees what
    evaluation's short-side resize shows; the offset is drawn uniformly over the padded frame.
    """
    height, width = clip.shape[-2:]
    if min(height, width) != size:
        clip = resize(clip, *eval_resized_shape(height, width, size, size))
        height, width = clip.shape[-2:]
    top = int(rng.integers(0, height + 2 * padding - size + 1))
    left = int(rng.integers(0, width + 2 * padding - size + 1))
    padded = F.pad(clip, (padding, padding, padding, padding)) if padding else clip
    return padded[:, :, top : top + size, left : left + size]


def channels_first(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> a (T, 3, H, W) view (channels-last memory, which torch resizes fastest)."""
    return frames.permute(0, 3, 1, 2)


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (T, 3, H, W) clip (uint8 or float), antialiased when shrinking."""
    if clip.shape[-2:] == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def normalise(clip: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(T, 3, H, W) in [0, 255], uint8 or float -> float (C, T, H, W) normalised (mean/std in [0, 1])."""
    t, c, h, w = clip.shape
    out = torch.empty((c, t, h, w), dtype=torch.float32, device=clip.device)
    out.copy_(clip.permute(1, 0, 2, 3))  # converts and transposes in one pass
    m = torch.tensor(mean, device=clip.device).view(3, 1, 1, 1) * 255.0
    s = torch.tensor(std, device=clip.device).view(3, 1, 1, 1) * 255.0
    return out.sub_(m).div_(s)


# The main process finishes every batch (normalise, erase, mix) while the loader's workers keep the
# cores busy, and its intra-op threads then wait on each other: a 32-image batch took 5-7 ms on one
# thread and 40-52 ms on two (2 cores, 2 workers; bench/image_loader.py --main-threads). These passes
# are memory-bound, so one thread loses little even on an idle machine.
BATCH_FINISH_THREADS = 1


@contextlib.contextmanager
def _at_most_threads(count: int) -> Iterator[None]:
    """Run the block on at most `count` torch intra-op threads, then restore the process's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, count))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def normalise_batch(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 255], uint8 or float -> float (B, C, T, H, W) normalised (as `normalise`)."""
    b, t, c, h, w = pixels.shape
    if pixels.device.type == "cpu":
        out = empty_batch((b, c, t, h, w))  # larger than glibc's mmap threshold: reuse freed batches
    else:
        out = torch.empty((b, c, t, h, w), dtype=torch.float32, device=pixels.device)
    m = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1, 1) * 255.0
    s = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1, 1) * 255.0
    with _at_most_threads(BATCH_FINISH_THREADS):
        out.copy_(pixels.permute(0, 2, 1, 3, 4))
        return out.sub_(m).div_(s)


# An erased box: (top, left, noise (C, 1, h, w)) in normalised units; None = no erasing.
EraseBox = tuple[int, int, torch.Tensor] | None


def draw_erase_box(height: int, width: int, channels: int, rng: np.random.Generator) -> EraseBox:
    """The box and noise of random erasing on a frame of `height` x `width` (None when no box fits).

    Box area is 2%-33% of the frame and its aspect ratio 0.3-3.3, as in the usual RandomErasing.
    """
    for _ in range(10):
        area = height * width * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < h < height and 0 < w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            # One noise patch shared by all frames: a static occluder, not flicker that reads as motion.
            return top, left, torch.from_numpy(rng.standard_normal((channels, 1, h, w), dtype=np.float32))
    return None


def apply_erase(clip: torch.Tensor, box: EraseBox) -> torch.Tensor:
    """A normalised (C, T, H, W) clip with `box` filled with its noise on every frame."""
    if box is None:
        return clip
    top, left, noise = box
    h, w = noise.shape[-2:]
    clip = clip.clone()
    clip[:, :, top : top + h, left : left + w] = noise.to(clip.device)
    return clip


def erase_box(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random erasing on a normalised (C, T, H, W) clip: one noise box, the same on every frame."""
    height, width = clip.shape[-2:]
    return apply_erase(clip, draw_erase_box(height, width, clip.shape[0], rng))


class TrainTransform:
    """Decoded frames -> `repeated_aug` independently augmented, normalised views (C, T, S, S).

    Per view: random resized crop (scale jitter) resized to crop_size, or the padded crop, horizontal
    flip if enabled, RandAugment or AutoAugment, normalisation, random erasing. `pixel_views` stops
    before normalisation (the loader's workers ship those 4x smaller uint8 views and the main process
    finishes them, bit-identically).
    """

    def __init__(self, cfg: DataConfig, flip: bool) -> None:
        self.aug, self.size, self.flip = cfg.aug, cfg.crop_size, flip

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> list[torch.Tensor]:
        """Augment one decoded clip (T, H, W, 3) uint8 into its views."""
        return [
            apply_erase(normalise(pixels, self.aug.mean, self.aug.std), box)
            for pixels, box in self.pixel_views(frames, rng)
        ]

    def pixel_views(
        self, frames: torch.Tensor, rng: np.random.Generator
    ) -> list[tuple[torch.Tensor, EraseBox]]:
        """The views before normalisation: uint8 (T, 3, S, S) and each view's erased box, drawn from
        `rng` in the same order as `__call__` draws them."""
        aug = self.aug
        # Every step stays uint8 (several times faster than float, and 4x fewer bytes through worker IPC);
        # RandAugment runs after the crop, on S x S frames rather than the source size.
        clip = channels_first(frames)
        _, _, height, width = clip.shape
        views = []
        for _ in range(aug.repeated_aug):
            if aug.crop == "padded":
                view = padded_crop(clip, self.size, aug.padding, rng)
            else:
                top, left, h, w = random_resized_crop_box(height, width, aug.scale, aug.ratio, rng)
                view = resize(clip[:, :, top : top + h, left : left + w], self.size, self.size)
            if self.flip and rng.random() < 0.5:
                view = view.flip(-1)
            views.append(self.augment_view(view, rng))
        return views

    def augment_view(self, view: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, EraseBox]:
        """The steps after crop and flip on a (T, 3, S, S) view: RandAugment or AutoAugment, then the
        erased box drawn.

        The DALI image path crops and flips in DALI and runs these in torch (`pipeline.data.dali_image`).
        """
        aug = self.aug
        if aug.randaug_n > 0:
            view = rand_augment(view, aug.randaug_n, aug.randaug_m, aug.randaug_mstd, rng)
        elif aug.autoaugment != "none":
            view = auto_augment(view, aug.autoaugment, rng)
        box = None
        if aug.erasing_prob > 0 and rng.random() < aug.erasing_prob:
            box = draw_erase_box(self.size, self.size, 3, rng)
        return view, box


class EvalTransform:
    """Decoded frames of one test clip -> `test_crops` normalised views (C, T, S, S).

    The short side is resized to `eval_short_side` (aspect kept), then 1 centre crop or 3 crops
    along the long side are taken. `pixel_views` gives the uint8 crops (T, 3, S, S) before normalising.
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.size, self.short_side, self.crops = cfg.crop_size, cfg.eval_short_side, cfg.test_crops
        self.mean, self.std = cfg.aug.mean, cfg.aug.std

    def __call__(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Resize, crop and normalise one test clip (T, H, W, 3) uint8."""
        return [normalise(crop, self.mean, self.std) for crop in self.pixel_views(frames)]

    def pixel_views(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Resize and crop one test clip (T, H, W, 3) uint8 into its uint8 crops (T, 3, S, S)."""
        clip = channels_first(frames)
        new_h, new_w = eval_resized_shape(*clip.shape[-2:], self.short_side, self.size)
        clip = resize(clip, new_h, new_w)
        return [
            clip[:, :, top : top + self.size, left : left + self.size]
            for top, left in eval_crop_boxes(new_h, new_w, self.size, self.crops)
        ]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) long -> (B, K) float."""
    return F.one_hot(labels, num_classes).float()


def mix_batch(
    video: torch.Tensor, labels: torch.Tensor, num_classes: int, aug: AugConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix a (B, C, T, H, W) batch with its reversed order, in place; returns (video, soft
    targets (B, K)).

    With probability 1 - mixup_prob the batch is left as is (targets are still one-hot rows, so the
    label type never changes within a run). CutMix cuts the same box out of every frame and sets
    lambda to the area actually kept. In place because the batch is the largest tensor the main
    process touches: new copies of it cost more than the arithmetic.
    """
    targets = one_hot(labels, num_classes)
    if rng.random() >= aug.mixup_prob or video.shape[0] < 2:
        return video, targets
    use_cutmix = aug.cutmix > 0 and (aug.mixup <= 0 or rng.random() < aug.mixup_switch_prob)
    lam = float(rng.beta(aug.cutmix, aug.cutmix) if use_cutmix else rng.beta(aug.mixup, aug.mixup))
    with _at_most_threads(BATCH_FINISH_THREADS):
        if use_cutmix:
            height, width = video.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(height * cut), int(width * cut)
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
            video[..., y0:y1, x0:x1] = video[..., y0:y1, x0:x1].flip(0)  # flip copies the box first
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            rows = video.shape[0]
            for first in range(rows // 2):  # rows i and B-1-i mix with each other; a middle row with itself
                last = rows - 1 - first
                kept = video[first].clone()
                video[first].mul_(lam).add_(video[last], alpha=1.0 - lam)
                video[last].mul_(lam).add_(kept, alpha=1.0 - lam)
    return video, targets * lam + targets.flip(0) * (1.0 - lam)


def shuffle_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The control experiment: each clip's frames (dim 2 of B, C, T, H, W) in a random order."""
    order = torch.stack([torch.randperm(video.shape[2], generator=generator) for _ in range(video.shape[0])])
    index = order[:, None, :, None, None].expand_as(video)
    return video.gather(2, index)
