"""TensorBoard pictures, written by rank 0: what the model sees, where it errs, what StructSA attends to.

- `data/train_clips`: a grid of the first training batch of each start (frames across, clips down),
  de-normalised with the config's mean / std, after mixup / cutmix: exactly the model's input, so a
  wrong crop, a flip on SSv2 or broken colours show at once.
- `val/confusion_matrix` and `val/per_class_top1` at each evaluation: rows are true classes, columns
  predicted ones, each row scaled by its videos; for large label sets only the classes with the most
  mistakes. Class i of the picture is the i-th of `val/classes_shown` (a text entry).
- `structsa/structure_maps`: for one query token (the centre of the middle frame) of a fixed validation
  clip (rank 0's first evaluation clip, the same at every evaluation), the attention of the first
  StructSA block over the key positions of each of the D structure channels (channels down, key frames
  across), as in the paper's visualisation.

Rendering is plain torch (nearest-neighbour upscaling and a fixed colour ramp): no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pipeline.data.config import AugConfig
from pipeline.models.structsa import StructSA

MAX_CLIPS = 4  # clips down the training grid
MAX_FRAMES = 8  # frames across it, evenly spaced over the clip
MAX_CLASSES = 32  # classes in the confusion matrix of a larger label set
PAD = 2  # pixels between tiles
# Colour ramp for values in [0, 1]: dark blue -> teal -> yellow (viridis' ends and middle).
RAMP = torch.tensor([[0.27, 0.00, 0.33], [0.13, 0.57, 0.55], [0.99, 0.91, 0.14]])


def colourise(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] of any shape (...) -> RGB (3, ...) along the colour ramp."""
    position = values.clamp(0, 1) * (len(RAMP) - 1)
    low = position.floor().long().clamp(max=len(RAMP) - 2)
    frac = (position - low).unsqueeze(-1)
    rgb = RAMP[low] * (1 - frac) + RAMP[low + 1] * frac
    return rgb.movedim(-1, 0)


def upscale(image: torch.Tensor, cell: int) -> torch.Tensor:
    """(C, H, W) -> (C, H * cell, W * cell), each value a cell x cell square."""
    return image.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)


def tile(tiles: torch.Tensor) -> torch.Tensor:
    """(rows, cols, C, H, W) -> one (C, rows * (H + PAD) - PAD, cols * (W + PAD) - PAD) image, white gaps."""
    rows, cols, chans, height, width = tiles.shape
    grid = torch.ones(chans, rows * (height + PAD) - PAD, cols * (width + PAD) - PAD)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (height + PAD), c * (width + PAD)
            grid[:, top : top + height, left : left + width] = tiles[r, c]
    return grid


