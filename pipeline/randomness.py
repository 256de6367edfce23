"""Every random stream of a run, and the one way their seeds are made.

A stream's generator is seeded by its `Stream` tag and the integers that say where it is used (run seed,
epoch, rank, worker, sample position, ...) through NumPy's `SeedSequence`: streams never overlap, and a
stream's draws depend only on those integers, so any rank or worker can recreate them after a resume or
on another world size. Torch-free: the sharding tool and the data workers use it too.
"""

from __future__ import annotations

import random
from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a generator is for. A value is part of every seed of its stream: never reuse or renumber one
    (that would change the draws of existing runs). 7 is retired (random erasing draws from AUGMENT)."""

    SAMPLE = 1  # a sample's frame positions (per sample position)
    BATCH = 2  # a batch's mixup / cutmix
    SHUFFLE = 3  # a worker's shuffle buffer (Python's `random.Random`)
    RESAMPLE = 4  # the shard draws of a resampled (endless) stream
    REPLACE = 5  # which sample stands in for a bad one
    AUGMENT = 6  # a sample's crop, flip and RandAugment
    SHARD_ORDER = 8  # an epoch's shard permutation
    FRAME_ORDER = 9  # the frame-shuffling control experiment (per rank)
    RANK_TORCH = 10  # a rank's torch generator (drop path) when no checkpoint holds it


def _entropy(stream: Stream, parts: tuple[int, ...]) -> list[int]:
    return [int(stream), *(int(p) for p in parts)]


def make_rng(stream: Stream, *parts: int) -> np.random.Generator:
    """A NumPy generator for `stream` at `parts` (non-negative ints, e.g. seed, epoch, rank, position)."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(stream, parts)))


def derive_seed(stream: Stream, *parts: int) -> int:
    """A 63-bit integer seed for `stream` at `parts`, for generators that take one (torch, `random`)."""
    state = np.random.SeedSequence(_entropy(stream, parts)).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def python_rng(stream: Stream, *parts: int) -> random.Random:
    """A Python `random.Random` for `stream` at `parts`."""
    return random.Random(derive_seed(stream, *parts))
