"""Exported weights read back without DeepSpeed: the model, its outputs, and the missing-file error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.models import create_model
from pipeline.models.exported import exported_arguments_path, load_exported


def test_load_exported_gives_back_the_model_in_eval_mode(tmp_path: Path) -> None:
    arguments = {"name": "structvit_tiny_4_1", "num_classes": 3, "num_frames": 2, "img_size": 32}
    model = create_model(**arguments).eval()
    weights = tmp_path / "model.pt"
    torch.save(model.state_dict(), weights)
    exported_arguments_path(weights).write_text(json.dumps({"model": arguments, "tag": "t", "step": 1}))
    loaded = load_exported(weights)
    clip = torch.randn(2, 3, 2, 32, 32)
    assert not loaded.training
    torch.testing.assert_close(loaded(clip), model(clip), rtol=0, atol=0)


def test_a_missing_arguments_file_names_both_files(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    torch.save({}, weights)
    with pytest.raises(ConfigError, match=r"model\.pt.*model\.json"):
        load_exported(weights)
