"""Training and evaluation loaders: webdataset shards -> sampled, decoded, augmented batches.

Each worker runs one visible list of stages (see `TrainStream.stages`):

    shard slices of this (rank, worker) -> read tar samples -> shuffle buffer -> number / skip
    -> sample frame indices + decode -> augment -> batch (+ mixup)

Batches are `Batch` records (`pipeline.data.batch`): `inputs` float (B, C, T, H, W) normalised (images:
(B, C, H, W)), `label` (B,) long or (B, K) soft targets under mixup/cutmix, `key` list[str], `view` (B,)
long (training: the repeated-augmentation index; evaluation: the clip x crop view index, -1 on padding
rows). Workers send uint8 pixels (a `ShippedBatch`); the loader normalises (and erases, mixes) them in
the main process as it yields each batch.

The TrainLoader advances itself: iterating it yields the rest of the current epoch, and once an
epoch is complete the next iteration starts the next epoch (`restore` jumps explicitly). Its
DataLoader workers persist from one pass to the next; each pass starts where `PassStart` says.
`state()` is what has been consumed up to the last batch yielded; a loader built with that state
yields exactly the batches the uninterrupted loader would have yielded next.

Bad samples (a read, digest or decode error) never break a batch: training replaces each with a
deterministic stand-in (`ReplaceBad`), evaluation turns it into padding rows. Each failure is counted,
logged once per key, and appended to `<run dir>/bad_samples.jsonl` (key, shard, reason) when the loader
is given the run folder. More failures in one epoch of a rank than `data.max_bad_fraction` of its
samples (and at least MIN_BAD_SAMPLES) stop training with a BadDataError naming the worst shards.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.console import note
from pipeline.data.backends import DecodeBackend, decode_backend
from pipeline.data.batch import BadEntry, Batch, ShippedBatch
from pipeline.data.config import DataConfig
from pipeline.data.manifest import ShardSet, load_shard_set
from pipeline.data.plan import (
    EvalPlan,
    Ranges,
    ShardSlice,
    TrainPlan,
    batches_of_worker,
    shard_order,
    slice_stream,
)
from pipeline.data.shard_io import ShardReader
from pipeline.data.stream import (
    AppendPadding,
    BatchEval,
    BatchTrain,
    CheckDigest,
    NumberAndSkip,
    ReadShardSlices,
    ReplaceBad,
    SliceSource,
    TakeFirst,
    finish_eval_batch,
    finish_train_batch,
)
from pipeline.data.transforms import should_flip
from pipeline.errors import DataError
from pipeline.randomness import Stream, make_rng, python_rng

BAD_SAMPLES_FILE = "bad_samples.jsonl"
# The bad-sample cap never stops a run for fewer failures per epoch than this (one broken clip in a
# tiny demo is no reason to stop).
MIN_BAD_SAMPLES = 8


class BadDataError(DataError):
    """Too many samples failed: the data is broken, not one clip."""


@dataclass
class LoaderState:
    """The loader's position, saved in every checkpoint: epoch, samples this rank consumed in it, seed,
    and the epoch's stream positions consumed before a change of world size (see `pipeline.data.plan`)."""

    epoch: int = 0
    samples_consumed: int = 0
    seed: int = 0
    excluded: Ranges = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for the checkpoint's client state."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderState:
        """Rebuild a state saved by `to_dict`; a missing key or a non-integer value is an error naming it."""
        values: dict[str, Any] = {}
        for name in ("epoch", "samples_consumed", "seed"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"loader state key '{name}' must be a non-negative int, got {value!r}")
            values[name] = value
        excluded = data.get("excluded", ())  # absent from checkpoints older than elastic resume
        if not all(len(pair) == 2 and 0 <= pair[0] < pair[1] for pair in excluded):
            raise ValueError(f"loader state key 'excluded' must hold [begin, end) ranges, got {excluded!r}")
        return cls(**values, excluded=tuple((int(b), int(e)) for b, e in excluded))


class ResampledShards:
    """Endless whole-shard slices drawn with replacement by the (seed, epoch, rank, worker) generator."""

    def __init__(self, shard_set: ShardSet, seed_parts: tuple[int, ...]) -> None:
        self.shards, self.seed_parts = shard_set.shards, seed_parts

    def __call__(self) -> Iterator[ShardSlice]:
        rng = make_rng(Stream.RESAMPLE, *self.seed_parts)
        while True:
            shard = self.shards[int(rng.integers(len(self.shards)))]
            yield ShardSlice(shard.path, 0, shard.num_samples)


