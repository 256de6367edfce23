"""Measuring models: parameters, GFLOPs per view, peak CPU memory; and the summary command.

    python -m pipeline.models.summary structvit_s_4_1 --frames 16 --img-size 224
    python -m pipeline.models.summary            # the paper's variants: its figures beside ours

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
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from pipeline.errors import ConfigError, report
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


# The StructViT paper's reported figures (spec section 2): (model, frames, params M, GFLOPs per view).
# Image rows are 224x224 ImageNet models; the K400 rows are the paper's per-video totals divided by
# its 4 views (16x1x4 for S, 32x1x4 for B), for which it gives no parameter count.
PAPER_FIGURES: list[tuple[str, int | None, float | None, float]] = [
    ("uniformer_s", None, 22, 3.6),
    ("structvit_s_4_2", None, 23, 3.6),
    ("structvit_s_4_1", None, 23, 4.3),
    ("structvit_s_8_1", None, 24, 5.4),
    ("uniformer_b", None, 50, 8.3),
    ("structvit_b_4_2", None, 51, 8.3),
    ("structvit_b_4_1", None, 51, 9.9),
    ("structvit_b_8_1", None, 52, 12.0),
    ("structvit_l_4_1", None, 103, 15.4),
    ("structvit_s_4_2", 16, None, 42),
    ("structvit_s_4_1", 16, None, 81.8),
    ("structvit_s_8_1", 16, None, 135),
    ("structvit_b_4_2", 32, None, 261),
    ("structvit_b_4_1", 32, None, 665),
]


def paper_comparison() -> list[dict[str, Any]]:
    """Ours beside the paper's figures for each of its variants, with the relative differences."""
    rows = []
    for name, frames, params_m, gflops in PAPER_FIGURES:
        row = summarize(name, num_frames=frames)
        row["paper_params_m"], row["paper_gflops"] = params_m, gflops
        row["params_diff"] = None if params_m is None else row["params_m"] / params_m - 1
        row["gflops_diff"] = row["gflops"] / gflops - 1
        rows.append(row)
    return rows


def print_paper_comparison() -> None:
    """The paper-variant table of `python -m pipeline.models.summary` without model names."""
    print("StructViT paper's figures vs this implementation (params M, GFLOPs per view, multiply-add = 1)")
    params, gflops = f"{'params':>7} {'paper':>6} {'diff':>7}", f"{'GFLOPs':>8} {'paper':>6} {'diff':>7}"
    print(f"{'model':<18} {'view':>12} {params} {gflops}")
    for row in paper_comparison():
        view = f"{row['img_size']}x{row['img_size']}"
        if row["frames"]:
            view = f"{row['frames']}x{view}"
        if row["paper_params_m"] is None:
            paper_params = f"{'-':>6} {'-':>7}"
        else:
            paper_params = f"{row['paper_params_m']:>6g} {row['params_diff']:>+7.1%}"
        print(
            f"{row['model']:<18} {view:>12} {row['params_m']:>7.1f} {paper_params} "
            f"{row['gflops']:>8.1f} {row['paper_gflops']:>6g} {row['gflops_diff']:>+7.1%}"
        )
    print("Paper figures are rounded (params to 1M, GFLOPs to 0.1G); K400: the paper's totals / 4 views.")
    print(
        "L-4-1 GFLOPs: the paper's 15.4 sits on UniFormer-L's published 12.6, which UniFormer-L's own depths "
        "and widths do not reproduce (19.7 here); see the model spec, section 2."
    )


_DESCRIPTION = (
    "Parameters and GFLOPs (multiply-add = 1) per view of a registered model; "
    "without names, the paper's variants beside the paper's figures."
)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and print one summary line per model."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.summary", description=_DESCRIPTION)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="registered model name(s), or 'all'; none: the paper table"
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (video); image if unset")
    parser.add_argument("--img-size", type=int, default=224, help="input height = width in pixels")
    args = parser.parse_args(argv)
    if not args.names:
        print_paper_comparison()
        return 0
    names = list_models() if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        known = ", ".join(list_models())
        return report(ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {known}"))
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
