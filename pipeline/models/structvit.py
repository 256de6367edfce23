"""StructViT: UniFormer with every self-attention replaced by StructSA (structure_dim = 0 is UniFormer).

Image input (B, C, H, W); video input (B, C, T, H, W) when built with num_frames. Stages 1-2 are
convolution blocks, stages 3-4 attention blocks (global over all T*H*W tokens). Parameter names
follow the public UniFormer layout (patch_embed1-4, blocks1-4, norm, head; gamma_1 / gamma_2 for
layer scale, aux_head for the token-labeling head) so its checkpoints load key for key
(`pipeline.models.inflate`).

Variants: `uniformer_{s,b,l}` (L with layer scale, as the only published UniFormer-L,
uniformer_large_ls, has it), `structvit_{size}_{D}_{S}` and the paper's ablation forms of each:
`..._dot` (dot-product correlation, U^K and U^V shared by all channels: the paper's basic form),
`..._cwcorr` (channel-wise correlation, shared U^V), `..._elem` (channel-wise correlation,
element-wise aggregation u^V) and `..._m5` (5x5(x5) structure kernels). The names are registered at
the end of this file from the product of sizes, D, S and forms.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn

from pipeline.models.layers import (
    ConvMlp,
    DropPath,
    Mlp,
    drop_path_rates,
    init_linear_and_norm,
    resolve_checkpoint_counts,
    run_blocks,
)
from pipeline.models.registry import register_model
from pipeline.models.spt_lsa import ShiftedPatchTokenizer
from pipeline.models.structsa import MultiHeadAttention, StructSA


class PatchEmbed(nn.Module):
    """Strided convolution + LayerNorm over channels: the stem and the downsampling layers."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if len(kernel) == 3 else nn.Conv2d
        self.proj = conv(in_chans, embed_dim, tuple(kernel), tuple(stride), tuple(padding))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *grid) -> (B, E, *grid / stride)."""
        x = self.proj(x)
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ConvBlock(nn.Module):
    """UniFormer convolution block: CPE, BN -> PW -> DW 5x5(x5) -> PW, BN -> conv MLP."""

    def __init__(
        self, dim: int, *, video: bool, mlp_ratio: float, drop_path: float, layer_scale: float | None = None
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if video else nn.Conv2d
        norm = nn.BatchNorm3d if video else nn.BatchNorm2d
        self.pos_embed = conv(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm(dim)
        self.conv1 = conv(dim, dim, 1)
        self.attn = conv(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = conv(dim, dim, 1)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), conv)
        # layer scale as UniFormer-L-LS has it: per-channel branch gains, (1, C, 1, 1[, 1]) here
        gain_shape = (1, dim) + (1,) * (3 if video else 2)
        self.gamma_1, self.gamma_2 = _layer_scales(gain_shape, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *grid) -> same shape."""
        x = x + self.pos_embed(x)
        x = x + self.drop_path(_scaled(self.gamma_1, self.conv2(self.attn(self.conv1(self.norm1(x))))))
        return x + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(x))))


def _layer_scales(
    shape: tuple[int, ...], init: float | None
) -> tuple[nn.Parameter, nn.Parameter] | tuple[None, None]:
    """Two branch gains filled with `init` (None: no layer scale, no parameters)."""
    if init is None:
        return None, None
    return nn.Parameter(torch.full(shape, init)), nn.Parameter(torch.full(shape, init))


def _scaled(gamma: torch.Tensor | None, branch: torch.Tensor) -> torch.Tensor:
    """`branch` times its layer-scale gain, or unchanged without layer scale."""
    return branch if gamma is None else gamma * branch


class AttentionBlock(nn.Module):
    """UniFormer attention block with StructSA (structure_dim > 0) or plain attention (0)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        video: bool,
        mlp_ratio: float,
        drop_path: float,
        structure_dim: int,
        structure_kernel: int,
        structure_stride: int,
        structure_correlation: Literal["channel", "dot"],
        structure_aggregation: Literal["channel", "shared", "element"],
        layer_scale: float | None,
        lsa: bool,
        fused_attention: bool,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if video else nn.Conv2d
        self.pos_embed = conv(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if structure_dim > 0:
            self.attn: nn.Module = StructSA(
                dim,
                num_heads,
                video=video,
                structure_dim=structure_dim,
                kernel_size=structure_kernel,
                stride=structure_stride,
                correlation=structure_correlation,
                aggregation=structure_aggregation,
                lsa=lsa,
                fused_attention=fused_attention,
            )
        else:
            self.attn = MultiHeadAttention(dim, num_heads, lsa=lsa, fused_attention=fused_attention)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1, self.gamma_2 = _layer_scales((dim,), layer_scale)  # (C,) on tokens, as UniFormer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *grid) -> same shape; attention is global over the whole grid."""
        x = x + self.pos_embed(x)
        batch, chans, *grid = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(_scaled(self.gamma_1, self.attn(self.norm1(tokens), grid)))
        tokens = tokens + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(tokens))))
        return tokens.transpose(1, 2).reshape(batch, chans, *grid)


