"""RandAugment for clips on uint8 frames (torchvision and timm do not install next to CPU torch here).

A clip is a uint8 tensor (T, 3, H, W), and every op returns a uint8 clip, rounded as PIL rounds each
op of timm's image RandAugment. Every op is applied with the same parameters to all frames, and
statistics (autocontrast range, equalisation histogram, contrast mean) are taken over the whole clip,
so the clip stays temporally consistent: motion is never altered differently from one frame to the
next. Ops, magnitudes (0..10) and the per-op probability of 0.5 follow timm's `rand-m{M}-n{N}-mstd{S}`
policy. AutoAugment (`auto_augment`: the CIFAR-10, SVHN and ImageNet policies) runs on the same ops.

Why uint8 and OpenCV (measured by bench/loader.py --profile): the ops ran on float clips in torch,
which cost 4x the memory traffic and made the views float through worker IPC. Here value ops that are
a function of the pixel value alone are integer ops or one lookup table per channel (`cv2.LUT`), and
the geometric ops and the sharpness filter are OpenCV's, plane by plane: several times faster per op
than the same maps in torch (the times are in the README).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

MAX_LEVEL = 10.0
FILL = 128  # grey for pixels uncovered by geometric ops
OP_PROB = 0.5
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's "L" conversion
SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13  # PIL's SMOOTH filter

# The ops run on one clip at a time in loader workers that already fill the cores: OpenCV's own thread
# pool in each of them would oversubscribe the cores (DataLoader limits torch's threads to 1 for the
# same reason).
cv2.setNumThreads(1)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Float pixel values -> uint8, rounded half to even and clamped to [0, 255]."""
    return values.round_().clamp_(0, 255).to(torch.uint8)