def clip_grid(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised clips (B, 3, T, H, W) or images (B, 3, H, W) -> a (3, H', W') image in [0, 1]: up to
    MAX_CLIPS clips down, up to MAX_FRAMES evenly spaced frames across, de-normalised."""
    video = video[:MAX_CLIPS].detach().float().cpu()
    if video.dim() == 4:  # an image batch (B, 3, H, W): one-frame clips
        video = video.unsqueeze(2)
    frames = torch.linspace(0, video.shape[2] - 1, min(MAX_FRAMES, video.shape[2])).round().long()
    video = video[:, :, frames]
    pixels = video * torch.tensor(std).view(1, 3, 1, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1, 1)
    return tile(pixels.clamp(0, 1).permute(0, 2, 1, 3, 4))


def log_training_clips(writer: Any, video: torch.Tensor, aug: AugConfig, step: int) -> None:
    """The model's input clips as `data/train_clips`."""
    writer.add_image("data/train_clips", clip_grid(video, aug.mean, aug.std), step)
    writer.flush()


def shown_classes(confusion: torch.Tensor, limit: int = MAX_CLASSES) -> torch.Tensor:
    """Class indices to draw: all of a small label set, else the `limit` with the most mistakes
    (made or received), in class order."""
    if confusion.shape[0] <= limit:
        return torch.arange(confusion.shape[0])
    mistakes = confusion.sum(0) + confusion.sum(1) - 2 * confusion.diagonal()
    return mistakes.topk(limit).indices.sort().values


def confusion_image(confusion: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(K, K) counts (true, predicted) -> a (3, H, W) heat map of the `classes` rows / columns, each
    row scaled by its class's videos (the diagonal is then per-class recall)."""
    counts = confusion[classes][:, classes].float()
    rows = confusion[classes].sum(1, keepdim=True).float().clamp(min=1)
    return upscale(colourise(counts / rows), max(1, 256 // len(classes)))


def accuracy_image(confusion: torch.Tensor, classes: torch.Tensor, height: int = 64) -> torch.Tensor:
    """Per-class top-1 as bars on white (3, height, W): one bar per class in `classes`, full height =
    100%, coloured by its value."""
    accuracy = confusion.diagonal()[classes].float() / confusion[classes].sum(1).float().clamp(min=1)
    filled = torch.arange(height, 0, -1).view(height, 1) <= (accuracy * height).round().view(1, -1)
    bars = torch.where(filled, colourise(accuracy).unsqueeze(1), torch.ones(()))
    return bars.repeat_interleave(max(1, 256 // len(classes)), dim=2)


def structure_image(maps: torch.Tensor) -> torch.Tensor:
    """Attention (D, *key grid) of one query -> (3, H, W): channels down, key frames across, one
    colour scale for all (the softmax is joint over channels and keys, so their sizes compare)."""
    maps = maps.float().cpu()
    if maps.dim() == 3:  # an image model: one key frame
        maps = maps.unsqueeze(1)
    maps = maps / maps.max().clamp(min=1e-12)
    cell = max(1, 64 // maps.shape[-1])
    tiles = torch.stack(
        [torch.stack([upscale(colourise(frame), cell) for frame in channel]) for channel in maps]
    )
    return tile(tiles)


def log_evaluation(
    writer: Any, step: int, confusion: torch.Tensor, structure_maps: torch.Tensor | None
) -> None:
    """Confusion matrix, per-class accuracy and (for StructViT) the structure maps of evaluation `step`."""
    classes = shown_classes(confusion)
    writer.add_image("val/confusion_matrix", confusion_image(confusion, classes), step)
    writer.add_image("val/per_class_top1", accuracy_image(confusion, classes), step)
    writer.add_text("val/classes_shown", " ".join(map(str, classes.tolist())), step)
    if structure_maps is not None:
        writer.add_image("structsa/structure_maps", structure_image(structure_maps), step)
    writer.flush()


class StructureMapProbe:
    """Records, during evaluation, the structure maps of the model's first StructSA block for the
    centre query of the first clip it sees (`maps`: (D, *key grid), averaged over heads).

    It runs inside the block's forward (a forward pre-hook) because under ZeRO-3 the block's weights
    exist only there; every rank runs it alike, one query row, so it costs nothing measurable. A model
    without StructSA (UniFormer) leaves `maps` None.
    """

    def __init__(self, model: nn.Module) -> None:
        self.block = next((m for m in model.modules() if isinstance(m, StructSA)), None)
        self.maps: torch.Tensor | None = None
        self.handle = None

    def __enter__(self) -> StructureMapProbe:
        if self.block is not None:
            self.handle = self.block.register_forward_pre_hook(self.record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def record(self, block: StructSA, inputs: tuple[torch.Tensor, Sequence[int]]) -> None:
        """Forward pre-hook: the first call keeps the attention of its first clip's centre token."""
        if self.maps is not None:
            return
        tokens, grid = inputs
        centre = [size // 2 for size in grid]
        query = sum(c * math.prod(grid[axis + 1 :]) for axis, c in enumerate(centre))
        with torch.no_grad():
            self.maps = block.structure_attention(tokens[:1], grid, query)[0].mean(0).cpu()
