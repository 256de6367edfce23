"""The DALI paths agree with the CPU decoders: videos on VP9 shards (DALI's CPU decoder handles VP9, not
h264), images (nvJPEG's path) with DALI's CPU JPEG decoder; the GPU (mixed) decoders run where CUDA is."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.decoders import PyAVDecoder
from pipeline.data.loader import build_eval_loader, build_train_loader
from tests.data.test_loader import corrupt_copy

pytestmark = pytest.mark.skipif(
    # find_spec("nvidia.dali") raises when no `nvidia` package exists at all: ask for the parent first
    importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None,
    reason="nvidia-dali is not installed (pip install -e .[dali])",
)

# DALI converts YUV to RGB with its own kernel (chroma upsampling and coefficient rounding differ from
# libswscale's, which the CPU decoders share): measured mean differences 1.2-1.6 grey levels and 99th
# percentiles 8-15, the large ones only along sharp colour edges (the synth disc's rim).
MEAN_TOLERANCE, P99_TOLERANCE = 2.5, 20.0


def dali_decode(data: bytes, indices: list[int]) -> np.ndarray:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        pipe.set_outputs(fn.decoders.video(encoded, frames=indices, device="cpu"))
    pipe.build()
    pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
    (frames,) = pipe.run()
    return np.array(frames[0])


def test_dali_cpu_decoder_gives_pyavs_frames_on_vp9(encoded_videos: dict[str, bytes]) -> None:
    indices = [40, 3, 3, 17, 0, 47]
    ours = dali_decode(encoded_videos["vp9"], indices).astype(np.int16)
    reference = PyAVDecoder().decode(encoded_videos["vp9"], indices).numpy().astype(np.int16)
    assert ours.shape == reference.shape
    diff = np.abs(ours - reference)
    assert diff.mean() < MEAN_TOLERANCE and np.percentile(diff, 99) < P99_TOLERANCE
    # the right frames: of all the video's frames, each decoded one is closest to the one asked for
    every = PyAVDecoder().decode(encoded_videos["vp9"], list(range(48))).numpy().astype(np.int16)
    for frame, index in zip(ours, indices, strict=True):
        assert int(np.abs(every - frame).mean(axis=(1, 2, 3)).argmin()) == index


def segment_clips(folder: str) -> dict:
    """The training config both video loaders are compared on: 4 segments of 32 px crops, 2 workers."""
    return {
        "train": [folder],
        "num_frames": 4,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 4,
        "workers": 2,
    }


@pytest.mark.slow
def test_dali_loader_matches_the_cpu_loader_on_vp9_shards(make_shards) -> None:
    folder = str(make_shards("ssv2", "train", max_samples=7))
    base = {**segment_clips(folder), "shuffle_buffer": 4, "aug": {"scale": [0.3, 1.0], "flip": True}}
    cpu = list(
        build_train_loader(from_dict(DataConfig, {**base, "decoder": "pyav"}), rank=1, world_size=2, seed=2)
    )
    dali_loader = build_train_loader(
        from_dict(DataConfig, {**base, "decoder": "dali"}), rank=1, world_size=2, seed=2
    )
    dali = list(dali_loader)
    assert len(dali) == len(cpu) == dali_loader.steps_per_epoch
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1) * 255
    for ours, reference in zip(dali, cpu, strict=True):
        assert ours.key == reference.key and torch.equal(ours.label, reference.label)
        assert ours.inputs.shape == reference.inputs.shape
        # back to grey levels; the same frames, crop box and flip, only colour conversion and resize differ
        diff = ((ours.inputs - reference.inputs) * std).abs()
        assert diff.mean() < MEAN_TOLERANCE and np.percentile(diff.numpy(), 99) < P99_TOLERANCE


def test_dali_video_takes_randaugment_and_repeated_views_like_the_cpu_path(make_shards) -> None:
    folder = str(make_shards("ssv2", "train", max_samples=7))
    base = {
        **segment_clips(folder),
        "aug": {"randaug_n": 2, "randaug_m": 9, "repeated_aug": 2, "erasing_prob": 0.5},
    }
    loaders = {
        name: build_train_loader(
            from_dict(DataConfig, {**base, "decoder": name}), rank=0, world_size=1, seed=3
        )
        for name in ("pyav", "dali")
    }
    cpu, dali = (list(loader) for loader in loaders.values())
    assert len(dali) == len(cpu) == loaders["dali"].steps_per_epoch
    for ours, reference in zip(dali, cpu, strict=True):
        # the same samples, each as two views in a row, the same labels and view numbers
        assert ours.key == reference.key and ours.key[0::2] == ours.key[1::2]
        assert torch.equal(ours.label, reference.label) and torch.equal(ours.view, reference.view)
        assert ours.inputs.shape == reference.inputs.shape == (4, 3, 4, 32, 32)
        assert torch.isfinite(ours.inputs).all()
        # two views of one clip are augmented apart
        assert not torch.equal(ours.inputs[0], ours.inputs[1])


def test_a_video_dali_cannot_decode_is_replaced_and_the_next_runs_decode(make_shards, tmp_path: Path) -> None:
    """A DALI pipeline that raised is no longer valid: the loader builds a new one, so one bad video costs
    one stand-in per epoch, not every sample after it."""
    folder = tmp_path / "corrupt"
    bad_key = corrupt_copy(str(make_shards("ssv2", "train", max_samples=7)), folder)
    loader = build_train_loader(
        from_dict(DataConfig, {**segment_clips(str(folder)), "decoder": "dali"}), rank=0, world_size=1, seed=0
    )
    for epoch in (1, 2):
        keys = [key for batch in loader for key in batch.key]
        assert len(keys) == 16 and bad_key not in keys
        assert loader.bad_samples == epoch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DALI mixed decoding)")
def test_dali_mixed_decoder_on_gpu_decodes_h264(make_shards) -> None:
    folder = str(make_shards("kinetics400", "train", max_samples=7, reencode=True))
    base = {
        "train": [folder],
        "num_frames": 4,
        "crop_size": 32,
        "batch_size": 4,
        "workers": 0,
        "shuffle_buffer": 4,
    }
    cpu = list(
        build_train_loader(from_dict(DataConfig, {**base, "decoder": "pyav"}), rank=0, world_size=1, seed=0)
    )
    gpu = list(
        build_train_loader(from_dict(DataConfig, {**base, "decoder": "dali"}), rank=0, world_size=1, seed=0)
    )
    for ours, reference in zip(gpu, cpu, strict=True):
        assert ours.inputs.is_cuda and ours.key == reference.key
        assert (ours.inputs.cpu() - reference.inputs).abs().mean() < 0.05


# --- images: nvJPEG's path (pipeline.data.dali_image), run here with DALI's CPU JPEG decoder ---

# DALI's CPU JPEG decoder and Pillow are both libjpeg-turbo; DALI's antialiased linear resize and torch's
# differ in rounding: measured mean differences 0.17-0.21 grey levels, 99th percentiles 1-2, single pixels
# up to 15 along a shape's edge (eval crops and training crops of the synth shapes, 3 seeds).
IMAGE_MEAN_TOLERANCE, IMAGE_P99_TOLERANCE = 1.0, 6.0
GREY_LEVELS = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def image_config(folder: Path, decoder: str, **settings: Any) -> DataConfig:
    values = {
        "modality": "image",
        "train": [str(folder)],
        "val": [str(folder)],
        "num_frames": 1,
        "crop_size": 32,
        "short_side": 36,
        "batch_size": 4,
        "workers": 2,
        "shuffle_buffer": 4,
        "decoder": decoder,
        **settings,
    }
    return from_dict(DataConfig, values)


def assert_close_pixels(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Two normalised image batches (B, 3, S, S) agree in grey levels within the image tolerances."""
    assert ours.shape == reference.shape
    diff = ((ours - reference) * GREY_LEVELS).abs()
    assert diff.mean() < IMAGE_MEAN_TOLERANCE and np.percentile(diff.numpy(), 99) < IMAGE_P99_TOLERANCE


