"""Frame samples: a clip stored as one JPEG member per frame, and their CPU decoder (no torch: the sharder
imports the member names from here).

A frame sample (SSv1 as distributed, `shards ... --store frames`) holds `<key>.000000.jpg`,
`<key>.000001.jpg`, ... (frame i from 0, in presentation order) beside its json, whose `"storage"` is
`"frames"`; webdataset groups them under the key with the suffixes `000003.jpg`. The loader tells a frame
sample from a video sample by that json field alone, so no setting names the storage.

`JpegFrameDecoder` decodes only the JPEGs of the frames asked for, each distinct frame once (Pillow's
libjpeg-turbo, one frame at a time, in the loader's worker): 1.00 frame decoded per frame delivered, against
a video's keyframe-to-frame run. With `min_short_side` below the stored short side, libjpeg decodes at the
largest DCT reduction (1/2, 1/4, 1/8) that keeps the short side at or above it (`Image.draft`): evaluation
resizes to a known short side, so a frame twice that size decodes at half size (libjpeg's scaled IDCT, close
to a 2x2 box filter: after the resize 1.5-2 grey levels from the full decode on average, tests/data/
test_frames.py). Training crops a random box of any size to the crop, so it always decodes at full size.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

FRAMES_STORAGE = "frames"
FRAMES_CODEC = "jpeg"
# A frame member's suffix (after the sample key): frame i of the clip, from 0.
FRAME_MEMBER = re.compile(r"(\d{6})\.jpg")
# Bytes after a JPEG's end-of-image marker still taken as a whole JPEG (encoders' padding).
EOI_SLACK = 64


class FrameDecodeError(ValueError):
    """A frame sample that cannot give the frames asked for (a member missing, a JPEG that does not decode,
    a frame of another size than the json's); the message names the frame."""


def frame_member(index: int) -> str:
    """The member suffix of frame `index` (from 0): `000003.jpg`."""
    return f"{index:06d}.jpg"


def is_frame_sample(meta: Mapping[str, Any]) -> bool:
    """Whether a sample's json says it is stored as JPEG frames."""
    return meta.get("storage") == FRAMES_STORAGE


def frame_bytes(sample: Mapping[str, Any], meta: Mapping[str, Any], index: int) -> bytes:
    """The JPEG of frame `index` of a frame sample (its members; `meta`: its parsed json); raises
    FrameDecodeError for a frame outside the json's count or a member missing."""
    if not 0 <= index < int(meta["num_frames"]):
        raise FrameDecodeError(f"frame {index} asked, the sample has {meta['num_frames']} frames")
    data = sample.get(frame_member(index))
    if data is None:
        raise FrameDecodeError(f"frame {index}: no member {frame_member(index)} in the sample")
    return data


def frame_jpegs(sample: Mapping[str, Any], meta: Mapping[str, Any], indices: Sequence[int]) -> list[bytes]:
    """The JPEGs of frames `indices` in that order, each checked to be a whole JPEG (the DALI path's input:
    DALI 2.4's CPU JPEG decoder crashed the process on a truncated JPEG among others, so none reaches it)."""
    jpegs = []
    for index in indices:
        data = frame_bytes(sample, meta, int(index))
        if not is_whole_jpeg(data):
            raise FrameDecodeError(
                f"frame {index} ({frame_member(index)}) is not a whole JPEG (no start or end-of-image marker)"
            )
        jpegs.append(data)
    return jpegs


def is_whole_jpeg(data: bytes) -> bool:
    """Whether `data` starts with a JPEG's start-of-image marker and ends with its end-of-image marker
    (some encoders pad after it; entropy-coded data never holds FF D9, so a cut file does not end in one)."""
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" in data[-EOI_SLACK:]


def draft_size(width: int, height: int, min_short_side: int | None) -> tuple[int, int] | None:
    """The size to ask `Image.draft` for so that the short side stays >= `min_short_side`; None when the
    frame is not larger than that (decode at full size)."""
    if min_short_side is None or min(width, height) <= min_short_side:
        return None
    scale = min_short_side / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


class JpegFrameDecoder:
    """The frames of a frame sample at given indices -> uint8 (len(indices), H, W, 3) RGB, in the order asked.

    `frames_decoded` counts the JPEGs decoded (each distinct index once), which is how the loader's decode
    amplification on frame samples is measured.
    """

    def __init__(self) -> None:
        self.frames_decoded = 0

    def decode(
        self,
        sample: Mapping[str, Any],
        meta: Mapping[str, Any],
        indices: Sequence[int],
        min_short_side: int | None = None,
    ) -> np.ndarray:
        """Frames `indices` of `sample` (its members; `meta`: its parsed json); raises FrameDecodeError."""
        if len(indices) == 0:
            raise ValueError("decode needs at least one frame index")
        stored = (int(meta["width"]), int(meta["height"]))
        draft = draft_size(*stored, min_short_side)
        wanted = sorted(set(int(i) for i in indices))
        stacked = np.stack(
            [self._decode_frame(frame_bytes(sample, meta, i), i, stored, draft) for i in wanted]
        )
        if len(wanted) == len(indices) and all(a == b for a, b in zip(wanted, indices, strict=True)):
            return stacked
        return stacked[np.searchsorted(wanted, np.asarray(indices))]

    def _decode_frame(
        self, data: bytes, index: int, stored: tuple[int, int], draft: tuple[int, int] | None
    ) -> np.ndarray:
        member = frame_member(index)
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.size != stored:
                    raise FrameDecodeError(
                        f"frame {index} ({member}) is {image.size[0]}x{image.size[1]}, the json says "
                        f"{stored[0]}x{stored[1]}"
                    )
                if draft is not None:
                    image.draft("RGB", draft)
                rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise FrameDecodeError(f"frame {index} ({member}) does not decode: {err}") from None
        self.frames_decoded += 1
        return rgb
