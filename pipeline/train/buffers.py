"""Per-rank buffers (BatchNorm running statistics): each rank's own while training, their mean whenever
the model is saved or evaluated. Plain `torch.distributed`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def rank_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's floating-point buffers (BatchNorm running statistics), copied to CPU."""
    return {name: b.detach().cpu().clone() for name, b in module.named_buffers() if b.is_floating_point()}


def restore_rank_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back buffers saved by `rank_buffers`."""
    buffers = dict(module.named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)


@contextmanager
def buffers_averaged_over_ranks(module: nn.Module) -> Iterator[None]:
    """Inside the block, floating-point buffers hold their mean over all ranks; afterwards each rank's own.

    Each rank's BatchNorm sees only its own batches, and DeepSpeed saves rank 0's buffers. Saving and
    evaluating inside this block makes the live model, the checkpoint and the export one model, while
    training continues with untouched per-rank statistics (the trainer state keeps them, so a resumed
    rank is bit-identical to an uninterrupted one).
    """
    world = torch.distributed.get_world_size()
    own = rank_buffers(module) if world > 1 else {}
    for name, buffer in module.named_buffers():
        if name in own:
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
            buffer.div_(world)
    try:
        yield
    finally:
        restore_rank_buffers(module, own)
