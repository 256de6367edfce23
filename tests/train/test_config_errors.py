"""Configuration problems are one error line from the launcher, before any process starts; every
recipe in configs/ loads."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from pipeline.config import ConfigError, from_dict, load_config, to_dict
from pipeline.models import list_models
from pipeline.train.config import Config, config_changes, load_train_config
from pipeline.train.optim import scaled_lr
from tests.train.conftest import DEMO_CONFIG, REPO, run_local

RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("base"))
SMALL_IMAGE_DATASETS = ("cifar10_", "cifar100_", "svhn_", "tinyimagenet_")  # one-rank recipes, test_recipes


def launch(*overrides: str) -> subprocess.CompletedProcess:
    return run_local(overrides, timeout=60)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.lrr=0.1", ["optim.lrr"]),
        ("optim.lr=fast", ["optim.lr", "fast"]),
        ("engine.zero_stage=4", ["engine.zero_stage", "4"]),
        ("data.train=[{missing}]", ["data.train", "{missing}"]),
    ],
)
def test_bad_config_is_one_line_before_any_process(
    small_shards, tmp_path: Path, override: str, names: list[str]
):
    missing = tmp_path / "no-such-shards"
    train, val = small_shards
    result = launch(
        f"out_dir={tmp_path}", f"data.train=[{train}]", f"data.val=[{val}]", override.format(missing=missing)
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name.format(missing=missing) in lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad config"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads(recipe: Path, small_shards, image_shards) -> None:
    recipe_data = load_config(Config, recipe).data
    train, val = image_shards if recipe_data.modality == "image" else small_shards
    # 32 test images: one small batch of 4 images and their repeated views
    batch = [f"data.batch_size={4 * recipe_data.aug.repeated_aug}"] if recipe_data.modality == "image" else []
    # The test shards are tiny (32 clips of 16 frames): one rank, and short clips allowed.
    overrides = [
        f"data.train=[{train}]",
        f"data.val=[{val}]",
        "init.pretrained=null",
        "data.short_clips=repeat",
        *batch,
    ]
    cfg = load_train_config(recipe, overrides, 1)
    assert cfg.model.name in list_models()
    assert cfg.data.batch_size % cfg.data.aug.repeated_aug == 0
    if recipe.stem.startswith("imagenet"):
        # DeiT's rule: 1e-3 at 1024 images per step, scaled linearly
        assert (cfg.optim.lr, cfg.optim.base_batch_size) == (1e-3, 1024)
    elif not recipe.stem.startswith(("demo", *SMALL_IMAGE_DATASETS)):
        # The paper's rule: 2e-4 at 64 clips per step; the recipes are laid out for 8 ranks.
        global_batch = cfg.data.batch_size * cfg.engine.grad_accum_steps * 8
        assert global_batch == 64 and scaled_lr(cfg.optim, global_batch) == pytest.approx(2e-4)
        assert not cfg.data.aug.flip or recipe.stem.startswith("kinetics")


def test_config_changes_name_what_matters() -> None:
    saved = to_dict(from_dict(Config, {"optim": {"lr": 1e-3}}))
    current = from_dict(Config, {"name": "moved", "optim": {"lr": 2e-3}, "log": {"every_steps": 3}})
    # Renaming the run or changing logging keeps the trajectory; the learning rate does not.
    assert config_changes(saved, current) == ["optim.lr: 0.001 -> 0.002"]


def test_a_decoder_that_is_not_installed_is_a_config_error(small_shards, monkeypatch) -> None:
    train, val = small_shards
    overrides = [f"data.train=[{train}]", f"data.val=[{val}]", "data.decoder=dali"]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # this machine may have DALI: hide it the way a machine without it looks
        importlib.util, "find_spec", lambda name, *a: None if name == "nvidia" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"data\.decoder: 'dali' needs the Python package 'nvidia\.dali'"):
        load_train_config(DEMO_CONFIG, overrides, world_size=2)
