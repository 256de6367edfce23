"""Small layers shared by the model families: drop path, MLPs, weight init, activation checkpointing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability `rate` in training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the branch of dropped samples and rescale the kept ones by 1 / (1 - rate)."""
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Mlp(nn.Module):
    """Token MLP: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension."""
        return self.fc2(self.act(self.fc1(x)))


class ConvMlp(nn.Module):
    """Feature-map MLP made of 1x1 (x1) convolutions: Conv -> GELU -> Conv."""

    def __init__(self, dim: int, hidden_dim: int, conv: type[nn.Conv2d] | type[nn.Conv3d]) -> None:
        super().__init__()
        self.fc1 = conv(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = conv(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the channel dimension of a (B, C, *grid) map."""
        return self.fc2(self.act(self.fc1(x)))


def init_linear_and_norm(module: nn.Module) -> None:
    """Linear: trunc-normal(0.02) weights, zero bias; LayerNorm: identity. Use with Module.apply."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Per-stage drop-path rates rising linearly from 0 to `rate` over all blocks of the network."""
    total = sum(depths)
    # plain Python, not torch.linspace: models are also built under torch.device('meta')
    rates = [rate * i / (total - 1) for i in range(total)] if total > 1 else [0.0] * total
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out


def resolve_checkpoint_counts(enable: bool | Sequence[int], depths: Sequence[int]) -> list[int]:
    """Turn `set_grad_checkpointing`'s argument into per-stage counts, rejecting impossible ones."""
    if isinstance(enable, bool):
        return list(depths) if enable else [0] * len(depths)
    counts = [int(c) for c in enable]
    if len(counts) != len(depths):
        raise ValueError(f"checkpoint_blocks needs one count per stage ({len(depths)}), got {list(enable)}")
    for stage, (count, depth) in enumerate(zip(counts, depths, strict=True)):
        if not 0 <= count <= depth:
            raise ValueError(f"checkpoint_blocks[{stage}]={count} is outside 0..{depth} (blocks in stage)")
    return counts


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Let BatchNorm recompute with batch statistics while leaving its running buffers untouched.

    Checkpointing runs a block's forward twice; without this the recomputation would apply the
    running-mean/var update a second time and checkpointed training would drift from plain
    training. Momentum 0 keeps the buffers exactly (running * 1 + batch * 0) while the op, and so
    the tensors it saves for backward, stay the same as in the first pass.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in norms
    ]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def checkpoint_block(block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Run `block` under non-reentrant activation checkpointing (works under ZeRO-3), BatchNorm-safe."""
    calls = 0

    def run(*args: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(*args)
        with _frozen_batchnorm_stats(block):
            return block(*args)

    return checkpoint(run, *inputs, use_reentrant=False)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, num_checkpointed: int) -> torch.Tensor:
    """Apply `blocks` in order, checkpointing the first `num_checkpointed` of them when grads are on."""
    for index, block in enumerate(blocks):
        checkpointed = index < num_checkpointed and torch.is_grad_enabled()
        x = checkpoint_block(block, x) if checkpointed else block(x)
    return x
