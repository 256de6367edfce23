"""The loader's stages: small picklable callables, each mapping an iterator of dicts to another.

A stream item is a dict. Samples read from a tar carry webdataset's members (`__key__`, `mp4` or
`webm` or `mkv`, `json`, `cls`, `sha256`); an item that failed anywhere carries `__error__` (a one-line
reason) and `__url__` (its shard) instead and keeps its place in the stream, so positions, batch
boundaries and the resume point never depend on which samples were corrupt. In training, `ReplaceBad`
then puts a deterministic stand-in in its place, so every batch has all its rows. Only read, digest
and decode errors (`SAMPLE_ERRORS`) fail a sample: any other exception is a bug and propagates.
Each stage can be run on a plain list.

An image sample (a `jpg` or `png` member) is decoded as a one-frame clip, so every stage serves both; the
finishing step squeezes the time axis of image batches. A frame sample (one JPEG member per frame, the
json's `"storage": "frames"`: `pipeline.data.frame_samples`) is a clip like a video sample; only its
decoder differs.

Workers ship pixels, not floats: the batch stages stack the views before normalisation into a
`ShippedBatch` ((B, T, 3, S, S) uint8, with each row's erased box and the batch's mixing seed;
`pipeline.data.batch`), and `finish_train_batch` / `finish_eval_batch` normalise, erase and mix in the
main process into the `Batch` the model takes. The uint8
batch is 4x smaller to stack and to pass through shared memory; the result is bit-identical.
"""

from __future__ import annotations

import bisect
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from webdataset.tariterators import group_by_keys, tar_file_iterator

from pipeline.console import one_line
from pipeline.data.batch import BadEntry, Batch, ShippedBatch
from pipeline.data.config import AugConfig
from pipeline.data.decoders import DecodeError, FrameDecoder, build_decoder, decode_image
from pipeline.data.digest import digest_problem
from pipeline.data.frame_samples import JpegFrameDecoder, is_frame_sample
from pipeline.data.manifest import ShardInfo, sample_offsets
from pipeline.data.plan import ShardSlice
from pipeline.data.sampling import Sampling, eval_indices, train_indices
from pipeline.data.shard_io import ShardReader
from pipeline.data.transforms import EvalTransform, TrainTransform, mix_batch, normalise_batch
from pipeline.randomness import Stream, make_rng

VIDEO_EXTS = ("mp4", "webm", "mkv")
IMAGE_EXTS = ("jpg", "png")  # JPEG, or PNG: the lossless copy of raw pixels (CIFAR, SVHN)
Item = dict[str, Any]

Stage = Callable[[Iterable[Item]], Iterator[Item]]

# What a broken sample raises while it is read, parsed or decoded (a corrupt json or cls, a missing
# member, a video that does not decode). Anything else (TypeError, AttributeError, ...) is a bug.
SAMPLE_ERRORS = (DecodeError, ValueError, KeyError, OSError, EOFError, tarfile.TarError)
# Samples drawn for one failed position before it is left short (the loader then stops the run).
MAX_REPLACEMENT_DRAWS = 8


def bad_item(key: str, reason: str, shard: str = "") -> Item:
    """A placeholder for a sample that could not be used; it still occupies its stream position."""
    return {"__key__": key, "__error__": reason, "__url__": shard}


def failed(item: Item, reason: str) -> Item:
    """`item` (a raw or decoded sample at a stream position) turned into an error item with `reason`."""
    return {**bad_item(item["__key__"], reason, item.get("__url__", "")), "__pos__": item["__pos__"]}


def is_error(item: Item) -> bool:
    """Whether `item` is an error item (`bad_item`, `failed`) in a sample's place."""
    return "__error__" in item


def is_sample(item: Item) -> bool:
    """Whether `item` is a sample to work on: neither an error item nor the padding of a short rank."""
    return not is_error(item) and not item.get("__pad__")


def bad_entry(item: Item) -> BadEntry:
    """(key, shard, reason) of an error item: what the loader counts and writes to bad_samples.jsonl."""
    return item["__key__"], item.get("__url__", ""), item["__error__"]


