"""nvJPEG through DALI for image training and evaluation (`data.modality=image`, `data.decoder=dali`).

The stream is the CPU image path's: the same read stages (plan, tar slices, seeded shuffle, resume skip),
stand-ins for failed samples (`ReplaceBad`), batching (`BatchTrain` / `BatchEval`) and finishing
(`finish_train_batch` / `finish_eval_batch`: normalise, erase, mix, (B, C, H, W)). Only the pixels of
each view come from DALI: fn.decoders.image (device "mixed" = nvJPEG on a GPU, "cpu" = libjpeg-turbo
without one) -> fn.resize of the view's box to S x S -> flip -> uint8 CHW. A view's box is drawn on the
host before decoding, from the JPEG's size in the sample's json:

- training: DeiT's random resized crop and flip, from the generator the CPU path uses for the sample,
  then RandAugment and the erased box in torch (on DALI's output device) from the same generator, so
  with one view per sample the crops, flips, ops and boxes are the CPU path's; with repeated
  augmentation each view's crop and flip are drawn first, then each view's RandAugment and box;
- evaluation: the CPU path's resize of the short side to `short_side` and its crops (centre, or 3 along
  the long side), expressed as a box of the original image, so one resize gives each crop (what the
  CPU path gets by resizing the whole image, then cutting).

Each view is one DALI sample (repeated views decode their JPEG again). Batches run in the main process
in the CPU loader's order (`DaliTrainLoader.__iter__`); evaluation pixels come back to the host, as
the CPU path's (padding rows are host tensors).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from pipeline.data.config import DataConfig
from pipeline.data.dali import DaliTrainLoader, dali_to_torch, run_isolating_failures
from pipeline.data.loader import EvalLoader, EvalStream, TrainStream
from pipeline.data.plan import make_rng
from pipeline.data.sampling import eval_crop_boxes, eval_resized_shape
from pipeline.data.stream import (
    IMAGE_EXT,
    SAMPLE_ERRORS,
    SAMPLE_TAG,
    BatchEval,
    BatchTrain,
    CheckDigest,
    Item,
    ReplaceBad,
    failed,
    finish_eval_batch,
    finish_train_batch,
    one_line,
    read_label,
)
from pipeline.data.transforms import TrainTransform, random_resized_crop_box

DALI_IMAGE_INPUTS = ("encoded", "roi_start", "roi_end", "mirror")
# A view's box: (top, left, height, width) in pixels of the stored image (fractional for evaluation).
Box = tuple[float, float, float, float]


def build_dali_image_pipeline(crop_size: int, max_views: int, device_id: int | None) -> Any:
    """The DALI graph: JPEG bytes -> decode (nvJPEG on a GPU) -> box resized to S x S -> flip -> CHW uint8."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(
        batch_size=max_views, num_threads=1, device_id=device_id, exec_async=False, exec_pipelined=False
    )
    with pipe:
        encoded, roi_start, roi_end, mirror = (
            fn.external_source(name=name, dtype=dtype, ndim=ndim)
            for name, dtype, ndim in zip(
                DALI_IMAGE_INPUTS,
                (types.UINT8, types.FLOAT, types.FLOAT, types.INT32),
                (1, 1, 1, 0),
                strict=True,
            )
        )
        image = fn.decoders.image(
            encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB
        )
        image = fn.resize(
            image,
            roi_start=roi_start,
            roi_end=roi_end,
            roi_relative=False,
            size=[crop_size, crop_size],
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        # No mean/std: normalising stays with finish_*_batch, as on the CPU path.
        pipe.set_outputs(
            fn.crop_mirror_normalize(image, mirror=mirror, output_layout="CHW", dtype=types.UINT8)
        )
    pipe.build()
    return pipe


class DaliImageDecoder:
    """Planned samples -> their views' pixels (samples, views, 1, 3, S, S) uint8, on DALI's device.

    The pipeline is built on first use, for at most `max_views` views per run.
    """

    def __init__(self, crop_size: int, max_views: int, device_id: int | None) -> None:
        self.crop_size, self.max_views, self.device_id = crop_size, max_views, device_id
        self._pipe: Any = None

    def __call__(self, items: list[Item]) -> torch.Tensor:
        if self._pipe is None:
            self._pipe = build_dali_image_pipeline(self.crop_size, self.max_views, self.device_id)
        views = [(item["encoded"], box, mirror) for item in items for box, mirror in item["boxes"]]
        self._pipe.feed_input("encoded", [encoded for encoded, _, _ in views])
        self._pipe.feed_input("roi_start", [np.array(box[:2], dtype=np.float32) for _, box, _ in views])
        self._pipe.feed_input(
            "roi_end",
            [np.array([box[0] + box[2], box[1] + box[3]], dtype=np.float32) for _, box, _ in views],
        )
        self._pipe.feed_input("mirror", [np.array(int(mirror), dtype=np.int32) for _, _, mirror in views])
        (pixels,) = self._pipe.run()
        size = self.crop_size
        return dali_to_torch(pixels, torch.uint8).view(len(items), -1, 1, 3, size, size)


class PlanImageViews:
    """Raw image samples -> `encoded` JPEG bytes, `label` and `boxes`: each view's (box, flip).

    Training (`seed_parts` given): `aug.repeated_aug` random resized crops and flips from the sample's
    generator, kept in `rng` for the torch-side steps; evaluation (`seed_parts` None): the test crops.
    """

    def __init__(
        self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...] | None
    ) -> None:
        self.cfg, self.num_classes, self.flip, self.seed_parts = cfg, num_classes, flip, seed_parts

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if "__error__" in item or item.get("__pad__"):
                yield item
                continue
            try:
                yield self.plan(item)
            except SAMPLE_ERRORS as err:  # a broken json or no image: the sample fails (and is replaced)
                yield failed(item, one_line(err))

    def plan(self, item: Item) -> Item:
        """The DALI inputs of one raw sample."""
        meta = json.loads(item["json"])
        label = read_label(item, meta)
        height, width = int(meta["height"]), int(meta["width"])
        planned = {
            "__key__": item["__key__"],
            "__url__": item.get("__url__", ""),
            "__pos__": item["__pos__"],
            "label": label,
            "encoded": np.frombuffer(item[IMAGE_EXT], dtype=np.uint8),
        }
        if self.seed_parts is None:
            return {**planned, "boxes": [(box, False) for box in self.eval_boxes(height, width)]}
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        aug = self.cfg.aug
        rng = make_rng(*self.seed_parts, item["__pos__"], SAMPLE_TAG, 1)  # the CPU path's (AugmentClips)
        boxes = []
        for _ in range(aug.repeated_aug):
            box = random_resized_crop_box(height, width, aug.scale, aug.ratio, rng)
            boxes.append((box, bool(self.flip and rng.random() < 0.5)))
        return {**planned, "boxes": boxes, "rng": rng}

    def eval_boxes(self, height: int, width: int) -> list[Box]:
        """The test crops of a `height` x `width` image, as boxes of the image itself (see module doc)."""
        size = self.cfg.crop_size
        new_h, new_w = eval_resized_shape(height, width, self.cfg.eval_short_side, size)
        sy, sx = height / new_h, width / new_w
        crops = eval_crop_boxes(new_h, new_w, size, self.cfg.test_crops)
        return [(top * sy, left * sx, size * sy, size * sx) for top, left in crops]


