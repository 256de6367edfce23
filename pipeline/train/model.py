"""Building the run's network from its config, and filling it from pretrained weights.

The same function builds the model inside the trainer, for evaluation and for export, so an exported
state dict always matches `create_model` with the arguments recorded next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.models import create_model
from pipeline.train.config import Config


def model_arguments(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The `create_model` keyword arguments of this run (recorded with exported weights)."""
    arguments: dict[str, Any] = {
        "name": cfg.model.name,
        "num_classes": cfg.model.num_classes or num_classes,
        "num_frames": cfg.data.num_frames,
        "img_size": cfg.data.crop_size,
    }
    if cfg.model.drop_path_rate is not None:
        arguments["drop_path_rate"] = cfg.model.drop_path_rate
    return arguments


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The video model of this run (random init; the caller seeds the generator)."""
    return create_model(**model_arguments(cfg, num_classes))


def load_pretrained_weights(model: nn.Module, path: str | Path) -> None:
    """Start from a state dict file: image weights are inflated to video, a head of another class
    count (e.g. a Kinetics model fine-tuned on SSv2) is re-initialised."""
    from pipeline.models.inflate import load_pretrained

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init.pretrained: no weights file at '{path}'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_pretrained(model, state.get("state_dict", state) if isinstance(state, dict) else state)
