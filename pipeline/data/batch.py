"""The batch records: what a worker's batching stage ships and what the loaders yield.

A worker stacks its rows into a `ShippedBatch` (uint8 pixels, plus what the main process needs to
finish it: failed samples, erased boxes, the mixing seed); `finish_train_batch` / `finish_eval_batch`
(`pipeline.data.stream`) turn it into the `Batch` the trainer and the evaluation read. A row is one
view (see `pipeline.data.config.DataConfig.batch_size`); the rows of one sample share its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.data.transforms import EraseBox

BadEntry = tuple[str, str, str]  # key, shard, reason


@dataclass
class Batch:
    """Rows as the model takes them.

    inputs: float, normalised: clips (B, C, T, H, W), or images (B, C, H, W) for the image model.
    label: (B,) long class indices, or (B, K) soft targets under mixup / cutmix.
    key: each row's sample key ("" on evaluation padding).
    view: (B,) long: training, the row's repeated-augmentation view; evaluation, its clip x crop view
      index, -1 on padding rows (and on the rows of a sample that failed), which metrics leave out.
    """

    inputs: torch.Tensor
    label: torch.Tensor
    key: list[str]
    view: torch.Tensor


@dataclass
class ShippedBatch:
    """Rows as a worker sends them: uint8 `pixels` (B, T, 3, S, S), 4x smaller than floats to stack and to
    pass through shared memory, with `label`, `key` and `view` as in `Batch`.

    bad: the failed samples of the batch's group, (key, shard, reason) each.
    erase: training, each row's erased box (None: not erased); applied after normalisation.
    mix_seed: training, the seed parts of the batch's mixup / cutmix generator.
    """

    pixels: torch.Tensor
    label: torch.Tensor
    key: list[str]
    view: torch.Tensor
    bad: list[BadEntry] = field(default_factory=list)
    erase: list[EraseBox] = field(default_factory=list)
    mix_seed: tuple[int, ...] = ()

    def __len__(self) -> int:
        """Rows."""
        return len(self.key)
