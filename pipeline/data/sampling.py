"""Which frames of a video make a clip: pure functions of the frame count (no decoder involved).

Two schemes, as used by the StructViT recipes:
- dense: T frames every `stride` frames; training starts the window at a random frame, testing
  places `num_clips` windows uniformly (clip c is centred at (c + 0.5) / num_clips of the free range);
- segment (TSN): the video is cut into T equal segments; training takes one random frame in each,
  testing takes the same relative position in every segment ((c + 0.5) / num_clips: the centre for
  one clip).
A video shorter than a clip needs repeats its last frame. Randomness comes only from the generator
passed in, so a seeded generator gives the same indices on every machine.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["dense", "segment"]


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """T frame indices `stride` apart; random start with `rng`, else test clip `clip` of `num_clips`."""
    _check(num_video_frames, num_frames)
    span = (num_frames - 1) * stride + 1
    free = max(0, num_video_frames - span)
    start = int(rng.integers(0, free + 1)) if rng is not None else int(free * (clip + 0.5) / num_clips)
    last = num_video_frames - 1
    return [min(start + i * stride, last) for i in range(num_frames)]


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """One frame per segment of T equal segments; random inside each with `rng`, else at (c + 0.5) / C."""
    _check(num_video_frames, num_frames)
    if num_video_frames < num_frames:
        # Too short to give every segment its own frame: take them all, then repeat the last one.
        return [min(i, num_video_frames - 1) for i in range(num_frames)]
    segment = num_video_frames / num_frames
    offsets = rng.random(num_frames) if rng is not None else np.full(num_frames, (clip + 0.5) / num_clips)
    return [min(int(segment * (i + offsets[i])), num_video_frames - 1) for i in range(num_frames)]


def train_indices(
    sampling: Sampling, num_video_frames: int, num_frames: int, stride: int, rng: np.random.Generator
) -> list[int]:
    """The frame indices of one random training clip."""
    if sampling == "dense":
        return dense_indices(num_video_frames, num_frames, stride, rng)
    return segment_indices(num_video_frames, num_frames, rng)


def eval_indices(
    sampling: Sampling, num_video_frames: int, num_frames: int, stride: int, num_clips: int
) -> list[list[int]]:
    """The frame indices of each of the `num_clips` deterministic test clips."""
    if sampling == "dense":
        return [
            dense_indices(num_video_frames, num_frames, stride, None, c, num_clips) for c in range(num_clips)
        ]
    return [segment_indices(num_video_frames, num_frames, None, c, num_clips) for c in range(num_clips)]


def eval_resized_shape(height: int, width: int, short_side: int, size: int) -> tuple[int, int]:
    """(height, width) of a frame resized for testing: short side to `short_side`, aspect kept, neither
    side under the `size`-pixel test crop."""
    scale = short_side / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def eval_crop_boxes(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """Top-left corners of the `num_crops` test crops of side `size` (1: centre; 3: along the long side).

    The frame is expected to be resized already so that its short side is at least `size`.
    """
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} frame is smaller than the {size}-pixel test crop")
    centre = ((height - size) // 2, (width - size) // 2)
    if num_crops == 1:
        return [centre]
    if num_crops != 3:
        raise ValueError(f"test crops must be 1 or 3, got {num_crops}")
    if height > width:
        return [(0, centre[1]), centre, (height - size, centre[1])]
    return [(centre[0], 0), centre, (centre[0], width - size)]
