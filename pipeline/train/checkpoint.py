"""Checkpoint folders: which ones count, which one to resume, and the trainer state saved with them.

Layout of `<run>/checkpoints/`:
  step_00000120/            one DeepSpeed checkpoint (every rank wrote its part)
    trainer_state.pt        client state: step, epoch, config + hash, world size, batch per rank, and
                            one `RankState` per rank (loader position, random generators, BN statistics:
                            what `RankParts` saves and loads)
    COMPLETE                written by rank 0 last: the name, size and sha256 of every other file
  step_00000120_universal/  the same state re-cut for another world size (made on demand, see engine.py)
  latest                    the newest complete tag, written after its marker (atomically)

A tag counts only when its marker exists and every file it lists is there with its size and digest:
bytes that rotted on disk, a truncated or deleted file, never count. Resume tries the tags newest
first and falls back past any that does not verify or fails to load. The DeepSpeed files are written
by `engine.save_checkpoint`; this module owns the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import ConfigError
from pipeline.console import note
from pipeline.data.loader import LoaderState, TrainLoader
from pipeline.errors import StorageError
from pipeline.io import atomic_open, atomic_write_json, atomic_write_text, free_bytes, storage_problem
from pipeline.randomness import Stream, derive_seed
from pipeline.train.buffers import rank_buffers, restore_rank_buffers
from pipeline.train.config import CHECKPOINT_FOLDER

TAG_PREFIX = "step_"
MARKER = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
DIGEST_CHUNK = 1 << 22


def checkpoint_folder(run_dir: Path) -> Path:
    """Where the checkpoints of the run in `run_dir` go."""
    return Path(run_dir) / CHECKPOINT_FOLDER


def tag_for_step(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"{TAG_PREFIX}{step:08d}"


def is_tag_name(name: str) -> bool:
    """Whether `name` is a checkpoint tag (`step_` and eight digits)."""
    return name.startswith(TAG_PREFIX) and name[len(TAG_PREFIX) :].isdigit()


def is_complete(tag_dir: Path) -> bool:
    """A checkpoint is finished when its completion marker and trainer state exist (not yet verified)."""
    return (tag_dir / MARKER).is_file() and (tag_dir / TRAINER_STATE).is_file()


def complete_tags(folder: Path) -> list[Path]:
    """Finished checkpoint folders under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    tags = [p for p in folder.iterdir() if p.is_dir() and is_tag_name(p.name) and is_complete(p)]
    return sorted(tags, key=lambda p: p.name)


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of one file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(DIGEST_CHUNK):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def checkpoint_files(tag_dir: Path) -> list[str]:
    """The files a marker must describe: everything in the tag folder but the marker itself."""
    return sorted(p.name for p in tag_dir.iterdir() if p.is_file() and p.name != MARKER)


