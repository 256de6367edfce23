"""Typed settings of the data loader (filled by `pipeline.config.from_dict`, so plain types only).

The number of classes is not a setting: it comes from the shard manifests.
Label smoothing is not here either: the loss owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DecoderName = Literal["auto", "decord", "torchcodec", "pyav", "dali"]
# Import name of each decoder's package (`auto` picks among the installed ones by itself).
DECODER_PACKAGES = {"dali": "nvidia.dali", "decord": "decord", "torchcodec": "torchcodec", "pyav": "av"}
# AutoAugment policies (pipeline.data.randaugment.AUTO_AUGMENT_POLICIES), "none" = off.
AutoAugmentName = Literal["none", "cifar10", "svhn", "imagenet"]


@dataclass
class AugConfig:
    """Training augmentation (evaluation only resizes, crops and normalises).

    crop: "resized" (random resized crop: a random box of the frame resized to crop_size, the scale
      jitter) or "padded" (CIFAR style: zero-pad the frame by `padding` pixels on each side and cut
      crop_size x crop_size at a random place; frames whose short side is not crop_size are first
      resized to it, as evaluation does with short_side 0).
    scale: area fraction range of the random resized crop (the scale jitter), e.g. [0.08, 1.0].
    ratio: aspect-ratio (width / height) range of the random resized crop.
    padding: zero pixels added on each side by the padded crop.
    flip: horizontal flip with probability 0.5; None = auto (on, except for Something-Something,
      whose labels name left and right).
    randaug_n: RandAugment operations per clip (0 = off); the same ops and magnitudes on every frame.
    randaug_m: RandAugment magnitude on timm's 0..10 scale; randaug_mstd: its per-op std (0 = fixed).
    autoaugment: AutoAugment policy of Cubuk et al. ("cifar10", "svhn", "imagenet"; "none" = off): one
      sub-policy drawn per view; an alternative to RandAugment (not both).
    mixup / cutmix: Beta(alpha, alpha) parameters (0 = off); when either is on, labels are soft (B, K).
    mixup_prob: probability that a batch is mixed at all; mixup_switch_prob: probability of cutmix
      instead of mixup when both are on.
    erasing_prob: probability of erasing one random box (the same box on every frame) per clip.
    repeated_aug: views (rows) augmented from one decoded sample (1 = off); the views sit in the same batch.
    mean / std: normalisation per RGB channel, in [0, 1] pixel units.
    """

    crop: Literal["resized", "padded"] = "resized"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333)
    padding: int = 4
    flip: bool | None = None
    randaug_n: int = 0
    randaug_m: float = 7.0
    randaug_mstd: float = 0.5
    autoaugment: AutoAugmentName = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    erasing_prob: float = 0.0
    repeated_aug: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"aug.scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"aug.ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        if self.padding < 0:
            raise ValueError(f"aug.padding must be >= 0, got {self.padding}")
        if self.autoaugment != "none" and self.randaug_n > 0:
            raise ValueError(
                f"aug.autoaugment={self.autoaugment} and aug.randaug_n={self.randaug_n}: choose one "
                "(set aug.randaug_n=0 or aug.autoaugment=none)"
            )
        if self.repeated_aug < 1:
            raise ValueError(f"aug.repeated_aug must be >= 1, got {self.repeated_aug}")
        if min(self.std) <= 0:
            raise ValueError(f"aug.std must be positive, got {list(self.std)}")
        for name in ("mixup_prob", "mixup_switch_prob", "erasing_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"aug.{name} must be in [0, 1], got {value}")

    @property
    def mixes(self) -> bool:
        """Whether batches carry soft targets (mixup or cutmix is on)."""
        return self.mixup > 0 or self.cutmix > 0


@dataclass
class DataConfig:
    """Where the shards are and how clips are sampled, decoded, augmented and batched.

    train / val: shard folders, each holding manifest.json (several folders are concatenated).
    modality: "video", or "image" (ImageNet shards: one JPEG per sample, batches (B, C, H, W), the image
      model; needs num_frames 1 and test_clips 1). Must match what the manifests say the shards hold.
    num_frames: frames per clip (T). sampling: "dense" (T frames every frame_stride frames) or
      "segment" (TSN: one frame in each of T equal segments). frame_stride: frames (dense only).
    crop_size: output height and width in pixels. short_side: evaluation resize of the short side
      in pixels before cropping (0 = crop_size).
    batch_size: rows per batch per rank (a row is one augmented view; with repeated_aug = R each
      batch holds batch_size / R decoded samples). eval_batch_size: rows per evaluation batch
      (0 = batch_size).
    workers: loader worker processes per rank (0 = in the main process).
    decoder: frame decoder; "auto" picks the fastest installed CPU decoder.
    shuffle_buffer: samples held by each worker's shuffle buffer (1 = no shuffling inside a shard).
    resampled: draw shards with replacement (an epoch is then a fixed number of samples).
    max_bad_fraction: the share of a rank's epoch that may fail (read, digest or decode errors; each is
      replaced by a deterministic stand-in) before training stops with one line naming the worst
      shards; up to 8 failures per epoch never stop a run (a tiny dataset's one broken clip).
    short_clips: clips with fewer frames than a clip takes (dense: (num_frames - 1) x frame_stride + 1,
      segment: num_frames): "error" (default) refuses the config before training, naming how many
      clips are too short (from the manifests' frame counts; manifests from before them are not
      checked); "repeat" trains on them, repeating their last frame (a warning says how many clips).
    test_clips: temporal views per evaluation video; test_crops: spatial views (1 = centre, 3 = along
      the long side).
    cache_dir: a local folder where shards read from an object-store URL are kept for the next epoch
      ("" = stream them every epoch); shared by the ranks and workers of a node. cache_gb: its bound in
      GB (10^9 bytes): past it the least recently used shards are removed.
    """

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    modality: Literal["video", "image"] = "video"
    num_frames: int = 16
    sampling: Literal["dense", "segment"] = "dense"
    frame_stride: int = 4
    crop_size: int = 224
    short_side: int = 0
    batch_size: int = 8
    eval_batch_size: int = 0
    workers: int = 2
    decoder: DecoderName = "auto"
    shuffle_buffer: int = 256
    resampled: bool = False
    max_bad_fraction: float = 0.02
    short_clips: Literal["error", "repeat"] = "error"
    test_clips: int = 1
    test_crops: int = 1
    cache_dir: str = ""
    cache_gb: float = 100.0
    aug: AugConfig = field(default_factory=AugConfig)

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_stride", "crop_size", "batch_size", "shuffle_buffer", "test_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "short_side", "eval_batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if self.cache_gb <= 0:
            raise ValueError(f"data.cache_gb must be positive, got {self.cache_gb}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.modality == "image" and (self.num_frames, self.test_clips) != (1, 1):
            raise ValueError(
                f"data.modality=image takes data.num_frames=1 and data.test_clips=1, got "
                f"{self.num_frames} and {self.test_clips}"
            )
        if self.test_crops not in (1, 3):
            raise ValueError(f"data.test_crops must be 1 or 3, got {self.test_crops}")
        if self.decoder == "dali" and self.aug.crop == "padded":
            # DALI resizes a box of the stored image; a box reaching into zero padding is not offered
            raise ValueError("data.aug.crop=padded is not supported by data.decoder=dali (resized only)")
        if self.batch_size % self.aug.repeated_aug:
            raise ValueError(
                f"data.batch_size ({self.batch_size}) must be divisible by data.aug.repeated_aug "
                f"({self.aug.repeated_aug})"
            )

    @property
    def samples_per_batch(self) -> int:
        """Samples (read from the shards and decoded) per training batch: batch_size rows / repeated_aug."""
        return self.batch_size // self.aug.repeated_aug

    @property
    def frames_needed(self) -> int:
        """Frames a video needs for one clip without repeating its last frame."""
        return (self.num_frames - 1) * self.frame_stride + 1 if self.sampling == "dense" else self.num_frames

    @property
    def eval_rows(self) -> int:
        """Rows per evaluation batch."""
        return self.eval_batch_size or self.batch_size

    @property
    def eval_short_side(self) -> int:
        """Short side in pixels that evaluation frames are resized to before cropping."""
        return self.short_side or self.crop_size
