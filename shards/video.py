"""Probe, validate, trim and re-encode one video with PyAV.

Validation is what makes a corrupt source a reject-list entry at shard time instead of a crashed
training job: the clip must open, its first and its last frame must decode, and its frames are
counted. Counting reads every packet but decodes only the first and the last GOP, so validation
costs about the same for a 2 s and a 2 h video. The count must also fill the duration that the
container's header states (at the stream's frame rate, within TRUNCATION_TOLERANCE): a file cut short
keeps its header, so in every container (WebM and Matroska too, which list no frame count) a
truncated video is a reject, not a short clip.

Re-encoding normalises what trips the training decoders (variable frame rate, VP9 seeking, long
GOPs): H.264 yuv420p at a constant frame rate, an optional short side, a fixed closed GOP with
non-reference B-frames (which a loader can skip), no audio. One encoder thread, fixed options and
bit-exact muxing make equal inputs give equal bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from pipeline.console import one_line

# Containers a clip may be stored in as-is (the suffix becomes the sample's video member).
STORE_AS_IS_EXTS = ("mp4", "webm", "mkv")
REENCODED_EXT = "mp4"
# A window whose video is longer than the window by at most this much is a pre-cut clip: kept whole.
PRECUT_SLACK_S = 1.0
# A window may overrun the end of the video by this much (rounding in annotations); it is clamped.
WINDOW_END_SLACK_S = 0.5
# A video may hold this share of the frames its header's duration implies fewer (rounding, a header
# that counts a longer audio track), plus TRUNCATION_SLACK_FRAMES, before it counts as truncated.
TRUNCATION_TOLERANCE = 0.1
TRUNCATION_SLACK_FRAMES = 2


class VideoError(Exception):
    """A video that cannot be used; the message is the one-line reason recorded in the manifest."""


@dataclass(frozen=True)
class VideoInfo:
    """What validation found: the values written into the sample's json."""

    codec: str
    fps: float
    num_frames: int
    width: int
    height: int
    duration_s: float


@dataclass(frozen=True)
class EncodeOptions:
    """libx264 settings of `--reencode`; `short_side` None keeps the size (rounded down to even)."""

    short_side: int | None = None
    gop: int = 16
    crf: int = 23
    preset: str = "medium"
    threads: int = 1

    def x264_options(self) -> dict[str, str]:
        """Encoder options; scenecut off keeps every GOP exactly `gop` frames long (closed GOPs).

        B-frames are non-reference (no B-pyramid), seven between anchors in a fixed pattern (b-adapt
        off; a GOP of 16 is I b x7 P b x6 P): a loader that skips the non-reference frames it does not
        want decodes only the anchors plus the frames it returns. For dense 16 x 4 clips that is about
        1.7 frames decoded per frame delivered (all-reference GOPs of 16: 3.9; three B-frames: 2.0),
        at a slightly smaller file and ~1 dB lower PSNR than without B-frames at the same CRF.

        cpu-independent: without it, x264's CPU-specific code paths made about one encode in a few
        hundred differ in a long-running process (seen on an AVX-512 machine), breaking
        byte-identical shards.
        """
        return {
            "preset": self.preset,
            "crf": str(self.crf),
            "threads": str(self.threads),
            "x264-params": "scenecut=0:open-gop=0:bframes=7:b-pyramid=none:b-adapt=0:cpu-independent=1",
        }


def probe_video(source: Path | bytes) -> VideoInfo:
    """Validate a video (a file or its bytes): it opens, its first and last frames decode.

    num_frames is the decoded frame count; raises VideoError with the reason otherwise.
    """
    try:
        with _open_input(source) as container:
            return _probe(container)
    except av.FFmpegError as err:
        raise VideoError(f"cannot decode: {one_line(err)}") from None


def source_duration(source: Path) -> float:
    """A video's duration in seconds from its container header, without reading its packets.

    Enough to place a trim window (a whole FineGym video may be hours long); falls back to probing
    when the header does not say. Raises VideoError when the file does not open.
    """
    try:
        with av.open(str(source)) as container:
            duration = header_duration(container, _video_stream(container))
    except av.FFmpegError as err:
        raise VideoError(f"cannot decode: {one_line(err)}") from None
    return duration if duration is not None else probe_video(source).duration_s


