"""How a run starts: one value of four kinds, chosen once, that the Trainer builds its parts from.

Start and resume are one path: a run always begins by looking for the newest valid checkpoint (or the
one `checkpoint.resume` names), and what it finds decides the kind:
- `Fresh`: none. The config's batch layout, the first sample, pretrained weights if the config names
  them, generators derived from step 0.
- `Exact`: full state on the world size that saved it. Every rank continues its own state exactly: the
  checkpoint's layout, its loader position, generators and BatchNorm statistics, the DeepSpeed state.
- `Elastic`: full state on another world size. The run keeps its global batch (the layout adapts) and
  the rest of the epoch's samples (re-cut for this world size, see `pipeline.train.elastic`); DeepSpeed
  loads the universal form of the checkpoint; a rank new to the run derives its generators.
- `WeightsOnly` (`checkpoint.weights_only`): the checkpoint's weights, the config's layout, the first
  sample of the checkpoint's epoch, generators derived from the checkpoint's step.

Each kind answers the same questions (`Start`): the line the run prints, the batch layout, the weights
the model starts from, what the engine loads, where each rank's parts continue, the first step. The
Trainer asks them in its fixed build order and never which kind it holds.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import ConfigError
from pipeline.console import note
from pipeline.data.loader import LoaderState
from pipeline.models.inflate import load_pretrained, read_weights
from pipeline.train.agreement import on_rank0
from pipeline.train.checkpoint import (
    RankParts,
    TrainerState,
    checkpoint_folder,
    find_resume_checkpoint,
    read_trainer_state,
    universal_folder,
)
from pipeline.train.config import Config, config_changes
from pipeline.train.elastic import batch_for_world, continued_loader_state
from pipeline.train.engine import (
    consolidated_state_dict,
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


def load_pretrained_weights(model: nn.Module, path: str) -> None:
    """Start from a weights file: image weights are inflated to video, a head of another class
    count (e.g. the Kinetics model fine-tuned on SSv2) is re-initialised."""
    load_pretrained(model, read_weights(path))


@dataclass(frozen=True)
class BatchLayout:
    """How the global batch is cut: rows per rank per micro-batch, micro-batches per optimizer step."""

    micro_batch: int
    grad_accum: int

    def global_batch(self, world_size: int) -> int:
        """Rows (augmented views) per optimizer step over `world_size` ranks."""
        return self.micro_batch * self.grad_accum * world_size

    def describe(self, world_size: int, views: int) -> str:
        """The layout in rows and, with `views` rows per sample (repeated augmentation), in samples."""
        rows = self.global_batch(world_size)
        return (
            f"{self.micro_batch} rows per rank x {self.grad_accum} accumulation steps "
            f"(global batch {rows} rows: {rows // views} samples x {views} views)"
        )

    def applied(self, cfg: Config) -> Config:
        """`cfg` with this micro-batch per rank and accumulation."""
        return dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, batch_size=self.micro_batch),
            engine=dataclasses.replace(cfg.engine, grad_accum_steps=self.grad_accum),
        )

    @classmethod
    def of_config(cls, cfg: Config) -> BatchLayout:
        """The layout the config asks for."""
        return cls(cfg.data.batch_size, cfg.engine.grad_accum_steps)


@dataclass(frozen=True)
class Start(ABC):
    """How this start of the run begins, on `world_size` ranks (see the module docstring)."""

    cfg: Config
    world_size: int

    @abstractmethod
    def describe(self) -> str:
        """The line the run's start prints about it."""

    @abstractmethod
    def layout(self) -> BatchLayout:
        """The batch layout of this start."""

    @abstractmethod
    def prepare_model(self, model: nn.Module) -> None:
        """Put the weights this start begins from into `model`, before the engine wraps it."""

    @property
    @abstractmethod
    def load_universal(self) -> bool:
        """Whether the engine is built to load a universal checkpoint."""

    @abstractmethod
    def load_engine(self, engine: Any) -> None:
        """Load the DeepSpeed state this start continues."""

    @abstractmethod
    def load_rank(self, parts: RankParts, rank: int) -> None:
        """Put this rank's parts (loader position, generators, buffers) where the start continues."""

    @abstractmethod
    def position(self, steps_per_epoch: int) -> tuple[int, int]:
        """(first optimizer step, epoch) of this start."""


