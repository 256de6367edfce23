"""Exported weights: `model.pt` (an fp32 state dict) with `model.json` (its `create_model` arguments).

`python -m pipeline.export` writes the pair from a run's checkpoint; `load_exported` reads it back
without DeepSpeed or a process group (`python -m pipeline.train.evaluate --weights` uses it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from pipeline.config import ConfigError
from pipeline.models.registry import create_model


def exported_arguments_path(weights: str | Path) -> Path:
    """The model.json that goes with the state dict `weights` (same folder, same stem)."""
    return Path(weights).with_suffix(".json")


def load_exported(weights: str | Path) -> nn.Module:
    """The model exported to `weights` (model.pt, with model.json beside it), on the CPU in eval mode;
    a missing file is a ConfigError naming both."""
    weights_path = Path(weights)
    arguments_path = exported_arguments_path(weights_path)
    if not weights_path.is_file() or not arguments_path.is_file():
        raise ConfigError(f"need '{weights_path}' and '{arguments_path}' (python -m pipeline.export RUN)")
    model = create_model(**json.loads(arguments_path.read_text())["model"])
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()
