"""Fixtures of the data-loader tests: real encoded videos and helpers to read motion back out of clips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.synth import encode_video, motion_clip

VIDEO_SIZE = (64, 128)  # height, width (decord2 3.4.0 fails on 64x96 frames: a size check bug)
VIDEO_FRAMES = 48


@pytest.fixture(scope="session")
def encoded_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The same moving-disc clip encoded as h264 (.mp4, GOP 8 and default GOP) and VP9 (.webm, GOP 8)."""
    folder = tmp_path_factory.mktemp("videos")
    frames = motion_clip(1, 4, VIDEO_FRAMES, *VIDEO_SIZE, np.random.default_rng(7))
    videos = {}
    for name, codec, suffix, gop in (
        ("h264", "h264", ".mp4", 8),
        ("h264-longgop", "h264", ".mp4", None),
        ("vp9", "vp9", ".webm", 8),
    ):
        path = Path(folder) / f"{name}{suffix}"
        encode_video(frames, path, codec, 25.0, gop)
        videos[name] = path.read_bytes()
    return videos


def motion_direction(clip: torch.Tensor) -> float:
    """Angle (radians, x right, y down) of the dominant frame-to-frame motion of a (C, T, H, W) clip.

    Frame differences cancel the static background and keep the moving shape's edges; each
    difference map is the previous one shifted by the motion per frame, so their cross-correlation,
    summed over the clip, peaks at that shift.
    """
    grey = clip.float().mean(0)
    spectra = torch.fft.fft2(grey[1:] - grey[:-1])
    peak = torch.fft.ifft2((spectra[1:] * spectra[:-1].conj()).sum(0)).real
    height, width = peak.shape
    dy, dx = divmod(int(peak.argmax()), width)
    dy, dx = (dy + height // 2) % height - height // 2, (dx + width // 2) % width - width // 2
    return math.atan2(dy, dx)


def direction_class(clip: torch.Tensor, num_classes: int) -> int:
    """The synth class (direction 2*pi*k/K) nearest to the clip's motion."""
    return round(motion_direction(clip) / (2 * math.pi / num_classes)) % num_classes