class DecodeImageViews:
    """Planned samples -> `views`: uint8 pixels (1, 3, S, S) per view; DALI runs on `group` samples at a time.

    Error and padding items pass through in their place; a sample DALI cannot decode becomes an error item.
    `to_host` brings the pixels to the CPU (evaluation, whose padding rows are host tensors).
    """

    def __init__(self, decoder: DaliImageDecoder, group: int, to_host: bool = False) -> None:
        self.decoder, self.group, self.to_host = decoder, group, to_host

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        group: list[Item] = []
        for item in items:
            group.append(item)
            if len(group) == self.group:
                yield from self.decode(group)
                group = []
        yield from self.decode(group)

    def decode(self, group: list[Item]) -> list[Item]:
        """The group's items in order, with their views (or turned into error items)."""
        planned = [item for item in group if "boxes" in item]
        kept, pixels = run_isolating_failures(self.decoder, planned)
        for item, views in zip(kept, pixels if pixels is not None else (), strict=True):
            item["views"] = list((views.cpu() if self.to_host else views).unbind(0))
        return [failed(item, item["__error__"]) if "__error__" in item else item for item in group]


class AugmentImageViews:
    """Decoded training views -> `views` as (pixels, erased box): RandAugment and the box, in torch,
    from the generator that drew the sample's crops (TrainTransform's steps after crop and flip)."""

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if "views" in item:
                rng = item.pop("rng")
                item["views"] = [self.transform.augment_view(view, rng) for view in item["views"]]
            yield item


class DaliImageTrainLoader(DaliTrainLoader):
    """DaliTrainLoader for images: every batch has all its rows (failed samples get stand-ins)."""

    @property
    def least_rows(self) -> int:
        """Rows a batch must keep: all of them, as on the CPU path."""
        return self.cfg.batch_size

    def _worker_batches(self, stream: TrainStream, worker: int) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        if self._pipe is None:  # one decoder (one DALI pipeline) serves every logical worker
            self._pipe = DaliImageDecoder(cfg.crop_size, cfg.batch_size, self.device_id)
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        plan = PlanImageViews(cfg, self.num_classes, stream.flip, seed_parts)
        decode = DecodeImageViews(self._pipe, self.plan.clips_per_batch)
        augment = AugmentImageViews(TrainTransform(cfg, stream.flip))
        batches = wds.DataPipeline(
            *stream.read_stages(worker),
            plan,
            decode,
            augment,
            ReplaceBad(self.shard_set.shards, seed_parts, [CheckDigest(), plan, decode, augment]),
            BatchTrain(
                self.plan.clips_per_batch,
                (1, 3, cfg.crop_size, cfg.crop_size),
                seed_parts,
                first_batch=stream.first_batch(worker),
                batch_step=self.plan.workers,
            ),
        )
        for batch in batches:
            yield finish_train_batch(batch, cfg.aug, self.num_classes, image=True)


class DaliImageEvalLoader(EvalLoader):
    """EvalLoader for images with DALI's pixels: the same slots, padding and batches per rank.

    The logical workers' batches come one worker after the other (the CPU loader interleaves them:
    evaluation averages by key, so the order does not matter).
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        samples_per_run = max(1, cfg.eval_rows // cfg.test_crops)
        decoder = DaliImageDecoder(cfg.crop_size, samples_per_run * cfg.test_crops, device_id)
        stream = EvalStream(cfg, self.shard_set, self.plan, self.rank)
        for worker in range(self.plan.workers):
            batches = wds.DataPipeline(
                *stream.read_stages(worker),
                PlanImageViews(cfg, self.num_classes, False, None),
                DecodeImageViews(decoder, samples_per_run, to_host=True),
                BatchEval(cfg.eval_rows, cfg.test_crops, (1, 3, cfg.crop_size, cfg.crop_size)),
            )
            for batch in batches:
                self._bad.add(batch.pop("bad"))
                yield finish_eval_batch(batch, cfg.aug, image=True)
