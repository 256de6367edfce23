"""StructSA (structural self-attention) and plain multi-head attention, with a literal reference.

Fast form: the structure kernels HK / HV act on keys / values by a depthwise convolution with D
outputs per channel (`k_conv`, `v_conv`: weight (C*D, 1, *kernel), output channel c*D + d holds
HK[:, c, d] / HV[:, d, c]); the D convolved copies are stacked along the key axis and one fused
scaled_dot_product_attention call computes the joint softmax over (key, d). `structsa_reference`
evaluates the paper's two-stage definition literally (explicit neighbourhoods, correlation
patterns and dynamic value kernels) and is only meant for small inputs in tests.

The paper's ablation forms (its basic form, appendix A.1) are options of the same module:
- correlation="dot": dot-product correlation read by kernels shared by all channels,
  a[i, j, d] = scale * sum_m (q_i . K_j[m]) U^K[m, d]; `k_conv` is then a 1 -> D convolution
  applied to every channel alike, weight (D, 1, *kernel) holding U^K[m, d].
- aggregation="shared": y[i, c] = sum_j sum_d sum_m A[i, j, d] U^V[m, d] V_j[m, c], `v_conv`
  weight (D, 1, *kernel); aggregation="element": y[i, c] = sum_j sum_d A[i, j, d] u^V[d] v_j[c]
  (no value neighbourhood), `v_conv` a 1x1 (x1) convolution with weight (D, 1, 1, ...) = u^V[d].
Shared kernels act on each channel map separately, so the D copies keep the c*D + d layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.spt_lsa import lsa_keep_mask


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    temperature: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """softmax(q k^T * scale) v per head, scale = head_dim^-0.5 or the LSA temperature (h, 1, 1).

    `fused` uses torch's scaled_dot_product_attention (flash / memory-efficient kernels, never
    materialising the probability matrix); otherwise the matrix is built explicitly (for benches).
    """
    scale = None
    if temperature is not None:
        q = q * temperature
        scale = 1.0
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask, scale=scale)
    logits = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if keep_mask is not None:
        logits = logits.masked_fill(~keep_mask, float("-inf"))
    return logits.softmax(dim=-1) @ v


class MultiHeadAttention(nn.Module):
    """Plain global self-attention over (B, N, C) tokens (the D = 0 / UniFormer baseline), LSA optional."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        lsa: bool = False,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), head_dim**-0.5)) if lsa else None
        self.fused = fused_attention

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Attend over all tokens; `grid` is their layout (its product must equal N)."""
        batch, tokens, _ = x.shape
        if math.prod(grid) != tokens:
            raise ValueError(f"token grid {tuple(grid)} does not hold {tokens} tokens")
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = lsa_keep_mask((tokens,), device=x.device) if self.temperature is not None else None
        y = attend(q, k, v, temperature=self.temperature, keep_mask=mask, fused=self.fused)
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, -1))


class StructSA(nn.Module):
    """Structural self-attention on a (T, H, W) or (H, W) token grid, fast (fused SDPA) form.

    structure_dim D: number of structure detectors; kernel_size M per axis (odd); stride S of the
    key/value convolution, spatial only for video ((1, S, S)). correlation / aggregation pick the
    experiments' channel-wise form (default) or one of the paper's ablation forms (module docstring).
    The k/v kernels start at the centre tap plus trunc-normal(0.02) noise: D near-identical copies
    of each key leave the softmax unchanged, so a fresh StructSA starts close to plain attention
    (exactly plain attention without the noise, for stride 1).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        video: bool,
        structure_dim: int = 4,
        kernel_size: int = 3,
        stride: int = 1,
        correlation: Literal["channel", "dot"] = "channel",
        aggregation: Literal["channel", "shared", "element"] = "channel",
        qkv_bias: bool = True,
        lsa: bool = False,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if correlation not in ("channel", "dot") or aggregation not in ("channel", "shared", "element"):
            raise ValueError(
                f"StructSA correlation must be 'channel' or 'dot' and aggregation 'channel', 'shared' or "
                f"'element', got correlation={correlation!r} aggregation={aggregation!r}"
            )
        if structure_dim < 1 or kernel_size < 1 or kernel_size % 2 == 0 or stride < 1:
            raise ValueError(
                f"StructSA needs structure_dim >= 1, an odd kernel_size and stride >= 1, got "
                f"structure_dim={structure_dim} kernel_size={kernel_size} stride={stride}"
            )
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.structure_dim = structure_dim
        self.correlation, self.aggregation = correlation, aggregation
        ndim = 3 if video else 2
        self.kernel = (kernel_size,) * ndim
        self.stride = (1, stride, stride) if video else (stride, stride)
        conv = nn.Conv3d if video else nn.Conv2d
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        strided = {"stride": self.stride, "bias": False}
        depthwise = {**strided, "padding": kernel_size // 2, "groups": dim}
        shared = {**strided, "padding": kernel_size // 2}
        if correlation == "channel":
            self.k_conv = conv(dim, dim * structure_dim, kernel_size, **depthwise)
        else:
            self.k_conv = conv(1, structure_dim, kernel_size, **shared)
        if aggregation == "channel":
            self.v_conv = conv(dim, dim * structure_dim, kernel_size, **depthwise)
        elif aggregation == "shared":
            self.v_conv = conv(1, structure_dim, kernel_size, **shared)
        else:  # element: a 1x1 kernel with the keys' stride picks each key's own value
            self.v_conv = conv(1, structure_dim, 1, **strided)
        self.proj = nn.Linear(dim, dim)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), self.head_dim**-0.5)) if lsa else None
        self.fused = fused_attention
        self.reset_structure_kernels()

    def reset_structure_kernels(self) -> None:
        """Centre-tap one-hot plus trunc-normal(0.02) noise for both structure convolutions."""
        with torch.no_grad():
            for conv in (self.k_conv, self.v_conv):
                nn.init.trunc_normal_(conv.weight, std=0.02)
                centre = (slice(None), 0, *(k // 2 for k in conv.kernel_size))
                conv.weight[centre] += 1.0

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project tokens to q, k, v, each (B, heads, N, head_dim)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def _structured(self, conv: nn.Module, t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, h, N, c) -> the D convolved copies stacked on the key axis: (B, h, D * N_kv, c)."""
        batch, heads, _, head_dim = t.shape
        maps = t.transpose(2, 3).reshape(batch, heads * head_dim, *grid)
        if conv.in_channels == 1:  # kernels shared by all channels: every channel map is its own sample
            maps = maps.reshape(batch * heads * head_dim, 1, *grid)
        maps = conv(maps)
        num_kv = math.prod(maps.shape[2:])
        # channel heads*c + ch, copy d lives at output channel (head*c + ch) * D + d
        maps = maps.reshape(batch, heads, head_dim, self.structure_dim, num_kv).permute(0, 1, 3, 4, 2)
        # contiguous: the fused kernels need unit stride on head_dim, else SDPA silently falls back
        # to the math path that materialises the (N x D*N_kv) matrix
        return maps.contiguous().reshape(batch, heads, self.structure_dim * num_kv, head_dim)

    def keep_mask(self, grid: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """The LSA self mask over the stacked keys (None without LSA)."""
        if self.temperature is None:
            return None
        return lsa_keep_mask(grid, self.stride, self.structure_dim, device=device)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """x (B, N, C) laid out on `grid` ((H, W) or (T, H, W)) -> (B, N, C)."""
        batch, tokens, _ = x.shape
        if len(grid) != len(self.kernel) or math.prod(grid) != tokens:
            raise ValueError(f"StructSA({len(self.kernel)}-D) got grid {tuple(grid)} for {tokens} tokens")
        q, k, v = self.qkv_heads(x)
        k = self._structured(self.k_conv, k, grid)
        v = self._structured(self.v_conv, v, grid)
        mask = self.keep_mask(grid, x.device)
        y = attend(q, k, v, temperature=self.temperature, keep_mask=mask, fused=self.fused)
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, -1))

    def structure_attention(self, x: torch.Tensor, grid: Sequence[int], query: int) -> torch.Tensor:
        """The attention of token `query` over the key positions of each structure channel:
        (B, heads, D, *key grid), summing to 1 over (D, key positions) per head, as in `forward`.

        For pictures of what the structure detectors attend to (the paper's visualisation); only
        the one query row of the probability matrix is built.
        """
        q, k, _ = self.qkv_heads(x)
        q = q[:, :, query : query + 1]
        k = self._structured(self.k_conv, k, grid)
        scale = self.head_dim**-0.5 if self.temperature is None else self.temperature
        logits = (q * scale) @ k.transpose(-2, -1)
        mask = self.keep_mask(grid, x.device)
        if mask is not None:
            logits = logits.masked_fill(~mask[query], float("-inf"))
        key_grid = [(size - 1) // step + 1 for size, step in zip(grid, self.stride, strict=True)]
        probs = logits.float().softmax(dim=-1)
        return probs.reshape(*probs.shape[:2], self.structure_dim, *key_grid)


def neighbourhoods(maps: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Zero-padded M-neighbourhoods of a (B, C, *grid) map at the strided centres: (B, C, N_kv, M)."""
    pads: list[int] = []
    for size in reversed(kernel):
        pads += [size // 2, size // 2]
    out = F.pad(maps, pads)
    for axis, (size, step) in enumerate(zip(kernel, stride, strict=True)):
        out = out.unfold(2 + axis, size, step)
    ndim = len(kernel)
    return out.flatten(2 + ndim).flatten(2, 1 + ndim)


def structsa_reference(module: StructSA, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """The paper's literal StructSA with `module`'s weights (O(N^2 * M * C) memory: small inputs only).

    correlation "channel": a[i, j, d] = scale * sum_m sum_c q[i, c] K_j[m, c] HK[m, c, d];
    correlation "dot":     a[i, j, d] = scale * sum_m (sum_c q[i, c] K_j[m, c]) U^K[m, d].
    Softmax jointly over (j, d). Then
    aggregation "channel": y[i, c] = sum_j sum_m (sum_d A[i, j, d] HV[m, d, c]) V_j[m, c];
    aggregation "shared":  y[i, c] = sum_j sum_m (sum_d A[i, j, d] U^V[m, d]) V_j[m, c];
    aggregation "element": y[i, c] = sum_j (sum_d A[i, j, d] u^V[d]) v_j[c].
    """
    batch, tokens, dim = x.shape
    heads, head_dim, depth = module.num_heads, module.head_dim, module.structure_dim
    q, k, v = module.qkv_heads(x)

    def neighbourhood_heads(t: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
        maps = t.transpose(2, 3).reshape(batch, dim, *grid)
        local = neighbourhoods(maps, kernel, module.stride)  # (B, C, N_kv, M)
        return local.reshape(batch, heads, head_dim, *local.shape[2:]).permute(0, 1, 3, 4, 2)

    k_local = neighbourhood_heads(k, module.kernel)  # (B, h, N_kv, M, c)
    taps = k_local.shape[3]

    # Stage 1: local patterns of the query-key correlation, read by D detectors.
    if module.correlation == "channel":
        hk = module.k_conv.weight.reshape(heads, head_dim, depth, taps)  # HK[m, c, d] per head
        correlation = q[:, :, :, None, None, :] * k_local[:, :, None]  # (B, h, N, N_kv, M, c): diag(q_i) K_j
        logits = torch.einsum("bhijmc,hcdm->bhijd", correlation, hk)
    else:
        uk = module.k_conv.weight.reshape(depth, taps)  # U^K[m, d], one kernel for all channels
        correlation = torch.einsum("bhic,bhjmc->bhijm", q, k_local)  # (B, h, N, N_kv, M): q_i . K_j[m]
        logits = torch.einsum("bhijm,dm->bhijd", correlation, uk)
    if module.temperature is None:
        logits = logits * head_dim**-0.5
    else:
        logits = logits * module.temperature[..., None]
        own = _reference_self_entries(grid, module.stride, x.device)
        logits = logits.masked_fill(own[..., None], float("-inf"))
    probs = logits.flatten(-2).softmax(dim=-1).reshape(logits.shape)

    # Stage 2: each attended key contributes a dynamic kernel over its value neighbourhood
    # (element-wise: a scalar weight on its own value).
    if module.aggregation == "channel":
        v_local = neighbourhood_heads(v, module.kernel)
        hv = module.v_conv.weight.reshape(heads, head_dim, depth, taps)  # HV[m, d, c] per head
        value_kernels = torch.einsum("bhijd,hcdm->bhijmc", probs, hv)
        y = torch.einsum("bhijmc,bhjmc->bhic", value_kernels, v_local)
    elif module.aggregation == "shared":
        v_local = neighbourhood_heads(v, module.kernel)
        uv = module.v_conv.weight.reshape(depth, taps)  # U^V[m, d]
        value_kernels = torch.einsum("bhijd,dm->bhijm", probs, uv)
        y = torch.einsum("bhijm,bhjmc->bhic", value_kernels, v_local)
    else:
        v_own = neighbourhood_heads(v, (1,) * len(grid))[:, :, :, 0]  # (B, h, N_kv, c): v_j itself
        uv = module.v_conv.weight.reshape(depth)  # u^V[d]
        y = torch.einsum("bhijd,d,bhjc->bhic", probs, uv, v_own)
    return module.proj(y.transpose(1, 2).reshape(batch, tokens, dim))


def _reference_self_entries(grid: Sequence[int], stride: Sequence[int], device: torch.device) -> torch.Tensor:
    """(N, N_kv) True where key j's neighbourhood is centred on query i's position (by coordinates)."""
    query = torch.stack(torch.meshgrid(*[torch.arange(s, device=device) for s in grid], indexing="ij"), -1)
    key_axes = [torch.arange(0, s, step, device=device) for s, step in zip(grid, stride, strict=True)]
    key = torch.stack(torch.meshgrid(*key_axes, indexing="ij"), -1)
    query, key = query.reshape(-1, len(grid)), key.reshape(-1, len(grid))
    return (query[:, None, :] == key[None, :, :]).all(dim=-1)
