"""Continuing a run on another number of ranks: the same global batch, the rest of the epoch's samples.

A checkpoint saved by W ranks resumes on W' ranks with its full state: DeepSpeed re-cuts weights and
optimizer moments (engine.py), and this module decides the two things that depend on the world size:
- the batch: the global batch the run started with stays (the learning rate, schedule and
  optimizer trajectory assume it); each rank's micro-batch and the accumulation steps adapt, the
  micro-batch never above the config's `data.batch_size` (what fitted in memory);
- the data position: the samples the W ranks consumed in the current epoch are left out and the
  rest is cut afresh for W' ranks (`pipeline.data.plan`), so no sample is seen twice in that epoch and
  fewer than one global batch sit out.
"""

from __future__ import annotations

from pipeline.config import ConfigError
from pipeline.data.loader import LoaderState, TrainLoader
from pipeline.data.plan import TrainPlan
from pipeline.train.checkpoint import TrainerState


def batch_for_world(
    global_batch: int, world_size: int, max_micro_batch: int, multiple: int = 1
) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) with micro x steps x world = `global_batch`, all in rows
    (augmented views): the largest micro-batch up to `max_micro_batch` that is a multiple of `multiple`
    (repeated augmentation's views per sample, which share a micro-batch)."""
    if global_batch % world_size == 0:
        per_rank = global_batch // world_size
        for micro in range(min(max_micro_batch, per_rank), 0, -1):
            if per_rank % micro == 0 and micro % multiple == 0:
                return micro, per_rank // micro
    possible = [
        w for w in range(1, global_batch + 1) if global_batch % w == 0 and (global_batch // w) % multiple == 0
    ]
    raise ConfigError(
        f"the run's global batch of {global_batch} rows cannot be kept on {world_size} ranks "
        f"(micro-batch at most data.batch_size={max_micro_batch}); world sizes that can: "
        + ", ".join(map(str, possible[:16]))
        + (" ..." if len(possible) > 16 else "")
    )


def continued_loader_state(saved: TrainerState, loader: TrainLoader, shuffle_buffer: int) -> LoaderState:
    """The position of `loader` (built for this world size) that continues the saved ranks' epoch."""
    if len({(r.loader.epoch, r.loader.samples_consumed, r.loader.excluded) for r in saved.ranks}) != 1:
        raise ConfigError(f"checkpoint at step {saved.step}: its ranks stopped at different data positions")
    position = saved.ranks[0].loader
    if loader.cfg.resampled:  # shards drawn with replacement: there is no order to continue, only a count
        return LoaderState(position.epoch, 0, position.seed)
    old = TrainPlan(
        loader.full_plan.total,
        saved.world_size,
        saved.micro_batch // loader.cfg.aug.repeated_aug,  # the saved rows per batch, in samples
        loader.full_plan.workers,
        position.excluded,
    )
    consumed = old.consumed(position.samples_consumed, shuffle_buffer, position.seed, position.epoch)
    return LoaderState(position.epoch, 0, position.seed, consumed)