@pytest.fixture(scope="module")
def image_folder(make_shards) -> Path:
    """12 synthetic ImageNet train JPEGs of 3 classes (one greyscale, one converted from CMYK) in 3 shards."""
    return make_shards("imagenet", "train", num_videos=12, classes=3)


def rows_by_view(loader: Iterable[dict[str, Any]]) -> dict[tuple[str, int], tuple[torch.Tensor, int]]:
    """(key, view) -> (pixels, label) of every real row of an evaluation pass; padding rows must be zeros."""
    rows = {}
    for batch in loader:
        for row, (key, view) in enumerate(zip(batch.key, batch.view.tolist(), strict=True)):
            if view == -1:
                assert not batch.inputs[row].any()
            else:
                rows[(key, view)] = (batch.inputs[row], int(batch.label[row]))
    return rows


@pytest.mark.parametrize("test_crops", [1, 3])
def test_dali_image_eval_crops_match_the_pillow_path(image_folder: Path, test_crops: int) -> None:
    cpu = build_eval_loader(image_config(image_folder, "auto", test_crops=test_crops), rank=0, world_size=1)
    dali = build_eval_loader(image_config(image_folder, "dali", test_crops=test_crops), rank=0, world_size=1)
    ours, reference = rows_by_view(dali), rows_by_view(cpu)
    assert len(ours) == 12 * test_crops and ours.keys() == reference.keys() and len(dali) == len(cpu)
    for view, (pixels, label) in ours.items():
        assert pixels.shape == (3, 32, 32) and label == reference[view][1]
        assert_close_pixels(pixels[None], reference[view][0][None])


