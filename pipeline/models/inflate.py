"""Loading pretrained weights: image -> video inflation and classifier heads of another size.

Rules, per checkpoint tensor whose shape differs from the model's:
- classifier (`head.*`): re-initialised, with a warning naming the shapes (new class count);
- a 2-D kernel (O, I, kh, kw) for a 3-D one (O, I, kt, kh, kw): repeated kt times and divided by
  kt, so a clip of identical frames gives the image response (away from temporal padding);
- a module that defines `inflate_parameter(name, value)` (SPT tokenizers, ViT position
  embeddings) inflates its own tensors (it returns None for names it has no rule for);
- anything else is an error naming the key and both shapes (or, with strict_shapes=False, a
  warning and the tensor keeps its initial value).
Keys missing from the checkpoint (e.g. StructSA's k/v kernels when starting from UniFormer
weights) keep their initialisation and are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pipeline.models.layers import init_linear_and_norm

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "module")


@dataclass
class LoadReport:
    """What `load_pretrained` did with each key."""

    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Find the tensors in common checkpoint layouts ({'model': ...}, 'module.' prefixes)."""
    while len(checkpoint) >= 1 and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        inner = next((checkpoint[k] for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"checkpoint holds no tensors; top-level keys: {sorted(checkpoint)[:8]}")
        checkpoint = inner
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def inflate_tensor(model: nn.Module, key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """The checkpoint tensor `value` reshaped for the model's `key` of `shape`, or None if no rule applies."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:cut]))
        inflated = getattr(owner, "inflate_parameter", lambda *_: None)(".".join(parts[cut:]), value)
        if inflated is not None:
            return inflated
    if value.ndim == 4 and len(shape) == 5 and value.shape[:2] == shape[:2] and value.shape[2:] == shape[3:]:
        frames = shape[2]
        return value.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    return None


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, object], *, strict_shapes: bool = True
) -> LoadReport:
    """Load `state_dict` into `model`, inflating image weights for a video model and re-initialising
    a classifier head of another size; returns what happened to each key."""
    source = unwrap_state_dict(state_dict)
    own = model.state_dict()
    report = LoadReport(missing=sorted(set(own) - set(source)), unexpected=sorted(set(source) - set(own)))
    new_state: dict[str, torch.Tensor] = {}
    for key in sorted(set(source) & set(own)):
        value, target = source[key], own[key]
        if value.shape == target.shape:
            new_state[key] = value
            report.loaded.append(key)
        elif key.startswith("head."):
            report.reinitialised.append(key)
        else:
            inflated = inflate_tensor(model, key, value, target.shape)
            if inflated is not None and inflated.shape == target.shape:
                new_state[key] = inflated
                report.inflated.append(key)
            elif strict_shapes:
                raise ValueError(
                    f"checkpoint key {key}: shape {tuple(value.shape)} cannot be loaded or inflated into "
                    f"the model's {tuple(target.shape)}"
                )
            else:
                log.warning(
                    "skipping %s: checkpoint shape %s, model shape %s",
                    key,
                    tuple(value.shape),
                    tuple(target.shape),
                )
                report.skipped.append(key)
    if not new_state:
        raise ValueError(f"no checkpoint key matches the model (checkpoint keys start {sorted(source)[:5]})")
    model.load_state_dict(new_state, strict=False)
    if report.reinitialised:
        head = model.get_submodule("head")
        head.reset_parameters()
        head.apply(init_linear_and_norm)
        log.warning(
            "re-initialised classifier head (%s): checkpoint %s -> model %s",
            ", ".join(report.reinitialised),
            tuple(source["head.weight"].shape) if "head.weight" in source else "?",
            tuple(own["head.weight"].shape) if "head.weight" in own else "?",
        )
    if report.inflated:
        log.info("inflated %d image tensors to video (repeat over time / T)", len(report.inflated))
    if report.missing:
        log.info(
            "%d model tensors not in the checkpoint keep their init: %s",
            len(report.missing),
            ", ".join(report.missing[:6]) + (" ..." if len(report.missing) > 6 else ""),
        )
    if report.unexpected:
        log.warning(
            "%d checkpoint tensors unused: %s",
            len(report.unexpected),
            ", ".join(report.unexpected[:6]) + (" ..." if len(report.unexpected) > 6 else ""),
        )
    return report