def error_reason(err: BaseException) -> str:
    """A failed sample's reason: `Type: message` on one line (the type tells a decode error from a
    missing member or a broken json)."""
    return f"{type(err).__name__}: {one_line(err)}"


def each_sample(items: Iterable[Item], prepare: Callable[[Item], Item]) -> Iterator[Item]:
    """`prepare` on every sample in turn: error and padding items pass in their place, and a sample that
    raises one of SAMPLE_ERRORS becomes an error item naming why (any other exception is a bug and
    propagates)."""
    for item in items:
        if not is_sample(item):
            yield item
            continue
        try:
            yield prepare(item)
        except SAMPLE_ERRORS as err:
            yield failed(item, error_reason(err))


class SliceSource:
    """The first stage: the fixed list of shard slices a worker reads."""

    def __init__(self, slices: list[ShardSlice]) -> None:
        self.slices = slices

    def __call__(self) -> Iterator[ShardSlice]:
        return iter(self.slices)


class ReadShardSlices:
    """ShardSlice items -> raw samples, exactly `stop - start` items per slice.

    A slice that starts inside a shard seeks straight to its first sample (offsets from a header-only
    scan); one streamed from an object store reads and drops the samples before it. A shard that ends
    early or breaks off (a local read error, an object-store request that failed after its retries)
    yields error items for its missing samples. `reader` opens the shards (local files, or URLs
    streamed or cached: `pipeline.data.shard_io`).
    """

    def __init__(self, reader: ShardReader | None = None) -> None:
        self.reader = reader or ShardReader()

    def __call__(self, slices: Iterable[ShardSlice]) -> Iterator[Item]:
        for piece in slices:
            produced = 0
            try:
                for sample in self._read(piece):
                    yield sample
                    produced += 1
            except (OSError, tarfile.TarError, ValueError, EOFError) as err:
                reason = f"shard {piece.path} broke off after sample {piece.start + produced}: {err}"
            else:
                reason = f"shard {piece.path} has fewer samples than its manifest says"
            for position in range(piece.start + produced, piece.stop):
                yield bad_item(f"{piece.path}#{position}", reason, piece.path)

    def _read(self, piece: ShardSlice) -> Iterator[Item]:
        with self.reader.open(piece.path) as stream:
            skip = piece.start
            # A streamed shard is read from its start instead: the header scan would fetch it all first.
            if skip and not ShardReader.streams(stream):
                stream.seek(sample_offsets(piece.path, self.reader)[piece.start])
                skip = 0
            files = ({**f, "__url__": piece.path} for f in tar_file_iterator(stream))
            for count, sample in enumerate(group_by_keys(files)):
                if count == skip + piece.stop - piece.start:
                    return
                if count >= skip:
                    yield sample


class NumberAndSkip:
    """Stamp each item with its position in this worker's epoch stream, then drop the first `skip`.

    Skipping happens after the shuffle and before decoding: a resumed worker re-reads the shard bytes
    of what it already delivered but decodes none of it.
    """

    def __init__(self, skip: int = 0) -> None:
        self.skip = skip

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for position, item in enumerate(items):
            if position >= self.skip:
                item["__pos__"] = position
                yield item


class CheckDigest:
    """Raw samples whose bytes differ from their shard's digest member -> error items (before decoding).

    Runs after `NumberAndSkip`, so a resumed worker does not hash what it skips; samples without a
    digest (shards written before digests existed) pass unchecked.
    """

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            problem = digest_problem(item) if is_sample(item) else None
            yield item if problem is None else failed(item, problem)


def read_label(sample: Item, meta: dict) -> int:
    """The class index of a sample: its `.cls` member, else the json's `label`."""
    if "cls" in sample:
        return int(sample["cls"].decode("utf-8").strip())
    return int(meta["label"])


def image_member(sample: Item) -> bytes | None:
    """The encoded image of an image sample (JPEG or PNG), None for a clip."""
    return next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)


def video_member(sample: Item) -> bytes:
    """The encoded video of a sample, whatever its container suffix."""
    for ext in VIDEO_EXTS:
        if ext in sample:
            return sample[ext]
    raise KeyError(f"no video member (one of {', '.join(VIDEO_EXTS)}) in sample")


