"""Training step time and peak memory: StructViT-S-4-1 against UniFormer-S, activation checkpointing
off/on, under DeepSpeed ZeRO 0 / 2 / 3, as ratios, in one run.

    python bench/train_step.py [--nproc 1] [--batch 1] [--frames 16] [--size 224] [--steps 1] [--quick]

Starts --nproc ranks (gloo on CPU, NCCL on GPUs) through launch/local.py's launcher; every rank
trains each variant on fixed random clips: one warm-up step, then the median of --steps optimizer
steps, StructViT's and UniFormer's steps taken in turn (so load from other processes falls on both
alike). Peak memory is one step's peak above what was in use before it, on rank 0 (the CUDA
allocator's peak on a GPU, the peak resident set on CPU). The time ratio is printed beside the
models' forward FLOP ratio at the same clip size (torch's counter, as `pipeline.models.summary`).
The defaults are the real clip size (16x224) at batch 1 on one rank (~30 minutes on 2 loaded CPU
cores; --steps 3 on an idle machine gives steadier times); `--quick` (the tiny widths at 4x64, CI's
smoke run) only checks that every variant runs. On GPUs use --batch 8 or more.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = ("structvit_s_4_1", "uniformer_s")
QUICK_MODELS = ("structvit_tiny_4_1", "uniformer_tiny")  # --quick: the same pair, tiny widths
STAGES = (0, 2, 3)
CHECKPOINTING = (False, True)


def train_step(engine: Any, video: Any, labels: Any) -> None:
    """One optimizer step (forward, backward, update) of a DeepSpeed engine."""
    from pipeline.train.loss import classification_loss

    engine.backward(classification_loss(engine(video), labels, 0.1))
    engine.step()


def resident_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_step_memory(step: Callable[[], None], device: Any) -> float:
    """Peak memory of one `step()` above what was in use before it, in bytes.

    GPU: the CUDA allocator's peak. CPU: the peak resident set (memory actually touched, so buffers
    DeepSpeed reserves but never fills do not count), after resetting the kernel's high-water mark.
    """
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to the current VmRSS
    before = resident_kib("VmRSS")
    step()
    return (resident_kib("VmHWM") - before) * 1024


def measure(args: argparse.Namespace) -> list[dict]:
    """One rank: every (ZeRO stage, checkpointing, model) variant; returns rank 0's measurements."""
    import torch

    from pipeline.models import create_model
    from pipeline.train.config import EngineConfig, OptimConfig
    from pipeline.train.engine import (
        apply_activation_checkpointing,
        build_engine,
        input_dtype,
        setup_distributed,
    )
    from pipeline.train.optim import build_optimizer

    dist_info = setup_distributed()
    generator = torch.Generator().manual_seed(dist_info.rank)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)
    rows = []

    def timed(step: Callable[[], None]) -> float:
        if dist_info.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if dist_info.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for stage in STAGES:
        for checkpointing in CHECKPOINTING:
            steps = {}
            for name in args.models:
                torch.manual_seed(0)
                model = create_model(name, num_classes=10, num_frames=args.frames, img_size=args.size)
                cfg = EngineConfig(zero_stage=stage, activation_checkpointing=checkpointing)
                apply_activation_checkpointing(model, cfg.activation_checkpointing)
                engine = build_engine(
                    model, build_optimizer(model, OptimConfig()), cfg, args.batch, dist_info.world_size
                )
                inputs = video.to(dist_info.device, dtype=input_dtype(engine))
                steps[name] = functools.partial(train_step, engine, inputs, labels)
                steps[name]()  # warm-up: allocator, kernels, ZeRO buffers
            # The two models' steps alternate, so load from other processes falls on both alike.
            times = {name: [] for name in args.models}
            for _ in range(args.steps):
                for name, step in steps.items():
                    times[name].append(timed(step))
            for name, step in steps.items():
                rows.append(
                    {
                        "zero": stage,
                        "checkpointing": checkpointing,
                        "model": name,
                        "step_s": statistics.median(times[name]),
                        "peak_mb": peak_step_memory(step, dist_info.device) / 2**20,
                    }
                )
            del steps
            gc.collect()
    return rows if dist_info.rank == 0 else []


def flop_ratio(args: argparse.Namespace) -> float:
    """StructViT / UniFormer forward FLOPs per clip at the benchmark's clip size."""
    from pipeline.models.summary import summarize

    ours, base = (summarize(m, num_frames=args.frames, img_size=args.size)["gflops"] for m in args.models)
    return ours / base


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Absolute figures plus the two ratios that matter: StructViT / UniFormer and checkpointing on / off."""
    import torch

    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"# {args.nproc} ranks, {' vs '.join(args.models)}, "
        f"{args.batch} clips of {args.frames}x{args.size}x{args.size} per rank, "
        f"median of {args.steps} steps after 1 warm-up"
    )
    key = {(r["zero"], r["checkpointing"], r["model"]): r for r in rows}
    print(
        f"{'zero':>4} {'ckpt':>5} | {'structvit s':>11} {'uniformer s':>11} {'ratio':>6} | "
        f"{'structvit MB':>12} {'uniformer MB':>12} {'ratio':>6} | {'ckpt/off time':>13} {'ckpt/off mem':>12}"
    )
    for stage in STAGES:
        for checkpointing in CHECKPOINTING:
            ours, base = (key[(stage, checkpointing, m)] for m in args.models)
            plain = key[(stage, False, args.models[0])]
            mode = "on" if checkpointing else "off"
            print(
                f"{stage:>4} {mode:>5} | {ours['step_s']:>11.3f} {base['step_s']:>11.3f} "
                f"{ours['step_s'] / base['step_s']:>6.2f} | "
                f"{ours['peak_mb']:>12.1f} {base['peak_mb']:>12.1f} "
                f"{ours['peak_mb'] / base['peak_mb']:>6.2f} | "
                f"{ours['step_s'] / plain['step_s']:>13.2f} "
                f"{ours['peak_mb'] / plain['peak_mb']:>12.2f}"
            )
    times = [
        key[(s, False, args.models[0])]["step_s"] / key[(s, False, args.models[1])]["step_s"] for s in STAGES
    ]
    print(
        f"time ratio structvit/uniformer (no checkpointing): {min(times):.2f}-{max(times):.2f}x "
        f"against a forward FLOP ratio of {flop_ratio(args):.2f}x"
    )
    cuts = [key[(s, True, m)]["peak_mb"] / key[(s, False, m)]["peak_mb"] for s in STAGES for m in args.models]
    print(f"checkpointing on/off peak memory: {min(cuts):.2f}-{max(cuts):.2f}x")


def main() -> int:
    """Without RANK in the environment: launch the ranks and print the table; with it: measure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="clips per rank")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant")
    parser.add_argument("--quick", action="store_true", help="tiny models, 4x64 clips: a smoke run for CI")
    parser.add_argument("--out", help=argparse.SUPPRESS)  # set by the launching parent
    args = parser.parse_args()
    args.models = QUICK_MODELS if args.quick else MODELS
    if args.quick:
        args.frames, args.size = 4, 64
    if "RANK" in os.environ:
        rows = measure(args)
        if rows:
            Path(args.out).write_text(json.dumps(rows))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from launch.local import run

    # Freed tensors go back to the kernel at once, so a step's peak resident set is its own.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        status = run([sys.executable, __file__, *sys.argv[1:], "--out", str(out)], args.nproc)
        if status != 0:
            return status
        print_table(json.loads(out.read_text()), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
