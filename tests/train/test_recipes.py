"""Every paper recipe in configs/ holds the values of its paper's training table.

The expected values are written from the model spec (../shared/STRUCTSA.md, section 4 "Training
recipes to offer as configs", and section 2 for the sizes) and, for the small-image recipes, from the
SPT + LSA paper's training setting, not copied from the configs: a config that drifts from the paper
fails here naming the setting.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data.transforms import should_flip
from pipeline.train.config import Config
from pipeline.train.optim import scaled_lr

REPO = Path(__file__).resolve().parents[2]
RANKS = 8  # the recipes are laid out for 8 ranks (one node of 8 GPUs)

# Spec section 4, column by column. Size S: 16 frames, StructViT-S-4-1; size B: 32 frames, B-4-1.
FRAMES = {"s": 16, "b": 32}
KINETICS = {
    "sampling": "dense",
    "frame_stride": 4,  # 16x4 / 32x4
    "epochs": 110,
    "warmup_epochs": 10,
    "test_clips": 4,  # 16x1x4 / 32x1x4: frames x crops x clips
    "test_crops": 1,
    "flip": True,
    # scale jitter 256-320 then a 224 crop, RandAugment m7-n4, mixup 0.8, cutmix 1.0,
    # random erasing 0.25, label smoothing 0.1, repeated augmentation x2
    "aug": {
        "randaug_n": 4,
        "randaug_m": 7.0,
        "mixup": 0.8,
        "cutmix": 1.0,
        "erasing_prob": 0.25,
        "repeated_aug": 2,
    },
    "label_smoothing": 0.1,
}
FINETUNE = {
    "sampling": "segment",  # TSN
    "epochs": 60,
    "warmup_epochs": 5,
    "test_clips": 1,  # 16x3x1 / 32x3x1
    "test_crops": 3,
    "flip": False,  # direction is the label
}
FINETUNE_AUG = {  # S keeps the Kinetics augmentation (without flip); B: random crop only
    "s": (KINETICS["aug"], 0.1),
    "b": ({"randaug_n": 0, "mixup": 0.0, "cutmix": 0.0, "erasing_prob": 0.0, "repeated_aug": 1}, 0.0),
}
# official UniFormer ImageNet-1K weights of the same size (Sense-X/UniFormer file names)
IMAGENET_WEIGHTS = {"s": "weights/uniformer_small_in1k.pth", "b": "weights/uniformer_base_in1k.pth"}
RECIPES = {  # config stem -> (dataset, size)
    "kinetics400_s16x4": ("kinetics400", "s"),
    "kinetics400_b32x4": ("kinetics400", "b"),
    "ssv1_s16": ("ssv1", "s"),  # the paper trains SSv1 as SSv2 (UniFormer's SSv1 recipe where it is silent)
    "ssv2_s16": ("ssv2", "s"),
    "ssv2_b32": ("ssv2", "b"),
    "diving48_b32": ("diving48", "b"),
    "finegym99_b32": ("finegym", "b"),
    "finegym288_b32": ("finegym", "b"),
}


# Spec section 4, "ImageNet-1K stage": the DeiT recipe, drop path S 0.1 / B 0.3.
IMAGENET = {"imagenet_structvit_s_4_1": ("s", 0.1), "imagenet_structvit_b_4_1": ("b", 0.3)}
# UCF-101 / HMDB-51 (not in the paper's table): StructViT-S-4-1, 16 frames dense at VideoMAE's strides and
# test views (UCF-101 16x4, 5 clips x 3 crops; HMDB-51 16x2, 10 x 3), the Kinetics augmentation with flip;
# from scratch (the small-data regime: 300 epochs, 20 warm-up, drop path 0.2) or from the K400 model
# (30 epochs, 3 warm-up). Stem -> (frame stride, test clips, from Kinetics-400).
SMALL_VIDEO = {
    "ucf101_s16_scratch": (4, 5, False),
    "ucf101_s16_k400": (4, 5, True),
    "hmdb51_s16_scratch": (2, 10, False),
    "hmdb51_s16_k400": (2, 10, True),
}


# The SPT + LSA paper (Lee, Lee & Song 2021): dataset -> (evaluation split, image size, AutoAugment
# policy, the code's normalisation mean); the plain ViT and ViT + SPT + LSA on each.
SMALL_IMAGES = {
    "cifar10": ("test", 32, "cifar10", (0.4914, 0.4822, 0.4465)),
    "cifar100": ("test", 32, "cifar10", (0.5070, 0.4865, 0.4409)),  # its code: the CIFAR policy for both
    "svhn": ("test", 32, "svhn", (0.4377, 0.4438, 0.4728)),
    "tinyimagenet": ("val", 64, "imagenet", (0.4802, 0.4481, 0.3975)),
}
SMALL_MODELS = ("vit_tiny", "vit_tiny_spt_lsa")
SMALL_RECIPES = {f"{dataset}_{model}": (dataset, model) for dataset in SMALL_IMAGES for model in SMALL_MODELS}


def test_every_recipe_in_configs_is_pinned() -> None:
    stems = {p.stem for p in (REPO / "configs").glob("*.yaml") if not p.stem.startswith("base")}
    pinned = set(RECIPES) | set(IMAGENET) | set(SMALL_VIDEO) | set(SMALL_RECIPES)
    assert stems - {"demo", "demo_imagenet"} == pinned


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_resolves(path: Path) -> None:
    cfg = load_config(Config, path)
    for folder in [*cfg.data.train, *cfg.data.val]:
        assert folder.startswith("data/shards/"), folder


@pytest.mark.parametrize("stem", sorted(SMALL_RECIPES))
def test_small_image_recipe_follows_the_spt_lsa_paper(stem: str) -> None:
    dataset, model = SMALL_RECIPES[stem]
    split, size, policy, mean = SMALL_IMAGES[dataset]
    cfg = load_config(Config, REPO / "configs" / f"{stem}.yaml")
    data, aug, optim = cfg.data, cfg.data.aug, cfg.optim
    assert (cfg.name, cfg.model.name, cfg.model.drop_path_rate) == (stem, model, 0.1)
    assert (data.train, data.val) == ([f"data/shards/{dataset}/train"], [f"data/shards/{dataset}/{split}"])
    assert (data.modality, data.crop_size, data.eval_short_side, data.test_crops) == ("image", size, size, 1)
    # 100 epochs, 10 warm-up, AdamW lr 1e-3 at its batch of 128 (here 129 rows: 43 images x 3 views,
    # the repeated views sharing the batch), wd 0.05, cosine, label smoothing 0.1; one rank
    assert (optim.epochs, optim.warmup_epochs, optim.weight_decay, optim.label_smoothing) == (
        100,
        10,
        0.05,
        0.1,
    )
    assert (
        data.batch_size == 129
        and data.batch_size % aug.repeated_aug == 0
        and cfg.engine.grad_accum_steps == 1
    )
    assert scaled_lr(optim, data.batch_size) == pytest.approx(1e-3)
    # random crop with 4 px padding + flip, AutoAugment, mixup / cutmix alpha 1 on half the batches,
    # repeated augmentation 3, random erasing 0.25
    assert (aug.crop, aug.padding, aug.flip, aug.autoaugment, aug.randaug_n) == ("padded", 4, True, policy, 0)
    assert (aug.mixup, aug.cutmix, aug.mixup_prob, aug.mixup_switch_prob) == (1.0, 1.0, 0.5, 0.5)
    assert (aug.repeated_aug, aug.erasing_prob) == (3, 0.25)
    assert tuple(aug.mean) == mean


@pytest.mark.parametrize("stem", sorted(IMAGENET))
def test_imagenet_recipe_follows_deit(stem: str) -> None:
    size, drop_path = IMAGENET[stem]
    cfg = load_config(Config, REPO / "configs" / f"{stem}.yaml")
    data, aug, optim = cfg.data, cfg.data.aug, cfg.optim
    assert (cfg.model.name, cfg.model.drop_path_rate) == (f"structvit_{size}_4_1", drop_path)
    assert (data.modality, data.crop_size, data.short_side) == ("image", 224, 256)  # centre crop ratio 0.875
    assert (optim.epochs, optim.warmup_epochs, optim.weight_decay) == (300, 5, 0.05)
    assert scaled_lr(optim, 1024) == pytest.approx(1e-3)  # AdamW lr 1e-3 at batch 1024, linear scaling
    assert aug.flip and aug.randaug_n > 0 and tuple(aug.scale) == (0.08, 1.0)
    assert (aug.mixup, aug.cutmix, aug.erasing_prob, optim.label_smoothing) == (0.8, 1.0, 0.25, 0.1)
    assert cfg.init.pretrained is None  # from scratch


@pytest.mark.parametrize("stem", sorted(RECIPES))
def test_recipe_follows_the_paper(stem: str) -> None:
    dataset, size = RECIPES[stem]
    cfg = load_config(Config, REPO / "configs" / f"{stem}.yaml")
    data, aug, optim = cfg.data, cfg.data.aug, cfg.optim

    assert cfg.model.name == f"structvit_{size}_4_1"
    assert data.num_frames == FRAMES[size]
    assert cfg.model.drop_path_rate == 0.1  # every video recipe, every size
    # AdamW, lr 2e-4 at 64 rows per step, scaled linearly; wd 0.05; cosine to 1e-6
    global_batch = data.batch_size * cfg.engine.grad_accum_steps * RANKS
    assert global_batch == 64 and scaled_lr(optim, global_batch) == pytest.approx(2e-4)
    assert (optim.lr, optim.base_batch_size, optim.weight_decay, optim.min_lr) == (2e-4, 64, 0.05, 1e-6)
    assert data.crop_size == 224

    if dataset == "kinetics400":
        expected, expected_aug, smoothing = KINETICS, KINETICS["aug"], KINETICS["label_smoothing"]
        assert data.frame_stride == expected["frame_stride"]
        assert cfg.init.pretrained == IMAGENET_WEIGHTS[size]
    else:
        expected = FINETUNE
        expected_aug, smoothing = FINETUNE_AUG[size]
        assert cfg.init.pretrained == f"runs/kinetics400_{size}{FRAMES[size]}x4/export/model.pt"
    assert data.sampling == expected["sampling"]
    assert (optim.epochs, optim.warmup_epochs) == (expected["epochs"], expected["warmup_epochs"])
    assert (data.test_clips, data.test_crops) == (expected["test_clips"], expected["test_crops"])
    assert aug.flip is expected["flip"]
    for key, value in expected_aug.items():
        assert getattr(aug, key) == value, key
    assert optim.label_smoothing == smoothing
    # the 256-320 short-side jitter as a square crop's area fraction of a 4:3 frame: 224^2 / (s * 4s / 3)
    area = [224**2 / (side * side * 4 / 3) for side in (320, 256)]
    assert aug.scale == pytest.approx(area, abs=0.001) and tuple(aug.ratio) == (1.0, 1.0)
    assert cfg.eval.mean_class_accuracy is (dataset == "finegym")


@pytest.mark.parametrize("stem", sorted(SMALL_VIDEO))
def test_ucf_hmdb_recipes(stem: str) -> None:
    stride, test_clips, from_kinetics = SMALL_VIDEO[stem]
    cfg = load_config(Config, REPO / "configs" / f"{stem}.yaml")
    data, aug, optim = cfg.data, cfg.data.aug, cfg.optim
    assert (cfg.model.name, data.num_frames, data.sampling, data.frame_stride) == (
        "structvit_s_4_1",
        16,
        "dense",
        stride,
    )
    assert (data.test_clips, data.test_crops, data.crop_size, data.short_clips) == (
        test_clips,
        3,
        224,
        "repeat",
    )
    global_batch = data.batch_size * cfg.engine.grad_accum_steps * RANKS
    assert global_batch == 64 and scaled_lr(optim, global_batch) == pytest.approx(2e-4)
    assert aug.flip is True
    for key, value in KINETICS["aug"].items():
        assert getattr(aug, key) == value, key
    assert optim.label_smoothing == 0.1 and not cfg.eval.mean_class_accuracy
    assert data.train == [f"data/shards/{stem.split('_')[0]}/train"]
    assert data.val == [f"data/shards/{stem.split('_')[0]}/test"]
    if from_kinetics:
        assert cfg.init.pretrained == "runs/kinetics400_s16x4/export/model.pt"
        assert (optim.epochs, optim.warmup_epochs, cfg.model.drop_path_rate) == (30, 3, 0.1)
    else:
        assert cfg.init.pretrained is None  # no ImageNet, no Kinetics weights
        assert (optim.epochs, optim.warmup_epochs, cfg.model.drop_path_rate) == (300, 20, 0.2)


def test_ssv1_recipe_reads_its_frame_shards_and_never_flips() -> None:
    cfg = load_config(Config, REPO / "configs" / "ssv1_s16.yaml")
    data = cfg.data
    assert (data.train, data.val) == (["data/shards/ssv1/train"], ["data/shards/ssv1/val"])
    assert (data.num_frames, data.sampling, data.test_clips, data.test_crops) == (16, "segment", 1, 3)
    # "left" / "right" are in SSv1's labels too: no flip, and none by default where a config says nothing
    assert data.aug.flip is False and not should_flip(replace(data.aug, flip=None), "ssv1")
