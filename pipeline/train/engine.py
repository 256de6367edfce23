"""The one place that knows DeepSpeed: process group, engine, activation checkpointing, checkpoint files.

Everything else in the trainer talks to the engine through the small surface DeepSpeed gives every
engine (`engine(x)`, `backward`, `step`, `module`, `optimizer`) and the functions below.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from torch import nn

from pipeline.errors import RunError
from pipeline.train.buffers import restore_rank_buffers
from pipeline.train.checkpoint import refused_write
from pipeline.train.config import EngineConfig

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def setup_distributed(timeout_s: float = 600) -> DistInfo:
    """Join the process group described by the torchrun-style variables (gloo on CPU, NCCL on GPU).

    Missing variables are an error naming them, never a silent single-process run. A collective that
    waits longer than `timeout_s` fails the rank: a dead or hung peer, not a slow one.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed environment incomplete: {', '.join(missing)} not set "
            "(start through launch/local.py, torchrun or the Slurm launcher)"
        )
    # The shared-memory collective op would be compiled on first use (~50 s on CPU); gloo is enough.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed's ZeRO calls a torch collective that torch has deprecated; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    local_rank = int(os.environ["LOCAL_RANK"])
    accelerator = get_accelerator()
    if accelerator.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
    else:
        # Processes on one machine share its cores; oversubscribing them slows every rank down.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    deepspeed.init_distributed(
        dist_backend=accelerator.communication_backend_name(),
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        verbose=False,
    )
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=torch.device(accelerator.current_device_name()),
    )


def teardown_distributed(wait_for_peers: bool = True) -> None:
    """Leave the process group (see `leaving_process_group`).

    gloo's communication threads must stop before the interpreter exits: left running, they can
    abort a rank that has already finished and saved (`terminate called without an active exception`).
    `wait_for_peers=False` leaves at once (an error this rank alone met: its peers may never come).
    """
    if torch.distributed.is_initialized():
        if wait_for_peers:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextmanager
def leaving_process_group() -> Iterator[None]:
    """Leave the process group when the block ends, however it ends: entry points run the training in
    it. After an error every rank raised together (`RunError.every_rank`) the ranks leave together;
    after one this rank met alone, at once."""
    agreed = True
    try:
        yield
    except BaseException as err:
        agreed = isinstance(err, RunError) and err.every_rank
        raise
    finally:
        teardown_distributed(wait_for_peers=agreed)


def resolve_precision(cfg: EngineConfig) -> str:
    """`auto` means bf16 on a GPU and fp32 on CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if get_accelerator().device_name() == "cuda" else "fp32"


def build_ds_config(
    cfg: EngineConfig, micro_batch_size: int, world_size: int, load_universal: bool = False
) -> dict[str, Any]:
    """The DeepSpeed config dict for this engine setting (`load_universal`: the checkpoint to load was
    converted by `convert_to_universal`)."""
    precision = resolve_precision(cfg)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": micro_batch_size * cfg.grad_accum_steps * world_size,
        "checkpoint": {"load_universal": load_universal},
        "gradient_clipping": cfg.clip_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        # A client optimizer (torch AdamW) under ZeRO is "untested" to DeepSpeed, and fine.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def apply_activation_checkpointing(model: nn.Module, setting: bool | list[int]) -> None:
    """Recompute block activations in the backward pass: all blocks, none, or N blocks per stage."""
    if setting is not False:
        model.set_grad_checkpointing(setting)


def build_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: EngineConfig,
    micro_batch_size: int,
    world_size: int,
    load_universal: bool = False,
) -> Any:
    """Wrap `model` and its client optimizer in a DeepSpeed engine (the process group must exist)."""
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=build_ds_config(cfg, micro_batch_size, world_size, load_universal),
        dist_init_required=False,
    )
    return engine


def needs_universal_checkpoint(zero_stage: int) -> bool:
    """Whether a checkpoint of this stage must be converted to load on another world size: ZeRO 1-3
    cut the optimizer state (and stage 3 the weights) per rank; stage 0 saves them whole."""
    return zero_stage > 0


def convert_to_universal(tag_dir: Path, out: Path, zero_stage: int) -> None:
    """Write DeepSpeed's world-size-independent form of checkpoint `tag_dir` to `out` (atomically:
    into a temporary folder, then renamed), with DeepSpeed's own converter in a subprocess."""
    tmp = out.with_name(out.name + ".tmp")
    command = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(tag_dir),
        "--output_folder",
        str(tmp),
        # ZeRO 1/2 checkpoints lack the parameter layout the converter wants; it can add it
        *(["--inject_missing_state"] if zero_stage in (1, 2) else []),
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"converting {tag_dir} for another world size failed: {tail}")
    os.replace(tmp, out)