@dataclass(frozen=True)
class Fresh(Start):
    """No checkpoint: the first step of the run."""

    def describe(self) -> str:
        return "starting fresh"

    def layout(self) -> BatchLayout:
        return BatchLayout.of_config(self.cfg)

    def prepare_model(self, model: nn.Module) -> None:
        """The pretrained weights the config names, if any."""
        if self.cfg.init.pretrained:
            load_pretrained_weights(model, self.cfg.init.pretrained)

    @property
    def load_universal(self) -> bool:
        return False

    def load_engine(self, engine: Any) -> None:
        """Nothing: the engine starts from the model and a new optimizer."""

    def load_rank(self, parts: RankParts, rank: int) -> None:
        parts.start_streams(LoaderState(0, 0, self.cfg.seed), self.cfg.seed, rank, step=0)

    def position(self, steps_per_epoch: int) -> tuple[int, int]:
        return 0, 0


@dataclass(frozen=True)
class FromCheckpoint(Start, ABC):
    """A start from checkpoint `tag_dir`, whose trainer state is `saved`."""

    tag_dir: Path
    saved: TrainerState

    def describe(self) -> str:
        return f"resuming {self.tag_dir}"

    def position(self, steps_per_epoch: int) -> tuple[int, int]:
        return self.saved.step, self.saved.epoch


@dataclass(frozen=True)
class Exact(FromCheckpoint):
    """Full state on the world size that saved it: every rank continues its own stream."""

    def layout(self) -> BatchLayout:
        return BatchLayout(self.saved.micro_batch, self.saved.grad_accum)

    def prepare_model(self, model: nn.Module) -> None:
        """Nothing: the engine loads the weights with the rest of the state."""

    @property
    def load_universal(self) -> bool:
        return False

    def load_engine(self, engine: Any) -> None:
        load_engine_state(engine, self.tag_dir, self.tag_dir)

    def load_rank(self, parts: RankParts, rank: int) -> None:
        parts.load_state_dict(self.saved.ranks[rank])


@dataclass(frozen=True)
class Elastic(FromCheckpoint):
    """Full state on another world size: the same global batch, the rest of the epoch's samples."""

    def describe(self) -> str:
        return f"{super().describe()} saved by {self.saved.world_size} ranks, on {self.world_size} ranks"

    def layout(self) -> BatchLayout:
        """The micro-batch and accumulation that keep the run's global batch on this world size."""
        data = self.cfg.data
        try:
            micro, accum = batch_for_world(
                self.saved.global_batch, self.world_size, data.batch_size, data.aug.repeated_aug
            )
        except ConfigError as err:  # every rank computes the same
            raise ConfigError(str(err), every_rank=True) from None
        return BatchLayout(micro, accum)

    def prepare_model(self, model: nn.Module) -> None:
        """Nothing: the engine loads the weights with the rest of the state."""

    @property
    def load_universal(self) -> bool:
        """ZeRO 1-3 cut the state per rank: it loads through the checkpoint's universal form."""
        return needs_universal_checkpoint(self.cfg.engine.zero_stage)

    def load_engine(self, engine: Any) -> None:
        """Load the state, through its universal form (which rank 0 makes once) where ZeRO cut it."""
        if not self.load_universal:
            load_engine_state(engine, self.tag_dir, self.tag_dir)
            return
        universal = universal_folder(self.tag_dir)

        def convert() -> str | None:
            """Why the conversion failed, or None."""
            if not universal.is_dir():
                note("train", f"converting {self.tag_dir} for {self.world_size} ranks")
                try:
                    convert_to_universal(self.tag_dir, universal, self.cfg.engine.zero_stage)
                except RuntimeError as err:
                    return str(err)
            return None

        if problem := on_rank0(convert):
            raise CheckpointLoadError(self.tag_dir, problem)
        load_engine_state(engine, self.tag_dir, universal)

    def load_rank(self, parts: RankParts, rank: int) -> None:
        """The run's position re-cut for this world size; a rank the saving job had keeps its generators
        and buffers, a new one derives its generators from the step."""
        continued = continued_loader_state(self.saved, parts.loader, self.cfg.data.shuffle_buffer)
        if rank < self.saved.world_size:
            parts.load_state_dict(dataclasses.replace(self.saved.ranks[rank], loader=continued))
        else:
            parts.start_streams(continued, self.cfg.seed, rank, self.saved.step)


