"""Frame decoders behind one interface: encoded video bytes + frame indices -> uint8 frames
(and `decode_image`: a JPEG -> one frame).

`decode(data, indices)` returns a uint8 tensor (len(indices), H, W, 3) in RGB, in the order asked
(indices may repeat and need not be sorted). Frame i is the i-th frame in presentation order, the
numbering of the `num_frames` stored in each sample's json. Every decoder runs one FFmpeg thread:
parallelism comes from loader workers, and decord fails on VP9 with more threads.

Each decoder decodes only what the indices need: it seeks to the keyframe before the first index
(decord and torchcodec do this internally from their frame index; the PyAV decoder here does it
itself and counts the frames it decodes, which is how decode amplification is measured). Only the
PyAV decoder also skips the non-reference frames it does not want (decord2 3.4 and torchcodec 0.13
have no such option), which is what makes shards re-encoded with non-reference B-frames cheap.
"""

from __future__ import annotations

import bisect
import importlib.util
import io
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.data.config import DECODER_PACKAGES

# Fastest first, as measured inside loader workers by bench/loader.py (CPU per clip on re-encoded
# shards: PyAV 73-75 ms with non-reference frames skipped, decord 74-79 ms, torchcodec 177-186 ms).
# torchcodec leads single-process decode of whole clips, but it cannot skip unwanted frames.
AUTO_ORDER = ("pyav", "decord", "torchcodec")
CPU_DECODERS = AUTO_ORDER


class DecodeError(RuntimeError):
    """A video that cannot give the requested frames (corrupt, truncated, or fewer frames than stated)."""


class FrameDecoder:
    """Base of the CPU decoders; subclasses implement `_decode_sorted` on sorted unique indices."""

    name = "base"

    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        """Decode the frames at `indices` of the encoded video `data` into a (N, H, W, 3) uint8 tensor."""
        if len(indices) == 0:
            raise ValueError("decode needs at least one frame index")
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0:
            raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
        frames = self._decode_sorted(data, wanted)
        if frames.shape[0] != len(wanted):
            raise DecodeError(f"{self.name} returned {frames.shape[0]} frames for {len(wanted)} indices")
        if len(wanted) == len(indices) and all(a == b for a, b in zip(wanted, indices, strict=True)):
            return frames  # already in order (a dense clip): no gather copy of the whole clip
        order = torch.as_tensor(np.searchsorted(wanted, np.asarray(indices)))
        return frames[order]

    def _decode_sorted(self, data: bytes, wanted: list[int]) -> torch.Tensor:
        raise NotImplementedError


class PyAVDecoder(FrameDecoder):
    """PyAV (FFmpeg bundled in the wheel): the reference decoder, and the only one here that can skip.

    It demuxes the packets once (no decoding) and keeps them, learning every frame's timestamp and
    where the keyframes are. The wanted frames are then decoded in runs: a run starts at the keyframe
    before its first frame and stops at the packet (in decode order) of its last frame; a frame whose
    keyframe lies beyond the current run starts a new one, skipping the packets between.

    Inside a run the decoder is told to skip non-reference frames (`skip_frame = NONREF`) on every
    packet that is not a wanted frame: nothing depends on them, so with non-reference B-frames (the
    sharder's `--reencode`) a dense clip decodes the reference frames plus the wanted ones instead of
    every frame in between. Decode order differs from display order with B-frames, so packets are
    matched to wanted frames by pts. `frames_decoded` counts the frames the decoder produced (each run
    is drained, so reference frames decoded but never shown are counted too); skipped ones are not.
    """

    name = "pyav"

    def __init__(self) -> None:
        self.frames_decoded = 0
        self._to_rgb = None  # one VideoReformatter for every frame: see `_keep`

    def _decode_sorted(self, data: bytes, wanted: list[int]) -> torch.Tensor:
        import av
        from av.video.reformatter import VideoReformatter

        if self._to_rgb is None:
            self._to_rgb = VideoReformatter()
        try:
            with av.open(io.BytesIO(data)) as container:
                return self._decode_container(container, wanted)
        except av.FFmpegError as err:
            raise DecodeError(f"pyav: {err}") from None
        except IndexError:
            raise DecodeError("pyav: the file has no video stream") from None

    def _decode_container(self, container, wanted: list[int]) -> torch.Tensor:
        stream = container.streams.video[0]
        stream.thread_count = 1
        packets = [p for p in container.demux(stream) if p.size > 0]
        frame_pts = sorted(p.pts for p in packets if p.pts is not None)
        if not frame_pts or wanted[-1] >= len(frame_pts):
            raise DecodeError(f"pyav: frame {wanted[-1]} asked, the video has {len(frame_pts)} frames")
        targets = [frame_pts[index] for index in wanted]
        decoded = self._decode_runs(stream.codec_context, packets, targets)
        for index, pts in zip(wanted, targets, strict=True):
            if pts not in decoded:
                raise DecodeError(f"pyav: frame {index} (pts {pts}) was not produced by the decoder")
        return torch.from_numpy(np.stack([decoded[pts] for pts in targets]))

    def _decode_runs(self, decoder, packets: list, targets: list[int]) -> dict[int, np.ndarray]:
        """Decode the frames with pts in `targets` (sorted): {pts: rgb24 array}."""
        keyframes = sorted((p.pts, i) for i, p in enumerate(packets) if p.is_keyframe and p.pts is not None)
        keyframe_pts = [pts for pts, _ in keyframes]
        packet_of = {p.pts: i for i, p in enumerate(packets) if p.pts is not None}
        runs: list[tuple[int, int]] = []  # (first packet, last packet) in decode order
        for pts in targets:
            # The last keyframe shown at or before the frame: decoding from it reaches the frame.
            key = keyframes[max(0, bisect.bisect_right(keyframe_pts, pts) - 1)][1]
            if runs and key <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][1], packet_of[pts]))
            else:
                runs.append((key, packet_of[pts]))
        wanted, decoded = set(targets), {}
        for first, last in runs:
            decoder.flush_buffers()
            for packet in packets[first : last + 1]:
                decoder.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                self._keep(decoder.decode(packet), wanted, decoded)
            decoder.skip_frame = "DEFAULT"
            self._keep(decoder.decode(None), wanted, decoded)  # drain the frames held for reordering
        return decoded

    def _keep(self, frames: list, wanted: set[int], decoded: dict[int, np.ndarray]) -> None:
        for frame in frames:
            self.frames_decoded += 1
            if frame.pts in wanted and frame.pts not in decoded:
                # `frame.to_ndarray(format="rgb24")` builds a new reformatter, and with it a new swscale
                # context, for every frame; one reformatter keeps its context while the frame size and
                # format stay (same conversion, bit for bit; 2.4x less time: bench/loader.py --profile).
                decoded[frame.pts] = self._to_rgb.reformat(frame, format="rgb24").to_ndarray()


