"""Where a sample's pixels come from: the decode back end of a loader, chosen in one place.

The loader core (`pipeline.data.loader`) reads, shuffles, replaces failed samples, batches and finishes
batches the same way whatever decodes. A back end supplies only the stages from a raw sample to its
uint8 views, and says where they run:

    cpu    decode (PyAV / decord / torchcodec; Pillow for images and frame samples) -> crop, flip,
           RandAugment, erased box; in DataLoader worker processes
    dali   plan frame indices, boxes and flips on the host -> DALI decodes, crops, resizes and flips
           (on a GPU: NVDEC for videos, nvJPEG for images and for the sampled frames of frame samples)
           -> RandAugment and erased box in torch; in the main process (DALI runs its own threads)

`decode_backend` is the one place a `data.decoder` value becomes a back end: `auto` is resolved to the
fastest installed CPU decoder here, once, and evaluation of videos under `dali` runs on that CPU decoder
(it is a small share of a run, and the eval clips' fixed frames gain nothing from NVDEC's seeking).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any

from pipeline.data.config import DataConfig
from pipeline.data.decoders import resolve_decoder_name
from pipeline.data.stream import AugmentClips, ClipSampler, DecodeClips, EvalViews, Stage
from pipeline.data.transforms import EvalTransform, TrainTransform


@dataclass(frozen=True)
class CpuBackend:
    """CPU decoding and augmentation in the DataLoader's worker processes."""

    decoder: str  # a resolved decoder name: pyav, decord or torchcodec
    in_workers = True

    def train_stages(
        self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...]
    ) -> list[Stage]:
        """Raw training sample -> `views` (uint8 pixels, erased box)."""
        sampler = ClipSampler(cfg.sampling, cfg.num_frames, cfg.frame_stride, seed_parts)
        return [
            DecodeClips(self.decoder, sampler, num_classes),
            AugmentClips(TrainTransform(cfg, flip), seed_parts),
        ]

    def eval_stages(self, cfg: DataConfig, num_classes: int) -> list[Stage]:
        """Raw evaluation sample -> `views`: the uint8 test views (clips x crops)."""
        sampler = ClipSampler(cfg.sampling, cfg.num_frames, cfg.frame_stride, None, cfg.test_clips)
        # Frame samples larger than the test resize decode at a JPEG DCT reduction no smaller than it.
        min_short_side = max(cfg.eval_short_side, cfg.crop_size)
        return [
            DecodeClips(self.decoder, sampler, num_classes, min_short_side),
            EvalViews(EvalTransform(cfg), cfg.num_frames),
        ]


class DaliBackend:
    """DALI decoding in the main process; one DALI pipeline serves every logical worker of the loader."""

    in_workers = False

    def __init__(self, cfg: DataConfig) -> None:
        self.image = cfg.modality == "image"
        self._decoder: Any = None

    def decoder(self, cfg: DataConfig, max_views: int) -> Any:
        """The loader's DALI decoder for runs of up to `max_views` views, made on first use (DALI is
        imported on this path only)."""
        if self._decoder is None:
            from pipeline.data.dali import DaliDecoder, DecoderPerStorage, build_video_pipeline
            from pipeline.data.dali_image import build_image_pipeline

            size = cfg.crop_size
            if self.image:
                self._decoder = DaliDecoder(
                    partial(build_image_pipeline, size), max_views, (1, 3, size, size)
                )
            else:  # each DALI graph is built on its first run: a split of one storage builds one
                clip = (cfg.num_frames, 3, size, size)
                video = DaliDecoder(
                    partial(build_video_pipeline, size), max_views, clip, {"frames": itemgetter("frames")}
                )
                # A frame sample's view is num_frames JPEGs, one DALI sample each.
                frames = DaliDecoder(partial(build_image_pipeline, size), max_views * cfg.num_frames, clip)
                self._decoder = DecoderPerStorage({"video": video, "frames": frames})
        return self._decoder

    def train_stages(
        self, cfg: DataConfig, num_classes: int, flip: bool, seed_parts: tuple[int, ...]
    ) -> list[Stage]:
        """Raw training sample -> planned views -> DALI's pixels -> `views` (uint8 pixels, erased box)."""
        from pipeline.data.dali import AugmentViews, DecodeViews, PlanClips
        from pipeline.data.dali_image import PlanImageViews

        plan = PlanImageViews if self.image else PlanClips
        group = cfg.samples_per_batch  # one DALI run per batch's worth of samples
        decoder = self.decoder(cfg, group * cfg.aug.repeated_aug)
        return [
            plan(cfg, num_classes, flip, seed_parts),
            DecodeViews(decoder, group),
            AugmentViews(TrainTransform(cfg, flip)),
        ]

    def eval_stages(self, cfg: DataConfig, num_classes: int) -> list[Stage]:
        """Raw evaluation image -> planned test crops -> `views` (DALI's uint8 crops, on the host)."""
        from pipeline.data.dali import DecodeViews
        from pipeline.data.dali_image import PlanImageViews

        samples_per_run = max(1, cfg.eval_rows // cfg.test_crops)
        decoder = self.decoder(cfg, samples_per_run * cfg.test_crops)
        return [
            PlanImageViews(cfg, num_classes, False, None),
            DecodeViews(decoder, samples_per_run, to_host=True),
        ]


DecodeBackend = CpuBackend | DaliBackend


def decode_backend(cfg: DataConfig, training: bool) -> DecodeBackend:
    """The back end of a training or evaluation loader for `cfg` (see the module docstring)."""
    if cfg.decoder == "dali" and (training or cfg.modality == "image"):
        return DaliBackend(cfg)
    return CpuBackend(resolve_decoder_name("auto" if cfg.decoder == "dali" else cfg.decoder))
