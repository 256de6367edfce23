"""The training run, top to bottom: `train(cfg)` builds its parts in a fixed order, then loops.

Start and resume are one path: `train()` always begins by looking for the newest valid checkpoint of
the run (or the one `checkpoint.resume` names) and continues from it, exactly: same weights, optimizer
moments, data position and random generators on every rank, so an interrupted run ends bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import ConfigError, config_hash, save_config, to_dict
from pipeline.data.loader import LoaderState, build_eval_loader, build_train_loader
from pipeline.io import atomic_write_json
from pipeline.models import create_model
from pipeline.models.inflate import load_pretrained
from pipeline.train import signals
from pipeline.train.checkpoint import (
    CheckpointManager,
    TrainerState,
    find_resume_checkpoint,
    read_trainer_state,
    restore_rng_state,
    rng_state,
    tag_for_step,
)
from pipeline.train.config import Config, config_changes
from pipeline.train.engine import (
    DistInfo,
    apply_activation_checkpointing,
    buffers_averaged_over_ranks,
    build_engine,
    consolidated_state_dict,
    input_dtype,
    load_checkpoint,
    rank_buffers,
    restore_rank_buffers,
    save_checkpoint,
    setup_distributed,
)
from pipeline.train.evaluate import EvalResult, evaluate
from pipeline.train.loss import classification_loss
from pipeline.train.metrics import MetricsProcessor
from pipeline.train.optim import build_optimizer, cosine_lr, scaled_lr, set_lr


@dataclass
class TrainResult:
    """How `train()` ended: the optimizer step reached, and whether a stop signal ended it."""

    step: int
    epoch: int
    stopped_by_signal: bool = False
    signal: str | None = None  # "SIGTERM" / "SIGUSR2" when stopped_by_signal
    eval: dict[str, float] | None = None  # the final evaluation, when the run completed


def model_arguments(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The `create_model` keyword arguments of this run (recorded with exported weights)."""
    arguments: dict[str, Any] = {
        "name": cfg.model.name,
        "num_classes": cfg.model.num_classes or num_classes,
        "num_frames": cfg.data.num_frames,
        "img_size": cfg.data.crop_size,
    }
    if cfg.model.drop_path_rate is not None:
        arguments["drop_path_rate"] = cfg.model.drop_path_rate
    return arguments


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The video model of this run (random init; the caller seeds the generator)."""
    return create_model(**model_arguments(cfg, num_classes))


def load_pretrained_weights(model: nn.Module, path: str) -> None:
    """Start from a weights file: image weights are inflated to video, a head of another class
    count (e.g. the Kinetics model fine-tuned on SSv2) is re-initialised."""
    load_pretrained(model, torch.load(path, map_location="cpu", weights_only=True))


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, rank, ...): independent streams, reproducible anywhere."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resume_point(cfg: Config, dist_info: DistInfo) -> tuple[Path | None, TrainerState | None]:
    """The checkpoint to start from (rank 0 decides, all ranks follow) and its trainer state, checked."""
    choice = [None]
    if dist_info.rank == 0:
        tag_dir = find_resume_checkpoint(cfg.run_dir / "checkpoints", cfg.checkpoint.resume)
        choice = [str(tag_dir) if tag_dir else None]
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None, None
    tag_dir = Path(choice[0])
    state = read_trainer_state(tag_dir)
    if cfg.checkpoint.weights_only:
        return tag_dir, state
    world = dist_info.world_size
    if state.world_size != world:
        raise ConfigError(
            f"checkpoint {tag_dir} was saved by {state.world_size} ranks, this job has {world}: "
            "ZeRO partitions and data positions are per rank; resume on the same world size, or set "
            "checkpoint.weights_only=true to continue from its weights"
        )
    changes = config_changes(state.config, cfg)
    if changes:
        raise ConfigError(
            f"config changed since checkpoint {tag_dir} ({'; '.join(changes[:3])}): resume with the original "
            "config, or set checkpoint.weights_only=true to continue from its weights"
        )
    return tag_dir, state


def agree_on_stop() -> int:
    """The stop signal any rank received (0 if none), the same on every rank."""
    flag = torch.tensor([signals.requested() or 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def shuffle_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The control experiment: each clip's frames (dim 2 of B, C, T, H, W) in a random order."""
    order = torch.stack([torch.randperm(video.shape[2], generator=generator) for _ in range(video.shape[0])])
    index = order[:, None, :, None, None].expand_as(video)
    return video.gather(2, index)