@dataclass(frozen=True)
class ClipSampler:
    """Which frames of a video a sample's clips take: training draws one clip from the sample's own
    generator (seed parts + position), evaluation (`seed_parts` None) takes `test_clips` fixed clips."""

    sampling: Sampling
    num_frames: int
    stride: int
    seed_parts: tuple[int, ...] | None
    test_clips: int = 1

    def indices(self, num_video_frames: int, position: int) -> list[list[int]]:
        """Frame indices of each clip to decode for the sample at `position`."""
        if self.seed_parts is None:
            return eval_indices(
                self.sampling, num_video_frames, self.num_frames, self.stride, self.test_clips
            )
        rng = make_rng(Stream.SAMPLE, *self.seed_parts, position)
        return [train_indices(self.sampling, num_video_frames, self.num_frames, self.stride, rng)]


class DecodeClips:
    """Raw samples -> decoded clips: `frames` (views x T, H, W, 3) uint8, `indices`, `label`.

    `decoder` is a resolved CPU decoder name (see `pipeline.data.backends`) for video samples, built on
    first use in the worker; frame samples (the json's `storage`) go to `frame_decoder`, which decodes
    only the sampled JPEGs, at a DCT reduction that keeps the short side >= `min_short_side` when given
    (evaluation). Any failure becomes an error item naming the key.
    """

    def __init__(
        self, decoder: str, sampler: ClipSampler, num_classes: int, min_short_side: int | None = None
    ) -> None:
        self.decoder_name, self.sampler, self.num_classes = decoder, sampler, num_classes
        self.min_short_side = min_short_side
        self._decoder: FrameDecoder | None = None
        self.frame_decoder = JpegFrameDecoder()

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        return each_sample(items, self.decode)

    def decode(self, item: Item) -> Item:
        """Decode one raw sample; raises on anything wrong with it."""
        meta = json.loads(item["json"])
        label = read_label(item, meta)
        if not 0 <= label < self.num_classes and self.sampler.seed_parts is not None:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        image = image_member(item)
        if image is not None:  # an image is a one-frame clip: the transforms run on (1, H, W, 3)
            clips, frames = [[0]], decode_image(image)
        elif is_frame_sample(meta):
            clips = self.sampler.indices(int(meta["num_frames"]), item["__pos__"])
            indices = [i for clip in clips for i in clip]
            frames = torch.from_numpy(self.frame_decoder.decode(item, meta, indices, self.min_short_side))
        else:
            if self._decoder is None:  # built on first use: finding the video decoders takes seconds
                self._decoder = build_decoder(self.decoder_name)
            clips = self.sampler.indices(int(meta["num_frames"]), item["__pos__"])
            frames = self._decoder.decode(video_member(item), [i for clip in clips for i in clip])
        return {
            "__key__": item["__key__"],
            "__url__": item.get("__url__", ""),
            "__pos__": item["__pos__"],
            "label": label,
            "frames": frames,
            "indices": clips,
            "dataset": meta.get("dataset", ""),
        }


class AugmentClips:
    """Decoded clips -> `views`: TrainTransform's (pixels, erased box) pairs, from the sample's generator."""

    def __init__(self, transform: TrainTransform, seed_parts: tuple[int, ...]) -> None:
        self.transform, self.seed_parts = transform, seed_parts

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if is_error(item):
                yield item
                continue
            rng = make_rng(Stream.AUGMENT, *self.seed_parts, item["__pos__"])
            frames = item.pop("frames")
            try:
                item["views"] = self.transform.pixel_views(frames, rng)
            except ValueError as err:  # a decoded frame the crop cannot use: the sample fails alone
                item = failed(item, f"augmentation: {error_reason(err)}")
            yield item