class PassStart:
    """Where the next pass over a TrainStream starts: (epoch, first batch of the rank's epoch).

    Shared memory: the main process sets it before each pass, and persistent DataLoader workers, which
    hold the copy of the stream made when they started, read it as the pass begins.
    """

    def __init__(self, epoch: int = 0, start_batch: int = 0) -> None:
        self._values = torch.tensor([epoch, start_batch], dtype=torch.int64).share_memory_()

    def set(self, epoch: int, start_batch: int) -> None:
        """Start the next pass at batch `start_batch` of `epoch`."""
        self._values.copy_(torch.tensor([epoch, start_batch]))

    @property
    def epoch(self) -> int:
        return int(self._values[0])

    @property
    def start_batch(self) -> int:
        return int(self._values[1])


class TrainStream(IterableDataset):
    """One epoch of one rank from batch `start_batch` on, as `start` says when a pass begins. In DataLoader
    workers, each runs the stages of one logical worker; in the main process (a back end that decodes
    there), it interleaves them all."""

    def __init__(
        self,
        cfg: DataConfig,
        shard_set: ShardSet,
        plan: TrainPlan,
        rank: int,
        seed: int,
        start: PassStart,
        backend: DecodeBackend,
    ) -> None:
        super().__init__()
        self.cfg, self.shard_set, self.plan, self.backend = cfg, shard_set, plan, backend
        self.rank, self.seed, self.start = rank, seed, start
        self.flip = all(should_flip(cfg.aug, name) for name in shard_set.datasets)
        self.reader = shard_reader(cfg, shard_set)

    @property
    def epoch(self) -> int:
        return self.start.epoch

    @property
    def start_batch(self) -> int:
        return self.start.start_batch

    def __iter__(self) -> Iterator[ShippedBatch]:
        info = get_worker_info()
        # Rotation: physical worker p plays logical worker (start_batch + p) % K, so that the DataLoader's
        # round-robin over workers (and `in_order` here) starts with batch `start_batch`.
        order = [(self.start_batch + p) % self.plan.workers for p in range(self.plan.workers)]
        if info is not None:
            return iter(wds.DataPipeline(*self.stages(order[info.id])))
        return round_robin([iter(wds.DataPipeline(*self.stages(worker))) for worker in order])

    def source(self, worker: int) -> Any:
        """The shard slices logical `worker` reads this epoch (endless when resampled)."""
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        if self.cfg.resampled:
            return ResampledShards(self.shard_set, seed_parts)
        order = [
            self.shard_set.shards[i] for i in shard_order(len(self.shard_set.shards), self.seed, self.epoch)
        ]
        ranges = self.plan.stream_ranges(*self.plan.worker_span(self.rank, worker))
        return SliceSource([piece for begin, end in ranges for piece in slice_stream(order, begin, end)])

    def read_stages(self, worker: int) -> list[Any]:
        """The stages that pick this worker's raw samples: slices, tar reading, shuffle, number, skip."""
        plan = self.plan
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        done = batches_of_worker(self.start_batch, plan.workers, worker)
        return [
            self.source(worker),
            ReadShardSlices(self.reader),
            wds.shuffle(
                self.cfg.shuffle_buffer,
                initial=self.cfg.shuffle_buffer,
                rng=python_rng(Stream.SHUFFLE, *seed_parts),
            ),
            TakeFirst(plan.worker_samples(worker)),
            NumberAndSkip(done * plan.samples_per_batch),
            CheckDigest(),
        ]

    def first_batch(self, worker: int) -> int:
        """The index (in the rank's epoch) of the first batch logical `worker` yields."""
        return worker + batches_of_worker(self.start_batch, self.plan.workers, worker) * self.plan.workers

    def stages(self, worker: int) -> list[Any]:
        """The full stage list of logical `worker`: read, the back end's pixels, stand-ins, batches."""
        cfg, plan = self.cfg, self.plan
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        pixels = self.backend.train_stages(cfg, self.shard_set.num_classes, self.flip, seed_parts)
        return [
            *self.read_stages(worker),
            *pixels,
            ReplaceBad(self.shard_set.shards, seed_parts, [CheckDigest(), *pixels], self.reader),
            BatchTrain(
                plan.samples_per_batch,
                row_shape(cfg),
                seed_parts,
                first_batch=self.first_batch(worker),
                batch_step=plan.workers,
            ),
        ]


