"""AdamW parameter groups (no decay on 1-D parameters, layer-wise lr decay) and the lr schedule.

The schedule is a pure function of the optimizer step, so resuming needs no scheduler state: the
trainer writes `lr * lr_scale` into every group before each step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.train.config import OptimConfig

# `blocks3.5.attn.qkv.weight` -> stage 3, block 5; `patch_embed3.proj.weight` -> stage 3's entry.
BLOCK_NAME = re.compile(r"^(?:.*\.)?blocks(\d+)\.(\d+)\.")
STAGE_ENTRY_NAME = re.compile(r"^(?:.*\.)?(?:patch_embed|downsample)(\d+)\.")


def scaled_lr(cfg: OptimConfig, global_batch_size: int) -> float:
    """The peak learning rate for `global_batch_size` rows per step (linear scaling rule).

    Rows are the batch the model sees: with repeated augmentation R, R rows per decoded sample, as
    DeiT scales its rate by the batch of repeated views, not by the distinct images in it.
    """
    return cfg.lr * global_batch_size / cfg.base_batch_size


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine down to `floor` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LrSchedule:
    """A run's learning rate per optimizer step: warm-up, then cosine to the floor at the last step."""

    total_steps: int
    warmup_steps: int
    peak: float
    floor: float

    @classmethod
    def of_run(cls, cfg: OptimConfig, steps_per_epoch: int, global_batch: int) -> LrSchedule:
        """The schedule of `cfg` in optimizer steps, its peak scaled to the global batch."""
        return cls(
            total_steps=cfg.epochs * steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            peak=scaled_lr(cfg, global_batch),
            floor=cfg.min_lr,
        )

    def __call__(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based)."""
        return cosine_lr(step, self.total_steps, self.warmup_steps, self.peak, self.floor)


def layer_ids(model: nn.Module) -> Callable[[str], int]:
    """Map a parameter name to its depth: 0 for the stem, 1..L for the blocks, L+1 for the head.

    Blocks are numbered in forward order across stages; a stage's entry (patch embedding or
    downsampling) shares the depth of the stage's first block, as in UniFormer's layer decay.
    """
    depths: dict[int, int] = {}
    for name, _ in model.named_parameters():
        match = BLOCK_NAME.match(name)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), block + 1)
    first_block: dict[int, int] = {}
    total = 0
    for stage in sorted(depths):
        first_block[stage] = total + 1
        total += depths[stage]

    def layer_id(name: str) -> int:
        block = BLOCK_NAME.match(name)
        if block:
            return first_block[int(block[1])] + int(block[2])
        entry = STAGE_ENTRY_NAME.match(name)
        if entry and int(entry[1]) in first_block:
            # The first stage's embedding is the stem: depth 0.
            return 0 if int(entry[1]) == min(first_block) else first_block[int(entry[1])]
        if total and any(part.startswith(("head", "norm", "fc")) for part in name.split(".")[:1]):
            return total + 1
        return 0

    layer_id.num_layers = total + 2  # type: ignore[attr-defined]
    return layer_id


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups: weight decay only on >=2-D weights not listed by `no_weight_decay()`;
    with `layer_decay < 1` each depth gets its own `lr_scale = layer_decay ** (L + 1 - depth)`."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layer_id = layer_ids(model)
    num_layers = layer_id.num_layers  # type: ignore[attr-defined]
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in skip
        depth = layer_id(name) if cfg.layer_decay < 1 else num_layers - 1
        group = groups.setdefault(
            (depth, decay),
            {
                "params": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_scale": cfg.layer_decay ** (num_layers - 1 - depth),
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch AdamW over `build_param_groups` (a client optimizer: DeepSpeed compiles no ops for it)."""
    return torch.optim.AdamW(build_param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` times each group's `lr_scale` into the optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
