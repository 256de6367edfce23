"""The training run's typed configuration: one dataclass per component, filled strictly from YAML.

`load_train_config(path, overrides)` is what every entry point calls (launch/local.py in the parent,
`python -m pipeline.train` in each rank, the Slurm launcher): it fills `Config`, then checks what
can be checked before any process group starts (shard folders and the shards their manifests list
exist at their sizes, one global batch fits in the data, the clips are long enough, the model name
is registered). Every problem is a `ConfigError` worded as one line. This module imports no torch at
the top (the manifest reader has none); the model check imports the model package when it runs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import storage
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.console import note
from pipeline.data.config import DECODER_PACKAGES, DataConfig
from pipeline.data.manifest import MANIFEST_NAME, ManifestError, load_shard_set


@dataclass
class ModelConfig:
    """Which network to build; `None` fields take the variant's or the data's value."""

    name: str = "structvit_tiny_4_1"
    num_classes: int | None = None  # None: the label map of the train shards
    drop_path_rate: float | None = None  # None: the variant's default (S 0.1, B 0.3)


@dataclass
class InitConfig:
    """Where the weights of a fresh run come from (ignored when resuming a checkpoint)."""

    # A state dict file: image weights (inflated to video) or an exported video model such as the
    # Kinetics run (its head is re-initialised when the class count differs). None: random init.
    pretrained: str | None = None


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule; the learning rate scales linearly with the global batch."""

    lr: float = 2e-4  # at `base_batch_size` rows per optimizer step (the batch the model sees)
    base_batch_size: int = 64  # rows (augmented views) per step that `lr` refers to
    min_lr: float = 1e-6  # end of the cosine, absolute
    weight_decay: float = 0.05  # never applied to 1-D parameters (norms, biases, scales)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # lr multiplier per block from the head down; 1.0 disables it
    # Consecutive optimizer steps with a non-finite loss (on any rank) before the run stops; it stops at
    # once when the weights themselves turn non-finite. Non-finite weights are never saved.
    max_nonfinite_steps: int = 3
    epochs: int = 60
    warmup_epochs: float = 5.0  # linear warm-up, converted to optimizer steps
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.base_batch_size <= 0 or self.epochs <= 0:
            raise ValueError("optim.lr, optim.base_batch_size and optim.epochs must be positive")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_nonfinite_steps <= 0:
            raise ValueError(f"optim.max_nonfinite_steps must be positive, got {self.max_nonfinite_steps}")


@dataclass
class EngineConfig:
    """How DeepSpeed runs the model: ZeRO stage, precision, accumulation, clipping, checkpointing."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # max global grad norm; 0 disables clipping
    # true/false for every block, or per stage how many blocks are checkpointed (UniFormer style).
    activation_checkpointing: bool | list[int] = False
    # A collective that waits longer than this, seconds, means a peer is dead or hung: the rank fails
    # instead of waiting for the job's time limit (a peer that exits is usually noticed at once).
    collective_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.grad_accum_steps <= 0:
            raise ValueError(f"engine.grad_accum_steps must be positive, got {self.grad_accum_steps}")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"engine.collective_timeout_s must be positive, got {self.collective_timeout_s}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"engine.clip_grad_norm must be >= 0, got {self.clip_grad_norm}")


@dataclass
class CheckpointConfig:
    """When to save and what to start from."""

    every_steps: int = 500  # optimizer steps between saves (a save also happens at the end)
    keep: int = 2  # complete checkpoints kept, newest first (never fewer than 2)
    # auto: this run's `latest` (or its newest complete checkpoint); none: start fresh;
    # a path: that checkpoint folder.
    resume: str = "auto"
    # Load only the weights (and the epoch) from the checkpoint: the way to continue after a config
    # change. Optimizer moments restart; the epoch restarts from its first sample. (Another world size
    # needs no such thing: the full state carries over, see pipeline.train.elastic.)
    weights_only: bool = False

    def __post_init__(self) -> None:
        if self.every_steps <= 0:
            raise ValueError(f"checkpoint.every_steps must be positive, got {self.every_steps}")
        if self.keep < 2:
            raise ValueError(f"checkpoint.keep must be at least 2, got {self.keep}")


@dataclass
class EvalConfig:
    """Validation during and after training."""

    every_epochs: int = 1  # 0: only at the end
    mean_class_accuracy: bool = False  # report mean per-class top-1 (FineGym's metric)


@dataclass
class LogConfig:
    """Rank-0 logging: progress line, metrics.jsonl and TensorBoard."""

    every_steps: int = 10
    # Optimizer steps traced by the torch profiler (after 2 steps of warm-up) into the run's
    # tensorboard folder, viewable in TensorBoard's profiler tab; 0: off.
    profile_steps: int = 0

    def __post_init__(self) -> None:
        if self.profile_steps < 0:
            raise ValueError(f"log.profile_steps must be >= 0, got {self.profile_steps}")


@dataclass
class Config:
    """One training run. The run folder is `<out_dir>/<name>`."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    # Stop after this many optimizer steps (the schedule still spans optim.epochs); None: run all.
    max_steps: int | None = None
    # Control experiment: permute each clip's frames at random, so only appearance is left to learn.
    shuffle_frames: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        """Where config.yaml, CHECKPOINT_FOLDER, tensorboard/, metrics.jsonl and eval.json go."""
        return Path(self.out_dir) / self.name


CHECKPOINT_FOLDER = "checkpoints"  # the run folder's sub-folder that holds the checkpoint tags


