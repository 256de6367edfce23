"""The typed config loader: strict keys and types, overrides, `_base_` inheritance, stable hashing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config import ConfigError, config_hash, from_dict, load_config, parse_overrides, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Example:
    name: str = "run"
    steps: int = 10
    stage: Literal[0, 1, 2, 3] = 2
    shards: list[str] = field(default_factory=list)
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(Example, {"steps": 5, "optim": {"lr": 1}, "shards": ["a", "b"]})
    assert cfg.steps == 5 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.shards == ["a", "b"] and cfg.optim.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stepz": 3}, "unknown config key 'stepz'"),
        ({"optim": {"lrr": 3}}, "unknown config key 'optim.lrr'"),
        ({"steps": "ten"}, "config key 'steps' expects an integer, got 'ten'"),
        ({"steps": True}, "config key 'steps' expects an integer"),
        ({"stage": 4}, "config key 'stage' must be one of [0, 1, 2, 3], got 4"),
        ({"shards": "a"}, "config key 'shards' expects a list"),
        ({"optim": {"betas": [0.9]}}, "config key 'optim.betas' expects 2 items"),
        ({"steps": -1}, "steps must be positive, got -1"),
    ],
)
def test_errors_name_the_key_and_value(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Example, data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values() -> None:
    tree = parse_overrides(["optim.lr=2e-4", "shards=[x, y]", "resume=null", "name=demo"])
    assert tree == {"optim": {"lr": "2e-4"}, "shards": ["x", "y"], "resume": None, "name": "demo"}
    assert from_dict(Example, tree).optim.lr == 2e-4  # YAML 1.1 leaves `2e-4` a string; floats accept it
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["optim.lr"])


def test_base_inheritance_overrides_and_roundtrip(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("steps: 7\noptim:\n  lr: 0.1\n  betas: [0.8, 0.9]\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: 0.2\n")
    cfg = load_config(Example, tmp_path / "child.yaml", ["name=x"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.betas, cfg.name) == (7, 0.2, (0.8, 0.9), "x")
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Example, tmp_path / "resolved.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Example, tmp_path / "child.yaml", ["steps=8"])) != config_hash(cfg)


def test_unreadable_files_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(Example, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(Example, tmp_path / "bad.yaml")