class StructViT(nn.Module):
    """StructViT / UniFormer backbone with a classification head (BN, global average pool, Linear)."""

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        num_frames: int | None = None,
        img_size: int = 224,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 4, 8, 3),
        dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        structure_dim: int = 4,
        structure_kernel: int = 3,
        structure_stride: int = 1,
        structure_correlation: Literal["channel", "dot"] = "channel",
        structure_aggregation: Literal["channel", "shared", "element"] = "channel",
        layer_scale: float | None = None,
        token_head: bool = False,
        drop_path_rate: float = 0.1,
        checkpoint_blocks: bool | Sequence[int] = False,
        spt: bool = False,
        lsa: bool = False,
        fused_attention: bool = True,
    ) -> None:
        """structure_*: StructSA's D (0 = plain attention, UniFormer), kernel M, stride S and form;
        layer_scale: initial branch gain of every block (None = off; UniFormer-L-LS: 1e-6);
        token_head: UniFormer's token-labeling head `aux_head` (its inference adds 0.5 x the
        largest per-token logit to the pooled logit; the token-label loss is not implemented)."""
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"StructViT has 4 stages: got depths={list(depths)} dims={list(dims)}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or None (image model), got {num_frames}")
        for dim in dims[2:]:
            if dim % head_dim:
                raise ValueError(f"attention stage dim {dim} is not divisible by head_dim {head_dim}")
        self.num_classes, self.num_frames, self.img_size = num_classes, num_frames, img_size
        self.depths = tuple(depths)
        video = num_frames is not None
        self.video = video
        if spt:
            self.patch_embed1: nn.Module = ShiftedPatchTokenizer(in_chans, dims[0], 4, 2 if video else None)
        elif video:
            self.patch_embed1 = PatchEmbed(in_chans, dims[0], (3, 4, 4), (2, 4, 4), (1, 0, 0))
        else:
            self.patch_embed1 = PatchEmbed(in_chans, dims[0], (4, 4), (4, 4), (0, 0))
        down = ((1, 2, 2), (1, 2, 2), (0, 0, 0)) if video else ((2, 2), (2, 2), (0, 0))
        self.patch_embed2 = PatchEmbed(dims[0], dims[1], *down)
        self.patch_embed3 = PatchEmbed(dims[1], dims[2], *down)
        self.patch_embed4 = PatchEmbed(dims[2], dims[3], *down)

        rates = drop_path_rates(depths, drop_path_rate)
        self.blocks1, self.blocks2 = (
            nn.ModuleList(
                ConvBlock(dims[i], video=video, mlp_ratio=mlp_ratio, drop_path=r, layer_scale=layer_scale)
                for r in rates[i]
            )
            for i in (0, 1)
        )
        self.blocks3, self.blocks4 = (
            nn.ModuleList(
                AttentionBlock(
                    dims[i],
                    dims[i] // head_dim,
                    video=video,
                    mlp_ratio=mlp_ratio,
                    drop_path=r,
                    structure_dim=structure_dim,
                    structure_kernel=structure_kernel,
                    structure_stride=structure_stride,
                    structure_correlation=structure_correlation,
                    structure_aggregation=structure_aggregation,
                    layer_scale=layer_scale,
                    lsa=lsa,
                    fused_attention=fused_attention,
                )
                for r in rates[i]
            )
            for i in (2, 3)
        )
        self.norm = nn.BatchNorm3d(dims[3]) if video else nn.BatchNorm2d(dims[3])
        self.head = nn.Linear(dims[3], num_classes)
        self.aux_head = nn.Linear(dims[3], num_classes) if token_head else None
        # init_linear_and_norm touches only Linear / LayerNorm, so StructSA's own k/v init survives.
        self.apply(init_linear_and_norm)
        self.checkpoint_counts = resolve_checkpoint_counts(checkpoint_blocks, self.depths)

    def set_grad_checkpointing(self, enable: bool | Sequence[int] = True) -> None:
        """Checkpoint all blocks (True), none (False) or the first n blocks of each stage (4 counts)."""
        self.checkpoint_counts = resolve_checkpoint_counts(enable, self.depths)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay besides 1-D ones: LSA temperatures, layer scales."""
        kept = ("temperature", "gamma_1", "gamma_2")
        return {name for name, _ in self.named_parameters() if name.endswith(kept)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, [T], H, W) -> the normalised last-stage feature map (B, C4, [T'], H / 32, W / 32)."""
        expected = 5 if self.video else 4
        if x.ndim != expected:
            kind = "video (B, C, T, H, W)" if self.video else "image (B, C, H, W)"
            raise ValueError(f"{type(self).__name__} built for {kind} input got shape {tuple(x.shape)}")
        stages = zip(
            (self.patch_embed1, self.patch_embed2, self.patch_embed3, self.patch_embed4),
            (self.blocks1, self.blocks2, self.blocks3, self.blocks4),
            self.checkpoint_counts,
            strict=True,
        )
        for embed, blocks, num_checkpointed in stages:
            x = run_blocks(blocks, embed(x), num_checkpointed)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of a feature map, then the classifier: (B, num_classes).

        With the token-labeling head, UniFormer's inference rule: plus 0.5 x each class's largest
        per-token logit.
        """
        tokens = x.flatten(2)
        logits = self.head(tokens.mean(-1))
        if self.aux_head is not None:
            logits = logits + 0.5 * self.aux_head(tokens.transpose(1, 2)).amax(dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of images or clips."""
        return self.forward_head(self.forward_features(x))


