"""A small plain ViT as in the small-datasets paper (vit_tiny), optionally with SPT and LSA.

Defaults: the paper's code (its `ViT(dim=192, depth=9, heads=12, dim_head=192 // 12, mlp_dim_ratio=2)`):
9 blocks, width 192, 12 heads of 16, MLP ratio 2, class token, learned absolute position embedding,
patch size img_size // 8 (4 at 32 px, 8 at 64 px: an 8x8 token grid), query/key/value projection
without bias, and one stochastic-depth rate for every block (the code's single shared DropPath), not
a rate rising with depth. Not taken from it: its Xavier-normal init and unit-variance position embedding
(trunc-normal 0.02 here, as everywhere in this package). Video: tubelets of tubelet_size frames, one
position embedding per tubelet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from pipeline.models.layers import (
    DropPath,
    Mlp,
    drop_path_rates,
    init_linear_and_norm,
    resolve_checkpoint_counts,
    run_blocks,
)
from pipeline.models.registry import register_model
from pipeline.models.spt_lsa import ShiftedPatchTokenizer
from pipeline.models.structsa import MultiHeadAttention


class TransformerBlock(nn.Module):
    """Pre-norm transformer block over (B, N, C) tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_ratio: float,
        drop_path: float,
        lsa: bool,
        qkv_bias: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias, lsa=lsa)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), (x.shape[1],)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Plain ViT classifier for images (B, C, H, W) or clips (B, C, T, H, W).

    drop_path_schedule: "uniform" (drop_path_rate in every block, the paper's code) or "linear" (rising
    from 0 to drop_path_rate over the blocks, as in DeiT).
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        num_frames: int | None = None,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int | None = None,
        tubelet_size: int = 2,
        embed_dim: int = 192,
        depth: int = 9,
        num_heads: int = 12,
        head_dim: int = 16,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        drop_path_schedule: Literal["uniform", "linear"] = "uniform",
        qkv_bias: bool = False,
        checkpoint_blocks: bool | Sequence[int] = False,
        spt: bool = False,
        lsa: bool = False,
    ) -> None:
        super().__init__()
        patch = patch_size or max(img_size // 8, 1)
        video = num_frames is not None
        if img_size % patch:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch}")
        if video and num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
        self.num_classes, self.num_frames, self.img_size = num_classes, num_frames, img_size
        self.video = video
        self.depths = (depth,)
        if spt:
            tubelet = tubelet_size if video else None
            self.patch_embed: nn.Module = ShiftedPatchTokenizer(in_chans, embed_dim, patch, tubelet)
        elif video:
            step = (tubelet_size, patch, patch)
            self.patch_embed = nn.Conv3d(in_chans, embed_dim, step, step)
        else:
            self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch, patch)
        num_tokens = (img_size // patch) ** 2 * (num_frames // tubelet_size if video else 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_tokens, embed_dim))
        if drop_path_schedule not in ("uniform", "linear"):
            raise ValueError(f"drop_path_schedule must be 'uniform' or 'linear', got {drop_path_schedule!r}")
        if drop_path_schedule == "linear":
            (rates,) = drop_path_rates(self.depths, drop_path_rate)
        else:
            rates = [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, head_dim, mlp_ratio, rate, lsa, qkv_bias) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)
        self.checkpoint_counts = resolve_checkpoint_counts(checkpoint_blocks, self.depths)

    def set_grad_checkpointing(self, enable: bool | Sequence[int] = True) -> None:
        """Checkpoint all blocks (True), none (False) or the first n (a one-stage count list)."""
        self.checkpoint_counts = resolve_checkpoint_counts(enable, self.depths)

    def no_weight_decay(self) -> set[str]:
        """Position embedding, class token and LSA temperatures stay out of weight decay."""
        names = {name for name, _ in self.named_parameters() if name.endswith("temperature")}
        return names | {"pos_embed", "cls_token"}

    def inflate_parameter(self, name: str, image_value: torch.Tensor) -> torch.Tensor | None:
        """Image position embedding -> video: class position, then the patch positions once per tubelet."""
        if name != "pos_embed" or not self.video:
            return None
        patches = image_value[:, 1:]
        repeats = (self.pos_embed.shape[1] - 1) // patches.shape[1]
        return torch.cat([image_value[:, :1], patches.repeat(1, repeats, 1)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + N, C), class token first."""
        if x.ndim != (5 if self.video else 4):
            kind = "video (B, C, T, H, W)" if self.video else "image (B, C, H, W)"
            raise ValueError(f"VisionTransformer built for {kind} input got shape {tuple(x.shape)}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if tokens.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"input {tuple(x.shape)} gives {tokens.shape[1]} tokens, the model was built for "
                f"{self.pos_embed.shape[1] - 1} (img_size={self.img_size}, num_frames={self.num_frames})"
            )
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.norm(run_blocks(self.blocks, tokens, self.checkpoint_counts[0]))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Classify from the class token."""
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.forward_head(self.forward_features(x))


register_model("vit_tiny", VisionTransformer)
register_model("vit_tiny_spt_lsa", VisionTransformer, spt=True, lsa=True)
