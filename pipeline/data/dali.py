"""The NVIDIA DALI back end: DALI decodes, crops, resizes and flips; everything else is the loader's.

The stream is the CPU path's (read stages, stand-ins for failed samples, batching, finishing: see
`pipeline.data.backends`); DALI replaces only the step from a raw sample to its uint8 views:

    plan (host: frame indices, each view's crop box and flip, from the CPU path's generators)
    -> DALI: decode the planned frames (NVDEC / nvJPEG on a GPU) -> resize the box to S x S -> flip
    -> RandAugment and the erased box in torch (`AugmentViews`, the CPU path's steps after the crop)

so both paths see the same frames, crops, flips and augmentation; only the decoder's colour conversion
and the resize kernel differ. Video: fn.decoders.video runs with device "mixed" on a GPU (h264, hevc,
vp9, av1) and on the CPU without one, where DALI's decoder only handles VP8, VP9 and MJPEG (the tests
use VP9 shards). Images: `pipeline.data.dali_image`. Frame samples (`pipeline.data.frame_samples`): each
sampled frame's JPEG is one DALI sample of the image graph (nvJPEG on a GPU, libjpeg-turbo without one),
with its view's box and flip, so only the frames a clip samples are decoded. DALI runs in the main process
with its own threads: there are no DataLoader workers on this path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline.console import one_line
from pipeline.data.config import DataConfig
from pipeline.data.frame_samples import FRAMES_STORAGE, frame_jpegs, is_frame_sample
from pipeline.data.stream import (
    ClipSampler,
    Item,
    bad_entry,
    each_sample,
    failed,
    is_error,
    read_label,
    video_member,
)
from pipeline.data.transforms import TrainTransform, random_resized_crop_box
from pipeline.randomness import Stream, make_rng

# A view's box: (top, left, height, width) in pixels of the stored frames (fractional for evaluation).
Box = tuple[float, float, float, float]
DecodeRun = Callable[[list[Item]], torch.Tensor]  # planned items -> (items, views, T, 3, S, S) uint8


def device_id() -> int | None:
    """The CUDA device DALI runs on, or None: DALI's CPU operators."""
    return torch.cuda.current_device() if torch.cuda.is_available() else None


def dali_to_torch(output: Any, dtype: torch.dtype) -> torch.Tensor:
    """A dense DALI batch (CPU or GPU) of `dtype` as a torch tensor on the same device."""
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = output.as_tensor()
    on_gpu = isinstance(output, TensorListGPU)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.empty(dense.shape(), dtype=dtype, device=device)
    feed_ndarray(dense, tensor)
    return tensor


def feed_views(pipe: Any, items: list[Item], extra: dict[str, Callable[[Item], np.ndarray]]) -> None:
    """Feed one DALI sample per view of `items` (per view and frame of a frame sample, whose `encoded` is
    the list of its sampled frames' JPEGs): its encoded bytes, box, flip, and the `extra` inputs (each a
    function of the view's item). DALI's outputs come back in that order: item, view, frame."""
    views = [
        (item, encoded, box, mirror)
        for item in items
        for box, mirror in item["boxes"]
        for encoded in (item["encoded"] if isinstance(item["encoded"], list) else [item["encoded"]])
    ]
    pipe.feed_input("encoded", [encoded for _, encoded, _, _ in views])
    pipe.feed_input("roi_start", [np.array(box[:2], dtype=np.float32) for _, _, box, _ in views])
    pipe.feed_input(
        "roi_end", [np.array([box[0] + box[2], box[1] + box[3]], dtype=np.float32) for *_, box, _ in views]
    )
    pipe.feed_input("mirror", [np.array(int(mirror), dtype=np.int32) for *_, mirror in views])
    for name, value in extra.items():
        pipe.feed_input(name, [value(item) for item, *_ in views])


def box_inputs(fn: Any, types: Any) -> tuple[Any, Any, Any, Any]:
    """The external inputs every DALI graph here takes: encoded bytes, box start and end, flip."""
    return (
        fn.external_source(name="encoded", dtype=types.UINT8, ndim=1),
        fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1),
        fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1),
        fn.external_source(name="mirror", dtype=types.INT32, ndim=0),
    )