class ReplaceBad:
    """Failed training samples -> deterministic stand-ins, so that every batch has all its rows.

    The stand-in of the failed sample at stream position p is the first good one of up to
    MAX_REPLACEMENT_DRAWS samples drawn from the whole split by the (seed parts, p) generator, read
    and put through `process` (digest check, decode, augment) with p's own sampling generators. It
    depends only on p, whatever the shuffle buffer, so a resumed run draws the same stand-in. Every
    failure met on the way is listed in the item's `__bad__` as (key, shard, reason); a position
    whose draws all fail stays an error item (its batch is then short and the loader stops the run).
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        seed_parts: tuple[int, ...],
        process: Sequence[Stage],
        reader: ShardReader | None = None,
    ) -> None:
        self.shards, self.seed_parts, self.process = shards, seed_parts, process
        self.read = ReadShardSlices(reader)
        self.ends = list(accumulate(shard.num_samples for shard in shards))

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            yield self.replace(item) if is_error(item) else item

    def replace(self, item: Item) -> Item:
        """The stand-in of error `item` (or `item` itself when every draw fails), with its `__bad__` list."""
        bad = [bad_entry(item)]
        rng = make_rng(Stream.REPLACE, *self.seed_parts, item["__pos__"])
        for _ in range(MAX_REPLACEMENT_DRAWS):
            stand_in = self.prepare(int(rng.integers(self.ends[-1])), item["__pos__"])
            if not is_error(stand_in):
                return {**stand_in, "__bad__": bad}
            bad.append(bad_entry(stand_in))
        return {**item, "__bad__": bad}

    def prepare(self, index: int, position: int) -> Item:
        """Sample `index` of the split, read and processed as if it stood at stream `position`."""
        shard_index = bisect.bisect_right(self.ends, index)
        shard = self.shards[shard_index]
        start = index - (self.ends[shard_index] - shard.num_samples)
        (raw,) = self.read([ShardSlice(shard.path, start, start + 1)])
        items: Iterator[Item] = iter([{**raw, "__pos__": position}])
        for stage in self.process:
            items = stage(items)
        return next(items)


class EvalViews:
    """Decoded test clips -> `views`: uint8 crops (T, 3, S, S), clips x crops, numbered clip-major."""

    def __init__(self, transform: EvalTransform, num_frames: int) -> None:
        self.transform, self.num_frames = transform, num_frames

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if not is_sample(item):
                yield item
                continue
            frames = item.pop("frames")
            views = []
            for clip in frames.split(self.num_frames):
                views += self.transform.pixel_views(clip)
            item["views"] = views
            yield item


def collate_rows(rows: list[tuple[torch.Tensor, int, str, int]], bad: list[BadEntry]) -> ShippedBatch:
    """(view, label, key, view id) rows and the failed samples among them -> the shipped batch."""
    return ShippedBatch(
        pixels=torch.stack([r[0] for r in rows]),
        label=torch.tensor([r[1] for r in rows], dtype=torch.long),
        key=[r[2] for r in rows],
        view=torch.tensor([r[3] for r in rows], dtype=torch.long),
        bad=bad,
    )


class AppendPadding:
    """Pass the stream through, then add `count` padding items (evaluation slots with no sample)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        yield from items
        for _ in range(self.count):
            yield {"__key__": "", "__pad__": True}


