"""TensorBoard pictures and the profiler trace: shapes and tags, read back from the event files.

Unit tests draw with a tiny StructViT into a SummaryWriter in tmp_path; one short real run (2 ranks,
ZeRO-3, where the structure maps must be taken inside the block's forward) checks the trainer's hooks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from pipeline.data.config import AugConfig
from pipeline.models import create_model
from pipeline.models.structsa import StructSA, attend
from pipeline.train import pictures
from pipeline.train.evaluate import video_accuracy
from pipeline.train.metrics import StepProfiler
from tests.train.conftest import job_overrides

SIZES = {"images": 0, "scalars": 0, "tensors": 0}  # EventAccumulator: keep every event


def read_events(folder: Path) -> EventAccumulator:
    """Every event written under `folder`."""
    events = EventAccumulator(str(folder), size_guidance=SIZES)
    events.Reload()
    return events


def test_clip_grid_lays_frames_across_and_clips_down_denormalised() -> None:
    aug = AugConfig()
    pixels = torch.rand(3, 3, 5, 16, 20)  # (B, C, T, H, W) in [0, 1]
    mean, std = torch.tensor(aug.mean).view(1, 3, 1, 1, 1), torch.tensor(aug.std).view(1, 3, 1, 1, 1)
    grid = pictures.clip_grid((pixels - mean) / std, aug.mean, aug.std)
    pad = pictures.PAD
    assert grid.shape == (3, 3 * (16 + pad) - pad, 5 * (20 + pad) - pad)
    # clip 2, frame 4 sits at row 2, column 4
    tile = grid[:, 2 * (16 + pad) : 2 * (16 + pad) + 16, 4 * (20 + pad) : 4 * (20 + pad) + 20]
    torch.testing.assert_close(tile, pixels[2, :, 4], atol=1e-5, rtol=0)
    images = pictures.clip_grid(torch.zeros(6, 3, 8, 8), aug.mean, aug.std)  # images: one frame each
    assert images.shape == (3, pictures.MAX_CLIPS * (8 + pad) - pad, 8)


def test_evaluation_counts_the_confusion_of_top1_predictions() -> None:
    probs = {  # key -> (summed probabilities, label, views)
        "a": (torch.tensor([0.9, 0.1, 0.0]), 0, 1),
        "b": (torch.tensor([0.2, 0.7, 0.1]), 0, 1),
        "c": (torch.tensor([0.1, 0.1, 0.8]), 2, 1),
    }
    confusion = video_accuracy(probs).confusion
    assert confusion.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_large_label_sets_show_the_classes_with_most_mistakes() -> None:
    confusion = torch.diag(torch.full((100,), 5))
    confusion[7, 42] = confusion[42, 7] = 3
    confusion[90, 3] = 1
    shown = pictures.shown_classes(confusion, limit=4)
    assert len(shown) == 4 and {3, 7, 42, 90} == set(shown.tolist())


def test_structure_attention_is_the_row_forward_uses() -> None:
    torch.manual_seed(0)
    block = StructSA(32, 2, video=True, structure_dim=4, stride=2)
    grid, query = (2, 6, 6), 40
    x = torch.randn(1, 72, 32)
    probs = block.structure_attention(x, grid, query)
    assert probs.shape == (1, 2, 4, 2, 3, 3)
    torch.testing.assert_close(probs.sum(dim=(2, 3, 4, 5)), torch.ones(1, 2))
    q, k, v = block.qkv_heads(x)
    k, v = block._structured(block.k_conv, k, grid), block._structured(block.v_conv, v, grid)
    expected = attend(q, k, v)[:, :, query]
    torch.testing.assert_close((probs.flatten(2).unsqueeze(2) @ v)[:, :, 0], expected, atol=1e-5, rtol=1e-4)


def test_evaluation_pictures_are_written_with_their_tags_and_shapes(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("structvit_tiny_4_1", num_classes=3, num_frames=8, img_size=64).eval()
    with pictures.StructureMapProbe(model) as probe, torch.no_grad():
        model(torch.randn(2, 3, 8, 64, 64))
        model(torch.randn(2, 3, 8, 64, 64))  # only the first clip is kept
    first = probe.maps
    assert first is not None and first.shape == (4, 4, 4, 4)  # D, key grid of stage 3 (T/2, 64/16, 64/16)
    torch.testing.assert_close(first.sum(), torch.tensor(1.0))
    writer = SummaryWriter(str(tmp_path))
    confusion = torch.tensor([[3, 1, 0], [0, 2, 2], [1, 0, 4]])
    pictures.log_evaluation(writer, 5, confusion, probe.maps)
    pictures.log_training_clips(writer, torch.randn(2, 3, 8, 64, 64), AugConfig(), 0)
    writer.close()
    images = read_events(tmp_path)
    assert {
        "val/confusion_matrix",
        "val/per_class_top1",
        "structsa/structure_maps",
        "data/train_clips",
    } <= set(images.Tags()["images"])
    cell, pad = 256 // 3, pictures.PAD
    matrix = images.Images("val/confusion_matrix")[0]
    assert (matrix.step, matrix.height, matrix.width) == (5, 3 * cell, 3 * cell)
    bars = images.Images("val/per_class_top1")[0]
    assert (bars.height, bars.width) == (64, 3 * cell)
    maps = images.Images("structsa/structure_maps")[0]
    tile = 4 * (64 // 4)  # key maps of 4x4 upscaled to 64 px
    assert (maps.height, maps.width) == (4 * (tile + pad) - pad, 4 * (tile + pad) - pad)
    clips = images.Images("data/train_clips")[0]
    assert (clips.step, clips.height, clips.width) == (0, 2 * (64 + pad) - pad, 8 * (64 + pad) - pad)


def test_step_profiler_writes_a_trace_of_the_requested_steps(tmp_path) -> None:
    model = torch.nn.Linear(8, 2)
    profiler = StepProfiler(2, tmp_path, rank=0)
    for _ in range(6):
        model(torch.randn(4, 8)).sum().backward()
        profiler.step()
    profiler.close()
    traces = list(tmp_path.glob("*.pt.trace.json"))
    assert len(traces) == 1
    steps = {
        e["name"]
        for e in json.loads(traces[0].read_text())["traceEvents"]
        if "ProfilerStep" in e.get("name", "")
    }
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}  # after 1 wait + 1 warm-up step
    assert StepProfiler(2, tmp_path / "other", rank=1).profiler is None


@pytest.mark.slow
def test_a_run_writes_its_pictures_and_trace(small_shards, tmp_path, run_job) -> None:
    overrides = job_overrides(small_shards, tmp_path, "pictures", "optim.epochs=1", "log.profile_steps=1")
    done = run_job([*overrides, "engine.zero_stage=3"])
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "pictures" / "tensorboard"
    tags = set(read_events(folder).Tags()["images"])
    assert {
        "data/train_clips",
        "val/confusion_matrix",
        "val/per_class_top1",
        "structsa/structure_maps",
    } <= tags
    assert len(list(folder.glob("*.pt.trace.json"))) == 1
