"""Checkpoint folders: which ones count, which one to resume, and the trainer state saved with them.

Layout of `<run>/checkpoints/`:
  step_00000120/            one DeepSpeed checkpoint (every rank wrote its part)
    trainer_state.pt        client state: step, epoch, config + hash, world size, and per rank the
                            loader state and RNG states
    COMPLETE                written by rank 0 after every rank finished: without it the tag never counts
  latest                    the newest complete tag, written after its marker (atomically)

The DeepSpeed files are written by `engine.save_checkpoint`; this module owns the rest.
"""

from __future__ import annotations

import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.io import atomic_open, atomic_write_json, atomic_write_text

TAG_PREFIX = "step_"
MARKER = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"


def tag_for_step(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"{TAG_PREFIX}{step:08d}"


def is_complete(tag_dir: Path) -> bool:
    """A checkpoint counts only when its completion marker and trainer state exist."""
    return (tag_dir / MARKER).is_file() and (tag_dir / TRAINER_STATE).is_file()


def complete_tags(folder: Path) -> list[Path]:
    """Complete checkpoint folders under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    tags = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX) and is_complete(p)]
    return sorted(tags, key=lambda p: p.name)


def find_resume_checkpoint(folder: Path, resume: str) -> Path | None:
    """The checkpoint folder to start from: `auto` (latest, else newest complete), `none`, or a path.

    A broken `latest` (missing, unreadable, pointing at an incomplete tag) falls back to the newest
    complete tag with a warning. An explicit path that is not a complete checkpoint is an error.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not is_complete(path):
            raise ConfigError(
                f"checkpoint.resume: '{path}' is not a complete checkpoint (no {MARKER} marker)"
            )
        return path
    tags = complete_tags(folder)
    latest_file = folder / LATEST
    if latest_file.is_file():
        named = folder / latest_file.read_text().strip()
        if named.is_dir() and is_complete(named):
            return named
        fallback = tags[-1].name if tags else "none, starting fresh"
        warnings.warn(
            f"{latest_file} points at '{named.name}', which is not a complete checkpoint; using {fallback}",
            stacklevel=2,
        )
    elif tags:
        warnings.warn(
            f"{latest_file} is missing; using the newest complete checkpoint {tags[-1].name}", stacklevel=2
        )
    return tags[-1] if tags else None


@dataclass
class TrainerState:
    """What the trainer needs besides the DeepSpeed state to continue exactly where it stopped."""

    step: int  # optimizer steps done
    epoch: int  # epoch the next batch belongs to
    world_size: int
    config: dict[str, Any]  # resolved config of the run that saved it
    config_hash: str
    model_arguments: dict[str, Any]  # create_model(**model_arguments) rebuilds the network
    ranks: list[dict[str, Any]]  # per rank: {"loader": LoaderState dict, "rng": rng_state()}

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only, so the file loads with `torch.load(weights_only=True)`."""
        return dict(vars(self))


def read_trainer_state(tag_dir: Path) -> TrainerState:
    """Read the trainer state of a complete checkpoint."""
    data = torch.load(tag_dir / TRAINER_STATE, map_location="cpu", weights_only=False)
    return TrainerState(**data)


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


class CheckpointManager:
    """Finishes checkpoints (trainer state, marker, `latest`) and keeps the newest `keep` complete ones.

    Rank 0 calls `finalize` after every rank has written its DeepSpeed files (after a barrier).
    """

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def prepare(self, tag: str) -> None:
        """Before the ranks write `tag`: drop a marker left by an earlier save of the same tag, so a
        save that dies half way can never look complete."""
        (self.folder / tag / MARKER).unlink(missing_ok=True)

    def finalize(self, tag: str, state: TrainerState) -> Path:
        """Write trainer state, then the marker, then `latest`; prune older tags. Returns the tag folder."""
        tag_dir = self.folder / tag
        with atomic_open(tag_dir / TRAINER_STATE) as f:
            torch.save(state.to_dict(), f)
        atomic_write_json(tag_dir / MARKER, {"step": state.step, "world_size": state.world_size})
        atomic_write_text(self.folder / LATEST, tag)
        self._prune(keep_tag=tag)
        return tag_dir

    def _prune(self, keep_tag: str) -> None:
        complete = [p for p in complete_tags(self.folder) if p.name != keep_tag]
        for old in complete[: max(len(complete) - (self.keep - 1), 0)]:
            shutil.rmtree(old)
        # Tags without a marker are leftovers of a run killed while saving: never resumable.
        for leftover in self.folder.glob(f"{TAG_PREFIX}*"):
            if leftover.is_dir() and leftover.name != keep_tag and not is_complete(leftover):
                shutil.rmtree(leftover)