# Sizes: the UniFormer papers' depths, widths, head size and stochastic-depth rate per stage.
_SMALL = {"depths": (3, 4, 8, 3), "dims": (64, 128, 320, 512), "head_dim": 64, "drop_path_rate": 0.1}
_BASE = {"depths": (5, 8, 20, 7), "dims": (64, 128, 320, 512), "head_dim": 64, "drop_path_rate": 0.3}
# layer scale 1e-6 as in uniformer_large_ls, the only UniFormer-L whose weights exist
_LARGE = {
    "depths": (5, 10, 24, 7),
    "dims": (128, 192, 448, 640),
    "head_dim": 64,
    "drop_path_rate": 0.4,
    "layer_scale": 1e-6,
}
# CPU demos and tests: trains on 8x64x64 clips in well under a second per step at batch 8.
_TINY = {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128), "head_dim": 16, "drop_path_rate": 0.0}

# The paper's ablation forms (appendix A.1 / its ablation table): name suffix -> StructSA settings.
# "" is the full form: channel-wise correlation and aggregation (the constructor's defaults).
_FORMS: dict[str, dict[str, Any]] = {
    "": {},
    "_dot": {"structure_correlation": "dot", "structure_aggregation": "shared"},
    "_cwcorr": {"structure_aggregation": "shared"},
    "_elem": {"structure_aggregation": "element"},
    "_m5": {"structure_kernel": 5},
}
_SIZES = {"s": _SMALL, "b": _BASE, "l": _LARGE, "tiny": _TINY}
_STRUCTURE_DIMS = (1, 2, 4, 8)  # D
_STRUCTURE_STRIDES = (1, 2)  # S

# Every size, D, S and form: `uniformer_{size}` is the network with plain attention (structure_dim 0);
# `structvit_{size}_{D}_{S}{form}` has StructSA with structure_dim D, structure_stride S and one form.
for _size_name, _size in _SIZES.items():
    register_model(f"uniformer_{_size_name}", StructViT, structure_dim=0, **_size)
for _size_name, _depth, _stride, _suffix in itertools.product(
    _SIZES, _STRUCTURE_DIMS, _STRUCTURE_STRIDES, _FORMS
):
    register_model(
        f"structvit_{_size_name}_{_depth}_{_stride}{_suffix}",
        StructViT,
        structure_dim=_depth,
        structure_stride=_stride,
        **_FORMS[_suffix],
        **_SIZES[_size_name],
    )
