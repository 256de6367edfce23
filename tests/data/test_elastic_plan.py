"""Continuing an epoch on another world size: the positions the old ranks consumed are worked out from
their counts (replaying each worker's shuffle buffer on integers) and left out of the new cut.

Pure plan arithmetic over many sizes, then one check on real shards: keys stopped on 2 ranks and
continued on 4 and on 1 are each seen at most once in that epoch, fewer than one global batch sit out.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pipeline.data.loader import TrainLoader, build_train_loader
from pipeline.data.manifest import load_shard_set
from pipeline.data.plan import TrainPlan
from pipeline.train.checkpoint import RankState, TrainerState
from pipeline.train.elastic import batch_for_world, continued_loader_state
from tests.data.test_loader import all_keys, config


def positions_read(plan: TrainPlan) -> list[int]:
    """Stream positions every (rank, worker) of `plan` reads in the epoch."""
    read = []
    for rank in range(plan.world_size):
        for worker in range(plan.workers):
            for begin, end in plan.stream_ranges(*plan.worker_span(rank, worker)):
                read += range(begin, end)
    return read


@pytest.mark.parametrize(
    ("total", "old_world", "old_batch", "workers", "buffer", "batches_done", "new_world", "new_batch"),
    [
        (100, 2, 4, 2, 5, 2, 4, 2),
        (100, 2, 4, 2, 5, 2, 1, 8),
        (97, 4, 3, 3, 7, 5, 2, 6),
        (250, 3, 5, 1, 1, 4, 5, 3),
        (64, 2, 4, 2, 64, 3, 8, 1),
    ],
)
def test_a_continued_epoch_reads_each_remaining_position_once(
    total, old_world, old_batch, workers, buffer, batches_done, new_world, new_batch
) -> None:
    old = TrainPlan(total, old_world, old_batch, workers)
    consumed = old.consumed(batches_done * old_batch, buffer, seed=3, epoch=1)
    taken = [p for begin, end in consumed for p in range(begin, end)]
    assert len(taken) == len(set(taken)) == old_world * batches_done * old_batch
    new = old.continued(new_world, new_batch, workers, consumed)
    read = positions_read(new)
    assert len(read) == len(set(read)) == new.steps_per_epoch * new_world * new_batch
    assert not set(read) & set(taken)  # nothing seen twice in the epoch
    sitting_out = total - len(read) - len(taken)
    assert 0 <= sitting_out < new_world * new_batch  # fewer than one global batch
    # a second change inside the same epoch composes
    again = new.consumed(new_batch, buffer, seed=3, epoch=1)
    last = new.continued(old_world, old_batch, workers, again)
    later = positions_read(last)
    assert not set(later) & set(p for begin, end in again for p in range(begin, end))


def test_the_batch_adapts_to_keep_the_global_batch() -> None:
    assert batch_for_world(64, 8, 8) == (8, 1)
    assert batch_for_world(64, 4, 8) == (8, 2)  # fewer ranks: accumulate
    assert batch_for_world(64, 16, 8) == (4, 1)  # more ranks: smaller micro-batches
    assert batch_for_world(48, 4, 8, multiple=2) == (6, 2)
    with pytest.raises(Exception, match=r"cannot be kept on 5 ranks .* world sizes that can: 1, 2, 4, 8"):
        batch_for_world(8, 5, 4)


def keys_of(loader: TrainLoader, batches: int | None = None) -> list[str]:
    """The keys of the next `batches` batches of `loader` (the rest of its epoch when None)."""
    return [key for batch in itertools.islice(loader, batches) for key in batch.key]


@pytest.mark.parametrize("new_world", [4, 1])
def test_real_shards_stopped_on_two_ranks_and_continued_see_each_sample_once(make_shards, new_world) -> None:
    folders = [str(make_shards("ssv2", "train", max_samples=7))]  # 16 clips in shards of 7, 7, 2
    cfg = config(folders, batch_size=2, workers=2, shuffle_buffer=4)
    old = [build_train_loader(cfg, rank=r, world_size=2, seed=5) for r in range(2)]
    seen = [key for loader in old for key in keys_of(loader, 2)]  # 2 batches of 2 per rank
    ranks = [RankState(loader.state(), {}, None) for loader in old]
    config_dict = {"data": {"batch_size": 2}, "engine": {"grad_accum_steps": 1}}
    saved = TrainerState(2, 0, 2, config_dict, "", {}, ranks, micro_batch=2, grad_accum=1)
    new_batch, _ = batch_for_world(saved.global_batch, new_world, 2)
    new_cfg = config(folders, batch_size=new_batch, workers=2, shuffle_buffer=4)
    for rank in range(new_world):
        loader = build_train_loader(new_cfg, rank=rank, world_size=new_world, seed=5)
        loader.restore(continued_loader_state(saved, loader, shuffle_buffer=4))
        seen += keys_of(loader)
        assert loader.state().epoch == 1  # the epoch ended where the plan said
    repeated = [key for key, n in Counter(seen).items() if n > 1]
    assert repeated == []
    total = load_shard_set(folders).total
    assert set(seen) <= set(all_keys(folders)) and total - len(seen) < 4  # global batch: 4 clips