def shard_reader(cfg: DataConfig, shard_set: ShardSet) -> ShardReader:
    """What opens the shards of `shard_set`: local files, or URLs through data.cache_dir when it is set."""
    return ShardReader.for_shards(shard_set.shards, cfg.cache_dir, cfg.cache_gb)


def row_shape(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one batch row before finishing: uint8 (T, 3, S, S), T = 1 for images."""
    frames = 1 if cfg.modality == "image" else cfg.num_frames
    return (frames, 3, cfg.crop_size, cfg.crop_size)


def round_robin(iterators: list[Iterator[ShippedBatch]]) -> Iterator[ShippedBatch]:
    """One item from each iterator in turn, skipping those used up: the DataLoader's in-order
    round-robin over its workers, in one process."""
    live = list(iterators)
    while live:
        for it in list(live):
            item = next(it, None)
            if item is None:
                live.remove(it)
            else:
                yield item


class BadSampleLog:
    """Counts failed samples (in all, per epoch, per shard), logs each key once, and appends each failure
    to `<run_dir>/bad_samples.jsonl` when a run folder is given; runs in the main process."""

    def __init__(self, run_dir: Path | None = None, rank: int = 0) -> None:
        self.path = run_dir / BAD_SAMPLES_FILE if run_dir is not None else None
        self.rank = rank
        self.count = 0
        self.epoch: int | None = None
        self.in_epoch = 0
        self.per_shard: Counter[str] = Counter()
        self.logged: set[str] = set()

    def add(self, bad: list[BadEntry], epoch: int | None = None) -> None:
        """Count, log and record the failed samples reported by one batch of `epoch`."""
        if epoch != self.epoch:
            self.epoch, self.in_epoch = epoch, 0
        for key, shard, reason in bad:
            self.count += 1
            self.in_epoch += 1
            self.per_shard[shard] += 1
            if key not in self.logged:
                self.logged.add(key)
                note("data", f"warning: skipped sample {key} of {shard}: {reason}")
        if bad and self.path is not None:
            rows = [
                {"key": key, "shard": shard, "reason": reason, "rank": self.rank, "epoch": epoch}
                for key, shard, reason in bad
            ]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One append per batch: lines of several ranks never interleave mid-line.
            with self.path.open("a", encoding="utf-8") as file:
                file.write("".join(json.dumps(row) + "\n" for row in rows))

    def worst_shards(self, count: int = 3) -> str:
        """`shard (failures), ...` of the shards with the most failures."""
        return ", ".join(f"{shard} ({n})" for shard, n in self.per_shard.most_common(count))


def make_dataloader(dataset: IterableDataset, workers: int, persistent: bool = False) -> DataLoader:
    """A DataLoader over a stream that batches inside its workers (in-order round-robin over workers);
    `persistent`: the workers stay for the next pass."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        persistent_workers=persistent and workers > 0,
        in_order=True,
    )


