"""Augmentation: consistent across frames, deterministic per generator, no flip for Something-Something."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from pipeline.config import from_dict
from pipeline.data.config import AugConfig, DataConfig
from pipeline.data.randaugment import RAND_AUGMENT_OPS
from pipeline.data.transforms import (
    EvalTransform,
    TrainTransform,
    erase_box,
    mix_batch,
    normalise,
    normalise_batch,
    padded_crop,
    random_resized_crop_box,
    should_flip,
)
from shards.synth import motion_clip
from tests.data.conftest import direction_class


def data_config(**aug: object) -> DataConfig:
    return from_dict(DataConfig, {"num_frames": 8, "crop_size": 48, "aug": aug})


@functools.lru_cache(maxsize=64)
def synth_clip(label: int, seed: int) -> torch.Tensor:
    """8 frames (every other of 16) of a synth disc moving at label * 90 degrees, uint8 (T, H, W, 3)."""
    frames = motion_clip(label, 4, 16, 64, 64, np.random.default_rng(seed))[::2]
    return torch.from_numpy(np.ascontiguousarray(frames))


def test_flip_is_off_for_something_something_unless_forced() -> None:
    assert not should_flip(AugConfig(), "ssv2")
    assert should_flip(AugConfig(), "kinetics400") and should_flip(AugConfig(), "diving48")
    assert should_flip(AugConfig(flip=True), "ssv2")
    assert not should_flip(AugConfig(flip=False), "kinetics400")


@pytest.mark.parametrize("flip", [False, True])
def test_synth_direction_classes_survive_augmentation(flip: bool) -> None:
    cfg = data_config(scale=[0.4, 1.0], randaug_n=2, randaug_m=9, erasing_prob=0.25)
    transform = TrainTransform(cfg, flip=flip)
    swaps = {0: 2, 2: 0}  # a horizontal flip turns right-moving into left-moving and back
    wrong = []
    for seed in range(32):
        label = seed % 4
        view = transform(synth_clip(label, seed), np.random.default_rng(seed))[0]
        found = direction_class(view, 4)
        if found != label:
            wrong.append((label, found))
    if not flip:  # the Something-Something setting: every clip keeps its class
        assert wrong == []
    else:  # flipping changes exactly the left/right classes, in about half the clips
        assert all(swaps.get(label) == found for label, found in wrong)
        assert 3 <= len(wrong) <= 13


def test_train_views_are_deterministic_and_shaped() -> None:
    cfg = data_config(randaug_n=2, erasing_prob=0.5, repeated_aug=2)
    transform = TrainTransform(cfg, flip=True)
    clip = synth_clip(1, 0)
    a = transform(clip, np.random.default_rng(11))
    b = transform(clip, np.random.default_rng(11))
    c = transform(clip, np.random.default_rng(12))
    assert len(a) == 2 and a[0].shape == (3, 8, 48, 48) and a[0].dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_every_randaugment_op_treats_all_frames_alike(name: str) -> None:
    frame = synth_clip(0, 3)[0].permute(2, 0, 1)
    clip = frame.expand(5, -1, -1, -1).clone()  # five identical frames
    out = RAND_AUGMENT_OPS[name](clip, 9.0, np.random.default_rng(0))
    assert out.shape == clip.shape and out.min() >= 0 and out.max() <= 255
    assert all(torch.equal(out[0], out[t]) for t in range(1, 5))
    if name != "Identity":
        assert not torch.equal(out, clip)


def test_random_resized_crop_stays_inside_and_in_range() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 90, (0.08, 1.0), (0.75, 4 / 3), rng)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 90
        assert 0.07 * 60 * 90 <= h * w <= 60 * 90


def test_erasing_uses_one_box_on_every_frame() -> None:
    clip = torch.zeros(3, 6, 40, 40)
    out = erase_box(clip, np.random.default_rng(4))
    changed = out != 0
    assert changed.any()
    assert all(torch.equal(changed[:, 0], changed[:, t]) for t in range(6))
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(6))


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one() -> None:
    video = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 2, 8, 8).clone()
    labels = torch.tensor([0, 1, 2, 3])
    for aug in (AugConfig(mixup=0.8), AugConfig(cutmix=1.0), AugConfig(mixup=0.8, cutmix=1.0)):
        for seed in range(5):
            mixed, targets = mix_batch(video.clone(), labels, 5, aug, np.random.default_rng(seed))
            assert targets.shape == (4, 5)
            assert torch.allclose(targets.sum(1), torch.ones(4))
            # each row is a blend of itself (lambda) and its mirror in the batch (1 - lambda)
            lam = targets[0, 0].item()
            assert targets[0, 3].item() == pytest.approx(1 - lam) and lam >= 0.0
            if aug.cutmix and not aug.mixup:  # cutmix: the kept area is exactly lambda
                kept = (mixed[0] == 0).float().mean().item()
                assert kept == pytest.approx(lam, abs=1e-6)


def test_mixup_in_place_blends_each_row_with_its_mirror() -> None:
    video = torch.randn(5, 3, 2, 4, 4)
    mixed, targets = mix_batch(
        video.clone(), torch.arange(5), 5, AugConfig(mixup=0.8), np.random.default_rng(1)
    )
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    assert torch.allclose(mixed, video * lam + video.flip(0) * (1 - lam), atol=1e-6)


def test_batch_finishing_leaves_the_process_thread_setting_as_it_was() -> None:
    # normalise_batch and mix_batch run on one intra-op thread (the workers hold the cores) and restore
    # the trainer's setting afterwards; the batch is the clips normalised one by one.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pixels = torch.randint(0, 256, (4, 2, 3, 8, 8), dtype=torch.uint8)
        mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
        video = normalise_batch(pixels, mean, std)
        assert torch.get_num_threads() == 2
        assert torch.equal(video, torch.stack([normalise(clip, mean, std) for clip in pixels]))
        mix_batch(video, torch.arange(4), 4, AugConfig(mixup=0.8, cutmix=1.0), np.random.default_rng(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_mixup_prob_zero_leaves_video_alone_but_keeps_soft_labels() -> None:
    video = torch.randn(2, 3, 2, 4, 4)
    mixed, targets = mix_batch(
        video, torch.tensor([1, 0]), 3, AugConfig(mixup=1.0, mixup_prob=0.0), np.random.default_rng(0)
    )
    assert torch.equal(mixed, video)
    assert torch.equal(targets, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_eval_transform_three_crops_along_the_long_side() -> None:
    cfg = from_dict(DataConfig, {"num_frames": 8, "crop_size": 32, "test_crops": 3})
    frames = torch.zeros(8, 48, 96, 3, dtype=torch.uint8)
    frames[:, :, :32] = 255  # bright left third
    views = EvalTransform(cfg)(frames)
    assert [v.shape for v in views] == [(3, 8, 32, 32)] * 3
    left, centre, right = (v.mean().item() for v in views)
    assert left > centre > right  # the crops go left to right after the 32-pixel short-side resize


def test_bad_aug_settings_are_errors_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"aug\.scale"):
        AugConfig(scale=(0.5, 0.2))
    with pytest.raises(Exception, match="repeated_aug"):
        from_dict(DataConfig, {"batch_size": 6, "aug": {"repeated_aug": 4}})


def coordinate_clip(height: int, width: int) -> torch.Tensor:
    """uint8 (1, 3, H, W): red = 4 x row + 1, green = 4 x column + 1, blue 255 (the padding is all zero)."""
    rows = torch.arange(height).view(height, 1).expand(height, width) * 4 + 1
    cols = torch.arange(width).view(1, width).expand(height, width) * 4 + 1
    return torch.stack([rows, cols, torch.full_like(rows, 255)]).to(torch.uint8)[None]


def test_padded_crop_is_the_frame_shifted_by_at_most_the_padding_with_zeros_entering() -> None:
    clip, rng, shifts = coordinate_clip(32, 32), np.random.default_rng(0), set()
    for _ in range(300):
        view = padded_crop(clip, 32, 4, rng)
        assert view.shape == (1, 3, 32, 32)
        inside = view[0, 2] == 255
        rows, cols = torch.nonzero(inside, as_tuple=True)
        dy = (view[0, 0][inside].long() - 1) // 4 - rows  # source row - view row: the shift
        dx = (view[0, 1][inside].long() - 1) // 4 - cols
        assert dy.unique().numel() == 1 and dx.unique().numel() == 1  # one rigid shift
        assert (view[:, :, ~inside] == 0).all()  # zeros where the shift uncovers the border
        assert int((~inside).sum()) == 32 * 32 - (32 - abs(int(dy[0]))) * (32 - abs(int(dx[0])))
        shifts.add((int(dy[0]), int(dx[0])))
    assert {dy for dy, _ in shifts} == set(range(-4, 5)) == {dx for _, dx in shifts}


def test_padded_crop_resizes_another_short_side_first_and_is_deterministic() -> None:
    clip = synth_clip(2, 1).permute(0, 3, 1, 2)  # 64 x 64 frames
    a = padded_crop(clip, 32, 4, np.random.default_rng(5))
    assert a.shape == (8, 3, 32, 32)
    assert torch.equal(a, padded_crop(clip, 32, 4, np.random.default_rng(5)))
    assert padded_crop(coordinate_clip(40, 60), 32, 0, np.random.default_rng(0)).shape[-2:] == (32, 32)


def test_cifar_recipe_views_pad_crop_flip_and_autoaugment_deterministically() -> None:
    cfg = from_dict(
        DataConfig,
        {
            "modality": "image",
            "num_frames": 1,
            "crop_size": 32,
            "batch_size": 3,
            "aug": {"crop": "padded", "padding": 4, "autoaugment": "cifar10", "repeated_aug": 3},
        },
    )
    transform = TrainTransform(cfg, flip=True)
    image = coordinate_clip(32, 32).permute(0, 2, 3, 1).contiguous()  # (1, H, W, 3) as decoded
    a = transform.pixel_views(image, np.random.default_rng(3))
    b = transform.pixel_views(image, np.random.default_rng(3))
    assert [v.shape for v, _ in a] == [(1, 3, 32, 32)] * 3 and a[0][0].dtype == torch.uint8
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], a[1][0]) or not torch.equal(a[1][0], a[2][0])


def test_crop_and_autoaugment_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"aug\.padding"):
        AugConfig(crop="padded", padding=-1)
    with pytest.raises(ValueError, match="choose one"):
        AugConfig(autoaugment="cifar10", randaug_n=2)
    with pytest.raises(Exception, match="crop"):
        from_dict(DataConfig, {"aug": {"crop": "random"}})
    with pytest.raises(Exception, match="autoaugment"):
        from_dict(DataConfig, {"aug": {"autoaugment": "cifar100"}})
    with pytest.raises(ValueError, match=r"not supported by data\.decoder=dali"):
        from_dict(DataConfig, {"decoder": "dali", "aug": {"crop": "padded"}})


def test_small_image_recipe_mixes_half_the_batches_half_of_them_by_cutmix() -> None:
    """mixup = cutmix = 1 (Beta(1, 1)), mixup_prob 0.5, switch 0.5: the SPT + LSA paper's mixing."""
    aug = AugConfig(mixup=1.0, cutmix=1.0, mixup_prob=0.5, mixup_switch_prob=0.5)
    rng, kinds = np.random.default_rng(0), {"none": 0, "mixup": 0, "cutmix": 0}
    for _ in range(800):
        video = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 1, 8, 8).contiguous()  # row i: all i
        mixed, _ = mix_batch(video, torch.arange(4), 4, aug, rng)
        values = mixed[0].unique()
        if torch.equal(values, torch.tensor([0.0])):
            kinds["none"] += 1
        elif values.numel() == 1:  # one blend of rows 0 and 3 everywhere
            kinds["mixup"] += 1
        else:  # row 3's box pasted into row 0
            kinds["cutmix"] += 1
    assert abs(kinds["none"] / 800 - 0.5) < 0.06
    assert abs(kinds["cutmix"] / (kinds["mixup"] + kinds["cutmix"]) - 0.5) < 0.08
