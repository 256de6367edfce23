"""uint8 RandAugment: every op against a float reference of its formula, within a tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.randaugment import GREY_WEIGHTS, MAX_LEVEL, RAND_AUGMENT_OPS, rand_augment


def float_affine(clip: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """grid_sample's bilinear map with the grey fill blended in at the borders."""
    t, _, h, w = clip.shape
    grid = F.affine_grid(torch.tensor(matrix).expand(t, 2, 3), [t, 3, h, w], align_corners=False)
    return (
        F.grid_sample(clip - 128.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 128.0
    )


def float_grey(clip: torch.Tensor) -> torch.Tensor:
    return (clip * torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)


def blend(clip: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    return other + factor * (clip - other)


def equalize(clip: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(clip)
    for c in range(3):
        channel = clip[:, c].long()
        hist = torch.bincount(channel.flatten(), minlength=256).double()
        cdf = hist.cumsum(0)
        cdf_min = cdf[hist > 0][0]
        out[:, c] = ((cdf - cdf_min) / (cdf[-1] - cdf_min) * 255).float()[channel]
    return out


def sharpen(clip: torch.Tensor, factor: float) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = F.conv2d(F.pad(clip, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return blend(clip, smooth, factor)


def reference(name: str, clip: torch.Tensor, level: float, sign: float) -> torch.Tensor:
    """The float formula of op `name` at `level`, its signed magnitudes taking `sign`."""
    frac = level / MAX_LEVEL
    factor = 1.0 + sign * frac * 0.9
    _, _, h, w = clip.shape
    low, high = clip.amin(dim=(0, 2, 3), keepdim=True), clip.amax(dim=(0, 2, 3), keepdim=True)
    angle = math.radians(sign * frac * 30.0)
    formulas = {
        "AutoContrast": lambda: (clip - low) * 255.0 / (high - low),
        "Equalize": lambda: equalize(clip),
        "Invert": lambda: 255.0 - clip,
        "Rotate": lambda: float_affine(
            clip,
            [
                [math.cos(angle), -math.sin(angle) * h / w, 0.0],
                [math.sin(angle) * w / h, math.cos(angle), 0.0],
            ],
        ),
        "Posterize": lambda: torch.div(clip, 2 ** int(frac * 4), rounding_mode="floor") * 2 ** int(frac * 4),
        "Solarize": lambda: torch.where(clip >= 256.0 - frac * 256.0, 255.0 - clip, clip),
        "SolarizeAdd": lambda: torch.where(clip < 128, clip + frac * 110.0, clip),
        "Color": lambda: blend(clip, float_grey(clip), factor),
        "Contrast": lambda: blend(clip, float_grey(clip).mean(), factor),
        "Brightness": lambda: blend(clip, 0.0, factor),
        "Sharpness": lambda: sharpen(clip, factor),
        "ShearX": lambda: float_affine(clip, [[1.0, sign * frac * 0.3 * h / w, 0.0], [0.0, 1.0, 0.0]]),
        "ShearY": lambda: float_affine(clip, [[1.0, 0.0, 0.0], [sign * frac * 0.3 * w / h, 1.0, 0.0]]),
        "TranslateX": lambda: float_affine(clip, [[1.0, 0.0, 2 * sign * frac * 0.45], [0.0, 1.0, 0.0]]),
        "TranslateY": lambda: float_affine(clip, [[1.0, 0.0, 0.0], [0.0, 1.0, 2 * sign * frac * 0.45]]),
    }
    return formulas[name]().round().clamp(0, 255)


GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def natural_clip() -> torch.Tensor:
    """A smooth random uint8 clip (T, 3, H, W) of a non-square size, with a narrow value range."""
    coarse = torch.from_numpy(np.random.default_rng(0).uniform(40, 200, (4, 3, 6, 9)).astype(np.float32))
    return (
        F.interpolate(coarse, size=(40, 56), mode="bicubic", align_corners=False).round().clamp(0, 255).byte()
    )


@pytest.mark.parametrize("level", [3.3, 7.0, 10.0])
@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_uint8_op_matches_its_float_formula(name: str, level: float) -> None:
    clip = natural_clip()
    rng = np.random.default_rng(5)
    out = RAND_AUGMENT_OPS[name](clip, level, rng)
    assert out.dtype == torch.uint8 and out.shape == clip.shape
    # the op's own draw (the sign of a signed magnitude) is its generator's first draw
    sign = 1.0 if np.random.default_rng(5).random() < 0.5 else -1.0
    expected = reference(name, clip.float(), level, sign)
    diff = (out.float() - expected).abs()
    # The rounding of the float formula; OpenCV 4 warps with 1/32-pixel fixed-point taps (OpenCV 5: exact).
    tolerance = 2.0 if name in GEOMETRIC_OPS else 1.0
    assert diff.max() <= tolerance, f"{name}: max difference {diff.max()}"


def test_rand_augment_is_deterministic_and_stays_uint8() -> None:
    clip = natural_clip()
    a = rand_augment(clip, 4, 9.0, 0.5, np.random.default_rng(3))
    b = rand_augment(clip, 4, 9.0, 0.5, np.random.default_rng(3))
    assert torch.equal(a, b) and a.dtype == torch.uint8


def ops_one_by_one(
    clip: torch.Tensor, num_ops: int, magnitude: float, rng: np.random.Generator
) -> torch.Tensor:
    """RandAugment's policy with every drawn op applied as itself, in turn (no composed tables)."""
    names = list(RAND_AUGMENT_OPS)
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        level = min(max(float(rng.normal(magnitude, 0.5)), 0.0), MAX_LEVEL)
        if rng.random() < 0.5:
            clip = RAND_AUGMENT_OPS[name](clip, level, rng)
    return clip


def test_composed_value_ops_give_the_clip_of_the_ops_one_by_one() -> None:
    # 8 ops per clip over 300 seeds: runs of value ops (with and without clip statistics) of every length
    clip = natural_clip()
    for seed in range(300):
        expected = ops_one_by_one(clip, 8, 7.0, np.random.default_rng(seed))
        assert torch.equal(rand_augment(clip, 8, 7.0, 0.5, np.random.default_rng(seed)), expected), seed


@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_op_result_does_not_depend_on_memory_layout(name: str) -> None:
    """Ops take what the previous step left: channels-last (resize) or pixel-major (geometric ops)."""
    clip = natural_clip()
    expected = RAND_AUGMENT_OPS[name](clip, 7.0, np.random.default_rng(1))
    for layout in (
        clip.contiguous(memory_format=torch.channels_last),
        clip.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1),
    ):
        assert torch.equal(RAND_AUGMENT_OPS[name](layout, 7.0, np.random.default_rng(1)), expected)