class TrainLoader:
    """Batches of one epoch per iteration; see the module docstring for epochs, state and resume."""

    def __init__(
        self,
        cfg: DataConfig,
        shard_set: ShardSet,
        rank: int,
        world_size: int,
        seed: int,
        run_dir: Path | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.cfg, self.shard_set, self.rank, self.seed = cfg, shard_set, rank, seed
        self.backend = decode_backend(cfg, training=True)
        self.full_plan = TrainPlan(shard_set.total, world_size, cfg.samples_per_batch, max(1, cfg.workers))
        self.excluded: Ranges = ()  # positions of this epoch consumed before a change of world size
        if self.plan.steps_per_epoch == 0:
            raise ValueError(
                f"data.train holds {shard_set.total} samples: fewer than one batch per rank "
                f"(world size {world_size} x {cfg.samples_per_batch} samples per batch)"
            )
        self.epoch, self.consumed = 0, 0
        # One DataLoader whose workers persist from epoch to epoch: forking new ones copies the page tables
        # of the whole process, so the first batch of an epoch came 0.1 s later with 2 workers, 0.3 s
        # later once the process held 8 GiB (bench/loader.py --worker-startup), growing with the workers
        # and the memory of a GPU rank. Rebuilt when the plan or seed changes (after an elastic resume).
        self.pass_start = PassStart()
        self._batches: DataLoader | None = None
        self._bad = BadSampleLog(run_dir, rank)
        # Failures one epoch of this rank may have (its whole epoch's share) before the run stops.
        self.bad_limit = max(MIN_BAD_SAMPLES, int(cfg.max_bad_fraction * self.plan.samples_per_rank))

    @property
    def plan(self) -> TrainPlan:
        """The cut of the current epoch."""
        return dataclasses.replace(self.full_plan, excluded=self.excluded)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per rank in a whole epoch, equal on every rank."""
        return self.full_plan.steps_per_epoch

    @property
    def num_classes(self) -> int:
        """Classes in the manifests' label map."""
        return self.shard_set.num_classes

    @property
    def bad_samples(self) -> int:
        """Samples skipped because they failed to read, decode or augment (since this loader was built)."""
        return self._bad.count

    def __len__(self) -> int:
        return self.steps_per_epoch

    def account(self, bad: list[BadEntry], rows: int, least_rows: int) -> None:
        """Record a batch's failures; raise BadDataError when the epoch's failures pass the cap or the batch
        has fewer than `least_rows` rows (every stand-in drawn for a failed sample failed too)."""
        self._bad.add(bad, self.epoch)
        where = f"rank {self.rank} epoch {self.epoch}"
        details = f"; see {self._bad.path}" if self._bad.path is not None else ""
        if self._bad.in_epoch > self.bad_limit:
            raise BadDataError(
                f"{where}: {self._bad.in_epoch} samples failed, more than data.max_bad_fraction="
                f"{self.cfg.max_bad_fraction} of the epoch allows ({self.bad_limit}); "
                f"worst shards: {self._bad.worst_shards()}{details}"
            )
        if rows < least_rows:
            raise BadDataError(
                f"{where}: a batch has {rows} of its {least_rows} rows, the stand-ins drawn for its failed "
                f"samples failed too; worst shards: {self._bad.worst_shards()}{details}"
            )

    def restore(self, state: LoaderState) -> None:
        """Continue from a saved state (its seed replaces the one given at build time)."""
        self.excluded = state.excluded
        if (
            state.samples_consumed > self.plan.samples_per_rank
            or state.samples_consumed % self.plan.samples_per_batch
        ):
            raise ValueError(
                f"loader state samples_consumed={state.samples_consumed} does not fit this run's plan "
                f"({self.plan.samples_per_rank} per epoch in batches of {self.plan.samples_per_batch}): "
                "the data, world size or batch size changed"
            )
        if state.seed != self.seed:
            seeds = f"the checkpoint's seed {state.seed} (not {self.seed})"
            note("data", f"warning: resuming the data stream with {seeds}")
        self.epoch, self.consumed, self.seed = state.epoch, state.samples_consumed, state.seed

    def state(self) -> LoaderState:
        """What was consumed up to the last batch yielded (a finished epoch reads as the next one's start)."""
        if self.consumed >= self.plan.samples_per_rank:
            return LoaderState(self.epoch + 1, 0, self.seed)
        return LoaderState(self.epoch, self.consumed, self.seed, self.excluded)

    def stream(self, start: PassStart | None = None) -> TrainStream:
        """The stream of the rest of the current epoch: the batches iterating yields next. `start`: the
        shared PassStart it reads each pass's start from instead (a persistent DataLoader's stream)."""
        state = self.state()
        plan = dataclasses.replace(self.full_plan, excluded=state.excluded)
        if start is None:
            start = PassStart(state.epoch, state.samples_consumed // plan.samples_per_batch)
        return TrainStream(self.cfg, self.shard_set, plan, self.rank, state.seed, start, self.backend)

    def batches(self) -> DataLoader:
        """The DataLoader of the rest of the current epoch (its workers kept from the last epoch's when
        the plan and seed are the same)."""
        kept = None if self._batches is None else self._batches.dataset
        if kept is None or (kept.plan, kept.seed) != (self.plan, self.seed):
            workers = self.cfg.workers if self.backend.in_workers else 0
            self._batches = make_dataloader(self.stream(self.pass_start), workers, persistent=True)
        self.pass_start.set(self.epoch, self.consumed // self.plan.samples_per_batch)
        return self._batches

    def __iter__(self) -> Iterator[Batch]:
        current = self.state()
        self.epoch, self.consumed, self.excluded = current.epoch, current.samples_consumed, current.excluded
        for batch in self.batches():
            self.account(batch.bad, len(batch), self.cfg.batch_size)
            self.consumed += self.plan.samples_per_batch
            yield finish_train_batch(batch, self.cfg.aug, self.num_classes, self.cfg.modality == "image")
        if self.consumed != self.plan.samples_per_rank:
            raise RuntimeError(
                f"rank {self.rank} epoch {self.epoch} ended after {self.consumed} samples, "
                f"planned {self.plan.samples_per_rank}: a shard changed since its manifest was written?"
            )


class EvalStream(IterableDataset):
    """The evaluation samples of one rank; each DataLoader worker reads its share of the slots (in the
    main process, one share after the other: evaluation averages by key, so the order does not matter)."""

    def __init__(
        self, cfg: DataConfig, shard_set: ShardSet, plan: EvalPlan, rank: int, backend: DecodeBackend
    ) -> None:
        super().__init__()
        self.cfg, self.shard_set, self.plan, self.rank, self.backend = cfg, shard_set, plan, rank, backend

    def __iter__(self) -> Iterator[ShippedBatch]:
        info = get_worker_info()
        workers = [info.id] if info is not None else range(self.plan.workers)
        return itertools.chain.from_iterable(wds.DataPipeline(*self.stages(worker)) for worker in workers)

    def stages(self, worker: int) -> list[Any]:
        """The stage list of `worker`: read its slots (and padding), the back end's views, batches."""
        cfg = self.cfg
        begin, end, padding = self.plan.worker_span(self.rank, worker)
        return [
            SliceSource(slice_stream(self.shard_set.shards, begin, end)),
            ReadShardSlices(shard_reader(cfg, self.shard_set)),
            NumberAndSkip(0),
            CheckDigest(),
            AppendPadding(padding),
            *self.backend.eval_stages(cfg, self.shard_set.num_classes),
            BatchEval(cfg.eval_rows, cfg.test_clips * cfg.test_crops, row_shape(cfg)),
        ]


class EvalLoader:
    """Every validation sample's clips x crops views, each sample on exactly one rank.

    Every rank yields `steps` batches of exactly `eval_rows` rows; rows with view == -1 are padding
    (or a sample that failed to decode) and must be left out of metrics. A video's views may span
    batches: average its predictions by `key`, then sum correct/total over ranks.
    """

    def __init__(
        self, cfg: DataConfig, shard_set: ShardSet, rank: int, world_size: int, run_dir: Path | None = None
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.cfg, self.shard_set, self.rank = cfg, shard_set, rank
        self.plan = EvalPlan(shard_set.total, world_size, max(1, cfg.workers))
        self.backend = decode_backend(cfg, training=False)
        self._bad = BadSampleLog(run_dir, rank)

    @property
    def steps(self) -> int:
        """Batches per pass, equal on every rank."""
        return self.plan.batches_per_rank(self.cfg.test_clips * self.cfg.test_crops, self.cfg.eval_rows)

    @property
    def num_classes(self) -> int:
        """Classes in the manifests' label map."""
        return self.shard_set.num_classes

    @property
    def bad_samples(self) -> int:
        """Samples that failed to read or decode (their rows came back as padding)."""
        return self._bad.count

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        stream = EvalStream(self.cfg, self.shard_set, self.plan, self.rank, self.backend)
        for batch in make_dataloader(stream, self.cfg.workers if self.backend.in_workers else 0):
            self._bad.add(batch.bad)
            yield finish_eval_batch(batch, self.cfg.aug, self.cfg.modality == "image")


def build_train_loader(
    cfg: DataConfig,
    *,
    rank: int,
    world_size: int,
    seed: int,
    state: LoaderState | None = None,
    run_dir: Path | None = None,
) -> TrainLoader:
    """The training loader of `rank`, continuing from `state` when given (exact resume).

    With `run_dir`, failed samples are also appended to `run_dir/bad_samples.jsonl`.
    """
    loader = TrainLoader(cfg, load_shard_set(cfg.train), rank, world_size, seed, run_dir)
    if state is not None:
        loader.restore(state)
    return loader


def build_eval_loader(
    cfg: DataConfig, *, rank: int, world_size: int, run_dir: Path | None = None
) -> EvalLoader:
    """The evaluation loader of `rank` (every sample's views on exactly one rank, equal batch counts).

    With `run_dir`, failed samples (padding rows) are also appended to `run_dir/bad_samples.jsonl`.
    """
    return EvalLoader(cfg, load_shard_set(cfg.val), rank, world_size, run_dir)
