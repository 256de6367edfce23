"""Model registry: variants are named presets of a model class; `create_model` builds them by name."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant: the model class and the constructor arguments that define it."""

    name: str
    cls: type[nn.Module]
    preset: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, cls: type[nn.Module], **preset: Any) -> None:
    """Register `name` as `cls(**preset)`; the preset keys must be constructor arguments."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _check_arguments(name, cls, preset, what="preset")
    _REGISTRY[name] = ModelSpec(name, cls, dict(preset))


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec of `name`; an unknown name raises ValueError with the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; see pipeline.models.list_models()") from None


def create_model(
    name: str, num_classes: int, num_frames: int | None = None, img_size: int = 224, **overrides: Any
) -> nn.Module:
    """Build a registered model: `num_frames=None` gives the image model, a number the video model.

    Overrides replace preset constructor arguments (drop_path_rate, checkpoint_blocks, spt, lsa, ...);
    a name that is not a constructor argument raises TypeError naming it.
    """
    spec = get_model_spec(name)
    _check_arguments(name, spec.cls, overrides, what="override")
    arguments = {**spec.preset, **overrides}
    return spec.cls(num_classes=num_classes, num_frames=num_frames, img_size=img_size, **arguments)


def _check_arguments(name: str, cls: type[nn.Module], arguments: dict[str, Any], *, what: str) -> None:
    """Reject keys that are not keyword arguments of cls (or are the fixed create_model ones)."""
    accepted = set(inspect.signature(cls).parameters) - {"num_classes", "num_frames", "img_size"}
    for key in arguments:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{name}: unknown {what} {key!r} for {cls.__name__}{hint}")
