"""The training run, top to bottom: `train(cfg)` builds its parts in a fixed order, then loops.

Start and resume are one path: `train()` always begins by looking for the newest valid checkpoint of
the run (or the one `checkpoint.resume` names) and continues from it, exactly: same weights, optimizer
moments, data position and random generators on every rank, so an interrupted run ends bit-identical
to an uninterrupted one. On another number of ranks it continues with its full state and its global
batch (see `pipeline.train.elastic`). A checkpoint whose files do not verify or that fails to load is
skipped for the next older one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import sys
import time
import warnings
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
from pipeline.models.inflate import load_pretrained, read_weights
from pipeline.train import pictures, signals
from pipeline.train.checkpoint import (
    CheckpointManager,
    RankState,
    TrainerState,
    checkpoint_files,
    file_digest,
    find_resume_checkpoint,
    read_trainer_state,
    restore_rng_state,
    rng_state,
    tag_for_step,
    universal_folder,
)
from pipeline.train.config import Config, config_changes
from pipeline.train.elastic import batch_for_world, continued_loader_state
from pipeline.train.engine import (
    DistInfo,
    apply_activation_checkpointing,
    buffers_averaged_over_ranks,
    build_engine,
    consolidated_state_dict,
    convert_to_universal,
    gather_digests,
    input_dtype,
    load_checkpoint,
    needs_universal_checkpoint,
    rank_buffers,
    restore_rank_buffers,
    restore_saved_buffers,
    save_checkpoint,
    setup_distributed,
    weights_finite,
)
from pipeline.train.evaluate import EvalResult, evaluate
from pipeline.train.loss import classification_loss
from pipeline.train.metrics import MetricsProcessor, StepProfiler
from pipeline.train.optim import build_optimizer, cosine_lr, scaled_lr, set_lr
from pipeline.train.run_lock import RunLock


class RankAgreedError(ConfigError):
    """A one-line error every rank raised together; the entry points print it on rank 0 only."""

    agreed_by_all_ranks = True


class NonFiniteError(RankAgreedError):
    """The loss or the weights stopped being finite: training stops without saving them."""


class CheckpointLoadError(RuntimeError):
    """A verified checkpoint that DeepSpeed could not load on some rank: the next older one is tried."""

    def __init__(self, tag_dir: Path, reason: str) -> None:
        super().__init__(f"checkpoint {tag_dir} failed to load ({reason})")
        self.tag_dir = tag_dir


@dataclass
class TrainResult:
    """How `train()` ended: the optimizer step reached, and whether a stop signal ended it."""

    step: int
    epoch: int
    stopped_by_signal: bool = False
    signal: str | None = None  # "SIGTERM" / "SIGUSR2" when stopped_by_signal
    eval: dict[str, float] | None = None  # the final evaluation, when the run completed


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and how: exactly (same world size), elastically (another
    world size, full state), or from its weights only."""

    tag_dir: Path
    state: TrainerState
    weights_only: bool
    world_size: int  # of this job

    @property
    def exact(self) -> bool:
        """Full state on the world size that saved it: every rank continues its own stream."""
        return not self.weights_only and self.state.world_size == self.world_size

    @property
    def elastic(self) -> bool:
        """Full state on another world size."""
        return not self.weights_only and self.state.world_size != self.world_size


