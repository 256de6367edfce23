"""Every CPU decoder gives PyAV's frames for the same indices (h264 and VP9), decoding only what it needs."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from pipeline.data.decoders import (
    CPU_DECODERS,
    DecodeError,
    PyAVDecoder,
    available_decoders,
    build_decoder,
    resolve_decoder_name,
)
from tests.data.conftest import VIDEO_FRAMES, VIDEO_SIZE

# Unsorted, repeated, first and last frames, across GOP boundaries (GOP 8).
INDICES = [40, 3, 3, 17, 18, 0, VIDEO_FRAMES - 1, 9, 31]


def sequential_decode(data: bytes) -> np.ndarray:
    """All frames, decoded from the start without seeking (the ground truth)."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("video", ["h264", "h264-longgop", "vp9"])
def test_pyav_seeking_decoder_equals_sequential_decode(encoded_videos: dict[str, bytes], video: str) -> None:
    data = encoded_videos[video]
    frames = PyAVDecoder().decode(data, INDICES)
    assert frames.dtype == torch.uint8 and frames.shape == (len(INDICES), *VIDEO_SIZE, 3)
    assert torch.equal(frames, torch.from_numpy(sequential_decode(data)[INDICES]))


@pytest.mark.parametrize("name", [n for n in CPU_DECODERS if n != "pyav"])
@pytest.mark.parametrize("video", ["h264", "h264-longgop", "vp9"])
def test_every_cpu_decoder_equals_pyav(encoded_videos: dict[str, bytes], name: str, video: str) -> None:
    if name not in available_decoders():
        pytest.skip(f"{name} is not installed")
    data = encoded_videos[video]
    reference = PyAVDecoder().decode(data, INDICES)
    frames = build_decoder(name).decode(data, INDICES)
    # All three use FFmpeg's decoder and libswscale's default yuv420p -> rgb24 conversion (BT.601,
    # limited range), so the frames are bit-identical, not merely close.
    assert frames.shape == reference.shape and frames.dtype == torch.uint8
    assert torch.equal(frames, reference)


def test_pyav_decodes_only_from_the_keyframe_before_each_index(encoded_videos: dict[str, bytes]) -> None:
    short_gop = PyAVDecoder()
    short_gop.decode(encoded_videos["h264"], [33, 34])  # keyframes every 8 frames: 32, 33, 34
    assert short_gop.frames_decoded == 3
    short_gop.frames_decoded = 0
    short_gop.decode(encoded_videos["h264"], [2, 42])  # 0..2, then a seek to 40: 40..42
    assert short_gop.frames_decoded == 6
    long_gop = PyAVDecoder()
    long_gop.decode(encoded_videos["h264-longgop"], [42])  # one keyframe at 0: everything up to 42
    assert long_gop.frames_decoded == 43


@pytest.mark.parametrize("name", CPU_DECODERS)
def test_corrupt_or_short_video_is_a_decode_error(encoded_videos: dict[str, bytes], name: str) -> None:
    if name not in available_decoders():
        pytest.skip(f"{name} is not installed")
    decoder = build_decoder(name)
    with pytest.raises(DecodeError):
        decoder.decode(b"\x00not a video at all" * 50, [0])
    with pytest.raises(DecodeError, match=str(VIDEO_FRAMES)):
        decoder.decode(encoded_videos["h264"], [VIDEO_FRAMES + 5])


def test_auto_picks_the_fastest_installed_decoder() -> None:
    installed = available_decoders()
    assert "pyav" in installed  # av is a hard dependency
    assert resolve_decoder_name("auto") == installed[0]
    assert list(CPU_DECODERS).index(installed[0]) == min(list(CPU_DECODERS).index(n) for n in installed)
    with pytest.raises(ValueError, match="unknown decoder"):
        resolve_decoder_name("opencv")
