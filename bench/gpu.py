"""The GPU path in one command, on one CUDA device, in under 8 minutes.

    python bench/gpu.py [--clips 32] [--batch 8] [--steps 10] [--quick]

Reports, side by side in one run:
  1. decoding: DALI mixed (NVDEC) decoding of Kinetics-like short-GOP shards (bench/loader.py's data:
     336p, 30 fps, 10 s, re-encoded with a GOP of 16) vs the CPU decoders (PyAV, decord) in as many
     workers as the machine has cores, same sampling (16x4 dense), 224 crops and augmentation (without
     RandAugment, which DALI's path lacks): clips/s, frames/s;
  2. StructViT-S-4-1 16x224, bf16, one training step under DeepSpeed ZeRO-2 on one rank: step time,
     clips/s, peak memory, model FLOP utilisation against the device's dense bf16 peak (PEAK_TFLOPS;
     training FLOPs = 3 x forward, a multiply-add = 2 FLOPs);
  3. which SDPA backend StructSA's attention takes: the step runs again with the math fallback
     forbidden (torch.nn.attention.sdpa_kernel without MATH; it raises if no fused kernel fits), and
     the profiler's CUDA kernel names say which fused kernel ran;
  4. torch.compile on vs off: the same step with DeepSpeed's `engine.compile()`.
Without a CUDA device it prints one line and exits 0. Every GPU-only import sits inside the
functions, so the CPU install and tests never load them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Dense bf16 tensor-core peak, TFLOPS, by a substring of torch.cuda.get_device_name() (first match).
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)
# Fused attention kernels by a substring of their CUDA kernel names.
SDPA_KERNELS = (("flash", "flash attention"), ("fmha", "memory-efficient"), ("cudnn", "cuDNN attention"))


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak, or None for a device not in the table."""
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def model_flop_utilisation(
    forward_gflops: float, clips: int, step_s: float, peak: float | None
) -> float | None:
    """Achieved training FLOP/s over the peak: 3 forward passes' worth per clip (forward + backward),
    `forward_gflops` counting a multiply-add once (as pipeline.models.summary does)."""
    if peak is None:
        return None
    return 3 * 2 * forward_gflops * 1e9 * clips / step_s / (peak * 1e12)


def decode_rates(args: argparse.Namespace) -> None:
    """DALI mixed vs the CPU decoders on the same short-GOP shards, passes interleaved."""
    import loader as loader_bench  # bench/loader.py: its data and timing helpers

    from pipeline.config import from_dict, to_dict
    from pipeline.data.decoders import is_available
    from pipeline.data.loader import build_train_loader

    with tempfile.TemporaryDirectory() as tmp:
        _, _, short_gop = loader_bench.make_data(Path(tmp), args.clips, args.frames, args.height, 30.0)
        bench_args = argparse.Namespace(batch_size=args.batch, workers=os.cpu_count() or 1, randaug=0)
        cfg = loader_bench.data_config(short_gop, "dense", bench_args)
        loaders = {}
        cpu_decoders = [name for name in ("pyav", "decord") if is_available(name)]
        for decoder in ("dali", *cpu_decoders):
            workers = 0 if decoder == "dali" else cfg.workers  # DALI decodes in its own threads
            named = from_dict(type(cfg), {**to_dict(cfg), "decoder": decoder, "workers": workers})
            loaders[decoder] = build_train_loader(named, rank=0, world_size=1, seed=0)
        throughput = loader_bench.interleaved_rates(loaders, args.repeats, warm_batches=cfg.workers)
        rates = {name: measured.rate for name, measured in throughput.items()}
    print(
        f"[decode] {args.clips} clips of {args.height}p 30 fps short-GOP H.264, 16x4 dense, 224 crops, "
        f"batch {args.batch}"
    )
    for name, rate in rates.items():
        where = "GPU (mixed)" if name == "dali" else f"CPU, {cfg.workers} workers"
        print(f"  {name:<7} {where:<18} {rate:8.1f} clips/s {rate * cfg.num_frames:9.0f} frames/s")
    for name in cpu_decoders:
        print(f"  dali/{name} = {rates['dali'] / rates[name]:.2f}")


