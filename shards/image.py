"""Image validation, JPEG re-encoding and lossless PNGs for image datasets (ImageNet, CIFAR), with Pillow.

A JPEG is stored as-is when it decodes completely to RGB or greyscale: every decoder the loader may
use (Pillow, nvJPEG) reads those alike. Anything else that decodes (ImageNet's CMYK JPEGs, its PNG
named .JPEG) is converted to an RGB JPEG, and the sample's json says from what. With a short side
limit, every image larger than it is resized (aspect kept) and re-encoded. A file that does not
decode to its last byte (truncated, empty, not an image) is an ImageError with a one-line reason.

Datasets published as raw pixel arrays (CIFAR's pickles, SVHN's .mat) are stored as lossless PNGs
(`encode_png`, member `png`): decoded, they give the published array exactly. `prepare_image` keeps such a
PNG as it is when asked to (`keep_png`), as it keeps a JPEG.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.console import one_line

IMAGE_EXT = "jpg"  # the member suffix of a JPEG image sample
PNG_EXT = "png"  # the member suffix of a lossless one (raw pixels: CIFAR, SVHN)
IMAGE_EXTS = (IMAGE_EXT, PNG_EXT)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level of the PNGs made from raw pixels: fixed, so the same pixels give the same bytes.
PNG_COMPRESS_LEVEL = 6
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


def encode_png(pixels: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) RGB or (H, W) greyscale array as a PNG (no metadata: equal pixels, equal bytes)."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def member_ext(stored: bytes) -> str:
    """The member suffix of stored image bytes: `png` for a PNG, else `jpg` (every other image is stored
    as a JPEG)."""
    return PNG_EXT if stored.startswith(PNG_SIGNATURE) else IMAGE_EXT


def prepare_image(
    data: bytes,
    short_side: int | None,
    reencode: bool,
    quality: int = JPEG_QUALITY,
    keep_png: bool = False,
) -> tuple[bytes, ImageInfo, str | None]:
    """The bytes to store for one image file, its info, and what it was converted from (None: not); an
    image converted or resized is re-encoded at JPEG `quality`. `keep_png`: an RGB or greyscale PNG is
    stored as it is too (the lossless copy of raw pixels); otherwise a PNG is converted like any non-JPEG.

    Raises ImageError when the file does not decode.
    """
    image = open_image(data)
    size = output_size(*image.size, short_side)
    kept_formats = ("JPEG", "PNG") if keep_png else ("JPEG",)
    as_is = image.format in kept_formats and image.mode in STORED_AS_IS_MODES
    converted = None if as_is else f"{image.format} {image.mode}"
    if as_is and not reencode and size == image.size:
        return data, ImageInfo(image.width, image.height, image.mode), None
    stored = encode_jpeg(image, size, quality)
    return stored, ImageInfo(size[0], size[1], "RGB"), converted