def weights_finite(engine: Any) -> bool:
    """Whether every weight of every rank's part of the model is finite (agreed over all ranks)."""
    finite = all(
        torch.isfinite(getattr(p, "ds_tensor", p)).all() for p in engine.module.parameters()
    )  # ZeRO-3 keeps each rank's share of a parameter in ds_tensor
    flag = torch.tensor([int(finite)], device=get_accelerator().current_device_name())  # NCCL: on the GPU
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def input_dtype(engine: Any) -> torch.dtype:
    """The dtype the engine's module computes in (inputs must match it under bf16/fp16)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def save_checkpoint(
    engine: Any, folder: Path, tag: str, refused: Callable[[BaseException], str | None]
) -> str | None:
    """Every rank writes its part of `folder/tag` (the caller writes completion marker and `latest`).

    A write the storage refuses (`refused(err)` names why: a full disk surfaces from torch.save's C++
    writer as `RuntimeError: basic_ios::clear: iostream error` or `unexpected pos`) is not raised: the
    rank writes nothing more but goes on through DeepSpeed's collectives with its peers, so that the
    ranks can then agree to stop. Returns the first refusal's reason, or None when all was written.
    """
    reasons: list[str] = []

    def guarded(write: Callable[..., Any]) -> Callable[..., Any]:
        def attempt(*args: Any, **kwargs: Any) -> None:
            if not reasons and (reason := refused_write(lambda: write(*args, **kwargs), refused)):
                reasons.append(reason)

        return attempt

    writers = (engine.checkpoint_engine, "save"), (engine, "_copy_recovery_script")
    for owner, name in writers:
        setattr(owner, name, guarded(getattr(owner, name)))
    try:
        engine.save_checkpoint(str(folder), tag=tag, save_latest=False)
    finally:
        for owner, name in writers:
            delattr(owner, name)  # the class's method again
    return reasons[0] if reasons else None


def checkpoint_bytes_estimate(engine: Any) -> int:
    """About how many bytes one checkpoint of this engine takes over all ranks: the weights in their
    dtype plus AdamW's fp32 master weights and two moments (12 bytes) per parameter."""
    return sum(
        getattr(p, "ds_numel", p.numel()) * (p.element_size() + 12) for p in engine.module.parameters()
    )


def load_checkpoint(engine: Any, folder: Path, tag: str) -> None:
    """Restore module, optimizer and ZeRO partitions from `folder/tag` on every rank."""
    path, _ = engine.load_checkpoint(str(folder), tag=tag, load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"checkpoint {folder / tag} could not be loaded")


def restore_saved_buffers(module: nn.Module, tag_dir: Path) -> None:
    """Put the buffers (BatchNorm statistics) saved in checkpoint `tag_dir` into `module`.

    DeepSpeed's universal loading restores parameters and optimizer state only; the buffers ride in
    the model-states file that every ZeRO stage writes (rank 0's, holding the ranks' mean).
    """
    states = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))[0]
    saved = torch.load(states, map_location="cpu", weights_only=False)["module"]
    restore_rank_buffers(module, {name: saved[name] for name, _ in module.named_buffers() if name in saved})


def consolidated_state_dict(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 state dict (parameters and buffers) of checkpoint `folder/tag`, on CPU.

    Needs no process group. ZeRO 1-3 keep the fp32 master weights in their optimizer partitions,
    which DeepSpeed's own converter merges; stage 0 in fp32 stores the module as it is.
    """
    tag_dir = Path(folder) / tag
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in states["module"].items()
    }
