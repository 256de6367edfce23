"""Measuring models: parameters, GFLOPs per view, peak CPU memory; and the summary command.

    python -m pipeline.models.summary structvit_s_4_1 --frames 16 --img-size 224

FLOPs: torch.utils.flop_counter counts matmuls, convolutions and the attention matmuls of
scaled_dot_product_attention (q.k and attn.v) at 2 per multiply-add; the papers (fvcore) count a
multiply-add once, so `count_gflops` halves it. Norms, activations and softmax are not counted.
Models are built on the meta device, so even a 224-pixel L video model costs no memory or time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.registry import create_model, list_models


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def view_shape(num_frames: int | None, img_size: int, in_chans: int = 3) -> tuple[int, ...]:
    """Input shape of one view: (1, C, H, W) for images, (1, C, T, H, W) for clips."""
    if num_frames is None:
        return (1, in_chans, img_size, img_size)
    return (1, in_chans, num_frames, img_size, img_size)


def count_gflops(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Forward GFLOPs of one input (multiply-add = 1), counted by torch's flop counter on the meta device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.empty(input_shape, device="meta"))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def summarize(
    name: str, num_frames: int | None = None, img_size: int = 224, **overrides: Any
) -> dict[str, Any]:
    """Parameters (millions) and GFLOPs per view of a registered model, built on the meta device."""
    with torch.device("meta"):
        num_classes = 1000 if num_frames is None else 400  # ImageNet / Kinetics-400 heads
        model = create_model(name, num_classes, num_frames=num_frames, img_size=img_size, **overrides)
    in_chans = overrides.get("in_chans", 3)
    return {
        "model": name,
        "frames": num_frames,
        "img_size": img_size,
        "params_m": count_parameters(model) / 1e6,
        "gflops": count_gflops(model, view_shape(num_frames, img_size, in_chans)),
    }


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak CPU bytes allocated by torch while `fn` runs, above what was allocated when it started.

    Read from the profiler's allocation events, each of which carries the allocator's running
    total, so the peak is exact (no sampling) and includes kernel workspaces. This uses the
    profiler's event tree (torch._C._profiler), the only place the running total is exposed.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            allocations.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
        pending.extend(node.children)
    if not allocations:
        return 0
    allocations.sort()
    _, first_size, first_total = allocations[0]
    start = first_total - first_size
    return max(total for _, _, total in allocations) - start


_DESCRIPTION = "Parameters and GFLOPs (multiply-add = 1) per view of a registered model."


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and print one summary line per model."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.summary", description=_DESCRIPTION)
    parser.add_argument("names", nargs="+", metavar="NAME", help="registered model name(s), or 'all'")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (video); image if unset")
    parser.add_argument("--img-size", type=int, default=224, help="input height = width in pixels")
    args = parser.parse_args(argv)
    names = list_models() if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        known = ", ".join(list_models())
        print(f"error: unknown model(s) {', '.join(unknown)}; known: {known}", file=sys.stderr)
        return 2
    view = f"{args.img_size}x{args.img_size}"
    if args.frames:
        view = f"{args.frames}x{view}"
    print(f"{'model':<22} {'view':>12} {'params (M)':>11} {'GFLOPs/view':>12}  (flop counter / 2 = MACs)")
    for name in names:
        row = summarize(name, num_frames=args.frames, img_size=args.img_size)
        print(f"{name:<22} {view:>12} {row['params_m']:>11.2f} {row['gflops']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
