"""Frame samples in the loader, on real shards of `synth ssv1` + `shards ssv1`: only the sampled JPEGs decode
(1.00 frame decoded per frame delivered), the pixels are the published JPEGs', dense and segment sampling,
the video path's transforms, a corrupt frame replaced and counted, digests, multi-view evaluation, exact
resume, the storage chosen per sample, and the DALI path with DALI's CPU JPEG decoder (nvJPEG's stand-in)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import from_dict
from pipeline.data.config import DataConfig
from pipeline.data.dali import DecoderPerStorage
from pipeline.data.digest import DIGEST_MEMBER, sample_digest
from pipeline.data.frame_samples import FrameDecodeError, JpegFrameDecoder, frame_jpegs, frame_member
from pipeline.data.loader import build_eval_loader, build_train_loader
from pipeline.data.manifest import load_shard_set
from pipeline.data.plan import ShardSlice
from pipeline.data.stream import ClipSampler, DecodeClips, ReadShardSlices
from pipeline.data.transforms import EvalTransform
from shards.__main__ import main as shards_main

FRAMES, HEIGHT, VIDEOS, CLASSES = 24, 48, 8, 4
GREY_LEVELS = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1) * 255
needs_dali = pytest.mark.skipif(
    importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None,
    reason="nvidia-dali is not installed (pip install -e .[dali])",
)


@pytest.fixture(scope="module")
def ssv1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic SSv1 tree (24 frames 48 px high per video) and its shards: train as frame samples and as
    short-GOP video (`--store video`), val as frame samples."""
    root = tmp_path_factory.mktemp("ssv1")
    raw = root / "raw"
    synth = ["synth", "ssv1", "--out", str(raw), "--num-videos", str(VIDEOS), "--classes", str(CLASSES)]
    assert shards_main([*synth, "--frames", str(FRAMES), "--height", str(HEIGHT), "--missing", "0"]) == 0
    folders = {"raw": raw}
    for name, split, extra in (
        ("train", "train", []),
        ("video", "train", ["--store", "video"]),
        ("val", "val", []),
    ):
        folders[name] = root / name
        args = [
            "ssv1",
            "--root",
            str(raw),
            "--split",
            split,
            "--out",
            str(folders[name]),
            "--max-samples",
            "3",
        ]
        assert shards_main([*args, *extra]) == 0
    return folders


def config(folder: Path, **overrides: Any) -> DataConfig:
    base = {
        "train": [str(folder)],
        "val": [str(folder)],
        "num_frames": 8,
        "sampling": "segment",
        "crop_size": 32,
        "batch_size": 2,
        "workers": 2,
        "shuffle_buffer": 4,
        "decoder": "pyav",
    }
    return from_dict(DataConfig, {**base, **overrides})


def raw_samples(folder: Path) -> list[dict[str, Any]]:
    """Every sample of a shard folder as the loader reads it (members by suffix), in manifest order."""
    samples = []
    for shard in load_shard_set([str(folder)]).shards:
        for sample in ReadShardSlices()([ShardSlice(shard.path, 0, shard.num_samples)]):
            samples.append({**sample, "__pos__": len(samples)})
    return samples


def published_frame(raw: Path, sample: dict[str, Any], index: int) -> np.ndarray:
    """Frame `index` (from 0) of a sample, decoded by Pillow from the publisher's folder (`00001.jpg` = 0)."""
    meta = json.loads(sample["json"])
    with Image.open(raw / meta["source"] / f"{index + 1:05d}.jpg") as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(("sampling", "num_frames", "stride"), [("segment", 8, 1), ("dense", 6, 3)])
