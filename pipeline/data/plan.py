"""How an epoch's samples are cut between ranks and workers: pure arithmetic on manifest counts.

Training epoch e (not resampled):
1. the shards are put in a random order drawn from (seed, epoch), and their samples concatenated
   into one stream of N positions;
2. every rank gets the same number of whole batches, steps = N // (world_size * samples_per_batch),
   as one contiguous range of that stream (rank r: [r * S, (r + 1) * S), S = steps * samples_per_batch);
   the N - world_size * S samples left over (fewer than one batch per rank) sit out this epoch only:
   the next epoch's shard order leaves out others;
3. inside a rank, batch j is made by logical worker j % K (K = max(1, workers)), so worker k owns
   batches k, k + K, ... and reads the contiguous part of the rank's range that holds them.
   The DataLoader takes batches from its workers round-robin, which restores the order 0, 1, 2, ...

Resuming at batch j rotates the workers (physical worker p plays logical worker (j + p) % K) so the
round-robin starts with batch j; each logical worker skips its batches before j after shuffling.

Resuming on another world size (or batch size) in the middle of epoch e: the positions the old ranks
consumed are worked out from their saved counts (the shuffle buffer's order depends only on its seed
and the span's length, so it is replayed on integers, no data read) and excluded; the remaining
positions form the epoch's stream, cut by the rule above for the new ranks. Every sample is then seen
at most once in epoch e, and fewer than one global batch sit out; epoch e + 1 is planned as usual.

Evaluation: rank r gets samples [r * N // W, (r + 1) * N // W) in manifest order; every rank is
given ceil(N / W) slots so that all ranks run the same number of batches, the missing ones padded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import webdataset as wds

from pipeline.data.manifest import ShardInfo
from pipeline.randomness import Stream, make_rng, python_rng

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint [begin, end) position ranges


@dataclass(frozen=True)
class ShardSlice:
    """Samples [start, stop) of one shard, in tar order."""

    path: str
    start: int
    stop: int


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shard permutation of one epoch."""
    return [int(i) for i in make_rng(Stream.SHARD_ORDER, seed, epoch).permutation(num_shards)]


def slice_stream(shards: Sequence[ShardInfo], begin: int, end: int) -> list[ShardSlice]:
    """The shard slices that hold positions [begin, end) of the concatenation of `shards`."""
    slices, offset = [], 0
    for shard in shards:
        lo, hi = max(begin, offset), min(end, offset + shard.num_samples)
        if lo < hi:
            slices.append(ShardSlice(shard.path, lo - offset, hi - offset))
        offset += shard.num_samples
    return slices


def batches_of_worker(num_batches: int, workers: int, worker: int) -> int:
    """How many of batches 0 .. num_batches - 1 belong to `worker` (batch j belongs to j % workers)."""
    return len(range(worker, num_batches, workers))


@dataclass(frozen=True)
class TrainPlan:
    """The cut of one training epoch; see the module docstring.

    Positions in `excluded` (consumed before a change of world size in this epoch) are left out: ranks
    and workers cut the remaining `available` positions, and `stream_ranges` maps back.
    """

    total: int
    world_size: int
    samples_per_batch: int
    workers: int
    excluded: Ranges = ()

    @property
    def available(self) -> int:
        """Positions of the epoch's stream not excluded."""
        return self.total - sum(end - begin for begin, end in self.excluded)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per rank per epoch (equal on every rank)."""
        return self.available // (self.world_size * self.samples_per_batch)

    @property
    def samples_per_rank(self) -> int:
        """Stream samples each rank consumes per epoch."""
        return self.steps_per_epoch * self.samples_per_batch

    def worker_samples(self, worker: int) -> int:
        """Stream samples logical worker `worker` reads per epoch."""
        return batches_of_worker(self.steps_per_epoch, self.workers, worker) * self.samples_per_batch

    def worker_span(self, rank: int, worker: int) -> tuple[int, int]:
        """Available positions [begin, end) of the epoch's shuffled-shard stream that (rank, worker) reads."""
        begin = rank * self.samples_per_rank + sum(self.worker_samples(k) for k in range(worker))
        return begin, begin + self.worker_samples(worker)

    def stream_ranges(self, begin: int, end: int) -> list[tuple[int, int]]:
        """The stream position ranges of available positions [begin, end) (stepping over `excluded`)."""
        ranges, seen, position = [], 0, 0  # `seen`: available positions before `position`
        for low, high in (*self.excluded, (self.total, self.total)):
            first, last = max(begin, seen), min(end, seen + low - position)
            if first < last:
                ranges.append((position + first - seen, position + last - seen))
            seen, position = seen + low - position, high
        return ranges

    def consumed(self, samples_per_rank: int, shuffle_buffer: int, seed: int, epoch: int) -> Ranges:
        """Stream positions consumed (with `excluded`) once every rank has taken `samples_per_rank`.

        Each worker's shuffle buffer is replayed on the integers of its span with the worker's own seed,
        exactly as `TrainStream` draws it.
        """
        batches = samples_per_rank // self.samples_per_batch
        taken: list[tuple[int, int]] = []
        for rank in range(self.world_size):
            for worker in range(self.workers):
                count = batches_of_worker(batches, self.workers, worker) * self.samples_per_batch
                begin, end = self.worker_span(rank, worker)
                rng = python_rng(Stream.SHUFFLE, seed, epoch, rank, worker)
                order = wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng)(iter(range(begin, end)))
                taken += [(index, index + 1) for index in itertools.islice(order, count)]
        stream = [piece for low, high in merge_ranges(taken) for piece in self.stream_ranges(low, high)]
        return merge_ranges([*self.excluded, *stream])

    def continued(self, world_size: int, samples_per_batch: int, workers: int, consumed: Ranges) -> TrainPlan:
        """The plan for the rest of this epoch on another world size or batch, without `consumed`."""
        return replace(
            self,
            world_size=world_size,
            samples_per_batch=samples_per_batch,
            workers=workers,
            excluded=consumed,
        )


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """Sorted, disjoint ranges covering the union of `ranges`."""
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(ranges):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return tuple(merged)


@dataclass(frozen=True)
class EvalPlan:
    """The cut of an evaluation pass; see the module docstring."""

    total: int
    world_size: int
    workers: int

    @property
    def slots_per_rank(self) -> int:
        """Samples (real or padding) each rank handles."""
        return math.ceil(self.total / self.world_size)

    def worker_slots(self, worker: int) -> tuple[int, int]:
        """Slots [begin, end) of the rank's slots that `worker` handles (the same on every rank)."""
        slots = self.slots_per_rank
        return worker * slots // self.workers, (worker + 1) * slots // self.workers

    def worker_span(self, rank: int, worker: int) -> tuple[int, int, int]:
        """(begin, end, padding): real stream positions of (rank, worker), then how many slots are padding."""
        rank_begin = rank * self.total // self.world_size
        rank_end = (rank + 1) * self.total // self.world_size
        lo, hi = self.worker_slots(worker)
        begin, end = min(rank_begin + lo, rank_end), min(rank_begin + hi, rank_end)
        return begin, end, (hi - lo) - (end - begin)

    def batches_per_rank(self, views_per_sample: int, rows_per_batch: int) -> int:
        """Evaluation batches every rank yields."""
        return sum(
            math.ceil((hi - lo) * views_per_sample / rows_per_batch)
            for lo, hi in (self.worker_slots(k) for k in range(self.workers))
        )
