"""Where a run continues from, and how: the checkpoint, the batch layout, the loader position, the
DeepSpeed state.

Start and resume are one path: a run always begins by looking for the newest valid checkpoint (or the
one `checkpoint.resume` names). On the world size that saved it, every rank continues its own state
exactly; on another, the run keeps its full state and its global batch (see `pipeline.train.elastic`);
with `checkpoint.weights_only` it keeps the weights and starts the checkpoint's epoch afresh.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import ConfigError
from pipeline.console import note
from pipeline.data.loader import LoaderState, TrainLoader
from pipeline.train.agreement import on_rank0
from pipeline.train.checkpoint import (
    TrainerState,
    checkpoint_folder,
    find_resume_checkpoint,
    read_trainer_state,
    universal_folder,
)
from pipeline.train.config import Config, config_changes
from pipeline.train.elastic import batch_for_world, continued_loader_state
from pipeline.train.engine import (
    convert_to_universal,
    load_checkpoint,
    needs_universal_checkpoint,
    restore_saved_buffers,
)


class CheckpointLoadError(RuntimeError):
    """A verified checkpoint that DeepSpeed could not load on some rank: the next older one is tried."""

    def __init__(self, tag_dir: Path, reason: str) -> None:
        super().__init__(f"checkpoint {tag_dir} failed to load ({reason})")
        self.tag_dir = tag_dir


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and how: exactly (same world size), elastically (another
    world size, full state), or from its weights only."""

    tag_dir: Path
    state: TrainerState
    weights_only: bool
    world_size: int  # of this job

    @property
    def exact(self) -> bool:
        """Full state on the world size that saved it: every rank continues its own stream."""
        return not self.weights_only and self.state.world_size == self.world_size

    @property
    def elastic(self) -> bool:
        """Full state on another world size."""
        return not self.weights_only and self.state.world_size != self.world_size

    def describe(self) -> str:
        """The line a run's start prints about it."""
        line = f"resuming {self.tag_dir}"
        if self.weights_only:
            return line + " (its weights only)"
        if self.elastic:
            line += f" saved by {self.state.world_size} ranks, on {self.world_size} ranks"
        return line


def resume_point(cfg: Config, world: int, skip: list[Path]) -> ResumePoint | None:
    """The checkpoint to start from (rank 0 verifies, all follow), its state read and checked."""

    def choose() -> str | None:
        tag_dir = find_resume_checkpoint(checkpoint_folder(cfg.run_dir), cfg.checkpoint.resume, skip=skip)
        return str(tag_dir) if tag_dir else None

    chosen = on_rank0(choose)
    if chosen is None:
        return None
    tag_dir = Path(chosen)
    point = ResumePoint(tag_dir, read_trainer_state(tag_dir), cfg.checkpoint.weights_only, world)
    changes = config_changes(point.state.config, cfg)
    if changes and not point.weights_only:
        raise ConfigError(
            f"config changed since checkpoint {tag_dir} ({'; '.join(changes[:3])}): resume with the original "
            "config, or set checkpoint.weights_only=true to continue from its weights",
            every_rank=True,
        )
    return point


def batch_of_run(cfg: Config, point: ResumePoint | None, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps): the config's on a fresh start or a weights-only one,
    the checkpoint's on the same world size, adapted to keep its global batch on another."""
    if point is None or point.weights_only:
        return cfg.data.batch_size, cfg.engine.grad_accum_steps
    if point.exact:
        return point.state.micro_batch, point.state.grad_accum
    try:
        return batch_for_world(
            point.state.global_batch, world, cfg.data.batch_size, cfg.data.aug.repeated_aug
        )
    except ConfigError as err:  # every rank computes the same
        raise ConfigError(str(err), every_rank=True) from None


def with_batch(cfg: Config, micro_batch: int, grad_accum: int) -> Config:
    """`cfg` with another micro-batch per rank and accumulation."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, batch_size=micro_batch),
        engine=dataclasses.replace(cfg.engine, grad_accum_steps=grad_accum),
    )


def restore_loader(loader: TrainLoader, point: ResumePoint, rank: int, cfg: Config) -> None:
    """Put the loader where the checkpoint left this rank: its own position (exact), the run's position
    re-cut for this world size (elastic), or the first sample of the checkpoint's epoch (weights only)."""
    if point.exact:
        loader.restore(point.state.ranks[rank].loader)
    elif point.elastic:
        loader.restore(continued_loader_state(point.state, loader, cfg.data.shuffle_buffer))
    else:
        loader.restore(LoaderState(epoch=point.state.epoch, samples_consumed=0, seed=cfg.seed))


def load_engine_state(engine: Any, point: ResumePoint, zero_stage: int) -> None:
    """Load the checkpoint's DeepSpeed state; on another world size through its universal form, which
    rank 0 makes once. Raises CheckpointLoadError (on every rank) when any rank fails."""
    tag_dir, error = point.tag_dir, ""
    if point.elastic and needs_universal_checkpoint(zero_stage):
        tag_dir = universal_folder(point.tag_dir)

        def convert() -> str | None:
            """Why the conversion failed, or None."""
            if not tag_dir.is_dir():
                note("train", f"converting {point.tag_dir} for {point.world_size} ranks")
                try:
                    convert_to_universal(point.tag_dir, tag_dir, zero_stage)
                except RuntimeError as err:
                    return str(err)
            return None

        if problem := on_rank0(convert):
            raise CheckpointLoadError(point.tag_dir, problem)
    try:
        load_checkpoint(engine, tag_dir.parent, tag_dir.name)
        if tag_dir != point.tag_dir:
            restore_saved_buffers(engine.module, point.tag_dir)
    except Exception as err:  # any failure to read the files: the tag is unusable, an older one may not be
        error = f"{type(err).__name__}: {err}"
    failed = torch.tensor([int(bool(error))], device=engine.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        raise CheckpointLoadError(point.tag_dir, error or "on another rank")