def test_only_the_sampled_jpegs_are_decoded_and_they_are_the_published_frames(
    ssv1: dict[str, Path], sampling: str, num_frames: int, stride: int
) -> None:
    samples = raw_samples(ssv1["train"])
    sampler = ClipSampler(sampling, num_frames, stride, seed_parts=(0, 0, 0, 0))
    # Every frame a clip does not sample is replaced by bytes that are no JPEG: decoding them would fail.
    unsampled_broken = []
    for sample in samples:
        (clip,) = sampler.indices(FRAMES, sample["__pos__"])
        assert len(set(clip)) == num_frames  # no frame repeated: delivered = distinct frames
        broken = {frame_member(i): b"not a jpeg" for i in range(FRAMES) if i not in clip}
        unsampled_broken.append({**sample, **broken})
    stage = DecodeClips("pyav", sampler, CLASSES)
    clips = list(stage(unsampled_broken))
    assert [clip.get("__error__") for clip in clips] == [None] * len(samples)
    delivered = sum(clip["frames"].shape[0] for clip in clips)
    assert delivered == num_frames * len(samples)
    assert stage.frame_decoder.frames_decoded / delivered == 1.00  # one JPEG decoded per frame delivered
    for sample, clip in zip(samples, clips, strict=True):
        (indices,) = clip["indices"]
        meta = json.loads(sample["json"])
        assert clip["frames"].shape == (num_frames, HEIGHT, meta["width"], 3)
        assert clip["label"] == meta["label"] == int(sample["cls"])
        for frame, index in zip(clip["frames"], indices, strict=True):  # the JPEGs as published, bit for bit
            assert np.array_equal(frame.numpy(), published_frame(ssv1["raw"], sample, index))


def test_decoder_returns_frames_in_the_order_asked_and_names_a_frame_it_cannot_give(
    ssv1: dict[str, Path],
) -> None:
    sample = raw_samples(ssv1["train"])[0]
    meta = json.loads(sample["json"])
    decoder = JpegFrameDecoder()
    frames = decoder.decode(sample, meta, [5, 2, 5, 0])
    assert decoder.frames_decoded == 3  # a repeated frame decodes once
    assert np.array_equal(frames[0], frames[2]) and np.array_equal(
        frames[1], published_frame(ssv1["raw"], sample, 2)
    )
    with pytest.raises(FrameDecodeError, match=f"frame {FRAMES} asked, the sample has {FRAMES} frames"):
        decoder.decode(sample, meta, [FRAMES])
    truncated = {**sample, frame_member(3): sample[frame_member(3)][:200]}
    with pytest.raises(FrameDecodeError, match=r"frame 3 \(000003\.jpg\) does not decode"):
        decoder.decode(truncated, meta, [1, 3])
    with pytest.raises(FrameDecodeError, match=r"frame 3 \(000003\.jpg\) is not a whole JPEG"):
        frame_jpegs(truncated, meta, [1, 3])  # the DALI path's check on the host
    assert frame_jpegs(sample, meta, [2, 2]) == [sample[frame_member(2)]] * 2
    with pytest.raises(FrameDecodeError, match=r"frame 4: no member 000004\.jpg"):
        decoder.decode({k: v for k, v in sample.items() if k != frame_member(4)}, meta, [4])
    with pytest.raises(FrameDecodeError, match=r"is \d+x48, the json says 7x48"):
        decoder.decode(sample, {**meta, "width": 7}, [0])