class TakeFirst:
    """Keep the first `count` items (ends a resampled worker's endless stream)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for position, item in enumerate(items):
            if position == self.count:
                return
            yield item


class BatchTrain:
    """Augmented samples -> training batches of exactly `samples_per_batch` stream positions each
    (`samples_per_batch` x repeated_aug rows).

    Failed samples come replaced (`ReplaceBad`), their failures in the item's `__bad__`, gathered in the
    batch's `bad` list of (key, shard, reason); an item that is still an error leaves its rows out (the
    loader then stops the run). Every worker yields its planned number of batches whatever fails.
    Each is a `ShippedBatch`: pixels (`pixel_shape` per row), each row's erased box (`erase`) and the
    seed parts of its mixing generator (`mix_seed`: seed parts, batch index); `finish_train_batch`
    completes it.
    """

    def __init__(
        self,
        samples_per_batch: int,
        pixel_shape: tuple[int, ...],
        seed_parts: tuple[int, ...],
        first_batch: int,
        batch_step: int,
    ) -> None:
        self.samples_per_batch, self.pixel_shape = samples_per_batch, pixel_shape
        self.seed_parts, self.first_batch, self.batch_step = seed_parts, first_batch, batch_step

    def __call__(self, items: Iterable[Item]) -> Iterator[ShippedBatch]:
        group: list[Item] = []
        batch_index = self.first_batch
        for item in items:
            group.append(item)
            if len(group) == self.samples_per_batch:
                yield self.collate(group, batch_index)
                group, batch_index = [], batch_index + self.batch_step

    def collate(self, group: list[Item], batch_index: int) -> ShippedBatch:
        """One batch from a group of items; `batch_index` is the batch's index in the rank's epoch."""
        good = [item for item in group if not is_error(item)]
        rows = [
            (pixels, item["label"], item["__key__"], r)
            for item in good
            for r, (pixels, _) in enumerate(item["views"])
        ]
        bad = [entry for item in group for entry in item.get("__bad__", ())]
        batch = collate_rows(rows, bad) if rows else empty_batch(self.pixel_shape, bad)
        batch.erase = [box for item in good for _, box in item["views"]]
        batch.mix_seed = (*self.seed_parts, batch_index)
        return batch


class BatchEval:
    """Test views -> batches of exactly `rows_per_batch` rows; padding and failed samples give view -1 rows.

    Each sample contributes `views_per_sample` rows (real or padding), so the number of batches depends
    only on the plan and is the same on every rank. Rows are uint8 pixels until `finish_eval_batch`.
    """

    def __init__(self, rows_per_batch: int, views_per_sample: int, pixel_shape: tuple[int, ...]) -> None:
        self.rows_per_batch, self.views_per_sample, self.pixel_shape = (
            rows_per_batch,
            views_per_sample,
            pixel_shape,
        )

    def __call__(self, items: Iterable[Item]) -> Iterator[ShippedBatch]:
        rows: list[tuple[torch.Tensor, int, str, int]] = []
        bad: list[BadEntry] = []
        padding = (torch.zeros(self.pixel_shape, dtype=torch.uint8), -1, "", -1)
        for item in items:
            if "views" in item:
                rows += [(view, item["label"], item["__key__"], v) for v, view in enumerate(item["views"])]
            else:
                rows += [padding] * self.views_per_sample
                if is_error(item):
                    bad.append(bad_entry(item))
            while len(rows) >= self.rows_per_batch:
                yield collate_rows(rows[: self.rows_per_batch], bad)
                rows, bad = rows[self.rows_per_batch :], []
        if rows:
            rows += [padding] * (self.rows_per_batch - len(rows))
            yield collate_rows(rows, bad)


def empty_batch(row_shape: tuple[int, ...], bad: list[BadEntry]) -> ShippedBatch:
    """A batch with no rows (every sample of its group failed, in `bad`)."""
    return ShippedBatch(
        pixels=torch.zeros((0, *row_shape)),
        label=torch.zeros(0, dtype=torch.long),
        key=[],
        view=torch.zeros(0, dtype=torch.long),
        bad=bad,
    )


def finish_train_batch(batch: ShippedBatch, aug: AugConfig, num_classes: int, image: bool = False) -> Batch:
    """A shipped training batch -> the model's batch: normalise, erase each row's box, mix;
    `image`: the one-frame clips become images (B, C, H, W)."""
    video = normalise_batch(batch.pixels, aug.mean, aug.std)
    for row, box in enumerate(batch.erase):
        if box is not None:
            top, left, noise = box
            video[row, :, :, top : top + noise.shape[-2], left : left + noise.shape[-1]] = noise
    label = batch.label
    if aug.mixes:
        video, label = mix_batch(video, label, num_classes, aug, make_rng(Stream.BATCH, *batch.mix_seed))
    return Batch(video.squeeze(2) if image else video, label, batch.key, batch.view)


def finish_eval_batch(batch: ShippedBatch, aug: AugConfig, image: bool = False) -> Batch:
    """A shipped evaluation batch -> the model's batch: normalise; padding rows (view -1) are zeros;
    `image`: (B, C, H, W)."""
    video = normalise_batch(batch.pixels, aug.mean, aug.std)
    video[batch.view == -1] = 0.0
    return Batch(video.squeeze(2) if image else video, batch.label, batch.key, batch.view)