def test_dali_image_training_takes_the_cpu_paths_crops_flips_and_labels(image_folder: Path) -> None:
    settings = {"aug": {"scale": [0.3, 1.0], "flip": True}}
    cpu = list(
        build_train_loader(image_config(image_folder, "auto", **settings), rank=1, world_size=2, seed=3)
    )
    loader = build_train_loader(image_config(image_folder, "dali", **settings), rank=1, world_size=2, seed=3)
    dali = list(loader)
    assert len(dali) == len(cpu) == loader.steps_per_epoch
    for ours, reference in zip(dali, cpu, strict=True):
        assert ours.key == reference.key and torch.equal(ours.label, reference.label)
        assert_close_pixels(ours.inputs, reference.inputs)


@pytest.mark.parametrize(
    "policy",
    [{"randaug_n": 2, "randaug_m": 9.0}, {"autoaugment": "imagenet"}],
    ids=["randaug", "autoaugment"],
)
def test_dali_image_training_runs_the_torch_side_augmentation(image_folder: Path, policy: dict) -> None:
    aug = {
        **policy,
        "repeated_aug": 2,
        "erasing_prob": 0.5,
        "mixup": 0.8,
        "cutmix": 1.0,
    }
    cfg = image_config(image_folder, "dali", batch_size=4, aug=aug)
    cpu = list(
        build_train_loader(
            image_config(image_folder, "auto", batch_size=4, aug=aug), rank=0, world_size=1, seed=5
        )
    )
    dali = list(build_train_loader(cfg, rank=0, world_size=1, seed=5))
    assert len(dali) == len(cpu) == 6
    for ours, reference in zip(dali, cpu, strict=True):
        # the same samples, views and mixing: equal soft targets (they depend on labels and the batch seed)
        assert ours.key == reference.key and torch.equal(ours.view, torch.tensor([0, 1, 0, 1]))
        assert ours.inputs.shape == (4, 3, 32, 32) and ours.inputs.dtype == torch.float32
        assert torch.allclose(ours.label, reference.label) and ours.label.shape == (4, 3)
        grey = ours.inputs * GREY_LEVELS + torch.tensor(cfg.aug.mean).view(1, 3, 1, 1) * 255
        erased = (grey < -0.5) | (grey > 255.5)  # erasing's noise is the only thing outside [0, 255]
        assert (
            torch.isfinite(ours.inputs).all() and grey[~erased].min() > -0.5 and grey[~erased].max() < 255.5
        )


def test_dali_image_loader_resumes_exactly(image_folder: Path) -> None:
    cfg = image_config(image_folder, "dali", aug={"randaug_n": 1, "erasing_prob": 0.5})
    whole = build_train_loader(cfg, rank=0, world_size=1, seed=1)
    batches = iter(whole)
    first = [next(batches) for _ in range(2)]
    state = whole.state()
    rest = list(batches)
    resumed = list(build_train_loader(cfg, rank=0, world_size=1, seed=1, state=state))
    assert len(first) + len(resumed) == whole.steps_per_epoch
    for ours, reference in zip(resumed, rest, strict=True):
        assert ours.key == reference.key and torch.equal(ours.inputs, reference.inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG: DALI mixed decoding)")
def test_dali_mixed_image_decoder_on_gpu_matches_the_pillow_path(image_folder: Path) -> None:
    settings = {"aug": {"scale": [0.3, 1.0], "flip": True}}
    cpu = list(
        build_train_loader(image_config(image_folder, "auto", **settings), rank=0, world_size=1, seed=0)
    )
    gpu = list(
        build_train_loader(image_config(image_folder, "dali", **settings), rank=0, world_size=1, seed=0)
    )
    for ours, reference in zip(gpu, cpu, strict=True):
        assert ours.inputs.is_cuda and ours.key == reference.key
        # nvJPEG's IDCT and upsampling are not libjpeg-turbo's: a looser bound than the CPU decoder's
        assert ((ours.inputs.cpu() - reference.inputs) * GREY_LEVELS).abs().mean() < 2 * IMAGE_MEAN_TOLERANCE
    evaluation = next(iter(build_eval_loader(image_config(image_folder, "dali"), rank=0, world_size=1)))
    assert evaluation.inputs.shape == (4, 3, 32, 32)
