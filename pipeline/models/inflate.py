"""Loading pretrained weights: official UniFormer checkpoints, image -> video inflation, new heads.

Accepted layouts: a plain state dict, `{'model': sd}` (the official UniFormer ImageNet files,
DeiT / timm style), `{'model_state': sd, ...}` (the official video files, saved by PySlowFast)
and `{'state_dict': sd}` / `{'module': sd}`; a `module.` prefix (DDP) is dropped. Parameter names
are UniFormer's own, so an official checkpoint maps key for key.

Rules: every checkpoint tensor must be used and every model tensor must come from the checkpoint,
except the tensors whose initial value makes the model start as the checkpoint's network (StructSA's
k/v structure kernels at their centre tap, LSA temperatures; see `starts_from_init`). Per tensor
whose shape differs from the model's:
- classifier (`head.*`, `aux_head.*`): re-initialised, with a warning naming the shapes (new classes);
  a classifier of the old label set that the model does not have (the token-labeling `aux_head` of
  uniformer_large_ls when fine-tuning a model without one) is discarded with it, and reported;
- a 2-D kernel (O, I, kh, kw) for a 3-D one (O, I, kt, kh, kw): repeated kt times and divided by
  kt, so a clip of identical frames gives the image response (away from temporal padding);
- a module that defines `inflate_parameter(name, value)` (SPT tokenizers, ViT position
  embeddings) inflates its own tensors (it returns None for names it has no rule for).
Anything else (an unknown or missing key, a shape no rule fits) makes the load fail with one line
naming the first few; with strict=False they are logged and skipped instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pipeline.console import note
from pipeline.models.layers import init_linear_and_norm

_WRAPPER_KEYS = ("model", "model_state", "state_dict", "module")
_CLASSIFIERS = ("head", "aux_head")
# Model tensors a checkpoint may lack: their initial value continues the checkpoint's network
# (centre-tap structure kernels give D copies of each key and value: plain attention, for stride 1;
# an LSA temperature starts at head_dim ** -0.5, the plain scale). BatchNorm's batch counter is
# absent from checkpoints older than torch 0.4.1 and does not affect the output.
_STARTS_FROM_INIT = ("attn.k_conv.weight", "attn.v_conv.weight", "attn.temperature", "num_batches_tracked")
_NAMED_IN_ERRORS = 4


@dataclass
class LoadReport:
    """What `load_pretrained` did with each key."""

    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)  # model tensors that start from their init
    skipped: list[str] = field(default_factory=list)  # strict=False only: shapes that did not fit
    missing: list[str] = field(default_factory=list)  # strict=False only: absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # strict=False only: not in the model
    discarded: list[str] = field(default_factory=list)  # old-label-set classifiers the model lacks


def starts_from_init(key: str) -> bool:
    """Whether the model tensor `key` may keep its initial value when a checkpoint lacks it."""
    return key.endswith(_STARTS_FROM_INIT)


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Find the tensors in common checkpoint layouts ({'model': ...}, {'model_state': ...}, 'module.')."""
    while len(checkpoint) >= 1 and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        inner = next((checkpoint[k] for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"checkpoint holds no tensors; top-level keys: {sorted(checkpoint)[:8]}")
        checkpoint = inner
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def read_weights(path: str) -> Mapping[str, object]:
    """torch.load a weights file safely (weights_only), allowing the argparse.Namespace that
    DeiT / timm style training scripts store next to the weights ({'model': ..., 'args': ...})."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


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


def load_pretrained(model: nn.Module, state_dict: Mapping[str, object], *, strict: bool = True) -> LoadReport:
    """Load `state_dict` (any accepted layout) into `model`: inflate image weights for a video model,
    re-initialise a classifier of another size; a checkpoint that does not fit is one ValueError line."""
    source = unwrap_state_dict(state_dict)
    own = model.state_dict()
    report = LoadReport(initialised=sorted(k for k in set(own) - set(source) if starts_from_init(k)))
    missing = sorted(k for k in set(own) - set(source) if not starts_from_init(k))
    unexpected = sorted(set(source) - set(own))
    misfits: list[str] = []
    new_state: dict[str, torch.Tensor] = {}
    for key in sorted(set(source) & set(own)):
        value, target = source[key], own[key]
        if value.shape == target.shape:
            new_state[key] = value
            report.loaded.append(key)
        elif key.split(".")[0] in _CLASSIFIERS:
            report.reinitialised.append(key)
        else:
            inflated = inflate_tensor(model, key, value, target.shape)
            if inflated is not None and inflated.shape == target.shape:
                new_state[key] = inflated
                report.inflated.append(key)
            else:
                misfits.append(f"{key} {tuple(value.shape)} vs model {tuple(target.shape)}")
    if report.reinitialised:  # the old label set's classifiers cannot be used by the new one
        report.discarded = [k for k in unexpected if k.split(".")[0] in _CLASSIFIERS]
        unexpected = [k for k in unexpected if k not in report.discarded]
    problems = [
        f"{len(items)} {what}: {_first_few(items)}"
        for what, items in (
            ("checkpoint tensors the model does not have", unexpected),
            ("model tensors the checkpoint lacks", missing),
            ("shapes that neither match nor inflate", misfits),
        )
        if items
    ]
    if not new_state:
        raise ValueError(f"no checkpoint key matches the model (checkpoint keys start {sorted(source)[:5]})")
    if problems and strict:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    if problems:
        note("init", "warning: loading what fits, skipping: " + "; ".join(problems))
        report.missing, report.unexpected = missing, unexpected
        report.skipped = [m.split(" ")[0] for m in misfits]
    model.load_state_dict(new_state, strict=False)
    if report.reinitialised:
        for name in sorted({key.split(".")[0] for key in report.reinitialised}):
            head = model.get_submodule(name)
            head.reset_parameters()
            head.apply(init_linear_and_norm)
        before = tuple(source["head.weight"].shape) if "head.weight" in source else "?"
        after = tuple(own["head.weight"].shape) if "head.weight" in own else "?"
        heads = ", ".join(report.reinitialised)
        note("init", f"re-initialised classifier head ({heads}): checkpoint {before} -> model {after}")
    if report.discarded:
        note("init", f"discarded the old label set's {', '.join(report.discarded)}")
    if report.inflated:
        note("init", f"inflated {len(report.inflated)} image tensors to video (repeat over time / T)")
    if report.initialised:
        fresh = _first_few(report.initialised)
        note(
            "init",
            f"{len(report.initialised)} model tensors start from their init (checkpoint has none): {fresh}",
        )
    return report


def _first_few(items: list[str]) -> str:
    """'a, b, c, d ...': at most _NAMED_IN_ERRORS items named."""
    return ", ".join(items[:_NAMED_IN_ERRORS]) + (" ..." if len(items) > _NAMED_IN_ERRORS else "")
