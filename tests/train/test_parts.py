"""The trainer's parts that need no process group: schedule, parameter groups, loss, accuracy,
checkpoint folders, signals."""

from __future__ import annotations

import itertools
import os
import re
import signal

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError
from pipeline.models import create_model
from pipeline.train import signals
from pipeline.train.checkpoint import (
    LATEST,
    MARKER,
    TRAINER_STATE,
    CheckpointManager,
    TrainerState,
    checkpoint_files,
    file_digest,
    find_resume_checkpoint,
    tag_for_step,
)
from pipeline.train.config import OptimConfig
from pipeline.train.evaluate import video_accuracy
from pipeline.train.loss import classification_loss
from pipeline.train.optim import build_param_groups, cosine_lr, layer_ids, scaled_lr
from pipeline.train.start import load_pretrained_weights


def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor() -> None:
    peak, floor = 1e-3, 1e-6
    assert cosine_lr(0, 100, 10, peak, floor) == pytest.approx(peak / 10)
    assert cosine_lr(9, 100, 10, peak, floor) == pytest.approx(peak)
    assert cosine_lr(10, 100, 10, peak, floor) == pytest.approx(peak)
    assert cosine_lr(55, 100, 10, peak, floor) == pytest.approx(floor + (peak - floor) / 2)
    assert cosine_lr(100, 100, 10, peak, floor) == pytest.approx(floor)
    values = [cosine_lr(s, 100, 10, peak, floor) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert scaled_lr(OptimConfig(lr=2e-4, base_batch_size=64), 256) == pytest.approx(8e-4)


def test_param_groups_skip_decay_on_1d_and_scale_lr_by_depth() -> None:
    model = create_model("structvit_tiny_4_1", num_classes=3, num_frames=4, img_size=32)
    groups = build_param_groups(model, OptimConfig(weight_decay=0.05, layer_decay=0.5))
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(names)
    for group in groups:
        for param in group["params"]:
            assert (group["weight_decay"] > 0) == (param.ndim > 1), names[id(param)]
    layer_id = layer_ids(model)
    depth = {n: layer_id(n) for n in names.values()}
    assert depth["patch_embed1.proj.weight"] == 0
    assert depth["head.weight"] == layer_id.num_layers - 1
    # Blocks are numbered in forward order, a stage's entry shares its first block's depth.
    assert 0 < depth["blocks1.0.pos_embed.weight"] < depth["blocks3.0.pos_embed.weight"]
    assert depth["patch_embed3.proj.weight"] == depth["blocks3.0.pos_embed.weight"]
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    head, stem = model.head.weight, model.patch_embed1.proj.weight
    assert scale[id(head)] == 1.0
    assert scale[id(stem)] == pytest.approx(0.5 ** (layer_id.num_layers - 1))
    flat = build_param_groups(model, OptimConfig(layer_decay=1.0))
    assert {g["lr_scale"] for g in flat} == {1.0} and len(flat) == 2


def test_loss_matches_torch_label_smoothing_and_accepts_mixup_targets() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = classification_loss(logits, labels, 0.1)
    assert torch.allclose(ours, F.cross_entropy(logits, labels, label_smoothing=0.1))
    # A mixed target of two classes is the same mix of their smoothed one-hot losses.
    mixed = 0.7 * F.one_hot(labels, 5).float() + 0.3 * F.one_hot(labels.roll(1), 5).float()
    expected = 0.7 * F.cross_entropy(logits, labels, label_smoothing=0.1) + 0.3 * F.cross_entropy(
        logits, labels.roll(1), label_smoothing=0.1
    )
    assert torch.allclose(classification_loss(logits, mixed, 0.1), expected)


def test_video_accuracy_averages_views_and_reports_mean_per_class() -> None:
    def probs(*values: float) -> torch.Tensor:
        return torch.tensor(values)

    per_video = {
        # two views disagree; their mean picks class 1, the label
        "a": (probs(0.6, 0.4, 0.0) + probs(0.0, 0.9, 0.1), 1, 2),
        "b": (probs(0.1, 0.2, 0.7), 2, 1),
        "c": (probs(0.5, 0.3, 0.2), 2, 1),
        "d": (probs(0.8, 0.1, 0.1), 0, 1),
    }
    result = video_accuracy(per_video)
    assert result.top1 == pytest.approx(75.0)
    assert result.top5 == pytest.approx(100.0)
    # classes: 0 -> 1/1, 1 -> 1/1, 2 -> 1/2
    assert result.mean_class_top1 == pytest.approx(100.0 * (1 + 1 + 0.5) / 3)
    assert (result.num_videos, result.num_views) == (4, 5)


def _complete_tag(manager: CheckpointManager, step: int) -> str:
    tag = tag_for_step(step)
    (manager.folder / tag).mkdir(parents=True)
    (manager.folder / tag / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * step)
    config = {"data": {"batch_size": 4}, "engine": {"grad_accum_steps": 1}}
    manager.write_state(tag, TrainerState(step, 0, 1, config, "hash", {"name": "m"}, []))
    tag_dir = manager.folder / tag
    manager.finalize(tag, step, 1, {name: file_digest(tag_dir / name) for name in checkpoint_files(tag_dir)})
    return tag


def test_checkpoints_count_only_with_marker_and_latest_falls_back(tmp_path, capsys) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    assert find_resume_checkpoint(tmp_path, "auto") is None
    for step in (10, 20, 30):
        _complete_tag(manager, step)
    # keep=2: the oldest complete tag is pruned
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [tag_for_step(20), tag_for_step(30)]
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(30)
    # a half-written tag (killed while saving) has no marker and never counts
    (tmp_path / tag_for_step(40)).mkdir()
    (tmp_path / tag_for_step(40) / TRAINER_STATE).write_bytes(b"")
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(30)
    # `latest` naming a tag whose marker is gone: fall back to the newest complete one, with a warning
    (tmp_path / tag_for_step(30) / MARKER).unlink()
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(20)
    assert re.search("does not name a complete checkpoint", capsys.readouterr().err)
    (tmp_path / LATEST).write_bytes(b"\xff\xfe garbage \x00")  # any bytes, even undecodable ones
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(20)
    assert re.search("does not name a complete checkpoint", capsys.readouterr().err)
    assert find_resume_checkpoint(tmp_path, "none") is None
    with pytest.raises(ConfigError, match=r"checkpoint\.resume"):
        find_resume_checkpoint(tmp_path, str(tmp_path / tag_for_step(40)))


def test_a_checkpoint_whose_bytes_changed_is_skipped_for_the_newest_good_one(tmp_path, capsys) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (10, 20, 30):
        _complete_tag(manager, step)
    states = tmp_path / tag_for_step(30) / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[100:110] = bytes(10)  # same length, different bytes
    states.write_bytes(bytes(data))
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(20)
    assert re.search(rf"skipping checkpoint .*{tag_for_step(30)}: .*sha256", capsys.readouterr().err)
    (tmp_path / tag_for_step(20) / "mp_rank_00_model_states.pt").write_bytes(b"short")  # truncated
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / tag_for_step(10)
    assert re.search(r"has 5 bytes, the marker says", capsys.readouterr().err)
    (tmp_path / tag_for_step(10) / "mp_rank_00_model_states.pt").unlink()  # deleted
    assert find_resume_checkpoint(tmp_path, "auto") is None
    assert re.search(r"mp_rank_00_model_states\.pt is missing", capsys.readouterr().err)
    with pytest.raises(ConfigError, match="is damaged"):
        find_resume_checkpoint(tmp_path, str(tmp_path / tag_for_step(30)))


def test_signal_handler_only_records_and_puts_the_previous_handler_back() -> None:
    seen: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        signals.install()
        assert signals.requested() is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert signals.requested() == signal.SIGUSR2 and seen == []  # recorded, the previous one not run
        signals.install()  # a second install (the Slurm task's, then train()'s) keeps what was received
        assert signals.requested() == signal.SIGUSR2
        signals.uninstall()
        assert signals.requested() is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_pretrained_init_inflates_image_weights_and_reuses_a_kinetics_export(tmp_path) -> None:
    torch.manual_seed(0)
    image = create_model("structvit_tiny_4_1", num_classes=10, num_frames=None, img_size=32)
    torch.save(image.state_dict(), tmp_path / "image.pt")
    video = create_model("structvit_tiny_4_1", num_classes=5, num_frames=4, img_size=32)
    load_pretrained_weights(video, str(tmp_path / "image.pt"))
    # A 2-D kernel becomes a 3-D one: repeated over time, divided by its length.
    kernel_2d = image.state_dict()["patch_embed1.proj.weight"]
    kernel_3d = video.state_dict()["patch_embed1.proj.weight"]
    assert kernel_3d.shape[2] == 3 and torch.allclose(kernel_3d.sum(dim=2), kernel_2d, atol=1e-6)

    # A Kinetics-style export (plain state dict) into a model with another class count: head re-initialised.
    torch.save(video.state_dict(), tmp_path / "kinetics.pt")
    target = create_model("structvit_tiny_4_1", num_classes=3, num_frames=4, img_size=32)
    load_pretrained_weights(target, str(tmp_path / "kinetics.pt"))
    for name, value in target.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, video.state_dict()[name]), name
    assert target.head.weight.shape == (3, video.head.weight.shape[1])