class DecordDecoder(FrameDecoder):
    """decord (the maintained `decord2` package, FFmpeg bundled), one thread."""

    name = "decord"

    def _decode_sorted(self, data: bytes, wanted: list[int]) -> torch.Tensor:
        import decord

        try:
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            if wanted[-1] >= len(reader):
                raise DecodeError(f"decord: frame {wanted[-1]} asked, the video has {len(reader)} frames")
            return torch.from_numpy(reader.get_batch(wanted).asnumpy())
        except (decord.DECORDError, RuntimeError) as err:
            if isinstance(err, DecodeError):
                raise
            raise DecodeError(f"decord: {str(err).splitlines()[0]}") from None


class TorchCodecDecoder(FrameDecoder):
    """torchcodec on CPU (system FFmpeg libraries); on a GPU machine `device="cuda"` uses NVDEC."""

    name = "torchcodec"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def _decode_sorted(self, data: bytes, wanted: list[int]) -> torch.Tensor:
        from torchcodec.decoders import VideoDecoder

        try:
            # exact mode scans the packets once, so index i is the i-th frame in presentation order
            decoder = VideoDecoder(
                data, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC", device=self.device
            )
            count = decoder.metadata.num_frames
            if count is not None and wanted[-1] >= count:
                raise DecodeError(f"torchcodec: frame {wanted[-1]} asked, the video has {count} frames")
            return decoder.get_frames_at(wanted).data.cpu()
        except (RuntimeError, ValueError) as err:
            if isinstance(err, DecodeError):
                raise
            raise DecodeError(f"torchcodec: {str(err).splitlines()[0]}") from None


DECODER_CLASSES: dict[str, type[FrameDecoder]] = {
    "pyav": PyAVDecoder,
    "decord": DecordDecoder,
    "torchcodec": TorchCodecDecoder,
}


def is_available(name: str) -> bool:
    """Whether the CPU decoder `name` can be imported here (torchcodec also needs FFmpeg's libraries)."""
    if importlib.util.find_spec(DECODER_PACKAGES[name]) is None:
        return False
    if name == "torchcodec":
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads the FFmpeg libraries)
        except (ImportError, OSError, RuntimeError):
            return False
    return True


def available_decoders() -> list[str]:
    """Installed CPU decoders, fastest first."""
    return [name for name in AUTO_ORDER if is_available(name)]


def resolve_decoder_name(name: str) -> str:
    """The concrete decoder for a config value: `auto` becomes the fastest installed CPU decoder."""
    if name == "auto":
        installed = available_decoders()
        if not installed:
            raise RuntimeError("no video decoder is installed (need one of torchcodec, decord2, av)")
        return installed[0]
    if name not in DECODER_CLASSES:
        raise ValueError(f"unknown decoder {name!r} (CPU decoders: {', '.join(DECODER_CLASSES)})")
    if not is_available(name):
        raise RuntimeError(f"decoder {name!r} is configured but its package is not importable here")
    return name


def decode_image(data: bytes) -> torch.Tensor:
    """A JPEG or PNG (any image Pillow reads) -> uint8 (1, H, W, 3) RGB: an image is a one-frame clip
    (a PNG's pixels exactly as stored).

    Pillow's libjpeg-turbo decodes on the CPU; greyscale becomes RGB here (CMYK was converted at
    sharding). A corrupt file raises OSError, which fails the sample like a broken video.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = np.array(image.convert("RGB"))
    return torch.from_numpy(rgb).unsqueeze(0)


def build_decoder(name: str) -> FrameDecoder:
    """A decoder instance for a name `resolve_decoder_name` gave (`decord`, `torchcodec` or `pyav`)."""
    return DECODER_CLASSES[name]()
