"""StructSA against plain attention, and fused SDPA against a naive path, at equal token counts.

    python bench/structsa.py [--reps 3] [--maps 56x56 28x28 8x14x14 16x14x14] [--dim 64]

For every token map: forward + backward time (fastest of --reps, taken round-robin over the
variants after a warm-up) and peak allocated memory (torch profiler allocation events, one extra
pass) of plain multi-head attention and of StructSA for D in {1, 2, 4, 8} and stride in {1, 2},
each with the fused path (scaled_dot_product_attention) and the naive path (materialised
softmax(q k^T) matrix). Ratios are against plain fused attention on the same map; the last
columns give naive / fused.
Batch 1, one head of --dim channels: sizes chosen so the whole run takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch
import torch.nn as nn

from pipeline.models.structsa import MultiHeadAttention, StructSA
from pipeline.models.summary import peak_memory_bytes

VARIANTS = [(0, 1)] + [(depth, stride) for stride in (2, 1) for depth in (1, 2, 4, 8)]


def build(depth: int, stride: int, dim: int, video: bool, fused: bool) -> nn.Module:
    """Plain attention for depth 0, else StructSA(D=depth, S=stride), one head of `dim` channels."""
    if depth == 0:
        return MultiHeadAttention(dim, 1, fused_attention=fused)
    return StructSA(dim, 1, video=video, structure_dim=depth, stride=stride, fused_attention=fused)


def measure_map(
    modules: dict[tuple[int, int, bool], nn.Module], grid: tuple[int, ...], dim: int, reps: int
) -> dict[tuple[int, int, bool], tuple[float, int]]:
    """Fastest forward+backward seconds and peak bytes per module for one (1, N, dim) input on `grid`.

    Repetitions go round-robin over all modules and the fastest is kept: on a shared machine other
    load only ever adds time, and interleaving spreads any burst over every variant.
    """
    x = torch.randn(1, math.prod(grid), dim, requires_grad=True)
    steps = {key: (lambda m=module: m(x, grid).sum().backward()) for key, module in modules.items()}
    best = dict.fromkeys(steps, math.inf)
    for step in steps.values():  # warm-up round
        step()
    for _ in range(reps):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)
    return {key: (best[key], peak_memory_bytes(step)) for key, step in steps.items()}


def main() -> None:
    """Run every map and variant and print one table per map."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case (fastest kept)")
    parser.add_argument("--dim", type=int, default=64, help="channels (one head)")
    parser.add_argument("--maps", nargs="+", default=["56x56", "28x28", "8x14x14", "16x14x14"])
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = platform.processor() or platform.machine()
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    print(f"# {machine}, {threads} threads, torch {torch.__version__}, load average {load:.1f}")
    print(f"# batch 1, 1 head x {args.dim} channels, kernel 3, fastest of {args.reps} round-robin runs")
    for spec in args.maps:
        grid = tuple(int(s) for s in spec.split("x"))
        video = len(grid) == 3
        modules = {}
        for depth, stride in VARIANTS:
            for fused in (True, False):
                torch.manual_seed(0)
                modules[depth, stride, fused] = build(depth, stride, args.dim, video, fused)
        results = measure_map(modules, grid, args.dim, args.reps)
        base_time, base_mem = results[0, 1, True]
        print(f"\nmap {spec} ({math.prod(grid)} tokens)")
        print(
            f"{'variant':<14}{'keys':>7}{'ms':>9}{'x plain':>9}{'MiB':>9}{'x plain':>9}"
            f"{'naive ms':>10}{'naive MiB':>11}{'naive/fused t':>15}{'naive/fused mem':>17}"
        )
        for depth, stride in VARIANTS:
            label = "plain" if depth == 0 else f"StructSA D{depth} S{stride}"
            keys = (
                math.prod(grid)
                if depth == 0
                else depth
                * math.prod(
                    (size - 1) // step + 1
                    for size, step in zip(grid, (1, stride, stride)[-len(grid) :], strict=True)
                )
            )
            fused_time, fused_mem = results[depth, stride, True]
            naive_time, naive_mem = results[depth, stride, False]
            print(
                f"{label:<14}{keys:>7}{fused_time * 1e3:>9.1f}{fused_time / base_time:>9.2f}"
                f"{fused_mem / 2**20:>9.1f}{fused_mem / base_mem:>9.2f}{naive_time * 1e3:>10.1f}"
                f"{naive_mem / 2**20:>11.1f}{naive_time / fused_time:>15.2f}{naive_mem / fused_mem:>17.2f}"
            )


if __name__ == "__main__":
    main()