def model_arguments(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The `create_model` keyword arguments of this run (recorded with exported weights)."""
    arguments: dict[str, Any] = {
        "name": cfg.model.name,
        "num_classes": cfg.model.num_classes or num_classes,
        "num_frames": None if cfg.data.modality == "image" else cfg.data.num_frames,  # None: image model
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
    load_pretrained(model, read_weights(path))


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, rank, ...): independent streams, reproducible anywhere."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def on_rank0(action: Any, errors: tuple[type[Exception], ...] = (ConfigError,)) -> Any:
    """Run `action()` on rank 0 and hand its result to every rank; an exception of `errors` is raised on
    every rank as a RankAgreedError with the same line."""
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", action())]
        except errors as err:
            box = [("error", str(err))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RankAgreedError(value)
    return value


def hold_run_folder(run_dir: Path) -> RunLock:
    """Rank 0 takes the run folder's lock; every rank stops with its one line when another job holds it."""
    lock = RunLock(run_dir)
    on_rank0(lock.acquire)
    return lock


def resume_point(cfg: Config, world: int, skip: list[Path]) -> ResumePoint | None:
    """The checkpoint to start from (rank 0 verifies, all follow), its state read and checked."""

    def choose() -> str | None:
        folder = cfg.run_dir / "checkpoints"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tag_dir = find_resume_checkpoint(folder, cfg.checkpoint.resume, skip=skip)
        for warning in caught:
            print(f"[train] warning: {warning.message}", file=sys.stderr, flush=True)
        return str(tag_dir) if tag_dir else None

    chosen = on_rank0(choose)
    if chosen is None:
        return None
    tag_dir = Path(chosen)
    point = ResumePoint(tag_dir, read_trainer_state(tag_dir), cfg.checkpoint.weights_only, world)
    changes = config_changes(point.state.config, cfg)
    if changes and not point.weights_only:
        raise RankAgreedError(
            f"config changed since checkpoint {tag_dir} ({'; '.join(changes[:3])}): resume with the original "
            "config, or set checkpoint.weights_only=true to continue from its weights"
        )
    return point


def batch_of_run(cfg: Config, point: ResumePoint | None, world: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps): the config's on a fresh start or a weights-only one,
    the checkpoint's on the same world size, adapted to keep its global batch on another."""
    if point is None or point.weights_only:
        return cfg.data.batch_size, cfg.engine.grad_accum_steps
    if point.exact:
        return point.state.micro_batch, point.state.grad_accum
    try:
        return batch_for_world(
            point.state.global_batch, world, cfg.data.batch_size, cfg.data.aug.repeated_aug
        )
    except ConfigError as err:
        raise RankAgreedError(str(err)) from None


def with_batch(cfg: Config, micro_batch: int, grad_accum: int) -> Config:
    """`cfg` with another micro-batch per rank and accumulation."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, batch_size=micro_batch),
        engine=dataclasses.replace(cfg.engine, grad_accum_steps=grad_accum),
    )


def load_engine_state(engine: Any, point: ResumePoint, zero_stage: int) -> None:
    """Load the checkpoint's DeepSpeed state; on another world size through its universal form, which
    rank 0 makes once. Raises CheckpointLoadError (on every rank) when any rank fails."""
    tag_dir, error = point.tag_dir, ""
    if point.elastic and needs_universal_checkpoint(zero_stage):
        tag_dir = universal_folder(point.tag_dir)

        def convert() -> None:
            if not tag_dir.is_dir():
                print(f"[train] converting {point.tag_dir} for {point.world_size} ranks", file=sys.stderr)
                convert_to_universal(point.tag_dir, tag_dir, zero_stage)

        try:
            on_rank0(convert, errors=(ConfigError, RuntimeError))
        except RankAgreedError as err:
            raise CheckpointLoadError(point.tag_dir, str(err)) from None
    try:
        load_checkpoint(engine, tag_dir.parent, tag_dir.name)
        if tag_dir != point.tag_dir:
            restore_saved_buffers(engine.module, point.tag_dir)
    except Exception as err:  # any failure to read the files: the tag is unusable, an older one may not be
        error = f"{type(err).__name__}: {err}"
    failed = torch.tensor([int(bool(error))], device=engine.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        raise CheckpointLoadError(point.tag_dir, error or "on another rank")


def shuffle_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The control experiment: each clip's frames (dim 2 of B, C, T, H, W) in a random order."""
    order = torch.stack([torch.randperm(video.shape[2], generator=generator) for _ in range(video.shape[0])])
    index = order[:, None, :, None, None].expand_as(video)
    return video.gather(2, index)


def train(cfg: Config) -> TrainResult:
    """Run (or continue) the training described by `cfg` on the current process group."""
    # Process group (with its collective timeout), stop signals, and the run folder held by this job.
    dist_info = setup_distributed(cfg.engine.collective_timeout_s)
    signals.install()
    lock = hold_run_folder(cfg.run_dir)
    try:
        skip: list[Path] = []
        while True:
            try:
                return run_training(cfg, dist_info, skip)
            except CheckpointLoadError as err:
                if dist_info.rank == 0:
                    print(f"[train] warning: skipping: {err}", file=sys.stderr, flush=True)
                skip.append(err.tag_dir)
    finally:
        lock.release()


def run_training(cfg: Config, dist_info: DistInfo, skip: list[Path]) -> TrainResult:
    """Build the run's parts from the newest usable checkpoint (not in `skip`), then train."""
    rank, world = dist_info.rank, dist_info.world_size
    run_dir = cfg.run_dir
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep)

    # 1. Where to start: the newest valid checkpoint, or nothing (start and resume are one path).
    point = resume_point(cfg, world, skip)
    micro_batch, accum = batch_of_run(cfg, point, world)
    run_cfg = with_batch(cfg, micro_batch, accum)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        start = f"resuming {point.tag_dir}" if point else "starting fresh"
        if point is not None and point.elastic:
            start += (
                f" saved by {point.state.world_size} ranks, on {world} ranks: {micro_batch} clips per rank x "
                f"{accum} accumulation steps keep the global batch of {point.state.global_batch}"
            )
        print(f"[train] run {run_dir}: {start}", file=sys.stderr, flush=True)

    # 2. Data: the loader continues from its saved position (re-cut for another world size).
    loader = build_train_loader(run_cfg.data, rank=rank, world_size=world, seed=cfg.seed, run_dir=run_dir)
    if point is not None and point.exact:
        loader.restore(point.state.ranks[rank].loader)
    elif point is not None and point.elastic:
        loader.restore(continued_loader_state(point.state, loader, cfg.data.shuffle_buffer))
    elif point is not None:  # weights only: from the first sample of the checkpoint's epoch
        loader.restore(LoaderState(epoch=point.state.epoch, samples_consumed=0, seed=cfg.seed))
    steps_per_epoch = loader.steps_per_epoch // accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"an epoch has {loader.steps_per_epoch} batches per rank, fewer than "
            f"engine.grad_accum_steps={accum}: lower data.batch_size or engine.grad_accum_steps, or add data"
        )

    # 3. Model: the same initial weights on every rank, then pretrained weights on a fresh start.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, loader.num_classes)
    arguments = model_arguments(cfg, loader.num_classes)
    if point is not None and point.weights_only:
        model.load_state_dict(consolidated_state_dict(point.tag_dir.parent, point.tag_dir.name))
    elif point is None and cfg.init.pretrained:
        load_pretrained_weights(model, cfg.init.pretrained)
    apply_activation_checkpointing(model, cfg.engine.activation_checkpointing)

    # 4. Engine: ZeRO partitions, precision, accumulation and clipping around AdamW; then the saved
    #    state, and this rank's generators and BatchNorm statistics (a rank new to the run derives its own).
    global_batch = micro_batch * accum * world
    elastic = point is not None and point.elastic
    engine = build_engine(
        model,
        build_optimizer(model, cfg.optim),
        run_cfg.engine,
        micro_batch,
        world,
        load_universal=elastic and needs_universal_checkpoint(cfg.engine.zero_stage),
    )
    dtype = input_dtype(engine)
    frame_generator = torch.Generator().manual_seed(derived_seed(cfg.seed, rank, 1))
    saved_rank = (
        point.state.ranks[rank]
        if point and not point.weights_only and rank < point.state.world_size
        else None
    )
    if point is not None and not point.weights_only:
        load_engine_state(engine, point, cfg.engine.zero_stage)
    if saved_rank is not None:
        restore_rng_state(saved_rank.rng)
        frame_generator.set_state(saved_rank.frame_rng)
        restore_rank_buffers(engine.module, saved_rank.buffers)
    else:
        # Drop path and the control's shuffling differ per rank, reproducibly.
        step_seed = point.state.step if point else 0
        torch.manual_seed(derived_seed(cfg.seed, rank, step_seed))
        frame_generator.manual_seed(derived_seed(cfg.seed, rank, 1, step_seed))

    # 5. Schedule in optimizer steps.
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    peak_lr = scaled_lr(cfg.optim, global_batch)
    step = point.state.step if point is not None else 0
    epoch = point.state.epoch if point is not None else 0
    if point is not None and point.weights_only:
        step = epoch * steps_per_epoch
    metrics = MetricsProcessor(run_dir, rank, dist_info.device, stop_step, start_step=step)

    def save(step: int, epoch: int) -> None:
        if not weights_finite(engine):  # never let non-finite weights become the checkpoint to resume
            raise NonFiniteError(
                f"the weights are not finite at step {step}: not saving them ({diverged_hint()})"
            )
        tag = tag_for_step(step)
        if rank == 0:
            checkpoints.prepare(tag)
        with buffers_averaged_over_ranks(engine.module):
            save_checkpoint(engine, checkpoints.folder, tag)
        mine = RankState(
            loader.state(), rng_state(), frame_generator.get_state(), rank_buffers(engine.module)
        )
        ranks: list[Any] = [None] * world
        dist.all_gather_object(ranks, mine)
        if rank == 0:
            state = TrainerState(
                step, epoch, world, to_dict(cfg), config_hash(cfg), arguments, ranks, micro_batch, accum
            )
            checkpoints.write_state(tag, state)
        dist.barrier()  # every rank's files are on disk: digest them (shared out over the ranks)
        tag_dir = checkpoints.folder / tag
        files = gather_digests(tag_dir, on_rank0(lambda: checkpoint_files(tag_dir)), file_digest)
        if rank == 0:
            checkpoints.finalize(tag, step, world, files)
            print(f"[train] saved checkpoint {tag_dir}", file=sys.stderr, flush=True)
        dist.barrier()

    def diverged_hint() -> str:
        newest = find_resume_checkpoint(checkpoints.folder, "auto") if rank == 0 else None
        where = f"the newest good checkpoint is {newest}" if newest else "no checkpoint was saved yet"
        return f"{where}; lower optim.lr or set engine.clip_grad_norm, then resume"

    def run_eval(step: int) -> EvalResult:
        engine.eval()
        with buffers_averaged_over_ranks(engine.module):
            batches = build_eval_loader(cfg.data, rank=rank, world_size=world, run_dir=run_dir)
            with pictures.StructureMapProbe(engine.module) as probe:
                result = evaluate(engine, batches, dist_info.device, dtype, across_ranks=True)
        engine.train()
        scalars = result.scalars(cfg.eval.mean_class_accuracy)
        metrics.write(step, scalars, epoch=epoch)
        if rank == 0:
            pictures.log_evaluation(metrics.writer, step, result.confusion, probe.maps)
            print(
                f"[eval] step {step}: " + " ".join(f"{k} {v:.2f}" for k, v in scalars.items()),
                file=sys.stderr,
            )
        return result

    # 6. The loop: one optimizer step = grad_accum_steps micro-batches; stop requests act between steps.
    # The loader's state is the truth about epochs: iterating it yields the rest of the current epoch.
    engine.train()
    stop_signal, nonfinite_steps = 0, 0
    batches = None
    first_step, profiler = step, StepProfiler(cfg.log.profile_steps, run_dir / "tensorboard", rank)
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
            if step == first_step and metrics.writer is not None:  # once per start: what the model sees
                pictures.log_training_clips(metrics.writer, video, cfg.data.aug, step)
            logits = engine(video)
            loss = classification_loss(logits, batch["label"], cfg.optim.label_smoothing)
            engine.backward(loss)
            set_lr(engine.optimizer, cosine_lr(step, total_steps, warmup_steps, peak_lr, cfg.optim.min_lr))
            engine.step()
            loss_sum += loss.detach()
        step += 1
        metrics.record_step(loss_sum / accum, global_batch, data_wait, time.perf_counter() - started)
        profiler.step()
        if step % cfg.log.every_steps == 0 or step == stop_step:
            lr = cosine_lr(step - 1, total_steps, warmup_steps, peak_lr, cfg.optim.min_lr)
            metrics.log(step, epoch, lr, bad_samples=loader.bad_samples)
        # One collective per step: any rank's stop signal, any rank's non-finite loss.
        stop_flag = torch.tensor(signals.requested() or 0, device=dist_info.device)
        flags = torch.stack([stop_flag, (~torch.isfinite(loss_sum)).long()])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_signal, nonfinite = flags.tolist()  # the one host sync of a step
        nonfinite_steps = nonfinite_steps + 1 if nonfinite else 0
        if nonfinite_steps and (
            nonfinite_steps >= cfg.optim.max_nonfinite_steps or not weights_finite(engine)
        ):
            raise NonFiniteError(
                f"training diverged at step {step}: the loss was not finite for {nonfinite_steps} "
                f"consecutive step(s) (optim.max_nonfinite_steps={cfg.optim.max_nonfinite_steps}); "
                + diverged_hint()
            )
        position = loader.state()
        if position.epoch != epoch:  # this step completed an epoch
            epoch = position.epoch
            if position.samples_consumed == 0:
                batches = None  # used up: the next fetch starts the next epoch
            if cfg.eval.every_epochs and epoch % cfg.eval.every_epochs == 0 and step < stop_step:
                run_eval(step)
        if not nonfinite_steps and (
            stop_signal or step % cfg.checkpoint.every_steps == 0 or step == stop_step
        ):
            save(step, epoch)
        if stop_signal:
            break

    # 7. The end: a final evaluation when the schedule is done, then hand control back.
    final = None
    if not stop_signal and step >= total_steps:
        final = run_eval(step).scalars(cfg.eval.mean_class_accuracy)
        if rank == 0:
            atomic_write_json(run_dir / "eval.json", {"step": step, **final})
    profiler.close()
    metrics.close()
    signals.uninstall()
    name = signal.Signals(stop_signal).name if stop_signal else None
    if name and rank == 0:
        print(f"[train] stopped by {name} at step {step} after saving", file=sys.stderr, flush=True)
    return TrainResult(step=step, epoch=epoch, stopped_by_signal=bool(stop_signal), signal=name, eval=final)