def test_a_smaller_target_decodes_at_a_dct_reduction_close_to_the_full_decode(ssv1: dict[str, Path]) -> None:
    sample = raw_samples(ssv1["train"])[0]
    meta = json.loads(sample["json"])
    full = torch.from_numpy(JpegFrameDecoder().decode(sample, meta, [0, 7]))
    half = torch.from_numpy(JpegFrameDecoder().decode(sample, meta, [0, 7], min_short_side=HEIGHT // 2 - 4))
    assert half.shape == (2, HEIGHT // 2, meta["width"] // 2, 3)  # libjpeg's 1/2 scale, short side >= 20
    assert JpegFrameDecoder().decode(sample, meta, [0], min_short_side=HEIGHT).shape[1] == HEIGHT  # no gain
    # libjpeg's scaled IDCT is close to a 2x2 box filter; after evaluation's resize to the short side
    # asked for, the two decodes differ by 1.5-2 grey levels on the synth frames' noise texture
    full, half = (frames.permute(0, 3, 1, 2).float() for frames in (full, half))
    assert (torch.nn.functional.avg_pool2d(full, 2) - half).abs().mean() < 2.0
    size = (HEIGHT // 2 - 4, round(meta["width"] * (HEIGHT // 2 - 4) / HEIGHT))
    resized = [
        torch.nn.functional.interpolate(f, size=size, mode="bilinear", antialias=True) for f in (full, half)
    ]
    assert (resized[0] - resized[1]).abs().mean() < 3.0


def test_frame_and_video_samples_of_the_same_clips_give_the_same_batches(ssv1: dict[str, Path]) -> None:
    """The same keys, labels, sampled frames, crops and flips: only JPEG vs H.264 compression differs."""
    aug = {"aug": {"scale": [0.3, 1.0], "flip": True}}
    frames = list(build_train_loader(config(ssv1["train"], **aug), rank=0, world_size=1, seed=1))
    video = list(build_train_loader(config(ssv1["video"], **aug), rank=0, world_size=1, seed=1))
    assert len(frames) == len(video) == VIDEOS // 2
    for ours, reference in zip(frames, video, strict=True):
        assert ours.key == reference.key and torch.equal(ours.label, reference.label)
        assert ours.inputs.shape == reference.inputs.shape == (2, 3, 8, 32, 32)
        assert ((ours.inputs - reference.inputs) * GREY_LEVELS).abs().mean() < 6.0


def rewrite_sample(
    source: Path, destination: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]]
) -> str:
    """A copy of a shard folder whose first shard's second sample has its members changed by `change`
    (suffix -> bytes); the manifest gets the shard's new size (which the loader checks). Returns its key."""
    shutil.copytree(source, destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    path = destination / manifest["shards"][0]["name"]
    with tarfile.open(path) as tar:
        members = [(m.name.split(".", 1), tar.extractfile(m).read()) for m in tar if m.isreg()]
    key = list(dict.fromkeys(k for (k, _), _ in members))[1]
    changed = change({ext: data for (k, ext), data in members if k == key})
    rows = [(k, ext, data) for (k, ext), data in members if k != key]
    at = next(i for i, ((k, _), _) in enumerate(members) if k == key)  # the sample keeps its place
    rows[at:at] = [(key, ext, data) for ext, data in changed.items()]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for k, ext, data in rows:
            info = tarfile.TarInfo(f"{k}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest["shards"][0]["bytes"] = path.stat().st_size
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return key


def truncate_frame(index: int, keep_digest: bool) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    """A sample change: frame `index` cut to 200 bytes; the digest kept (so it no longer matches) or
    recomputed (as if the sharder had written the broken frame: the decoder is what fails)."""

    def change(members: dict[str, bytes]) -> dict[str, bytes]:
        changed = {**members, frame_member(index): members[frame_member(index)][:200]}
        if not keep_digest:
            changed[DIGEST_MEMBER] = sample_digest(changed).encode("ascii")
        return changed

    return change


@pytest.mark.parametrize(
    ("keep_digest", "reason"),
    [(False, "FrameDecodeError: frame 5 (000005.jpg) does not decode"), (True, "sha256")],
)
def test_a_corrupt_frame_is_a_counted_bad_sample_with_a_stand_in_and_one_log_line(
    ssv1: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, keep_digest: bool, reason: str
) -> None:
    bad_key = rewrite_sample(ssv1["train"], tmp_path / "corrupt", truncate_frame(5, keep_digest))
    cfg = config(tmp_path / "corrupt", num_frames=FRAMES, batch_size=4)  # 24 segments of 24: every frame
    loader = build_train_loader(cfg, rank=0, world_size=1, seed=0, run_dir=tmp_path / "run")
    for _ in range(2):
        batches = list(loader)
        keys = [key for batch in batches for key in batch.key]
        assert [len(batch.key) for batch in batches] == [4, 4] and bad_key not in keys
    assert loader.bad_samples == 2  # once per epoch
    logged = [line for line in capsys.readouterr().err.splitlines() if bad_key in line]
    assert len(logged) == 1 and reason in logged[0]
    recorded = [
        json.loads(line) for line in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()
    ]
    assert [row["key"] for row in recorded] == [bad_key, bad_key] and reason in recorded[0]["reason"]


def test_a_resumed_loader_yields_the_same_batches(ssv1: dict[str, Path]) -> None:
    cfg = config(ssv1["train"], aug={"randaug_n": 2, "erasing_prob": 0.5, "flip": True})
    whole = build_train_loader(cfg, rank=0, world_size=1, seed=7)
    batches = iter(whole)
    first = next(batches)
    state = whole.state()
    rest = list(batches)
    resumed = list(build_train_loader(cfg, rank=0, world_size=1, seed=7, state=state))
    assert len(rest) == len(resumed) == whole.steps_per_epoch - 1 == 3
    for ours, reference in zip(resumed, rest, strict=True):
        assert ours.key == reference.key and torch.equal(ours.inputs, reference.inputs)
    assert first.key not in [batch.key for batch in resumed]


def test_evaluation_gives_every_views_crops_of_the_published_frames(ssv1: dict[str, Path]) -> None:
    cfg = config(ssv1["val"], test_clips=2, test_crops=3, eval_batch_size=4, short_side=36)
    loader = build_eval_loader(cfg, rank=0, world_size=1)
    rows = {}
    for batch in loader:
        for row, (key, view) in enumerate(zip(batch.key, batch.view.tolist(), strict=True)):
            if view >= 0:
                rows[(key, view)] = batch.inputs[row]
    samples = {sample["__key__"]: sample for sample in raw_samples(ssv1["val"])}
    assert sorted(rows) == [(key, view) for key in sorted(samples) for view in range(6)]
    transform = EvalTransform(cfg)
    sampler = ClipSampler("segment", 8, 1, None, test_clips=2)
    for key, sample in samples.items():
        clips = sampler.indices(FRAMES, 0)
        expected = []
        for clip in clips:  # clip-major, then crops; the frames Pillow decodes from the raw folder
            frames = torch.from_numpy(np.stack([published_frame(ssv1["raw"], sample, i) for i in clip]))
            expected += transform(frames)
        for view, pixels in enumerate(expected):
            assert torch.allclose(rows[(key, view)], pixels, atol=1e-5)


def test_the_storage_is_chosen_per_sample_from_its_json(ssv1: dict[str, Path]) -> None:
    """One split of frame samples and video samples (the same clips twice): each decodes by its own kind."""
    cfg = dataclasses.replace(config(ssv1["train"]), train=[str(ssv1["train"]), str(ssv1["video"])])
    batches = list(build_train_loader(cfg, rank=0, world_size=1, seed=0))
    keys = Counter(key for batch in batches for key in batch.key)
    assert len(keys) == VIDEOS and set(keys.values()) == {2}
    assert all(torch.isfinite(batch.inputs).all() for batch in batches)


@needs_dali
def test_dali_decodes_the_sampled_frames_as_the_cpu_path(ssv1: dict[str, Path]) -> None:
    aug = {"aug": {"scale": [0.3, 1.0], "flip": True}}
    cpu = list(build_train_loader(config(ssv1["train"], **aug), rank=1, world_size=2, seed=2))
    loader = build_train_loader(config(ssv1["train"], decoder="dali", **aug), rank=1, world_size=2, seed=2)
    dali = list(loader)
    assert len(dali) == len(cpu) == loader.steps_per_epoch == 2
    for ours, reference in zip(dali, cpu, strict=True):
        assert ours.key == reference.key and torch.equal(ours.label, reference.label)
        assert ours.inputs.shape == reference.inputs.shape == (2, 3, 8, 32, 32)
        # DALI's CPU JPEG decoder is libjpeg-turbo as Pillow's; only the resize kernels round apart
        diff = ((ours.inputs - reference.inputs) * GREY_LEVELS).abs()
        assert diff.mean() < 1.0 and np.percentile(diff.numpy(), 99) < 6.0


@needs_dali
def test_dali_frame_path_runs_repeated_views_and_replaces_a_corrupt_frame(
    ssv1: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad_key = rewrite_sample(ssv1["train"], tmp_path / "corrupt", truncate_frame(5, keep_digest=False))
    aug = {"randaug_n": 2, "repeated_aug": 2, "erasing_prob": 0.5}
    cfg = config(tmp_path / "corrupt", num_frames=FRAMES, batch_size=4, decoder="dali", aug=aug)
    loader = build_train_loader(cfg, rank=0, world_size=1, seed=3)
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch == 4 and loader.bad_samples == 1
    for batch in batches:
        assert batch.inputs.shape == (4, 3, FRAMES, 32, 32) and torch.isfinite(batch.inputs).all()
        assert batch.key[0::2] == batch.key[1::2] and bad_key not in batch.key
        assert not torch.equal(batch.inputs[0], batch.inputs[1])  # two views augmented apart
    # found on the host: the cut JPEG never reaches DALI (whose CPU decoder crashed on one in a batch)
    (logged,) = [line for line in capsys.readouterr().err.splitlines() if bad_key in line]
    assert "frame 5 (000005.jpg) is not a whole JPEG" in logged


@needs_dali
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG: DALI mixed decoding)")
def test_dali_nvjpeg_on_gpu_decodes_the_sampled_frames_as_the_cpu_path(ssv1: dict[str, Path]) -> None:
    cpu = list(build_train_loader(config(ssv1["train"], workers=0), rank=0, world_size=1, seed=0))
    gpu = list(build_train_loader(config(ssv1["train"], decoder="dali"), rank=0, world_size=1, seed=0))
    assert len(gpu) == len(cpu) == VIDEOS // 2
    for ours, reference in zip(gpu, cpu, strict=True):
        assert ours.inputs.is_cuda and ours.key == reference.key
        # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: a looser bound than the CPU decoder's
        assert ((ours.inputs.cpu() - reference.inputs) * GREY_LEVELS).abs().mean() < 2.0


@needs_dali
def test_dali_runs_a_split_of_frame_and_video_samples_each_on_its_graph(make_shards, monkeypatch) -> None:
    """SSv2 as VP9 videos (DALI's CPU video decoder reads VP9) and as `--store frames`: one split, batches
    mixing both kinds, each decoded by its own DALI graph, in the CPU path's order."""
    folders = [
        make_shards("ssv2", "train", max_samples=7),
        make_shards("ssv2", "train", max_samples=7, extra_args=["--store", "frames"]),
    ]
    cfg = dataclasses.replace(
        config(folders[0], sampling="segment", num_frames=4), train=[str(f) for f in folders]
    )
    cpu = list(build_train_loader(cfg, rank=0, world_size=1, seed=4))
    runs, run = [], DecoderPerStorage.__call__
    monkeypatch.setattr(  # watch which kinds each DALI run gets (the real runs go on)
        DecoderPerStorage,
        "__call__",
        lambda self, items: runs.append({i["storage"] for i in items}) or run(self, items),
    )
    dali = list(build_train_loader(dataclasses.replace(cfg, decoder="dali"), rank=0, world_size=1, seed=4))
    assert len(dali) == len(cpu) == 16
    assert {"video", "frames"} in runs  # some batch's run held both kinds
    for ours, reference in zip(dali, cpu, strict=True):
        assert ours.key == reference.key and torch.equal(ours.label, reference.label)
        # DALI's YUV -> RGB conversion differs from libswscale's on the VP9 rows (test_dali's tolerance)
        assert ((ours.inputs - reference.inputs) * GREY_LEVELS).abs().mean() < 2.5
    keys = Counter(key for batch in dali for key in batch.key)
    assert set(keys.values()) == {2}  # every clip once as video, once as frames
