"""The NVIDIA DALI training path: DALI decodes, crops, resizes and normalises; the stream stays ours.

The shards are read by the same stages as the CPU path (plan, tar slices, seeded shuffle, resume
skip), fed to DALI through an external source, so the epoch plan, the exact resume and the keys of
every batch are those of the CPU loader. Each sample's frame indices, crop box and flip come from
the same per-sample generators as the CPU path (`PlanClips`), so both paths see the same frames
and crops; only the decoder's colour conversion and the resize kernel differ.

DALI graph: fn.decoders.video(encoded, frames=indices) -> fn.resize(crop box -> S x S) ->
fn.crop_mirror_normalize(flip, mean/std, layout CFHW). On a GPU machine the decoder runs with
device "mixed" (NVDEC: h264, hevc, vp9, av1) and everything after it on the GPU; without a GPU it
runs on the CPU, where DALI's decoder only handles VP8, VP9 and MJPEG (so test it on VP9 shards).
Random erasing and mixup/cutmix are applied to the output batch in torch, on its device.
RandAugment and repeated augmentation are not available on this video path (a clear error says so), and
evaluation keeps the CPU decoders (`build_eval_loader`). Images (nvJPEG, training and evaluation) are
`pipeline.data.dali_image`, which shares this loader's batch order (`DaliTrainLoader.__iter__`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from pipeline.data.config import DataConfig
from pipeline.data.loader import TrainLoader, TrainStream
from pipeline.data.manifest import ShardSet
from pipeline.data.plan import make_rng
from pipeline.data.stream import (
    BATCH_TAG,
    SAMPLE_ERRORS,
    SAMPLE_TAG,
    CheckDigest,
    DecodeClips,
    Item,
    ReplaceBad,
    bad_entry,
    empty_batch,
    failed,
    one_line,
    read_label,
    video_member,
)
from pipeline.data.transforms import erase_box, mix_batch, random_resized_crop_box

ERASE_TAG = 2


class PlanClips:
    """Raw samples -> what DALI needs: encoded bytes, frame indices, crop box (y0, x0) - (y1, x1), flip.

    Indices and crop/flip use the generators DecodeClips and TrainTransform use for the same sample.
    """

    def __init__(self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...]) -> None:
        self.cfg, self.flip, self.seed_parts = cfg, flip, seed_parts
        self.indices = DecodeClips(
            "pyav", cfg.sampling, cfg.num_frames, cfg.frame_stride, num_classes, seed_parts
        )

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if "__error__" in item:
                yield item
                continue
            try:
                yield self.plan(item)
            except SAMPLE_ERRORS as err:  # a broken json or no video: the sample fails (and is replaced)
                yield failed(item, one_line(err))

    def plan(self, item: Item) -> Item:
        """The DALI inputs of one raw sample."""
        meta = json.loads(item["json"])
        label = read_label(item, meta)
        if not 0 <= label < self.indices.num_classes:
            raise ValueError(f"label {label} outside [0, {self.indices.num_classes})")
        (indices,) = self.indices.clip_indices(int(meta["num_frames"]), item["__pos__"])
        rng = make_rng(*self.seed_parts, item["__pos__"], SAMPLE_TAG, 1)
        top, left, h, w = random_resized_crop_box(
            int(meta["height"]), int(meta["width"]), self.cfg.aug.scale, self.cfg.aug.ratio, rng
        )
        mirror = bool(self.flip and rng.random() < 0.5)
        return {
            "__key__": item["__key__"],
            "__pos__": item["__pos__"],
            "label": label,
            "encoded": np.frombuffer(video_member(item), dtype=np.uint8),
            "frames": np.asarray(indices, dtype=np.int32),
            "roi_start": np.asarray([top, left], dtype=np.float32),
            "roi_end": np.asarray([top + h, left + w], dtype=np.float32),
            "mirror": np.asarray(int(mirror), dtype=np.int32),
        }


class GroupItems:
    """Items -> lists of `size` consecutive items (a batch's worth of stream positions)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        group: list[Item] = []
        for item in items:
            group.append(item)
            if len(group) == self.size:
                yield group
                group = []


DALI_INPUTS = ("encoded", "frames", "roi_start", "roi_end", "mirror")


def build_dali_pipeline(cfg: DataConfig, batch_size: int, device_id: int | None) -> Any:
    """The DALI graph: external inputs -> decode the given frames -> crop+resize -> flip+normalise."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    on_gpu = device_id is not None
    pipe = Pipeline(
        batch_size=batch_size, num_threads=1, device_id=device_id, exec_async=False, exec_pipelined=False
    )
    with pipe:
        encoded, frames, roi_start, roi_end, mirror = (
            fn.external_source(name=name, dtype=dtype, ndim=ndim)
            for name, dtype, ndim in zip(
                DALI_INPUTS,
                (types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32),
                (1, 1, 1, 1, 0),
                strict=True,
            )
        )
        video = fn.decoders.video(encoded, frames=frames, device="mixed" if on_gpu else "cpu")
        video = fn.resize(
            video,
            roi_start=roi_start,
            roi_end=roi_end,
            roi_relative=False,
            size=[cfg.crop_size, cfg.crop_size],
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        video = fn.crop_mirror_normalize(
            video,
            mirror=mirror,
            mean=[m * 255.0 for m in cfg.aug.mean],
            std=[s * 255.0 for s in cfg.aug.std],
            output_layout="CFHW",
            dtype=types.FLOAT,
        )
        pipe.set_outputs(video)
    pipe.build()
    return pipe


def dali_to_torch(output: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A dense DALI batch (CPU or GPU) of `dtype` as a torch tensor on the same device."""
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = output.as_tensor()
    on_gpu = isinstance(output, TensorListGPU)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.empty(dense.shape(), dtype=dtype, device=device)
    feed_ndarray(dense, tensor)
    return tensor


def run_isolating_failures(
    run: Callable[[list[Item]], torch.Tensor], items: list[Item]
) -> tuple[list[Item], torch.Tensor | None]:
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


class DaliTrainLoader(TrainLoader):
    """The TrainLoader contract (epochs, steps, state, exact resume, batch dict) with DALI doing the pixels.

    Batches are assembled in the main process in the same order as the CPU loader: batch j comes
    from logical worker j % K's stream, so keys and resume points are identical. `workers` has no
    processes here: DALI's own thread decodes.
    """

    def __init__(
        self,
        cfg: DataConfig,
        shard_set: ShardSet,
        rank: int,
        world_size: int,
        seed: int,
        run_dir: Path | None = None,
    ) -> None:
        # Images run these in torch (pipeline.data.dali_image); a video clip would need them on all its frames.
        unsupported = [
            name
            for name, on in (
                ("aug.randaug_n", cfg.aug.randaug_n > 0),
                ("aug.repeated_aug", cfg.aug.repeated_aug > 1),
            )
            if on and cfg.modality == "video"
        ]
        if unsupported:
            raise ValueError(
                f"decoder=dali does not support {', '.join(unsupported)}: use a CPU decoder for them"
            )
        super().__init__(cfg, shard_set, rank, world_size, seed, run_dir)
        self.device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        self._pipe: Any = None

    @property
    def least_rows(self) -> int:
        """Rows a batch must keep: a video sample DALI cannot decode leaves its row out (PyAV validated it
        at sharding time: rare); only a batch left empty stops the run."""
        return 1

    def _worker_batches(self, stream: TrainStream, worker: int) -> Iterator[dict[str, Any]]:
        """Logical `worker`'s finished batches (each with its `bad` list), from its first batch on."""
        seed_parts = (self.seed, self.epoch, self.rank, worker)
        plan = PlanClips(self.cfg, self.num_classes, stream.flip, seed_parts)
        groups = wds.DataPipeline(
            *stream.read_stages(worker),
            plan,
            ReplaceBad(self.shard_set.shards, seed_parts, [CheckDigest(), plan]),
            GroupItems(self.plan.clips_per_batch),
        )
        aug = self.cfg.aug
        for j, group in enumerate(groups):
            batch_index = stream.first_batch(worker) + j * self.plan.workers
            good, video = run_isolating_failures(self._run, [i for i in group if "__error__" not in i])
            bad = [entry for item in group for entry in item.get("__bad__", ())]
            if video is None:  # every row failed: the loader stops the run on it (`least_rows`)
                size = self.cfg.crop_size
                yield {**empty_batch((3, self.cfg.num_frames, size, size)), "bad": bad}
                continue
            batch = {
                "video": video,
                "label": torch.tensor([item["label"] for item in good], dtype=torch.long),
                "key": [item["__key__"] for item in good],
                "view": torch.zeros(len(good), dtype=torch.long),
                "bad": bad,
            }
            if aug.erasing_prob > 0:
                for row, item in enumerate(good):
                    rng = make_rng(*seed_parts, item["__pos__"], SAMPLE_TAG, ERASE_TAG)
                    if rng.random() < aug.erasing_prob:
                        batch["video"][row] = erase_box(batch["video"][row], rng)
            if aug.mixes:
                rng = make_rng(*seed_parts, batch_index, BATCH_TAG)
                batch["video"], batch["label"] = mix_batch(
                    batch["video"], batch["label"], self.num_classes, aug, rng
                )
            yield batch

    def _run(self, items: list[Item]) -> torch.Tensor:
        if self._pipe is None:
            self._pipe = build_dali_pipeline(self.cfg, self.plan.clips_per_batch, self.device_id)
        for name in DALI_INPUTS:
            self._pipe.feed_input(name, [item[name] for item in items])
        (video,) = self._pipe.run()
        return dali_to_torch(video).view(
            len(items), 3, self.cfg.num_frames, self.cfg.crop_size, self.cfg.crop_size
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        current = self.state()
        self.epoch, self.consumed = current.epoch, current.samples_consumed
        start = self.consumed // self.plan.clips_per_batch
        stream = TrainStream(self.cfg, self.shard_set, self.plan, self.rank, self.seed, self.epoch, start)
        batches = {k: self._worker_batches(stream, k) for k in range(self.plan.workers)}
        for j in range(start, self.plan.steps_per_epoch):
            batch = next(batches[j % self.plan.workers])
            self.account(batch.pop("bad"), len(batch["key"]), self.least_rows)
            self.consumed += self.plan.clips_per_batch
            yield batch