# Keys that may change between a checkpoint and its resume without changing the trajectory.
# Settings a resumed run may change: where things go, how often, and the safety limits.
RESUMABLE_CHANGES = (
    "name",
    "out_dir",
    "checkpoint.",
    "log.",
    "eval.",
    "max_steps",
    "engine.collective_timeout_s",
    "optim.max_nonfinite_steps",
    "data.max_bad_fraction",
    "data.short_clips",
    "data.cache_dir",
    "data.cache_gb",
)


def load_train_config(
    path: str | Path | None, overrides: Sequence[str] = (), world_size: int | None = None
) -> Config:
    """Read `path` plus `key=value` overrides into a `Config` and check it; one-line ConfigError if bad.

    `world_size` defaults to the WORLD_SIZE variable (1 when unset).
    """
    cfg = load_config(Config, path, overrides)
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    check_config(cfg, world)
    return cfg


def check_config(cfg: Config, world_size: int) -> None:
    """Checks that need the file system or the world size; raises ConfigError naming the key."""
    for key in ("train", "val"):
        folders = getattr(cfg.data, key)
        if not folders:
            raise ConfigError(f"data.{key}: no shard folder given")
        for folder in folders:
            # A URL's manifest is fetched by check_shards: a missing bucket or key, a refused request is
            # one line there, before any process starts.
            if storage.is_url(folder):
                continue
            if not (Path(folder) / MANIFEST_NAME).is_file():
                unfinished = any(Path(folder).glob("*progress.json"))
                why = "an unfinished sharding run: rerun it" if unfinished else f"no {MANIFEST_NAME} in it"
                raise ConfigError(f"data.{key}: '{folder}' is not a shard folder ({why})")
    decoder_package = DECODER_PACKAGES.get(cfg.data.decoder)
    if decoder_package and not _importable(decoder_package):
        raise ConfigError(
            f"data.decoder: '{cfg.data.decoder}' needs the Python package '{decoder_package}', "
            "not installed here"
        )
    if cfg.init.pretrained is not None and not Path(cfg.init.pretrained).is_file():
        raise ConfigError(f"init.pretrained: no weights file at '{cfg.init.pretrained}'")
    if world_size <= 0:
        raise ConfigError(f"world size must be positive, got {world_size}")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise ConfigError(f"max_steps must be positive, got {cfg.max_steps}")
    check_model_name(cfg.model.name)
    if cfg.data.modality == "image" and cfg.shuffle_frames:
        raise ConfigError("data.modality=image: shuffle_frames needs video")
    check_shards(cfg, world_size)


def check_model_name(name: str) -> None:
    """`name` is a registered model (the registry's error names the closest ones)."""
    # Here, not at the top: pipeline.models imports torch, and launch/ reads configs on the login node.
    from pipeline.models.registry import get_model_spec  # importing pipeline.models registers them

    try:
        get_model_spec(name)
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None


def check_shards(cfg: Config, world_size: int) -> None:
    """The shards the manifests list exist at their sizes, one global batch fits in data.train, and the
    clips are long enough for the sampling (per data.short_clips)."""
    data = cfg.data
    for key in ("train", "val"):
        try:
            shard_set = load_shard_set(getattr(data, key))
        except ManifestError as err:
            raise ConfigError(f"data.{key}: {err}") from None
        if shard_set.modality != data.modality:
            raise ConfigError(
                f"data.{key}: the shards hold {shard_set.modality}s, data.modality is {data.modality!r}"
            )
        samples_per_step = data.samples_per_batch * cfg.engine.grad_accum_steps * world_size
        if key == "train" and shard_set.total < samples_per_step:
            raise ConfigError(
                f"data.batch_size: one global batch takes {samples_per_step} samples (data.batch_size "
                f"{data.batch_size} / aug.repeated_aug {data.aug.repeated_aug} x engine.grad_accum_steps "
                f"{cfg.engine.grad_accum_steps} x world size {world_size}), "
                f"data.train holds {shard_set.total}"
            )
        counts = shard_set.frame_counts or {}
        short = sum(clips for frames, clips in counts.items() if frames < data.frames_needed)
        if not short:
            continue
        problem = (
            f"data.num_frames={data.num_frames} ({data.sampling} sampling, data.frame_stride="
            f"{data.frame_stride}) takes {data.frames_needed} frames per clip: {short} of the "
            f"{shard_set.total} clips in data.{key} have fewer (the shortest {min(counts)})"
        )
        if data.short_clips == "error":
            raise ConfigError(
                f"{problem}; lower data.num_frames or data.frame_stride, or set data.short_clips=repeat "
                "to repeat their last frame"
            )
        note("config", f"warning: {problem}; their last frame is repeated (data.short_clips=repeat)")


def _importable(module: str) -> bool:
    """Whether `module` can be found, without importing it (a dotted name's parents are checked first)."""
    parts = module.split(".")
    return all(importlib.util.find_spec(".".join(parts[: i + 1])) is not None for i in range(len(parts)))


def config_changes(saved: dict[str, Any], current: Config) -> list[str]:
    """`key: old -> new` for every setting that differs from a checkpoint's config and matters."""
    now = _flatten(to_dict(current))
    before = _flatten(saved)
    changes = []
    for key in sorted(set(now) | set(before)):
        # A key the saving version did not have yet ran at what is now its default: not a change.
        if key.startswith(RESUMABLE_CHANGES) or now.get(key) == before.get(key) or key not in before:
            continue
        changes.append(f"{key}: {before.get(key)!r} -> {now.get(key)!r}")
    return changes


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