def crop_resize_flip(fn: Any, types: Any, pixels: Any, inputs: tuple, size: int, layout: str) -> Any:
    """The box of `pixels` resized to size x size (antialiased bilinear), flipped, uint8 in `layout`."""
    _, roi_start, roi_end, mirror = inputs
    pixels = fn.resize(
        pixels,
        roi_start=roi_start,
        roi_end=roi_end,
        roi_relative=False,
        size=[size, size],
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
    # No mean/std: normalising stays with finish_*_batch, as on the CPU path.
    return fn.crop_mirror_normalize(pixels, mirror=mirror, output_layout=layout, dtype=types.UINT8)


def build_video_pipeline(crop_size: int, max_views: int, device: int | None) -> Any:
    """The DALI graph: video bytes + frame indices -> decode those frames -> box to S x S -> flip ->
    uint8 (T, 3, S, S)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(
        batch_size=max_views, num_threads=1, device_id=device, exec_async=False, exec_pipelined=False
    )
    with pipe:
        inputs = box_inputs(fn, types)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(inputs[0], frames=frames, device="cpu" if device is None else "mixed")
        pipe.set_outputs(crop_resize_flip(fn, types, video, inputs, crop_size, "FCHW"))
    pipe.build()
    return pipe


class DaliDecoder:
    """Planned samples -> their views' pixels (samples, views, T, 3, S, S) uint8 on DALI's device.

    `build(max_views, device)` makes the DALI graph on first use; each view is fed its encoded bytes, box
    and flip, plus the `extra` inputs (a function of the view's sample each).
    """

    def __init__(
        self,
        build: Callable[[int, int | None], Any],
        max_views: int,
        row_shape: tuple[int, ...],
        extra: dict[str, Callable[[Item], np.ndarray]] | None = None,
    ) -> None:
        self.build, self.max_views, self.row_shape, self.extra = build, max_views, row_shape, extra or {}
        self._pipe: Any = None

    def __call__(self, items: list[Item]) -> torch.Tensor:
        if self._pipe is None:
            self._pipe = self.build(self.max_views, device_id())
        feed_views(self._pipe, items, self.extra)
        try:
            (pixels,) = self._pipe.run()
        except RuntimeError:
            # A pipeline that raised (a JPEG or video it cannot decode) is no longer valid in DALI 2.x:
            # every later run fails too. The next run builds a new one.
            self._pipe = None
            raise
        return dali_to_torch(pixels, torch.uint8).view(len(items), -1, *self.row_shape)


class DecoderPerStorage:
    """Planned clips -> their views' pixels, each item run by the decoder of its `storage` ("video": NVDEC's
    graph, "frames": nvJPEG's, one DALI sample per frame), in the items' order."""

    def __init__(self, decoders: dict[str, DecodeRun]) -> None:
        self.decoders = decoders

    def __call__(self, items: list[Item]) -> torch.Tensor:
        kinds = [item["storage"] for item in items]
        if len(set(kinds)) == 1:  # a split holds one storage: no regrouping
            return self.decoders[kinds[0]](items)
        rows: list[torch.Tensor] = [torch.empty(0)] * len(items)
        for kind in dict.fromkeys(kinds):
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            for i, pixels in zip(chosen, self.decoders[kind]([items[i] for i in chosen]), strict=True):
                rows[i] = pixels
        return torch.stack(rows)


class PlanClips:
    """Raw clips -> `encoded`, `storage`, `label`, `frames` (the clip's indices) and `boxes`: each of
    `aug.repeated_aug` views' (crop box, flip), drawn as the CPU path draws them; the sample's generator
    is kept in `rng` for `AugmentViews`. A video sample's `encoded` is its video; a frame sample's the
    list of its sampled frames' JPEGs (only those reach DALI)."""

    def __init__(self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...]) -> None:
        self.cfg, self.num_classes, self.flip, self.seed_parts = cfg, num_classes, flip, seed_parts
        self.sampler = ClipSampler(cfg.sampling, cfg.num_frames, cfg.frame_stride, seed_parts)

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        return each_sample(items, self.plan)

    def plan(self, item: Item) -> Item:
        """The DALI inputs of one raw sample."""
        meta = json.loads(item["json"])
        label = read_label(item, meta)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        (indices,) = self.sampler.indices(int(meta["num_frames"]), item["__pos__"])
        if is_frame_sample(meta):
            storage, encoded = (
                FRAMES_STORAGE,
                [np.frombuffer(data, dtype=np.uint8) for data in frame_jpegs(item, meta, indices)],
            )
        else:
            storage, encoded = "video", np.frombuffer(video_member(item), dtype=np.uint8)
        return {
            "__key__": item["__key__"],
            "__url__": item.get("__url__", ""),
            "__pos__": item["__pos__"],
            "label": label,
            "storage": storage,
            "encoded": encoded,
            "frames": np.asarray(indices, dtype=np.int32),
            **plan_views(
                self.cfg, self.flip, self.seed_parts, item["__pos__"], int(meta["height"]), int(meta["width"])
            ),
        }


def plan_views(
    cfg: DataConfig, flip: bool, seed_parts: tuple[int, ...], position: int, height: int, width: int
) -> Item:
    """`boxes` (each training view's random resized crop and flip) and `rng` (the generator they were
    drawn from, which RandAugment and the erased box continue), as `TrainTransform` draws them."""
    rng = make_rng(Stream.AUGMENT, *seed_parts, position)
    boxes = []
    for _ in range(cfg.aug.repeated_aug):
        box = random_resized_crop_box(height, width, cfg.aug.scale, cfg.aug.ratio, rng)
        boxes.append((box, bool(flip and rng.random() < 0.5)))
    return {"boxes": boxes, "rng": rng}


def run_isolating_failures(run: DecodeRun, items: list[Item]) -> tuple[list[Item], torch.Tensor | None]:
    """`run` (a DALI pipeline run: one output row per item) on `items`; if DALI raises, run them one by
    one so that only the items it cannot decode are dropped, each marked with its `__error__` and `__bad__`.
    Returns the items kept and their rows (None when none is left)."""
    if not items:
        return [], None
    try:
        return items, run(items)
    except RuntimeError:
        kept, rows = [], []
        for item in items:
            try:
                rows.append(run([item]))
                kept.append(item)
            except RuntimeError as err:
                item["__error__"] = f"DALI: {one_line(err)}"
                item["__bad__"] = [*item.get("__bad__", ()), bad_entry(item)]
        return kept, torch.cat(rows) if rows else None


class DecodeViews:
    """Planned samples -> `views`: one uint8 (T, 3, S, S) tensor per planned box; DALI runs on `group`
    samples at a time. Error and padding items pass through in their place; a sample DALI cannot decode
    becomes an error item. `to_host` brings the pixels to the CPU (evaluation: its padding rows are
    host tensors)."""

    def __init__(self, decoder: DecodeRun, group: int, to_host: bool = False) -> None:
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
        return [failed(item, item["__error__"]) if is_error(item) else item for item in group]


class AugmentViews:
    """Decoded training views -> `views` as (pixels, erased box): RandAugment and the box, in torch,
    from the generator that drew the sample's crops (`TrainTransform.augment_view`)."""

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if "views" in item:
                rng = item.pop("rng")
                item["views"] = [self.transform.augment_view(view, rng) for view in item["views"]]
            yield item