@dataclass(frozen=True)
class WeightsOnly(FromCheckpoint):
    """The checkpoint's weights only: its epoch starts afresh with the config's batch layout."""

    def describe(self) -> str:
        return f"{super().describe()} (its weights only)"

    def layout(self) -> BatchLayout:
        return BatchLayout.of_config(self.cfg)

    def prepare_model(self, model: nn.Module) -> None:
        model.load_state_dict(consolidated_state_dict(self.tag_dir.parent, self.tag_dir.name))

    @property
    def load_universal(self) -> bool:
        return False

    def load_engine(self, engine: Any) -> None:
        """Nothing: a new optimizer on the checkpoint's weights."""

    def load_rank(self, parts: RankParts, rank: int) -> None:
        first = LoaderState(self.saved.epoch, 0, self.cfg.seed)
        parts.start_streams(first, self.cfg.seed, rank, self.saved.step)

    def position(self, steps_per_epoch: int) -> tuple[int, int]:
        return self.saved.epoch * steps_per_epoch, self.saved.epoch


def checkpoint_start(cfg: Config, world: int, tag_dir: Path, saved: TrainerState) -> FromCheckpoint:
    """The kind of start from checkpoint `tag_dir` on `world` ranks; a changed config is refused unless
    only the weights are taken."""
    if cfg.checkpoint.weights_only:
        return WeightsOnly(cfg, world, tag_dir, saved)
    if changes := config_changes(saved.config, cfg):
        raise ConfigError(
            f"config changed since checkpoint {tag_dir} ({'; '.join(changes[:3])}): resume with the original "
            "config, or set checkpoint.weights_only=true to continue from its weights",
            every_rank=True,
        )
    kind = Exact if saved.world_size == world else Elastic
    return kind(cfg, world, tag_dir, saved)


def choose_start(cfg: Config, world: int, skip: list[Path]) -> Start:
    """How this start begins: from the newest valid checkpoint not in `skip` (rank 0 verifies, every
    rank follows), or fresh."""

    def choose() -> str | None:
        tag_dir = find_resume_checkpoint(checkpoint_folder(cfg.run_dir), cfg.checkpoint.resume, skip=skip)
        return str(tag_dir) if tag_dir else None

    chosen = on_rank0(choose)
    if chosen is None:
        return Fresh(cfg, world)
    return checkpoint_start(cfg, world, Path(chosen), read_trainer_state(Path(chosen)))


def load_engine_state(engine: Any, tag_dir: Path, files: Path) -> None:
    """Load checkpoint `tag_dir`'s DeepSpeed state from `files` (the tag itself, or its universal form,
    which holds no buffers: those come from the tag). Raises CheckpointLoadError on every rank when any
    rank fails."""
    error = ""
    try:
        load_checkpoint(engine, files.parent, files.name)
        if files != tag_dir:
            restore_saved_buffers(engine.module, tag_dir)
    except Exception as err:  # any failure to read the files: the tag is unusable, an older one may not be
        error = f"{type(err).__name__}: {err}"
    failed = torch.tensor([int(bool(error))], device=engine.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        raise CheckpointLoadError(tag_dir, error or "on another rank")