def train(cfg: Config) -> TrainResult:
    """Run (or continue) the training described by `cfg` on the current process group."""
    # 1. Process group and stop signals: every rank records SIGTERM/SIGUSR2, acted on at step boundaries.
    dist_info = setup_distributed()
    rank, world = dist_info.rank, dist_info.world_size
    signals.install()
    run_dir = cfg.run_dir
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep)

    # 2. Where to start: the newest valid checkpoint, or nothing (start and resume are one path).
    tag_dir, resumed = resume_point(cfg, dist_info)
    exact_resume = resumed is not None and not cfg.checkpoint.weights_only
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        print(
            f"[train] run {run_dir}: {f'resuming {tag_dir}' if tag_dir else 'starting fresh'}",
            file=sys.stderr,
        )

    # 3. Data: the loader continues from its saved position on an exact resume.
    loader_state = None
    if exact_resume:
        loader_state = LoaderState.from_dict(resumed.ranks[rank]["loader"])
    elif resumed is not None:  # weights only: from the first sample of the checkpoint's epoch
        loader_state = LoaderState(epoch=resumed.epoch, samples_consumed=0, seed=cfg.seed)
    loader = build_train_loader(cfg.data, rank=rank, world_size=world, seed=cfg.seed, state=loader_state)
    accum = cfg.engine.grad_accum_steps
    steps_per_epoch = loader.steps_per_epoch // accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"an epoch has {loader.steps_per_epoch} batches per rank, fewer than "
            f"engine.grad_accum_steps={accum}: lower data.batch_size or engine.grad_accum_steps, or add data"
        )

    # 4. Model: the same initial weights on every rank, then pretrained weights on a fresh start.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, loader.num_classes)
    arguments = model_arguments(cfg, loader.num_classes)
    if resumed is not None and not exact_resume:
        model.load_state_dict(consolidated_state_dict(tag_dir.parent, tag_dir.name))
    elif resumed is None and cfg.init.pretrained:
        load_pretrained_weights(model, cfg.init.pretrained)
    apply_activation_checkpointing(model, cfg.engine.activation_checkpointing)

    # 5. Engine: ZeRO partitions, precision, accumulation and clipping around AdamW.
    global_batch = cfg.data.batch_size * accum * world
    engine = build_engine(model, build_optimizer(model, cfg.optim), cfg.engine, cfg.data.batch_size, world)
    dtype = input_dtype(engine)
    if exact_resume:
        load_checkpoint(engine, tag_dir.parent, tag_dir.name)
        restore_rng_state(resumed.ranks[rank]["rng"])
        restore_rank_buffers(engine.module, resumed.ranks[rank]["buffers"])
    else:
        # Drop path and the control's shuffling differ per rank, reproducibly.
        torch.manual_seed(derived_seed(cfg.seed, rank))
    frame_generator = torch.Generator().manual_seed(derived_seed(cfg.seed, rank, 1))
    if exact_resume:
        frame_generator.set_state(resumed.ranks[rank]["frame_rng"])

    # 6. Schedule in optimizer steps.
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    peak_lr = scaled_lr(cfg.optim, global_batch)
    step = resumed.step if resumed is not None else 0
    epoch = resumed.epoch if resumed is not None else 0
    if resumed is not None and not exact_resume:
        step = epoch * steps_per_epoch
    metrics = MetricsProcessor(run_dir, rank, dist_info.device, stop_step, start_step=step)

    def save(step: int, epoch: int) -> None:
        tag = tag_for_step(step)
        if rank == 0:
            checkpoints.prepare(tag)
        with buffers_averaged_over_ranks(engine.module):
            save_checkpoint(engine, checkpoints.folder, tag)
        per_rank = {
            "loader": loader.state().to_dict(),
            "rng": rng_state(),
            "frame_rng": frame_generator.get_state(),
            "buffers": rank_buffers(engine.module),
        }
        ranks: list[Any] = [None] * world
        dist.all_gather_object(ranks, per_rank)
        dist.barrier()  # every rank's DeepSpeed files are on disk before the marker
        if rank == 0:
            state = TrainerState(step, epoch, world, to_dict(cfg), config_hash(cfg), arguments, ranks)
            checkpoints.finalize(tag, state)
            print(f"[train] saved checkpoint {checkpoints.folder / tag}", file=sys.stderr, flush=True)
        dist.barrier()

    def run_eval(step: int) -> EvalResult:
        engine.eval()
        with buffers_averaged_over_ranks(engine.module):
            batches = build_eval_loader(cfg.data, rank=rank, world_size=world)
            result = evaluate(engine, batches, dist_info.device, dtype, across_ranks=True)
        engine.train()
        scalars = result.scalars(cfg.eval.mean_class_accuracy)
        metrics.write(step, scalars, epoch=epoch)
        if rank == 0:
            print(
                f"[eval] step {step}: " + " ".join(f"{k} {v:.2f}" for k, v in scalars.items()),
                file=sys.stderr,
            )
        return result

    # 7. The loop: one optimizer step = grad_accum_steps micro-batches; stop requests act between steps.
    # The loader's state is the truth about epochs: iterating it yields the rest of the current epoch.
    engine.train()
    stop_signal = 0
    batches = None
    while step < stop_step:
        started = time.perf_counter()
        data_wait = 0.0
        loss_sum = torch.zeros((), device=dist_info.device)
        for _ in range(accum):
            fetched = time.perf_counter()
            batch = next(batches, None) if batches is not None else None
            if batch is None:  # a new epoch (a step whose micro-batches straddle two epochs goes on)
                batches = iter(loader)
                batch = next(batches)
            data_wait += time.perf_counter() - fetched
            video = batch["video"].to(dist_info.device, dtype=dtype, non_blocking=True)
            if cfg.shuffle_frames:
                video = shuffle_frames(video, frame_generator)
            logits = engine(video)
            loss = classification_loss(logits, batch["label"], cfg.optim.label_smoothing)
            engine.backward(loss)
            set_lr(engine.optimizer, cosine_lr(step, total_steps, warmup_steps, peak_lr, cfg.optim.min_lr))
            engine.step()
            loss_sum += loss.detach()
        step += 1
        metrics.record_step(loss_sum / accum, global_batch, data_wait, time.perf_counter() - started)
        if step % cfg.log.every_steps == 0 or step == stop_step:
            lr = cosine_lr(step - 1, total_steps, warmup_steps, peak_lr, cfg.optim.min_lr)
            metrics.log(step, epoch, lr, bad_samples=loader.bad_samples)
        position = loader.state()
        if position.epoch != epoch:  # this step completed an epoch
            epoch = position.epoch
            if position.samples_consumed == 0:
                batches = None  # used up: the next fetch starts the next epoch
            if cfg.eval.every_epochs and epoch % cfg.eval.every_epochs == 0 and step < stop_step:
                run_eval(step)
        stop_signal = agree_on_stop()
        if stop_signal or step % cfg.checkpoint.every_steps == 0 or step == stop_step:
            save(step, epoch)
        if stop_signal:
            break

    # 8. The end: a final evaluation when the schedule is done, then hand control back.
    final = None
    if not stop_signal and step >= total_steps:
        final = run_eval(step).scalars(cfg.eval.mean_class_accuracy)
        if rank == 0:
            atomic_write_json(run_dir / "eval.json", {"step": step, **final})
    metrics.close()
    signals.uninstall()
    name = signal.Signals(stop_signal).name if stop_signal else None
    if name and rank == 0:
        print(f"[train] stopped by {name} at step {step} after saving", file=sys.stderr, flush=True)
    return TrainResult(step=step, epoch=epoch, stopped_by_signal=bool(stop_signal), signal=name, eval=final)
