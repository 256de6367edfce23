"""nvJPEG through DALI for image training and evaluation (`data.modality=image`, `data.decoder=dali`).

The DALI back end's image half (see `pipeline.data.dali`): fn.decoders.image (device "mixed" = nvJPEG
on a GPU, "cpu" = libjpeg-turbo without one) -> fn.resize of each view's box to S x S -> flip -> uint8.
PNG members (the lossless copies of CIFAR's and SVHN's pixels) go through the same operator, which reads
PNG too. A view's box is drawn on the host before decoding, from the image's size in the sample's json:

- training: DeiT's random resized crop and flip, from the generator the CPU path uses for the sample
  (`plan_views`), then RandAugment and the erased box in torch from the same generator, so with one
  view per sample the crops, flips, ops and boxes are the CPU path's; with repeated augmentation each
  view's crop and flip are drawn first, then each view's RandAugment and box (each view is one DALI
  sample: repeated views decode their JPEG again);
- evaluation: the CPU path's resize of the short side to `eval_short_side` and its crops (centre, or 3
  along the long side), expressed as a box of the original image, so one resize gives each crop (what
  the CPU path gets by resizing the whole image, then cutting).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pipeline.data.config import DataConfig
from pipeline.data.dali import (
    Box,
    box_inputs,
    crop_resize_flip,
    plan_views,
)
from pipeline.data.sampling import eval_crop_boxes, eval_resized_shape
from pipeline.data.stream import Item, each_sample, image_member, read_label


def build_image_pipeline(crop_size: int, max_views: int, device: int | None) -> Any:
    """The DALI graph: JPEG or PNG bytes -> decode (nvJPEG on a GPU; a PNG by DALI's host decoder) -> box
    to S x S -> flip -> uint8 (1,3,S,S)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(
        batch_size=max_views, num_threads=1, device_id=device, exec_async=False, exec_pipelined=False
    )
    with pipe:
        inputs = box_inputs(fn, types)
        image = fn.decoders.image(
            inputs[0], device="cpu" if device is None else "mixed", output_type=types.RGB
        )
        pipe.set_outputs(crop_resize_flip(fn, types, image, inputs, crop_size, "CHW"))
    pipe.build()
    return pipe


class PlanImageViews:
    """Raw image samples -> `encoded` JPEG or PNG bytes, `label` and `boxes`: each view's (box, flip).

    Training (`seed_parts` given): `plan_views`, the generator kept in `rng` for the torch-side steps;
    evaluation (`seed_parts` None): the test crops.
    """

    def __init__(
        self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...] | None
    ) -> None:
        self.cfg, self.num_classes, self.flip, self.seed_parts = cfg, num_classes, flip, seed_parts

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        return each_sample(items, self.plan)

    def plan(self, item: Item) -> Item:
        """The DALI inputs of one raw sample."""
        meta = json.loads(item["json"])
        label = read_label(item, meta)
        height, width = int(meta["height"]), int(meta["width"])
        image = image_member(item)
        if image is None:
            raise KeyError("no image member (jpg or png) in sample")
        planned = {
            "__key__": item["__key__"],
            "__url__": item.get("__url__", ""),
            "__pos__": item["__pos__"],
            "label": label,
            "encoded": np.frombuffer(image, dtype=np.uint8),
        }
        if self.seed_parts is None:
            return {**planned, "boxes": [(box, False) for box in self.eval_boxes(height, width)]}
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        return {**planned, **plan_views(self.cfg, self.flip, self.seed_parts, item["__pos__"], height, width)}

    def eval_boxes(self, height: int, width: int) -> list[Box]:
        """The test crops of a `height` x `width` image, as boxes of the image itself (see module doc)."""
        size = self.cfg.crop_size
        new_h, new_w = eval_resized_shape(height, width, self.cfg.eval_short_side, size)
        sy, sx = height / new_h, width / new_w
        crops = eval_crop_boxes(new_h, new_w, size, self.cfg.test_crops)
        return [(top * sy, left * sx, size * sy, size * sx) for top, left in crops]
