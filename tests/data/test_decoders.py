"""Every CPU decoder gives PyAV's frames for the same indices (h264 and VP9), decoding only what it needs."""

from __future__ import annotations

import io
from pathlib import Path

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
from shards.synth import encode_video, motion_clip
from shards.video import EncodeOptions, transcode
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


def test_one_pyav_decoder_converts_videos_of_different_sizes(
    encoded_videos: dict[str, bytes], tmp_path: Path
) -> None:
    # The decoder keeps one rgb24 reformatter across calls: a new frame size must not reuse the old one's.
    small = tmp_path / "small.mp4"
    encode_video(motion_clip(1, 4, 12, 48, 80, np.random.default_rng(3)), small, "h264", 25.0, 4)
    decoder = PyAVDecoder()
    for data in (encoded_videos["h264"], small.read_bytes(), encoded_videos["vp9"]):
        frames = decoder.decode(data, [0, 5, 9])
        assert torch.equal(frames, torch.from_numpy(sequential_decode(data)[[0, 5, 9]]))


def test_pyav_decodes_only_from_the_keyframe_before_each_index(encoded_videos: dict[str, bytes]) -> None:
    # The fixture's x264 GOPs (8 frames) start I0 b1 B2 b3 P4 ... in display order and are decoded
    # 0, 4, 2, 1, 3, ...: B2 is a reference (B-pyramid), b1 and b3 are not, and are skipped unless wanted.
    short_gop = PyAVDecoder()
    short_gop.decode(encoded_videos["h264"], [33, 34])  # 32, 36 (the anchor), 34, 33
    assert short_gop.frames_decoded == 4
    short_gop.frames_decoded = 0
    short_gop.decode(encoded_videos["h264"], [2, 42])  # 0, 4, 2, then a jump to the keyframe 40: 40, 44, 42
    assert short_gop.frames_decoded == 6
    long_gop = PyAVDecoder()
    long_gop.decode(encoded_videos["h264-longgop"], [42])  # one keyframe at 0: the 23 even frames 0..44
    assert long_gop.frames_decoded == 23


@pytest.fixture(scope="module")
def reencoded_video(encoded_videos: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The h264 fixture re-encoded by the sharder's `--reencode` (GOP 16, 7 non-reference B-frames)."""
    source = tmp_path_factory.mktemp("reencode") / "source.mp4"
    source.write_bytes(encoded_videos["h264-longgop"])
    return transcode(source, EncodeOptions(gop=16))


def test_reencoded_shards_have_non_reference_b_frames(reencoded_video: bytes) -> None:
    with av.open(io.BytesIO(reencoded_video)) as container:
        packets = sorted((p for p in container.demux(video=0) if p.size), key=lambda p: p.pts)
    kinds = ""
    for packet in packets:
        nal = bytes(packet)[4]  # mp4 stores length-prefixed NAL units: the first one's header byte
        kinds += "I" if packet.is_keyframe else ("P" if nal >> 5 else "b")
    assert kinds == "IbbbbbbbPbbbbbbP" * (VIDEO_FRAMES // 16)


def test_skipping_non_reference_frames_returns_the_sequential_frames(reencoded_video: bytes) -> None:
    everything = torch.from_numpy(sequential_decode(reencoded_video))
    anchors = [i for i in range(VIDEO_FRAMES) if i % 16 in (0, 8, 15)]  # I and P frames
    delivered = decoded = 0
    for start in range(16):  # every phase of a dense 8 x 4 clip against the GOP
        indices = [start + 4 * i for i in range(8)]
        decoder = PyAVDecoder()
        assert torch.equal(decoder.decode(reencoded_video, indices), everything[indices])
        # Per GOP: its anchors up to the first one at or after its last wanted frame, plus the
        # wanted B-frames; the B-frames in between are skipped.
        expected = set(indices)
        for gop in {i // 16 for i in indices}:
            last = max(i for i in indices if i // 16 == gop)
            stop = min(a for a in anchors if a >= last)
            expected |= {a for a in anchors if gop * 16 <= a <= stop}
        assert decoder.frames_decoded == len(expected)
        delivered, decoded = delivered + len(indices), decoded + decoder.frames_decoded
    # All-reference GOPs of 16 would decode 4.2 frames per frame delivered here (8 x 4 clips).
    assert decoded / delivered <= 2.0


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