def header_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The video's duration in seconds as the container header states it; None when it does not.

    The stream's own duration first (MP4), then Matroska's per-track DURATION tag, then the
    container's (which may also count an audio track).
    """
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    hours, _, rest = stream.metadata.get("DURATION", "").partition(":")
    minutes, _, seconds = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        pass
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def check_complete(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_frames: int
) -> None:
    """Raise VideoError when `num_frames` decoded frames fall short of the header's duration x frame rate."""
    duration = header_duration(container, stream)
    if duration is None:
        return
    fps = float(_frame_rate(stream))
    expected = duration * fps
    if num_frames < expected * (1 - TRUNCATION_TOLERANCE) - TRUNCATION_SLACK_FRAMES:
        raise VideoError(
            f"truncated: {num_frames} frames decode, the container says {duration:.3f} s at {fps:g} fps "
            f"({expected:.0f} frames)"
        )


def count_decoded_frames(source: Path | bytes) -> int:
    """Decode every frame of a video and return how many there are (raises VideoError, also if truncated)."""
    try:
        with _open_input(source) as container:
            stream = _video_stream(container)
            count = sum(1 for _ in container.decode(stream))
            check_complete(container, stream, count)
            return count
    except av.FFmpegError as err:
        raise VideoError(f"cannot decode: {one_line(err)}") from None


def clip_window(duration_s: float, start_s: float | None, end_s: float | None) -> tuple[float, float] | None:
    """The window to cut from a video of `duration_s`, or None to keep the whole file.

    A video about as long as the window is an already-cut clip and is kept whole; a window that
    does not lie inside the video raises VideoError with that reason.
    """
    start = 0.0 if start_s is None else start_s
    end = duration_s if end_s is None else end_s
    if end <= start:
        raise VideoError(f"empty window {start:.3f}-{end:.3f} s")
    if duration_s <= (end - start) + PRECUT_SLACK_S:
        return None
    if start < 0 or start >= duration_s or end > duration_s + WINDOW_END_SLACK_S:
        raise VideoError(f"window {start:.3f}-{end:.3f} s outside the video ({duration_s:.3f} s)")
    return start, min(end, duration_s)


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Width and height after scaling the short side to `short_side`, both even (yuv420p needs it)."""
    if short_side is None:
        return max(2, width - width % 2), max(2, height - height % 2)
    scale = short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def transcode(source: Path, options: EncodeOptions, window: tuple[float, float] | None = None) -> bytes:
    """Re-encode `source` (or the `window` of it, in seconds) to H.264 mp4 bytes at constant frame rate.

    Output frame i shows the source at window start + i / fps: a source frame goes to the nearest
    output slot, gaps of a variable-rate source repeat the previous frame, extra frames are dropped.
    Raises VideoError when the source cannot be decoded or nothing lies in the window.
    """
    try:
        with av.open(str(source)) as container:
            fps = _frame_rate(_video_stream(container))
            return encode_h264(_constant_rate_frames(container, window), fps, options)
    except av.FFmpegError as err:
        raise VideoError(f"cannot re-encode: {one_line(err)}") from None


def decode_clip(
    source: Path, window: tuple[float, float] | None = None
) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """The frames of `source` (or of its `window`) at constant frame rate, as `transcode` encodes them, each
    with the clip's frame rate; raises VideoError when the source cannot be decoded or nothing lies in the
    window."""
    try:
        with av.open(str(source)) as container:
            fps = _frame_rate(_video_stream(container))
            for frame in _constant_rate_frames(container, window):
                yield fps, frame
    except av.FFmpegError as err:
        raise VideoError(f"cannot decode: {one_line(err)}") from None


def encode_h264(frames: Iterable[av.VideoFrame], fps: Fraction, options: EncodeOptions) -> bytes:
    """Encode `frames` (one per output frame, any pixel format) as the H.264 mp4 of `--reencode`: the
    size of the first frame scaled by `options.short_side`, yuv420p, `fps` constant, fixed GOPs."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as output:
        encoder = None
        for index, frame in enumerate(frames):
            if encoder is None:
                width, height = output_size(frame.width, frame.height, options.short_side)
                encoder = output.add_stream("libx264", rate=fps, options=options.x264_options())
                encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
                encoder.codec_context.gop_size = options.gop
                encoder.codec_context.thread_count = options.threads
                encoder.codec_context.flags |= av.codec.context.Flags.bitexact
            image = frame.reformat(encoder.width, encoder.height, "yuv420p", interpolation="BICUBIC")
            # The source's picture types would force keyframes where its own GOPs start.
            image.pict_type = av.video.frame.PictureType.NONE
            image.pts = index
            image.time_base = 1 / fps
            output.mux(encoder.encode(image))
        if encoder is None:
            raise VideoError("no frames to encode")
        output.mux(encoder.encode(None))
    return buffer.getvalue()