def single_rank_group() -> None:
    """A one-process group on this machine, as launch/local.py would set it up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def timed_steps(engine: Any, video: Any, labels: Any, steps: int) -> list[float]:
    """Seconds of each of `steps` optimizer steps after two warm-up steps (compilation, allocator)."""
    import torch

    from pipeline.train.loss import classification_loss

    times = []
    for index in range(steps + 2):
        torch.cuda.synchronize()
        started = time.perf_counter()
        engine.backward(classification_loss(engine(video), labels, 0.1))
        engine.step()
        torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - started)
    return times


def attention_kernels(engine: Any, video: Any) -> list[str]:
    """The fused attention kernels a forward + backward ran, from the profiler's CUDA kernel names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine(video).float().sum().backward()
    names = {event.key.lower() for event in prof.key_averages()}
    engine.zero_grad()
    return sorted({label for key, label in SDPA_KERNELS for name in names if key in name})


def train_step(args: argparse.Namespace) -> None:
    """StructViT-S-4-1 bf16 ZeRO-2 step: time, clips/s, memory, MFU; SDPA backend; compile on/off."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipeline.models import create_model
    from pipeline.models.summary import summarize
    from pipeline.train.config import EngineConfig, OptimConfig
    from pipeline.train.engine import build_engine, setup_distributed
    from pipeline.train.optim import build_optimizer

    single_rank_group()
    setup_distributed()
    name, device_name = "structvit_s_4_1", torch.cuda.get_device_name()
    video = torch.randn(args.batch, 3, 16, args.size, args.size, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, 400, (args.batch,), device="cuda")
    gflops = summarize(name, num_frames=16, img_size=args.size)["gflops"]
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = create_model(name, num_classes=400, num_frames=16, img_size=args.size)
        cfg = EngineConfig(zero_stage=2, precision="bf16")
        engine = build_engine(model, build_optimizer(model, OptimConfig()), cfg, args.batch, 1)
        if compiled:
            engine.compile()
        torch.cuda.reset_peak_memory_stats()
        fused_only = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
        with sdpa_kernel(fused_only):  # no MATH: a step that needed the fallback would raise here
            times = timed_steps(engine, video, labels, args.steps)
            kernels = attention_kernels(engine, video) if not compiled else []
        results[compiled] = (statistics.median(times), torch.cuda.max_memory_allocated() / 2**30, kernels)
        del engine, model
        torch.cuda.empty_cache()
    peak = peak_tflops(device_name)
    print(
        f"[train] {name} 16x{args.size}, batch {args.batch}, bf16, ZeRO-2, 1 rank, "
        f"{gflops:.1f} GFLOPs/clip forward"
    )
    for compiled, (step_s, memory, _) in results.items():
        mfu = model_flop_utilisation(gflops, args.batch, step_s, peak)
        print(
            f"  compile {'on ' if compiled else 'off'}: step {step_s * 1e3:7.1f} ms  "
            f"{args.batch / step_s:7.1f} clips/s  peak {memory:5.1f} GiB  "
            f"MFU {'n/a (device not in PEAK_TFLOPS)' if mfu is None else f'{mfu:.1%}'}"
        )
    print(f"  compile on/off step time = {results[True][0] / results[False][0]:.2f}")
    kernels = results[False][2]
    print(
        f"  SDPA with MATH forbidden: ran; fused kernels seen: {', '.join(kernels) or 'none named'}"
        + ("" if kernels else " (kernel names not recognised: check the profiler trace)")
    )


def main() -> int:
    """Run every part on the CUDA device, or say there is none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="clips for the decoding comparison")
    parser.add_argument("--frames", type=int, default=300, help="frames per source clip")
    parser.add_argument("--height", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=2, help="passes per decoder")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (and per decoded batch)")
    parser.add_argument("--size", type=int, default=224, help="crop size")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    parser.add_argument("--quick", action="store_true", help="8 short clips, batch 2, 2 steps")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.frames, args.repeats, args.batch, args.steps = 8, 64, 1, 2, 2
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py measures the GPU path only (nothing run)")
        return 0
    device_name = torch.cuda.get_device_name()
    print(
        f"# {device_name} ({peak_tflops(device_name) or '?'} TFLOPS bf16 dense), "
        f"{os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__}"
    )
    started = time.perf_counter()
    with contextlib.suppress(ImportError):  # DALI is an extra: without it the decode part says so
        import nvidia.dali  # noqa: F401
    if "nvidia.dali" in sys.modules:
        decode_rates(args)
    else:
        print("[decode] skipped: NVIDIA DALI is not installed (pip install -e .[dali])")
    train_step(args)
    print(f"# {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
