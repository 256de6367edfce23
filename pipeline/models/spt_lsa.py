"""SPT (shifted patch tokenization) and LSA (locality self-attention) from the small-datasets ViT paper.

SPT: pad by s = floor(p / 2), stack the input with its four diagonal shifts on channels
[x, left-up, right-up, left-down, right-down] (5C), cut p x p patches (p x p x t tubelets for video,
shifts stay spatial), flatten each patch in (channel, [time], row, column) order, LayerNorm, Linear.

LSA: a learnable per-head temperature multiplies the logits (initialised to head_dim ** -0.5, so it
starts as plain attention) and each query's "self" logits are masked to -inf before the softmax.
For StructSA the keys are D convolved copies of the key grid, each copy centred on a key position;
the self entries of query i are the D copies whose centre is query i's own grid position. With a
key stride S > 1 only queries lying on the stride lattice have such entries (the others keep all).
A key grid of one position is not masked at all (it would leave a query nothing to attend to).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# (row offset, column offset) read by each shifted copy: copy[y, x] = image[y + dy, x + dx]
# (content moves the opposite way, e.g. "left-up" moves the picture left and up).
SHIFT_NAMES = ("left-up", "right-up", "left-down", "right-down")
_SHIFT_SIGNS = ((1, 1), (1, -1), (-1, 1), (-1, -1))


class ShiftedPatchTokenizer(nn.Module):
    """SPT stem: (B, C, [T], H, W) -> (B, E, [T / t], H / p, W / p) token map."""

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, tubelet_size: int | None = None
    ) -> None:
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"SPT needs patch_size >= 2 (the shift is patch_size // 2), got {patch_size}")
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.shift = patch_size // 2
        self.patch_dim = 5 * in_chans * patch_size * patch_size * (tubelet_size or 1)
        self.norm = nn.LayerNorm(self.patch_dim)
        self.proj = nn.Linear(self.patch_dim, embed_dim)

    def shifted_stack(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate x with its four diagonal shifts by s on channels: (B, 5C, [T], H, W), zeros enter."""
        s = self.shift
        height, width = x.shape[-2:]
        padded = F.pad(x, (s, s, s, s))
        copies = [x]
        for dy, dx in _SHIFT_SIGNS:
            top, left = s + dy * s, s + dx * s
            copies.append(padded[..., top : top + height, left : left + width])
        return torch.cat(copies, dim=1)

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Flattened patches before LayerNorm: (B, N, patch_dim) and the token grid."""
        video = x.ndim == 5
        if video != (self.tubelet_size is not None):
            kind = "video" if self.tubelet_size else "images"
            raise ValueError(f"SPT built for {kind} got input of shape {tuple(x.shape)}")
        p, t = self.patch_size, self.tubelet_size or 1
        sizes = x.shape[2:]
        steps = (t, p, p) if video else (p, p)
        if any(size % step for size, step in zip(sizes, steps, strict=True)):
            raise ValueError(f"SPT input size {tuple(sizes)} is not divisible by the patch {steps}")
        grid = tuple(size // step for size, step in zip(sizes, steps, strict=True))
        stack = self.shifted_stack(x)
        batch, chans = stack.shape[:2]
        split = [batch, chans]
        for cells, step in zip(grid, steps, strict=True):
            split += [cells, step]
        stack = stack.reshape(split)
        # (B, 5C, g0, s0, g1, s1, ...) -> (B, g0, g1, ..., 5C, s0, s1, ...)
        ndim = len(grid)
        order = [0, *range(2, 2 + 2 * ndim, 2), 1, *range(3, 3 + 2 * ndim, 2)]
        patches = stack.permute(order).reshape(batch, -1, self.patch_dim)
        return patches, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokenise x into an embedding map (B, E, *grid)."""
        patches, grid = self.patch_features(x)
        tokens = self.proj(self.norm(patches))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def inflate_parameter(self, name: str, image_value: torch.Tensor) -> torch.Tensor | None:
        """Image SPT weights -> tubelet weights: repeat over time (LayerNorm) or repeat / t (Linear).

        A clip of identical frames then produces exactly the image model's tokens. None: no rule.
        """
        t = self.tubelet_size
        if t is None:
            return None
        if name in ("norm.weight", "norm.bias"):
            return image_value.reshape(-1, 1, self.patch_size**2).repeat(1, t, 1).reshape(-1)
        if name == "proj.weight":
            out_dim = image_value.shape[0]
            grouped = image_value.reshape(out_dim, -1, 1, self.patch_size**2)
            return (grouped.repeat(1, 1, t, 1) / t).reshape(out_dim, -1)
        return None


def lsa_keep_mask(
    query_grid: Sequence[int],
    stride: Sequence[int] | None = None,
    copies: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean (N, copies * N_kv) mask, False on each query's self entries (LSA diagonal masking).

    Keys are `copies` stacked copies of the key grid (the query grid subsampled by `stride` from its
    origin, as a centred convolution with that stride does); key j of copy d sits at column
    d * N_kv + j. With stride 1 and one copy this is the plain diagonal mask. A key grid of a
    single position is left unmasked (masking it would empty query 0's row).
    """
    stride = tuple(stride) if stride is not None else (1,) * len(query_grid)
    key_grid = [(size - 1) // step + 1 for size, step in zip(query_grid, stride, strict=True)]
    axes = [torch.arange(size, device=device) for size in query_grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(query_grid))
    steps = torch.tensor(stride, device=device)
    on_lattice = (coords % steps == 0).all(dim=-1)
    key_index = torch.zeros(coords.shape[0], dtype=torch.long, device=device)
    for axis, size in enumerate(key_grid):
        key_index = key_index * size + coords[:, axis] // stride[axis]
    num_kv = math.prod(key_grid)
    if num_kv == 1:
        # a single key position (tiny last-stage maps, large strides) is query 0's own: masking it
        # would leave that query nothing to attend to, so such a layer attends without the mask
        return torch.ones(coords.shape[0], copies, dtype=torch.bool, device=device)
    # built by comparisons only (no nonzero / data-dependent shapes) so it also works on the meta device
    own_key = on_lattice[:, None] & (key_index[:, None] == torch.arange(num_kv, device=device)[None, :])
    keep = ~own_key.repeat(1, copies)
    return keep