@contextmanager
def _open_input(source: Path | bytes) -> Iterator[av.container.InputContainer]:
    file = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(file) as container:
        yield container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    # One decoder thread: validation runs one video per worker process, one worker per core.
    stream.codec_context.thread_count = 1
    return stream


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("no frame rate in the video stream")
    return Fraction(rate)


def _probe(container: av.container.InputContainer) -> VideoInfo:
    stream = _video_stream(container)
    decoder = stream.codec_context
    fps = _frame_rate(stream)
    first_frame = None
    num_packets = packets_before_tail = 0
    tail: list[av.Packet] = []  # packets from the last keyframe on: enough to decode the last frame
    min_pts = max_pts = None
    for packet in container.demux(stream):
        if packet.size == 0:  # the empty packet that signals the end of the stream
            continue
        num_packets += 1
        if packet.pts is not None:
            min_pts = packet.pts if min_pts is None else min(min_pts, packet.pts)
            max_pts = packet.pts if max_pts is None else max(max_pts, packet.pts)
        if packet.is_keyframe and first_frame is not None:
            packets_before_tail += len(tail)
            tail = []
        tail.append(packet)
        if first_frame is None:
            first_frame = next(iter(decoder.decode(packet)), None)
    if num_packets == 0:
        raise VideoError("no video packets")
    if first_frame is None:
        first_frame = next(iter(decoder.decode(None)), None)
    if first_frame is None:
        raise VideoError("the first frame does not decode")
    if stream.frames and stream.frames != num_packets:
        raise VideoError(f"container lists {stream.frames} frames but holds {num_packets} (truncated?)")
    check_complete(container, stream, num_packets)

    decoder.flush_buffers()
    tail_frames = 0
    try:
        for packet in [*tail, None]:
            tail_frames += len(decoder.decode(packet))
    except av.FFmpegError as err:
        raise VideoError(f"the last frames do not decode: {one_line(err)}") from None
    if tail_frames == 0:
        raise VideoError("the last frame does not decode")

    span = 0.0 if min_pts is None else float((max_pts - min_pts) * stream.time_base)
    return VideoInfo(
        codec=decoder.name,
        fps=round(float(fps), 6),
        num_frames=packets_before_tail + tail_frames,
        width=first_frame.width,
        height=first_frame.height,
        duration_s=round(span + 1.0 / float(fps), 3),
    )


def _constant_rate_frames(
    container: av.container.InputContainer, window: tuple[float, float] | None
) -> Iterator[av.VideoFrame]:
    """The decoded frame shown in each constant-rate slot of the stream (or of `window`): a frame goes to
    the nearest slot, a gap repeats the previous frame (yielded again), extra frames are dropped."""
    stream = _video_stream(container)
    fps = _frame_rate(stream)
    time_base = stream.time_base
    origin = stream.start_time or 0
    start = Fraction(window[0]) if window else Fraction(0)
    num_slots = math.floor((Fraction(window[1]) - start) * fps + Fraction(1, 2)) if window else None
    # AVI stores no presentation times, one chunk per frame: the decoder's output order is the display
    # order, and the pts it derives from chunk numbers can be wrong. MPEG-4 Part 2 with B-frames (UCF-101,
    # HMDB-51) shows its first frame at pts 1, and DivX's packed B-frames come out with every other pair's
    # pts swapped: timing these frames by pts would repeat one frame and swap others.
    by_order = container.format.name == "avi"
    if start > 0 and not by_order:
        # Seek to the keyframe before the window; frames before it are decoded and skipped.
        container.seek(origin + math.floor(start / time_base), stream=stream, backward=True)
    next_slot = 0
    for position, frame in enumerate(container.decode(stream)):
        if by_order:
            shown_at = position / fps
        elif frame.pts is None:
            continue
        else:
            shown_at = (frame.pts - origin) * time_base
        slot = math.floor((shown_at - start) * fps + Fraction(1, 2))
        if slot < next_slot:
            continue  # before the window, or a second frame for the same slot
        if num_slots is not None and slot >= num_slots:
            break
        # Constant frame rate: this picture fills every slot up to its own.
        while next_slot <= slot:
            yield frame
            next_slot += 1
    if next_slot == 0:
        raise VideoError("no frame decodes inside the window")