def _grey(clip: torch.Tensor) -> torch.Tensor:
    """Float (T, 1, H, W) luma of a clip."""
    return (clip.float() * torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _blend(clip: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    """uint8 `other + factor * (clip - other)`: factor 0 gives `other`, 1 the clip, > 1 extrapolates."""
    return _to_uint8(clip.float().mul_(factor).add_(other * (1.0 - factor)))


def _apply_lut(clip: torch.Tensor, lut: np.ndarray) -> torch.Tensor:
    """Map every value through `lut`: one (256,) uint8 table for all channels, or (3, 256), per channel."""
    t, c, h, w = clip.shape
    pixels = clip.contiguous().numpy()
    if lut.ndim == 1:
        return torch.from_numpy(cv2.LUT(pixels.reshape(t * c * h, w), lut).reshape(t, c, h, w))
    out = np.empty_like(pixels)
    for frame, mapped in zip(pixels, out, strict=True):
        for channel in range(c):
            cv2.LUT(frame[channel], lut[channel], dst=mapped[channel])
    return torch.from_numpy(out)


def _signed(level: float, rng: np.random.Generator) -> float:
    return level if rng.random() < 0.5 else -level


def _affine(clip: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """Apply a 2x3 affine map given in normalised [-1, 1] coordinates (output -> input), grey fill.

    Bilinear like `grid_sample(align_corners=False)`; a tap outside the frame reads the grey fill, so
    border pixels blend towards grey. OpenCV warps each (H, W) plane of the contiguous clip (faster
    than gathering the four taps in torch), within 1 grey level of the float formula with
    OpenCV 5 and 2 with OpenCV 4's fixed-point taps (tests/data/test_randaugment.py).
    """
    t, c, h, w = clip.shape
    # normalised -> pixel coordinates and back (pixel centres at (2i + 1) / size - 1), around the map
    to_normalised = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    to_pixels = np.array([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]])
    pixel_map = (to_pixels @ np.array([*matrix, [0.0, 0.0, 1.0]]) @ to_normalised)[:2]
    planes = clip.contiguous().numpy().reshape(t * c, h, w)
    out = np.empty_like(planes)
    for plane, warped in zip(planes, out, strict=True):
        cv2.warpAffine(
            plane,
            pixel_map,
            (w, h),
            dst=warped,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,  # the map gives the input point of an output pixel
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=FILL,
        )
    return torch.from_numpy(out.reshape(t, c, h, w))


def _auto_contrast_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    low = clip.amin(dim=(0, 2, 3)).numpy().astype(np.float64)
    high = clip.amax(dim=(0, 2, 3)).numpy().astype(np.float64)
    scale = np.where(high > low, 255.0 / np.maximum(high - low, 1e-3), 1.0)
    values = np.arange(256.0)
    return np.clip(np.round((values[None] - low[:, None]) * scale[:, None]), 0, 255).astype(np.uint8)


def auto_contrast(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Stretch each channel to [0, 255] using the clip's own range."""
    return _apply_lut(clip, _auto_contrast_table(clip, level, rng))


def _equalize_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    pixels = clip.numpy()
    lut = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        hist = np.bincount(pixels[:, c].ravel(), minlength=256).astype(np.float64)
        cdf = hist.cumsum()
        cdf_min = cdf[hist > 0][0]
        span = cdf[-1] - cdf_min
        table = (cdf - cdf_min) / span * 255 if span > 0 else np.arange(256.0)
        lut[c] = np.clip(np.round(table), 0, 255)
    return lut


def equalize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Histogram-equalise each channel with one histogram over the whole clip."""
    return _apply_lut(clip, _equalize_table(clip, level, rng))


def _invert_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    return 255 - np.arange(256, dtype=np.uint8)


def invert(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Negative image."""
    return 255 - clip


def rotate(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Rotate by up to +-30 degrees about the centre."""
    angle = math.radians(_signed(level / MAX_LEVEL * 30.0, rng))
    _, _, h, w = clip.shape
    cos, sin = math.cos(angle), math.sin(angle)
    # normalised coordinates stretch x and y differently: correct by the aspect ratio
    aspect = w / h
    return _affine(clip, [[cos, -sin / aspect, 0.0], [sin * aspect, cos, 0.0]])


def shear_x(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Shear horizontally by up to 0.3."""
    _, _, h, w = clip.shape
    return _affine(clip, [[1.0, _signed(level / MAX_LEVEL * 0.3, rng) * h / w, 0.0], [0.0, 1.0, 0.0]])


def shear_y(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Shear vertically by up to 0.3."""
    _, _, h, w = clip.shape
    return _affine(clip, [[1.0, 0.0, 0.0], [_signed(level / MAX_LEVEL * 0.3, rng) * w / h, 1.0, 0.0]])


def translate_x(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Translate horizontally by up to 45% of the width."""
    return _affine(clip, [[1.0, 0.0, 2 * _signed(level / MAX_LEVEL * 0.45, rng)], [0.0, 1.0, 0.0]])


def translate_y(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Translate vertically by up to 45% of the height."""
    return _affine(clip, [[1.0, 0.0, 0.0], [0.0, 1.0, 2 * _signed(level / MAX_LEVEL * 0.45, rng)]])


def _posterize_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    return np.arange(256, dtype=np.uint8) & (256 - 2 ** int(level / MAX_LEVEL * 4))


def posterize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Keep 8 down to 4 bits per channel as the level rises."""
    step = 2 ** int(level / MAX_LEVEL * 4)
    return clip & (256 - step)


def _solarize_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    threshold = 256.0 - level / MAX_LEVEL * 256.0
    values = np.arange(256)
    return np.where(values >= threshold, 255 - values, values).astype(np.uint8)


def solarize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Invert pixels above a threshold that falls from 256 to 0 as the level rises."""
    return _apply_lut(clip, _solarize_table(clip, level, rng))


def _solarize_add_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    values = np.arange(256.0)
    table = np.where(values < 128, np.minimum(values + level / MAX_LEVEL * 110.0, 255), values)
    return np.round(table).astype(np.uint8)


def solarize_add(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Brighten dark pixels (below 128) by up to 110."""
    return _apply_lut(clip, _solarize_add_table(clip, level, rng))


def color(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Change saturation by a factor 1 +- 0.9 level / 10."""
    return _blend(clip, _grey(clip), 1.0 + _signed(level / MAX_LEVEL * 0.9, rng))


def _contrast_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    factor = 1.0 + _signed(level / MAX_LEVEL * 0.9, rng)
    # the mean luma is the luma of the channel means: integer sums, no float copy of the clip
    sums = clip.sum(dim=(0, 2, 3), dtype=torch.int64).tolist()
    mean = sum(w * total for w, total in zip(GREY_WEIGHTS, sums, strict=True)) / (clip.numel() // 3)
    return np.clip(np.round(mean + factor * (np.arange(256.0) - mean)), 0, 255).astype(np.uint8)


def contrast(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Change contrast around the clip's mean grey level."""
    return _apply_lut(clip, _contrast_table(clip, level, rng))


def _brightness_table(clip: torch.Tensor, level: float, rng: np.random.Generator) -> np.ndarray:
    factor = 1.0 + _signed(level / MAX_LEVEL * 0.9, rng)
    return np.clip(np.round(factor * np.arange(256.0)), 0, 255).astype(np.uint8)


def brightness(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Scale brightness by 1 +- 0.9 level / 10."""
    return _apply_lut(clip, _brightness_table(clip, level, rng))


def sharpness(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Blend with a smoothed copy (PIL's SMOOTH kernel, rounded to uint8 as PIL does): factor > 1
    sharpens, < 1 blurs."""
    factor = 1.0 + _signed(level / MAX_LEVEL * 0.9, rng)
    t, c, h, w = clip.shape
    planes = clip.contiguous().numpy().reshape(t * c, h, w)
    out = np.empty_like(planes)
    for plane, blended in zip(planes, out, strict=True):
        smooth = cv2.filter2D(plane, -1, SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
        cv2.addWeighted(plane, factor, smooth, 1.0 - factor, 0.0, dst=blended)
    return torch.from_numpy(out.reshape(t, c, h, w))


ClipOp = Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]
RAND_AUGMENT_OPS: dict[str, ClipOp] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}


# Value ops as the table they apply to the clip they are given. Each maps uint8 to uint8, so a run of
# them composes into one table exactly, and the clip is read and written once for the run.
TableOp = Callable[[torch.Tensor, float, np.random.Generator], np.ndarray]
VALUE_TABLES: dict[str, TableOp] = {
    "AutoContrast": _auto_contrast_table,
    "Equalize": _equalize_table,
    "Invert": _invert_table,
    "Posterize": _posterize_table,
    "Solarize": _solarize_table,
    "SolarizeAdd": _solarize_add_table,
    "Contrast": _contrast_table,
    "Brightness": _brightness_table,
}
# Tables that read clip statistics: the tables before them must be applied first.
CLIP_STATISTIC_TABLES = frozenset({"AutoContrast", "Equalize", "Contrast"})
# Ops that draw nothing and beat a table lookup alone (one integer op): applied as themselves when alone.
INTEGER_OPS = frozenset({"Invert", "Posterize"})


def _compose(first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """The table of `first` followed by `then` (each (256,), or (3, 256): one per channel)."""
    if first.ndim == then.ndim == 1:
        return then[first]
    first, then = np.broadcast_to(first, (3, 256)), np.broadcast_to(then, (3, 256))
    return np.take_along_axis(then, first.astype(np.intp), axis=1)


class _PendingTables:
    """Value ops drawn but not yet applied: their composed table, and the op itself while it is alone."""

    def __init__(self) -> None:
        self.table: np.ndarray | None = None
        self.alone: tuple[str, float] | None = None  # (name, level) of a single integer op

    def add(self, name: str, table: np.ndarray, level: float) -> None:
        self.alone = (name, level) if self.table is None and name in INTEGER_OPS else None
        self.table = table if self.table is None else _compose(self.table, table)

    def apply(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The clip with the pending ops applied; nothing pending afterwards."""
        if self.alone is not None:
            name, level = self.alone
            clip = RAND_AUGMENT_OPS[name](clip, level, rng)  # an integer op: no draw from rng
        elif self.table is not None:
            clip = _apply_lut(clip, self.table)
        self.table, self.alone = None, None
        return clip


def rand_augment(
    clip: torch.Tensor, num_ops: int, magnitude: float, magnitude_std: float, rng: np.random.Generator
) -> torch.Tensor:
    """Apply `num_ops` ops drawn with replacement, each with probability 0.5, to a uint8 (T, 3, H, W) clip.

    Returns a contiguous uint8 clip on the clip's device. The ops run on the host (NumPy tables, shared
    tap indices): a clip on an accelerator (the DALI image path's views) makes the round trip.
    Consecutive value ops are applied as one composed table: the same clip, bit for bit, and the same
    draws from `rng` in the same order as applying them one by one.
    """
    names = list(RAND_AUGMENT_OPS)
    device = clip.device
    # Lookup tables run several times faster on contiguous frames than on resize's channels-last output.
    clip = clip.cpu().contiguous()
    pending = _PendingTables()
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        level = magnitude if magnitude_std <= 0 else float(rng.normal(magnitude, magnitude_std))
        level = min(max(level, 0.0), MAX_LEVEL)
        if rng.random() >= OP_PROB:
            continue
        if name not in VALUE_TABLES:
            clip = RAND_AUGMENT_OPS[name](pending.apply(clip, rng), level, rng)
            continue
        if name in CLIP_STATISTIC_TABLES:
            clip = pending.apply(clip, rng)
        pending.add(name, VALUE_TABLES[name](clip, level, rng), level)
    return pending.apply(clip, rng).to(device)


# AutoAugment (Cubuk et al. 2019): the published policies as (op, probability, magnitude bin) pairs, two
# per sub-policy; None = an op without magnitude. Bins 0..9 split each op's range into 10 equal steps
# (bin 9 = the op's maximum), as torchvision's AutoAugmentPolicy does.
SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]
AUTO_AUGMENT_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}
AUTO_AUGMENT_BINS = 10
# Translation at bin 9 is 150/331 of the side (the policies were searched on 331 px images, at most 150
# px); the op table's translation reaches 0.45 at MAX_LEVEL.
AUTO_AUGMENT_MAX_TRANSLATE = 150 / 331


def auto_augment_level(name: str, magnitude_bin: int | None) -> float:
    """The op table's level (0..MAX_LEVEL scale) that gives AutoAugment's magnitude of `magnitude_bin`.

    Bin b of 10 is the fraction b / 9 of the op's range (shear 0.3, rotation 30 degrees, colour /
    contrast / brightness / sharpness factor 1 +- 0.9, solarize threshold 256 down to 0: 256 (1 - b / 9);
    torchvision's uint8 path uses 255 (1 - b / 9)); translation reaches 150/331 of the side; posterize
    keeps 8 - round(4 b / 9) bits. Ops without magnitude take level 0.
    """
    if magnitude_bin is None:
        return 0.0
    fraction = magnitude_bin / (AUTO_AUGMENT_BINS - 1)
    if name in ("TranslateX", "TranslateY"):
        return fraction * AUTO_AUGMENT_MAX_TRANSLATE / 0.45 * MAX_LEVEL
    if name == "Posterize":
        return round(4 * fraction) * MAX_LEVEL / 4  # bits removed, as the op's int(level / MAX_LEVEL * 4)
    return fraction * MAX_LEVEL


def auto_augment(clip: torch.Tensor, policy: str, rng: np.random.Generator) -> torch.Tensor:
    """AutoAugment a uint8 (T, 3, H, W) clip: one sub-policy of `policy` drawn from `rng`, each of its two
    ops applied with its probability (the same parameters on every frame; a signed op draws its sign).

    Draws from `rng`, in order: the sub-policy index, then per op its probability test and, when applied,
    what the op itself draws. Returns a contiguous uint8 clip on the clip's device.
    """
    sub_policies = AUTO_AUGMENT_POLICIES[policy]
    device = clip.device
    clip = clip.cpu().contiguous()
    for name, probability, magnitude_bin in sub_policies[int(rng.integers(len(sub_policies)))]:
        if rng.random() < probability:
            clip = RAND_AUGMENT_OPS[name](clip, auto_augment_level(name, magnitude_bin), rng)
    return clip.contiguous().to(device)
