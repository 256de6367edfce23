"""The DALI path on VP9 shards (DALI's CPU decoder handles VP9, not h264) agrees with the CPU decoders."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.decoders import PyAVDecoder
from pipeline.data.loader import build_train_loader

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


@pytest.mark.slow
def test_dali_loader_matches_the_cpu_loader_on_vp9_shards(make_shards) -> None:
    folder = str(make_shards("ssv2", "train", max_samples=7))
    base = {
        "train": [folder],
        "num_frames": 4,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 4,
        "workers": 2,
        "shuffle_buffer": 4,
        "aug": {"scale": [0.3, 1.0], "flip": True},
    }
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
        assert ours["key"] == reference["key"] and torch.equal(ours["label"], reference["label"])
        assert ours["video"].shape == reference["video"].shape
        # back to grey levels; the same frames, crop box and flip, only colour conversion and resize differ
        diff = ((ours["video"] - reference["video"]) * std).abs()
        assert diff.mean() < MEAN_TOLERANCE and np.percentile(diff.numpy(), 99) < P99_TOLERANCE


def test_dali_refuses_what_it_cannot_do(make_shards) -> None:
    folder = str(make_shards("ssv2", "train", max_samples=7))
    cfg = from_dict(DataConfig, {"train": [folder], "decoder": "dali", "aug": {"randaug_n": 2}})
    with pytest.raises(ValueError, match="randaug_n"):
        build_train_loader(cfg, rank=0, world_size=1, seed=0)


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
        assert ours["video"].is_cuda and ours["key"] == reference["key"]
        assert (ours["video"].cpu() - reference["video"]).abs().mean() < 0.05
