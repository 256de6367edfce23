"""Image validation and JPEG re-encoding for image datasets (ImageNet), with Pillow.

A JPEG is stored as-is when it decodes completely to RGB or greyscale: every decoder the loader may
use (Pillow, nvJPEG) reads those alike. Anything else that decodes (ImageNet's CMYK JPEGs, its PNG
named .JPEG) is converted to an RGB JPEG, and the sample's json says from what. With a short side
limit, every image larger than it is resized (aspect kept) and re-encoded. A file that does not
decode to its last byte (truncated, empty, not an image) is an ImageError with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from pipeline.console import one_line

IMAGE_EXT = "jpg"  # the member suffix of an image sample
# Re-encoded copies: quality 90 with 4:2:0 chroma, the usual setting of resized ImageNet copies.
JPEG_QUALITY = 90
# Modes every JPEG decoder gives the same RGB pixels for; other JPEG modes are converted at sharding.
STORED_AS_IS_MODES = ("RGB", "L")


class ImageError(Exception):
    """An image that cannot be stored: its message is the reject reason (one line)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the sample's json records about its stored image (num_frames: 1, so frame counts work)."""

    width: int
    height: int
    mode: str
    num_frames: int = 1


def open_image(data: bytes) -> Image.Image:
    """Decode `data` completely; raises ImageError naming what is wrong (truncated, not an image, ...)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # Pillow decodes lazily: only load() meets a truncated or corrupt scan
    except UnidentifiedImageError:
        raise ImageError(f"not an image (starts with {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"does not decode: {one_line(err)}") from None
    return image


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled down to `short_side` (never up; None: unchanged)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def encode_jpeg(image: Image.Image, size: tuple[int, int], quality: int = JPEG_QUALITY) -> bytes:
    """`image` as an RGB JPEG of `size` (Pillow's antialiased bicubic when resizing), baseline, 4:2:0."""
    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    return out.getvalue()


def prepare_image(
    data: bytes, short_side: int | None, reencode: bool, quality: int = JPEG_QUALITY
) -> tuple[bytes, ImageInfo, str | None]:
    """The bytes to store for one image file, its info, and what it was converted from (None: not); an
    image converted or resized is re-encoded at JPEG `quality`.

    Raises ImageError when the file does not decode.
    """
    image = open_image(data)
    size = output_size(*image.size, short_side)
    as_is = image.format == "JPEG" and image.mode in STORED_AS_IS_MODES
    converted = None if as_is else f"{image.format} {image.mode}"
    if as_is and not reencode and size == image.size:
        return data, ImageInfo(image.width, image.height, image.mode), None
    stored = encode_jpeg(image, size, quality)
    return stored, ImageInfo(size[0], size[1], "RGB"), converted
