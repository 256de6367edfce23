"""Write a dataset split as WebDataset tar shards plus its manifest, resumably and reproducibly.

The order of samples is fixed before anything is written: records sorted by id, then shuffled
with `--shuffle-seed` so that classes mix across shards. Workers validate and (re-)encode clips in
a process pool whose results come back in that order (imap); one writer appends them to tar files
with fixed metadata, so the same inputs and options give byte-identical shards.

Resuming: after each shard is renamed into place, a progress file records the shards done, how
many records they consumed and the rejects so far. A rerun of the same command (same options, same
source files) skips those records and continues with the next shard; anything else starts over.

The output folder is never mixed: files of another dataset, split or options (a manifest, a progress
file, shards not named after this dataset and split) are refused with one line, or removed with
--overwrite. The manifests this run rewrites are removed before the first shard is written and the new
one appears last, atomically, so a killed run leaves a folder without manifest.json (clearly
unfinished, resumable), never an old manifest beside new shards.

An object-store output (`--out s3://bucket/prefix`, `shards.folder.StoreFolder`) is the same run with
each file staged locally and uploaded once complete: the progress file after every shard, the manifest
last. The progress file in the store is what a rerun resumes from (on any machine): its shards that the
store still holds with the size and checksum they were uploaded with are not redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import random
import re
import tarfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.data.digest import DIGEST_MEMBER, sample_digest
from pipeline.data.manifest import (
    MANIFEST_NAME,
    PART_MANIFEST,
    Manifest,
    ManifestError,
    ShardEntry,
    manifest_name,
)
from pipeline.io import atomic_open, atomic_write_json, free_bytes, storage_problem
from pipeline.storage import StorageError
from shards import __version__
from shards.folder import OutputError, ShardFolder
from shards.frames import FramesError, encode_frames, read_frame_folder
from shards.image import JPEG_QUALITY, ImageError, member_ext, prepare_image
from shards.records import DatasetIndex, Record, Reject
from shards.verify import SHARD_FILE
from shards.video import (
    REENCODED_EXT,
    STORE_AS_IS_EXTS,
    EncodeOptions,
    VideoError,
    clip_window,
    decode_clip,
    encode_h264,
    probe_video,
    source_duration,
    transcode,
)

TAR_BLOCK = tarfile.BLOCKSIZE
TAR_RECORD = tarfile.RECORDSIZE
# A finished tar ends with two empty blocks, padded to a whole record.
TAR_END = 2 * TAR_BLOCK


@dataclass(frozen=True)
class SampleContext:
    """What a worker needs besides the record to build a sample (picklable)."""

    dataset: str
    split: str
    root: Path
    reencode: bool = False
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    # What the records are: "video" files, "frames" folders (SSv1) or "image" files (see build_image_sample).
    modality: str = "video"
    # How a clip is stored: "video" (one video member) or "frames" (one JPEG member per frame,
    # shards.frames), the JPEGs of decoded video at frame_quality.
    store: str = "video"
    frame_quality: int = JPEG_QUALITY


@dataclass(frozen=True)
class VideoSample:
    """One validated sample: its key, its media members ((suffix, bytes): one video or image, or one JPEG
    per frame), json and cls members, its frame count."""

    key: str
    media: tuple[tuple[str, bytes], ...]
    meta: bytes
    cls: bytes
    num_frames: int

    def members(self) -> list[tuple[str, bytes]]:
        """(member name, bytes) in the order they are written to the tar; the digest of the others last."""
        content = {**dict(self.media), "json": self.meta, "cls": self.cls}
        members = [(f"{self.key}.{ext}", data) for ext, data in content.items()]
        return [*members, (f"{self.key}.{DIGEST_MEMBER}", sample_digest(content).encode("ascii"))]


@dataclass(frozen=True)
class WriteOptions:
    """How to write shards (everything that changes the bytes, plus the worker count, which does not)."""

    context: SampleContext
    max_samples: int = 1000
    max_bytes: int = 1 << 30
    shuffle_seed: int = 0
    workers: int = 1
    part: tuple[int, int] | None = None
    overwrite: bool = False


@dataclass
class RunSummary:
    """What one run wrote; printed as the summary line."""

    written: int
    rejected: int
    missing: int
    num_shards: int
    bytes: int
    seconds: float
    manifest: str


@dataclass
class _Progress:
    """The resumable state: written after every complete shard."""

    fingerprint: str
    job: dict[str, Any] = field(default_factory=dict)  # dataset, split, options: whose files these are
    consumed: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)


def build_sample(context: SampleContext, record: Record) -> VideoSample | Reject:
    """Validate one record's video, trim / re-encode it if needed, and build its sample (or a reject).

    Runs in the worker processes. A clip is stored as-is unless it must be cut (a window inside a
    longer video) or --reencode is on; either way the bytes that go into the shard are validated.
    """
    if context.modality == "image":
        return build_image_sample(context, record)
    if context.modality == "frames":
        return build_sample_from_frames(context, record)
    source = _relative_source(record.source, context.root)
    key = f"{context.dataset}/{context.split}/{record.id}"
    try:
        if "." in key:
            raise VideoError("id contains '.', which would cut the webdataset key")
        size = record.source.stat().st_size
        if size == 0:
            raise VideoError("empty file (0 bytes)")
        window = None
        if record.needs_trim:
            window = clip_window(source_duration(record.source), record.start_s, record.end_s)
        if context.store == "frames":
            return build_frames_sample(context, record, window)
        if window is not None or context.reencode:
            video, ext = transcode(record.source, context.encode, window), REENCODED_EXT
        else:
            video, ext = record.source.read_bytes(), record.source.suffix.lower().lstrip(".")
            if ext not in STORE_AS_IS_EXTS:
                stored = ", ".join(STORE_AS_IS_EXTS)
                raise VideoError(f"cannot store .{ext} as-is (only {stored}); use --reencode")
        info = probe_video(video)
        check_window_filled(info.num_frames, info.fps, window)
    except VideoError as err:
        return Reject(record.id, source, str(err))
    except OSError as err:
        return Reject(record.id, source, f"cannot read the video: {err.strerror or err}")
    facts = {**asdict(info), **window_facts(window)}
    return finish_sample(context, record, source, key, ((ext, video),), facts)


def check_window_filled(num_frames: int, fps: float, window: tuple[float, float] | None) -> None:
    """Raise VideoError when a clip cut to `window` is more than 1.5 frames shorter or longer than it."""
    if window is not None and abs(num_frames / fps - (window[1] - window[0])) > 1.5 / fps:
        seconds = num_frames / fps
        raise VideoError(f"the cut clip lasts {seconds:.3f} s of its {window[1] - window[0]:.3f} s window")


def window_facts(window: tuple[float, float] | None) -> dict[str, float]:
    """The json fields of a clip cut from a longer video."""
    return {} if window is None else {"clip_start_s": window[0], "clip_end_s": window[1]}


def build_frames_sample(
    context: SampleContext, record: Record, window: tuple[float, float] | None
) -> VideoSample | Reject:
    """`--store frames` for a video: its (cut) clip decoded at constant frame rate, as `--reencode` would
    encode it, and stored as JPEG frames at `frame_quality` (`shards.frames`)."""
    source = _relative_source(record.source, context.root)
    try:
        if window is None:
            probe_video(record.source)  # the source's own checks: a truncated file is a reject
        frames, fps = encode_frames(
            decode_clip(record.source, window), context.encode.short_side, context.frame_quality
        )
        check_window_filled(len(frames.frames), float(fps), window)
    except VideoError as err:
        return Reject(record.id, source, str(err))
    except OSError as err:
        return Reject(record.id, source, f"cannot read the video: {err.strerror or err}")
    key = f"{context.dataset}/{context.split}/{record.id}"
    facts = {**frames.facts(float(fps)), **window_facts(window)}
    return finish_sample(context, record, source, key, tuple(frames.members()), facts)


def build_sample_from_frames(context: SampleContext, record: Record) -> VideoSample | Reject:
    """A folder of frames (SSv1): validated and stored as its JPEGs (`shards.frames`), or with
    `--store video` encoded as the short-GOP H.264 of `--reencode` (a video sample like any other).

    The folder has no frame rate of its own: the reader gives it in `record.extras["fps"]`.
    """
    source = _relative_source(record.source, context.root)
    key = f"{context.dataset}/{context.split}/{record.id}"
    fps = float(record.extras["fps"])
    try:
        short_side = context.encode.short_side if context.store == "frames" else None
        frames = read_frame_folder(record.source, short_side, context.frame_quality)
        if context.store == "frames":
            return finish_sample(context, record, source, key, tuple(frames.members()), frames.facts(fps))
        rate = Fraction(fps).limit_denominator(1001)
        video = encode_h264(frames.decoded(), rate, context.encode)
        info = probe_video(video)
    except (FramesError, VideoError) as err:
        return Reject(record.id, source, str(err))
    except OSError as err:
        return Reject(record.id, source, f"cannot read the frames: {err.strerror or err}")
    return finish_sample(context, record, source, key, ((REENCODED_EXT, video),), asdict(info))


def build_image_sample(context: SampleContext, record: Record) -> VideoSample | Reject:
    """Validate one image file, convert or shrink it if needed (`shards.image`), and build its sample.

    The sample has the video samples' shape (a `jpg` or `png` member, num_frames 1), so shards, manifests,
    resume, merge and verify are the same code for both. A record's `content` (raw pixels a reader
    encoded: CIFAR, SVHN) is already in its stored format: a PNG stays a PNG, lossless, unless
    --short-side or --reencode asks for a JPEG.
    """
    source = _relative_source(record.source, context.root)
    try:
        data = record.content if record.content is not None else record.source.read_bytes()
        image, info, converted = prepare_image(
            data, context.encode.short_side, context.reencode, keep_png=record.content is not None
        )
    except ImageError as err:
        return Reject(record.id, source, str(err))
    except OSError as err:
        return Reject(record.id, source, f"cannot read the image: {err.strerror or err}")
    extra = {} if converted is None else {"converted_from": converted}
    key = f"{context.dataset}/{context.split}/{record.id}"
    media = ((member_ext(image), image),)
    return finish_sample(context, record, source, key, media, {**asdict(info), **extra})


def finish_sample(
    context: SampleContext,
    record: Record,
    source: str,
    key: str,
    media: tuple[tuple[str, bytes], ...],
    facts: dict[str, Any],
) -> VideoSample:
    """The sample of a validated clip or image: its media members, its json (the record and `facts` about
    the media: size, frames, ...) and its class member."""
    meta = {
        **record.extras,
        "dataset": context.dataset,
        "split": context.split,
        "id": record.id,
        "label": record.label,
        "label_name": record.label_name,
        "source": source,
        **facts,
    }
    meta_bytes = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return VideoSample(key, media, meta_bytes, str(record.label).encode("ascii"), facts["num_frames"])


def _relative_source(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def order_records(records: list[Record], seed: int) -> tuple[list[Record], list[Reject]]:
    """Sort by id (then source), drop duplicate ids as rejects, and shuffle with `seed`."""
    ordered: list[Record] = []
    duplicates: list[Reject] = []
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: (r.id, str(r.source))):
        if record.id in seen:
            duplicates.append(Reject(record.id, str(record.source), "duplicate id in the annotations"))
            continue
        seen.add(record.id)
        ordered.append(record)
    random.Random(seed).shuffle(ordered)
    return ordered, duplicates


def part_range(num_records: int, part: tuple[int, int] | None) -> range:
    """The contiguous slice of the ordered records that part i of n writes (all when `part` is None)."""
    if part is None:
        return range(num_records)
    index, count = part
    return range(num_records * index // count, num_records * (index + 1) // count)


def shard_prefix(dataset: str, split: str, part: tuple[int, int] | None) -> str:
    """File-name prefix of the shards of one run: `<dataset>-<split>-` or `<dataset>-<split>-pNNN-`."""
    return f"{dataset}-{split}-" if part is None else f"{dataset}-{split}-p{part[0]:03d}-"


def write_dataset(
    index: DatasetIndex, out: ShardFolder, options: WriteOptions, recorded: dict[str, Any]
) -> RunSummary:
    """Write `index` as shards in `out` and its (partial) manifest; resume a killed run of the same job.

    `recorded` holds the command-line options that go into the manifest as they were given.
    """
    started = time.perf_counter()
    # As JSON gives it back from a manifest or progress file, so that the two compare equal.
    job = json.loads(json.dumps({"dataset": index.dataset, "split": index.split, "options": recorded}))
    prepare_output(out, job, options.overwrite)
    ordered, duplicates = order_records(index.records, options.shuffle_seed)
    ordered = [ordered[i] for i in part_range(len(ordered), options.part)]
    first_part = options.part is None or options.part[0] == 0
    prefix = shard_prefix(index.dataset, index.split, options.part)
    progress_name = f"{prefix}progress.json"
    progress = _resume(out, progress_name, _fingerprint(ordered, recorded), job)
    _remove_leftovers(out, prefix, manifest_name(options.part), keep=len(progress.shards))
    # Manifests that this run makes stale go before the first shard is written (see the module doc).
    for stale in sorted({MANIFEST_NAME, manifest_name(options.part)}):
        out.delete(stale)

    context = options.context
    pending = ordered[progress.consumed :]
    desc = f"{index.dataset}/{index.split}"
    bar = tqdm(total=len(ordered), initial=progress.consumed, unit="clip", desc=desc)
    with ExitStack() as stack:
        stack.callback(bar.close)
        if options.workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(options.workers))
            results: Iterator[VideoSample | Reject] = pool.imap(partial(build_sample, context), pending)
        else:
            results = map(partial(build_sample, context), pending)
        shard: _ShardFile | None = None
        try:
            for result in results:
                if isinstance(result, VideoSample) and shard is not None and not shard.fits(result, options):
                    _finish_shard(shard, progress, out, progress_name)
                    shard = None
                if isinstance(result, Reject):
                    progress.rejects.append(asdict(result))
                else:
                    if shard is None:
                        shard = _ShardFile(out.staging / f"{prefix}{len(progress.shards):06d}.tar")
                    shard.add(result)
                progress.consumed += 1
                bar.update()
                if shard is not None and shard.num_samples >= options.max_samples:
                    _finish_shard(shard, progress, out, progress_name)
                    shard = None
            if shard is not None:
                _finish_shard(shard, progress, out, progress_name)
                shard = None
        except StorageError as err:  # an upload the store refused or the network lost
            raise OutputError(
                f"{err}; run the same command: it continues after the last uploaded shard"
            ) from None
        except OSError as err:
            if (problem := storage_problem(err)) is None:
                raise
            pending = shard.size if shard is not None else 0
            per_sample = (sum(s["bytes"] for s in progress.shards) + pending) / max(progress.consumed, 1)
            if shard is not None:  # its temp file goes first: the free bytes are what a rerun finds
                shard.discard()
                shard = None
            line = unwritable_line(out, problem, pending, len(ordered) - progress.consumed, per_sample)
            raise OutputError(line) from None
        finally:
            if shard is not None:  # an error mid-shard: its temp file goes, the finished shards stay
                shard.discard()

    rejects = [asdict(r) for r in duplicates] if first_part else []
    rejects += [asdict(r) for r in index.rejects] if first_part else []
    rejects = sorted(rejects + progress.rejects, key=lambda r: (r["id"], r["source"], r["reason"]))
    manifest = Manifest(
        dataset=index.dataset,
        split=index.split,
        # Frame samples are clips too: the model sees video whichever way a clip is stored.
        modality="image" if context.modality == "image" else "video",
        tool_version=__version__,
        options=recorded,
        label_map=dict(index.label_map),
        shards=[
            ShardEntry.from_json(e, out.path_of(progress_name), i) for i, e in enumerate(progress.shards)
        ],
        total=sum(s["num_samples"] for s in progress.shards),
        rejects=rejects,
        missing=sorted(index.missing) if first_part else [],
        part=options.part,
    )
    manifest_path = out.path_of(manifest_name(options.part))
    try:
        out.save_manifest(manifest, manifest_name(options.part))
        out.delete(progress_name)
    except StorageError as err:
        raise OutputError(f"{err}; run the same command: it writes the manifest") from None
    except OSError as err:
        if (problem := storage_problem(err)) is None:
            raise
        staged = out.staging / manifest_name(options.part)
        raise OutputError(
            f"cannot write {staged}: {problem} ({free_bytes(out.staging)} bytes free)"
        ) from None
    return RunSummary(
        written=manifest.total,
        rejected=len(rejects),
        missing=len(manifest.missing),
        num_shards=len(progress.shards),
        bytes=sum(s["bytes"] for s in progress.shards),
        seconds=time.perf_counter() - started,
        manifest=manifest_path,
    )


def unwritable_line(
    out: ShardFolder, problem: str, pending: int, remaining: int, bytes_per_sample: float
) -> str:
    """The one line of a run whose output (or staging folder) refused a write: the bytes it still needs
    (the unfinished shard's, plus the samples left at the bytes per sample written so far) and those free."""
    needed = pending + int(bytes_per_sample * remaining)
    where = f"to {out.location}" if not out.remote else f"for {out.location} in {out.staging}"
    return (
        f"cannot write shards {where}: {problem} (about {needed} more bytes needed, "
        f"{free_bytes(out.staging)} free); "
        "make room and run the same command: it continues after the last complete shard"
    )


def prepare_output(out: ShardFolder, job: dict[str, Any], overwrite: bool) -> None:
    """Check that `out` can be written (creating a local folder), and refuse (or, with `overwrite`,
    remove) other jobs' files.

    Raises OutputError or StorageError with one line. Files of the same dataset, split and options
    stay: they are this job's own (a resume, a rerun, or the other parts of a job array writing beside it).
    """
    out.check_writable()
    foreign = foreign_files(out, job)
    if foreign and not overwrite:
        others = f" and {len(foreign) - 1} more files" if len(foreign) > 1 else ""
        raise OutputError(
            f"{out.location} holds files of another dataset, split or options "
            f"({foreign[0]}{others}{changed_options(out, foreign[0], job)}); "
            "pass --overwrite to replace them, or choose another --out"
        )
    for name in foreign:
        out.delete(name)


def changed_options(out: ShardFolder, name: str, job: dict[str, Any]) -> str:
    """`; manifest.json was written with other options: crf 23 -> unset, ...` when file `name` of `out` is a
    manifest or progress file of this job's dataset and split written with other options (a flag changed,
    or one this version no longer has: ImageNet's video flags); '' for any other file."""
    saved = _read_json(out, name) or {}
    saved_job = saved.get("job") if name.endswith("progress.json") else saved
    if not isinstance(saved_job, dict) or not isinstance(saved_job.get("options"), dict):
        return ""
    if (saved_job.get("dataset"), saved_job.get("split")) != (job["dataset"], job["split"]):
        return ""
    before, now = saved_job["options"], job["options"]

    def shown(options: dict[str, Any], key: str) -> str:
        return json.dumps(options[key]) if key in options else "unset"

    changes = [
        f"{key} {shown(before, key)} -> {shown(now, key)}"
        for key in sorted(before.keys() | now.keys())
        if key not in before or key not in now or before[key] != now[key]
    ]
    return f"; {name} was written with other options: {', '.join(changes)}" if changes else ""


def foreign_files(out: ShardFolder, job: dict[str, Any]) -> list[str]:
    """The manifests, progress files and shards in `out` that another job (dataset, split, options) wrote.

    A manifest or progress file belongs to this job when its dataset, split and options are this
    job's (an unreadable or invalid one does not); the shards a foreign manifest lists are foreign, and so is
    any shard not named `<dataset>-<split>-...` of this job.
    """
    foreign: list[str] = []
    listed_by_foreign: set[str] = set()
    names = out.names()
    for name in names:
        if name == MANIFEST_NAME or PART_MANIFEST.fullmatch(name):
            try:
                manifest = out.load_manifest(name)
            except ManifestError:
                foreign.append(name)
                continue
            if {"dataset": manifest.dataset, "split": manifest.split, "options": manifest.options} != job:
                foreign.append(name)
                listed_by_foreign |= {entry.name for entry in manifest.shards}
        elif name.endswith("progress.json"):
            saved = _read_json(out, name)
            if saved is not None and saved.get("job") != job:
                foreign.append(name)
    own_prefix = shard_prefix(job["dataset"], job["split"], None)
    for name in names:
        if SHARD_FILE.fullmatch(name) and (name in listed_by_foreign or not name.startswith(own_prefix)):
            foreign.append(name)
    return foreign


def _read_json(out: ShardFolder, name: str) -> dict[str, Any] | None:
    """A JSON object from file `name` of `out`; {} when it cannot be read (which makes it nobody's), None
    when it is gone (listed, then removed: the part of a job array that wrote it finished meanwhile)."""
    try:
        text = out.read_text(name)
        if text is None:
            return None
        data = json.loads(text)
    except StorageError:  # the store failing is not the file being nobody's
        raise
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _HashingFile:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class _ShardFile:
    """One tar shard being written as `*.tar.tmp`; `close` renames it to its name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.num_samples = 0
        self.frame_counts: dict[int, int] = {}
        self._stack = ExitStack()
        self._hashing = _HashingFile(self._stack.enter_context(atomic_open(path, suffix=".tar.tmp")))
        self._tar = self._stack.enter_context(
            tarfile.TarFile(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        )

    @property
    def size(self) -> int:
        """Bytes written to the temp file so far."""
        return self._hashing.size

    def fits(self, sample: VideoSample, options: WriteOptions) -> bool:
        """Whether `sample` keeps the finished tar within --max-bytes (an empty shard takes anything)."""
        if self.num_samples == 0:
            return True
        end = self._tar.offset + sum(_member_bytes(name, len(data)) for name, data in sample.members())
        return _finished_size(end) <= options.max_bytes

    def add(self, sample: VideoSample) -> None:
        """Append the sample's members with fixed metadata (equal samples give equal bytes)."""
        for name, data in sample.members():
            self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        self.num_samples += 1
        self.frame_counts[sample.num_frames] = self.frame_counts.get(sample.num_frames, 0) + 1

    def close(self) -> dict[str, Any]:
        """Finish the tar, rename it into place, and return its manifest entry (as JSON: progress file)."""
        self._stack.close()
        entry = ShardEntry(
            name=self.path.name,
            num_samples=self.num_samples,
            bytes=self._hashing.size,
            sha256=self._hashing.sha256.hexdigest(),
            # Clips per decoded frame count: lets a training config see clips too short for its
            # sampling without reading the shards.
            frame_counts=self.frame_counts,
        )
        return entry.to_json()

    def discard(self) -> None:
        """Drop the unfinished shard: atomic_open removes the temp file when it sees an exception. Closing
        flushes what the file still buffers; on a full disk that fails too, and does not matter: those
        bytes are being thrown away."""
        with suppress(OSError):
            self._stack.__exit__(RuntimeError, RuntimeError("shard discarded"), None)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_bytes(name: str, size: int) -> int:
    header = _tar_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return len(header) + -(-size // TAR_BLOCK) * TAR_BLOCK


def _finished_size(offset: int) -> int:
    return -(-(offset + TAR_END) // TAR_RECORD) * TAR_RECORD


def _finish_shard(shard: _ShardFile, progress: _Progress, out: ShardFolder, progress_name: str) -> None:
    # The shard is renamed into place (and uploaded) first; only then does the saved progress count it.
    entry = shard.close()
    progress.shards.append({**entry, **out.publish(entry["name"])})
    atomic_write_json(out.staging / progress_name, asdict(progress))
    out.publish(progress_name)


def _fingerprint(ordered: list[Record], recorded: dict[str, Any]) -> str:
    """Identifies a job: tool version, options, and the ordered records with their files' size and mtime."""
    rows = []
    for record in ordered:
        try:
            stat = record.source.stat()
            file_id = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            file_id = [-1, -1]
        rows.append([record.id, str(record.source), record.label, record.start_s, record.end_s, *file_id])
    payload = json.dumps([__version__, recorded, rows], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _resume(out: ShardFolder, progress_name: str, fingerprint: str, job: dict[str, Any]) -> _Progress:
    """The saved progress of the same job if `out` still holds its shards as written, else a fresh start."""
    try:
        progress = _Progress(**json.loads(out.read_text(progress_name) or ""))
    except StorageError:
        raise
    except (OSError, ValueError, TypeError):
        return _Progress(fingerprint, job)
    if progress.fingerprint != fingerprint or not all(out.holds(entry) for entry in progress.shards):
        return _Progress(fingerprint, job)
    return progress


def _remove_leftovers(out: ShardFolder, prefix: str, manifest: str, keep: int) -> None:
    """Delete this job's temp files (a killed run's) and its shards numbered `keep` and up (older runs').

    Only this job's names are touched: other parts of a job array may be writing in the same folder.
    A store's staging folder keeps nothing of this job: what a killed run staged is written again.
    """
    shard_name = re.compile(re.escape(prefix) + r"(\d{6})\.tar")
    for name in out.names():
        match = shard_name.fullmatch(name)
        stale_shard = match is not None and int(match.group(1)) >= keep
        temp_file = name.startswith((f".{prefix}", f".{manifest}.")) and name.endswith(".tmp")
        if stale_shard or temp_file:
            out.delete(name)
    if out.remote and out.staging.is_dir():
        for path in out.staging.iterdir():
            staged = shard_name.fullmatch(path.name) or path.name in (f"{prefix}progress.json", manifest)
            temp_file = path.name.startswith((f".{prefix}", f".{manifest}.")) and path.name.endswith(".tmp")
            if staged or temp_file:
                path.unlink()
