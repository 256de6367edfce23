"""Frame-sequence samples: a clip stored as one JPEG per frame (SSv1 as distributed, or `--store frames`).

A sample's frames are the members `<key>.000000.jpg`, `<key>.000001.jpg`, ... in presentation order beside
its json (`"storage": "frames"`, `"codec": "jpeg"`, fps, num_frames, width, height), cls and sha256, so the
loader reads only the frames a clip samples. A folder of frames (SSv1's `00001.jpg ...`, numbered from 1) is
stored as it is: every frame must decode completely (`shards.image.open_image`), the numbers must run 1..N
without a gap and the frames must share one size, else the whole folder is a reject naming the frame. Only
frames that every decoder does not read alike (CMYK, ...) or that exceed `--short-side` are re-encoded
(`shards.image.prepare_image`). Decoded video frames become JPEGs at `--frame-quality` with Pillow's fixed
settings (baseline, 4:2:0, not optimised), so equal inputs give equal bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from pipeline.data.frame_samples import FRAMES_CODEC, FRAMES_STORAGE, frame_member  # the loader's names
from shards.image import JPEG_QUALITY, ImageError, encode_jpeg, open_image, output_size, prepare_image

# A raw frame file: its number, then .jpg / .jpeg (SSv1: 00001.jpg, the first frame is number 1).
FRAME_FILE = re.compile(r"(\d+)\.jpe?g", re.IGNORECASE)
FIRST_FRAME_NUMBER = 1


class FramesError(Exception):
    """A folder of frames that cannot be stored; the message is the one-line reject reason."""


@dataclass(frozen=True)
class FrameSequence:
    """A clip's frames as the JPEG bytes to store, their common size, and how many were converted."""

    frames: tuple[bytes, ...]
    width: int
    height: int
    converted_from: tuple[str, ...] = ()  # per converted frame: what it was (e.g. "JPEG CMYK")

    def members(self) -> list[tuple[str, bytes]]:
        """(member suffix, bytes) of every frame, in presentation order."""
        return [(frame_member(i), data) for i, data in enumerate(self.frames)]

    def facts(self, fps: float) -> dict[str, Any]:
        """The sample json's fields about its frames."""
        facts: dict[str, Any] = {
            "storage": FRAMES_STORAGE,
            "codec": FRAMES_CODEC,
            "fps": round(float(fps), 6),
            "num_frames": len(self.frames),
            "width": self.width,
            "height": self.height,
            "duration_s": round(len(self.frames) / float(fps), 3),
        }
        if self.converted_from:
            facts["converted_frames"] = len(self.converted_from)
            facts["converted_from"] = ", ".join(sorted(set(self.converted_from)))
        return facts

    def decoded(self) -> Iterator[av.VideoFrame]:
        """Each frame decoded to RGB, as a PyAV frame (for encoding the clip as a video)."""
        for data in self.frames:
            yield av.VideoFrame.from_ndarray(np.asarray(open_image(data).convert("RGB")), format="rgb24")


def frame_files(folder: Path) -> list[Path]:
    """The numbered JPEGs of `folder` in frame order; raises FramesError for no frames, a gap or a number
    given twice (other files, e.g. a stray `Thumbs.db`, are not frames)."""
    numbered: dict[int, Path] = {}
    with os.scandir(folder) as listing:
        for entry in sorted(listing, key=lambda e: e.name):
            match = FRAME_FILE.fullmatch(entry.name)
            if match is None or not entry.is_file():
                continue
            number = int(match.group(1))
            if number in numbered:
                raise FramesError(
                    f"frame number {number} given twice ({numbered[number].name}, {entry.name})"
                )
            numbered[number] = Path(entry.path)
    if not numbered:
        raise FramesError("no numbered JPEG frames in the folder")
    expected = range(FIRST_FRAME_NUMBER, FIRST_FRAME_NUMBER + len(numbered))
    absent = next((number for number in expected if number not in numbered), None)
    if absent is not None:
        raise FramesError(
            f"gap in the frame numbering: frame {absent} is missing ({len(numbered)} frames, "
            f"numbers {min(numbered)}..{max(numbered)})"
        )
    return [numbered[number] for number in expected]


def read_frame_folder(folder: Path, short_side: int | None, quality: int = JPEG_QUALITY) -> FrameSequence:
    """Validate a folder of frames and return what to store: the JPEG bytes as they are, except frames
    converted or shrunk by `prepare_image` (re-encoded at `quality`). Raises FramesError naming the frame
    at fault, OSError when the folder cannot be read."""
    frames: list[bytes] = []
    converted: list[str] = []
    size: tuple[int, int] | None = None
    first = ""
    for path in frame_files(folder):
        try:
            stored, info, source_kind = prepare_image(
                path.read_bytes(), short_side, reencode=False, quality=quality
            )
        except ImageError as err:
            raise FramesError(f"frame {path.name}: {err}") from None
        if size is None:
            size, first = (info.width, info.height), path.name
        elif (info.width, info.height) != size:
            raise FramesError(
                f"frame {path.name} is {info.width}x{info.height}, frame {first} is {size[0]}x{size[1]}"
            )
        frames.append(stored)
        if source_kind is not None:
            converted.append(source_kind)
    assert size is not None  # frame_files gives at least one frame
    return FrameSequence(tuple(frames), size[0], size[1], tuple(converted))


def encode_frames(
    frames: Iterable[tuple[Fraction, av.VideoFrame]], short_side: int | None, quality: int
) -> tuple[FrameSequence, Fraction]:
    """Decoded video frames (each with the clip's frame rate, `shards.video.decode_clip`) as JPEGs at
    `quality`, the short side shrunk to `short_side` (never enlarged); returns them and the frame rate."""
    encoded: list[bytes] = []
    size, rate = (0, 0), Fraction(0)
    for clip_rate, frame in frames:
        image: Image.Image = frame.to_image()
        if not encoded:
            size, rate = output_size(image.width, image.height, short_side), clip_rate
        encoded.append(encode_jpeg(image, size, quality))
    return FrameSequence(tuple(encoded), size[0], size[1]), rate