def gather_digests(tag_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """`file_digest` of every file in `names`, the work shared out over the ranks (name i on rank
    i % world); every rank gets them all."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = {name: file_digest(tag_dir / name) for name in names[rank::world]}
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    return {name: value for part in parts for name, value in part.items()}


def tag_bytes(tag_dir: Path) -> int:
    """Bytes of the files of checkpoint `tag_dir`."""
    return sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file())


def save_refusal(err: BaseException, folder: Path, needed: int) -> str | None:
    """Why the storage refused a checkpoint write into `folder` (full, over quota, read-only, not
    permitted), or None when `err` is not the storage's doing.

    An OSError carries its errno. torch.save's C++ writer loses it (`basic_ios::clear: iostream error`,
    `unexpected pos`, a parent folder DeepSpeed could not make): then the disk itself is checked.
    """
    if isinstance(err, OSError):
        return storage_problem(err)
    if not isinstance(err, RuntimeError):
        return None
    where = folder if folder.exists() else folder.parent
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        return "the file system is read-only"
    if not os.access(where, os.W_OK):
        return "permission denied"
    if free_bytes(where) < needed:
        return "the file system is full"
    return None


def refused_write(write: Callable[[], object], refused: Callable[[BaseException], str | None]) -> str | None:
    """Run `write()`; the reason the storage refused it (`refused(err)`, see `save_refusal`), or None when
    it was written. Any other error is raised."""
    try:
        write()
    except (OSError, RuntimeError) as err:
        if (reason := refused(err)) is None:
            raise
        return reason
    return None


def checkpoint_problem(tag_dir: Path) -> str | None:
    """Why `tag_dir` must not be resumed (missing marker, a file missing, resized or changed), or None.

    Markers written before digests were recorded hold no file list: their tags pass on existence alone.
    """
    if not is_complete(tag_dir):
        return f"no {MARKER} marker or {TRAINER_STATE}"
    try:
        marker = json.loads((tag_dir / MARKER).read_text(encoding="utf-8"))
        files = marker.get("files", {})
    except (OSError, ValueError, AttributeError) as err:
        return f"unreadable {MARKER} marker ({err})"
    for name, expected in sorted(files.items()):
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the marker says {expected['bytes']}"
        if file_digest(path)["sha256"] != expected["sha256"]:
            return f"{name} changed since it was written (sha256 differs)"
    return None


def read_latest(folder: Path) -> str | None:
    """The tag `latest` names, or None when it is missing or holds anything but a tag name."""
    try:
        name = (folder / LATEST).read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if is_tag_name(name) else None


def resume_candidates(folder: Path, resume: str) -> list[Path]:
    """The checkpoints to try, in order: `auto` (what `latest` names, then every finished tag newest
    first), `none` (nothing), or a path (that checkpoint only; not a finished one is an error)."""
    if resume == "none":
        return []
    if resume != "auto":
        path = Path(resume)
        if not is_complete(path):
            raise ConfigError(
                f"checkpoint.resume: '{path}' is not a complete checkpoint (no {MARKER} marker)"
            )
        return [path]
    tags = complete_tags(folder)[::-1]
    named = read_latest(folder)
    if named is not None and folder / named in tags:
        tags.remove(folder / named)
        return [folder / named, *tags]
    if tags:
        why = "does not name a complete checkpoint" if (folder / LATEST).exists() else "is missing"
        note("checkpoint", f"warning: {folder / LATEST} {why}; trying the newest, {tags[0].name}")
    return tags


def find_resume_checkpoint(folder: Path, resume: str, skip: Sequence[Path] = ()) -> Path | None:
    """The first of `resume_candidates` (not in `skip`) whose files verify; each one skipped is one
    line naming it (`note`). An explicit path that does not verify is an error.
    """
    for tag_dir in resume_candidates(folder, resume):
        if tag_dir in skip:
            continue
        problem = checkpoint_problem(tag_dir)
        if problem is None:
            return tag_dir
        if resume != "auto":
            raise ConfigError(f"checkpoint.resume: '{tag_dir}' is damaged: {problem}")
        note("checkpoint", f"warning: skipping checkpoint {tag_dir}: {problem}")
    return None


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and accelerator)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators saved by `rng_state()`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class RankState:
    """One rank's part of a checkpoint besides DeepSpeed's: where its data stream stands, its random
    generators (process-wide and the frame-shuffling control's) and its own BatchNorm statistics."""

    loader: LoaderState
    rng: dict[str, Any]
    frame_rng: torch.Tensor
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for the trainer state file."""
        return {
            "loader": self.loader.to_dict(),
            "rng": self.rng,
            "frame_rng": self.frame_rng,
            "buffers": self.buffers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankState:
        """Rebuild what `to_dict` wrote."""
        return cls(
            LoaderState.from_dict(data["loader"]), data["rng"], data["frame_rng"], data.get("buffers", {})
        )


class RankParts:
    """This rank's parts besides DeepSpeed's, saved and loaded as one `RankState` (as DeepSpeed's engine
    saves and loads its own): the loader's position, the generators, the BatchNorm statistics."""

    def __init__(self, loader: TrainLoader, frame_generator: torch.Generator, module: nn.Module) -> None:
        self.loader, self.frame_generator, self.module = loader, frame_generator, module

    def state_dict(self) -> RankState:
        """This rank's state now."""
        return RankState(
            self.loader.state(), rng_state(), self.frame_generator.get_state(), rank_buffers(self.module)
        )

    def load_state_dict(self, state: RankState) -> None:
        """Continue from a saved `state`."""
        self.loader.restore(state.loader)
        restore_rng_state(state.rng)
        self.frame_generator.set_state(state.frame_rng)
        restore_rank_buffers(self.module, state.buffers)

    def start_streams(self, position: LoaderState, seed: int, rank: int, step: int) -> None:
        """A rank with no saved state of its own: the loader at `position`, the generators derived from
        the run's seed, the rank and the step, the buffers as built."""
        self.loader.restore(position)
        torch.manual_seed(derive_seed(Stream.RANK_TORCH, seed, rank, step))
        self.frame_generator.manual_seed(derive_seed(Stream.FRAME_ORDER, seed, rank, step))


@dataclass
class TrainerState:
    """What the trainer needs besides the DeepSpeed state to continue exactly where it stopped."""

    step: int  # optimizer steps done
    epoch: int  # epoch the next batch belongs to
    world_size: int
    config: dict[str, Any]  # resolved config of the run that saved it
    config_hash: str
    model_arguments: dict[str, Any]  # create_model(**model_arguments) rebuilds the network
    ranks: list[RankState]
    # The per-rank micro-batch (in rows, data.batch_size's unit: repeated_aug views per sample) and the
    # accumulation the saving job ran with (they adapt to the world size).
    micro_batch: int = 0
    grad_accum: int = 0

    def __post_init__(self) -> None:
        if not self.micro_batch:  # saved before these were recorded: the config's values
            self.micro_batch = self.config["data"]["batch_size"]
            self.grad_accum = self.config["engine"]["grad_accum_steps"]

    @property
    def global_batch(self) -> int:
        """Rows (augmented views) per optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only."""
        return {**vars(self), "ranks": [rank.to_dict() for rank in self.ranks]}


def read_trainer_state(tag_dir: Path) -> TrainerState:
    """Read the trainer state of a complete checkpoint."""
    data = torch.load(tag_dir / TRAINER_STATE, map_location="cpu", weights_only=False)
    ranks = [RankState.from_dict(rank) for rank in data.pop("ranks")]
    return TrainerState(**data, ranks=ranks)


class CheckpointManager:
    """Finishes checkpoints (trainer state, marker, `latest`) and keeps the newest `keep` complete ones.

    Rank 0 calls `write_state` and `finalize` after every rank has written its DeepSpeed files.
    """

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def prepare(self, tag: str) -> None:
        """Before the ranks write `tag`: drop a marker left by an earlier save of the same tag, so a
        save that dies half way can never look complete."""
        (self.folder / tag / MARKER).unlink(missing_ok=True)

    def save_bytes(self, estimate: int) -> int:
        """The bytes the next save needs: the newest complete one's, else `estimate` (no save yet)."""
        tags = complete_tags(self.folder)
        return tag_bytes(tags[-1]) if tags else estimate

    def warn_if_short(self) -> None:
        """One warning line when the newest complete save would no longer fit in the free space."""
        tags = complete_tags(self.folder)
        if tags and (last := tag_bytes(tags[-1])) > (free := free_bytes(self.folder)):
            note(
                "checkpoint",
                f"warning: {self.folder} has {free} bytes free, the last checkpoint took {last}: "
                "this save may not fit (make room, or lower checkpoint.keep)",
            )

    def discard(self, tag: str, reason: str, needed: int) -> StorageError:
        """Remove the partial `tag` of a save the storage refused; the one line that stops the run."""
        shutil.rmtree(self.folder / tag, ignore_errors=True)
        newest = complete_tags(self.folder)
        kept = f"{newest[-1].name} is intact" if newest else "no checkpoint was saved before"
        return StorageError(
            f"cannot save checkpoint {tag} in {self.folder}: {reason} (the save needs about {needed} bytes, "
            f"{free_bytes(self.folder)} free); the partial {tag} was removed, {kept}: make room and run the "
            "same command to resume"
        )

    def write_state(self, tag: str, state: TrainerState) -> None:
        """Write the trainer state file of `tag`."""
        with atomic_open(self.folder / tag / TRAINER_STATE) as f:
            torch.save(state.to_dict(), f)

    def finalize(self, tag: str, step: int, world_size: int, files: dict[str, dict[str, Any]]) -> Path:
        """Write the marker (with every file's size and digest), then `latest`; prune older tags."""
        tag_dir = self.folder / tag
        atomic_write_json(tag_dir / MARKER, {"step": step, "world_size": world_size, "files": files})
        atomic_write_text(self.folder / LATEST, tag)
        self._prune(keep_tag=tag)
        return tag_dir

    def _prune(self, keep_tag: str) -> None:
        complete = [p for p in complete_tags(self.folder) if p.name != keep_tag]
        for old in complete[: max(len(complete) - (self.keep - 1), 0)]:
            shutil.rmtree(old)
            shutil.rmtree(universal_folder(old), ignore_errors=True)
        # Tags without a marker are leftovers of a run killed while saving: never resumable.
        for leftover in self.folder.glob(f"{TAG_PREFIX}*"):
            unfinished = leftover.is_dir() and is_tag_name(leftover.name) and not is_complete(leftover)
            if unfinished and leftover.name != keep_tag:
                shutil.rmtree(leftover)


def universal_folder(tag_dir: Path) -> Path:
    """Where the world-size-independent copy of checkpoint `tag_dir` goes."""
    return tag_dir.with_name(f"{tag_dir.name}_universal")
