"""RandAugment for clips in plain torch (torchvision and timm do not install next to CPU torch here).

A clip is a float tensor (T, 3, H, W) with values in [0, 255]. Every op is applied with the same
parameters to all frames, and statistics (autocontrast range, equalisation histogram, contrast mean)
are taken over the whole clip, so the clip stays temporally consistent: motion is never altered
differently from one frame to the next. Ops, magnitudes (0..10) and the per-op probability of 0.5
follow timm's `rand-m{M}-n{N}-mstd{S}` "increasing" policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

MAX_LEVEL = 10.0
FILL = 128.0  # grey for pixels uncovered by geometric ops
OP_PROB = 0.5


def _grey(clip: torch.Tensor) -> torch.Tensor:
    weights = clip.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (clip * weights).sum(1, keepdim=True)


def _blend(clip: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (other + factor * (clip - other)).clamp(0, 255)


def _signed(level: float, rng: np.random.Generator) -> float:
    return level if rng.random() < 0.5 else -level


def _affine(clip: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """Apply a 2x3 affine map given in normalised [-1, 1] coordinates (output -> input), grey fill."""
    t, _, h, w = clip.shape
    theta = clip.new_tensor(matrix).unsqueeze(0).expand(t, 2, 3)
    grid = F.affine_grid(theta, [t, 3, h, w], align_corners=False)
    ones = torch.ones_like(clip[:, :1])
    # Sampling a ones-mask alongside tells which output pixels came from outside the frame.
    out = F.grid_sample(
        torch.cat([clip, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    mask = out[:, 3:]
    return out[:, :3] * mask + FILL * (1 - mask)


def auto_contrast(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Stretch each channel to [0, 255] using the clip's own range."""
    low = clip.amin(dim=(0, 2, 3), keepdim=True)
    high = clip.amax(dim=(0, 2, 3), keepdim=True)
    scale = torch.where(high > low, 255.0 / (high - low).clamp(min=1e-3), torch.ones_like(high))
    return ((clip - low) * scale).clamp(0, 255)


def equalize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Histogram-equalise each channel with one histogram over the whole clip."""
    values = clip.round().clamp(0, 255).long()
    out = torch.empty_like(clip)
    for c in range(3):
        channel = values[:, c]
        hist = torch.bincount(channel.flatten(), minlength=256).double()
        cdf = hist.cumsum(0)
        cdf_min = cdf[hist > 0][0]
        span = cdf[-1] - cdf_min
        lut = ((cdf - cdf_min) / span * 255).clamp(0, 255) if span > 0 else torch.arange(256.0)
        out[:, c] = lut.to(clip)[channel]  # clip's dtype and device (the identity table is a host tensor)
    return out


def invert(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Negative image."""
    return 255.0 - clip


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


def posterize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Keep 8 down to 4 bits per channel as the level rises."""
    step = 2 ** int(level / MAX_LEVEL * 4)
    return torch.div(clip.round(), step, rounding_mode="floor") * step


def solarize(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Invert pixels above a threshold that falls from 256 to 0 as the level rises."""
    threshold = 256.0 - level / MAX_LEVEL * 256.0
    return torch.where(clip >= threshold, 255.0 - clip, clip)


def solarize_add(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Brighten dark pixels (below 128) by up to 110."""
    return torch.where(clip < 128, (clip + level / MAX_LEVEL * 110.0).clamp(max=255), clip)


def color(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Change saturation by a factor 1 +- 0.9 level / 10."""
    return _blend(clip, _grey(clip).expand_as(clip), 1.0 + _signed(level / MAX_LEVEL * 0.9, rng))


def contrast(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Change contrast around the clip's mean grey level."""
    return _blend(clip, _grey(clip).mean().expand_as(clip), 1.0 + _signed(level / MAX_LEVEL * 0.9, rng))


def brightness(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Scale brightness by 1 +- 0.9 level / 10."""
    return _blend(clip, torch.zeros_like(clip), 1.0 + _signed(level / MAX_LEVEL * 0.9, rng))


def sharpness(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Blend with a smoothed copy (PIL's SMOOTH kernel): factor > 1 sharpens, < 1 blurs."""
    kernel = clip.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = F.conv2d(F.pad(clip, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return _blend(clip, smooth, 1.0 + _signed(level / MAX_LEVEL * 0.9, rng))


def identity(clip: torch.Tensor, level: float, rng: np.random.Generator) -> torch.Tensor:
    """No change."""
    return clip


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


def rand_augment(
    clip: torch.Tensor, num_ops: int, magnitude: float, magnitude_std: float, rng: np.random.Generator
) -> torch.Tensor:
    """Apply `num_ops` ops drawn with replacement, each with probability 0.5, to a (T, 3, H, W) clip."""
    names = list(RAND_AUGMENT_OPS)
    for _ in range(num_ops):
        op = RAND_AUGMENT_OPS[names[int(rng.integers(len(names)))]]
        level = magnitude if magnitude_std <= 0 else float(rng.normal(magnitude, magnitude_std))
        level = min(max(level, 0.0), MAX_LEVEL)
        if rng.random() < OP_PROB:
            clip = op(clip, level, rng)
    return clip
