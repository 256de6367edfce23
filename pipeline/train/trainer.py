"""The training run: `train(cfg)` holds the process group and the run folder, and a `Trainer` built from
the newest usable checkpoint runs the loop.

A `Trainer` builds its parts in a fixed order (how the run starts, data, model, engine and saved state,
schedule, metrics) from one `pipeline.train.start.Start` value, which knows its kind (fresh, exact,
elastic, weights only) so that the Trainer does not; then `fit()` repeats `train_step`, the ranks' one
agreement per step, the epoch's evaluation and `maybe_save` until the schedule ends or a stop signal
arrives. An interrupted run ends bit-identical to an uninterrupted one; a checkpoint whose files do not
verify or that fails to load is skipped for the next older one.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import ConfigError, config_hash, save_config, to_dict
from pipeline.console import note
from pipeline.data.batch import Batch
from pipeline.data.loader import build_eval_loader, build_train_loader
from pipeline.data.transforms import shuffle_frames
from pipeline.errors import DivergenceError
from pipeline.io import atomic_write_json
from pipeline.models import create_model
from pipeline.train import pictures, signals
from pipeline.train.agreement import on_rank0
from pipeline.train.buffers import buffers_averaged_over_ranks
from pipeline.train.checkpoint import (
    CheckpointManager,
    RankParts,
    TrainerState,
    checkpoint_files,
    checkpoint_folder,
    find_resume_checkpoint,
    gather_digests,
    refused_write,
    save_refusal,
    tag_for_step,
)
from pipeline.train.config import Config
from pipeline.train.engine import (
    DistInfo,
    apply_activation_checkpointing,
    build_engine,
    checkpoint_bytes_estimate,
    input_dtype,
    save_checkpoint,
    setup_distributed,
    weights_finite,
)
from pipeline.train.evaluate import EvalResult, evaluate
from pipeline.train.loss import classification_loss
from pipeline.train.metrics import MetricsProcessor, StepProfiler
from pipeline.train.optim import LrSchedule, build_optimizer, set_lr
from pipeline.train.run_lock import RunLock
from pipeline.train.start import CheckpointLoadError, choose_start


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
        "num_frames": None if cfg.data.modality == "image" else cfg.data.num_frames,  # None: image model
        "img_size": cfg.data.crop_size,
    }
    if cfg.model.drop_path_rate is not None:
        arguments["drop_path_rate"] = cfg.model.drop_path_rate
    return arguments


def train(cfg: Config) -> TrainResult:
    """Run (or continue) the training described by `cfg` on this process's process group (joined here
    if needed; the entry point leaves it, see `engine.leaving_process_group`)."""
    dist_info = setup_distributed(cfg.engine.collective_timeout_s)
    signals.install()
    lock = RunLock(cfg.run_dir)
    try:
        on_rank0(lock.acquire)  # one job per run folder: a second stops with the holder's line
        skip: list[Path] = []
        while True:
            try:
                return Trainer(cfg, dist_info, skip).fit()
            except CheckpointLoadError as err:
                if dist_info.rank == 0:
                    note("train", f"warning: skipping: {err}")
                skip.append(err.tag_dir)
    finally:
        lock.release()
        signals.uninstall()


class Trainer:
    """One start of a run on the current process group, from the newest usable checkpoint not in `skip`."""

    def __init__(self, cfg: Config, dist_info: DistInfo, skip: list[Path]) -> None:
        self.cfg, self.device = cfg, dist_info.device
        self.rank, self.world = rank, world = dist_info.rank, dist_info.world_size
        self.checkpoints = CheckpointManager(checkpoint_folder(cfg.run_dir), cfg.checkpoint.keep)

        # 1. How this start begins (fresh, exact, elastic, weights only: see `pipeline.train.start`), and
        #    its batch layout.
        start = choose_start(cfg, world, skip)
        layout = start.layout()
        self.micro_batch, self.accum = layout.micro_batch, layout.grad_accum
        self.global_batch = layout.global_batch(world)  # rows per step: the learning rate scales with them
        if self.rank == 0:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, cfg.run_dir / "config.yaml")
            note(
                "train",
                f"run {cfg.run_dir}: {start.describe()}: {layout.describe(world, cfg.data.aug.repeated_aug)}",
            )

        # 2. Data (its position is this rank's part of the start, put in place in step 4).
        self.loader = build_train_loader(
            layout.applied(cfg).data, rank=rank, world_size=world, seed=cfg.seed, run_dir=cfg.run_dir
        )
        self.steps_per_epoch = self.loader.steps_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"an epoch has {self.loader.steps_per_epoch} batches per rank, fewer than "
                f"engine.grad_accum_steps={self.accum}: lower data.batch_size or engine.grad_accum_steps, "
                "or add data"
            )

        # 3. Model: the same initial weights on every rank, then those the start begins from.
        torch.manual_seed(cfg.seed)
        self.model_arguments = model_arguments(cfg, self.loader.num_classes)
        model = create_model(**self.model_arguments)
        start.prepare_model(model)
        apply_activation_checkpointing(model, cfg.engine.activation_checkpointing)

        # 4. Engine: ZeRO partitions, precision, accumulation and clipping around AdamW, and the DeepSpeed
        #    state the start loads; then this rank's parts (loader position, generators, BatchNorm
        #    statistics), saved and loaded as one.
        self.engine = build_engine(
            model,
            build_optimizer(model, cfg.optim),
            layout.applied(cfg).engine,
            self.micro_batch,
            world,
            load_universal=start.load_universal,
        )
        self.dtype = input_dtype(self.engine)
        start.load_engine(self.engine)
        self.frame_generator = torch.Generator()
        self.rank_parts = RankParts(self.loader, self.frame_generator, self.engine.module)
        start.load_rank(self.rank_parts, rank)

        # 5. Schedule, in optimizer steps.
        self.schedule = LrSchedule.of_run(cfg.optim, self.steps_per_epoch, self.global_batch)
        self.stop_step = min(self.schedule.total_steps, cfg.max_steps or self.schedule.total_steps)
        self.step, self.epoch = start.position(self.steps_per_epoch)
        self.first_step = self.step

        # 6. Metrics: scalars and pictures (rank 0), an optional profiler trace.
        self.metrics = MetricsProcessor(cfg.run_dir, rank, self.device, self.stop_step, start_step=self.step)
        self.profiler = StepProfiler(cfg.log.profile_steps, cfg.run_dir / "tensorboard", rank)
        self.batches: Any = None  # the current epoch's iterator
        self.nonfinite_steps = 0

    def fit(self) -> TrainResult:
        """Train until the schedule ends or a stop signal arrives; a signal saves the step it stopped at."""
        self.engine.train()
        stop_signal = 0
        while self.step < self.stop_step:
            started = time.perf_counter()
            loss, data_wait = self.train_step()
            self.step += 1
            self.metrics.record_step(loss, self.global_batch, data_wait, time.perf_counter() - started)
            self.profiler.step()
            if self.step % self.cfg.log.every_steps == 0 or self.step == self.stop_step:
                lr = self.schedule(self.step - 1)
                self.metrics.log(self.step, self.epoch, lr, bad_samples=self.loader.bad_samples)
            stop_signal = self.agree_on_step(loss)
            self.maybe_end_epoch()
            self.maybe_save(stop_signal)
            if stop_signal:
                break
        return self.finish(stop_signal)

    def next_batch(self) -> Batch:
        """The next micro-batch; a new epoch starts where the last one ran out (a step whose
        micro-batches straddle two epochs goes on). The loader's state is the truth about epochs."""
        batch = next(self.batches, None) if self.batches is not None else None
        if batch is None:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        return batch

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step of `grad_accum_steps` micro-batches: their mean loss, and the seconds spent
        waiting for data."""
        loss_sum, data_wait = torch.zeros((), device=self.device), 0.0
        for _ in range(self.accum):
            fetched = time.perf_counter()
            batch = self.next_batch()
            data_wait += time.perf_counter() - fetched
            inputs = batch.inputs.to(self.device, dtype=self.dtype, non_blocking=True)
            if self.cfg.shuffle_frames:
                inputs = shuffle_frames(inputs, self.frame_generator)
            if self.step == self.first_step and self.metrics.writer is not None:  # once per start
                pictures.log_training_clips(self.metrics.writer, inputs, self.cfg.data.aug, self.step)
            loss = classification_loss(self.engine(inputs), batch.label, self.cfg.optim.label_smoothing)
            self.engine.backward(loss)
            set_lr(self.engine.optimizer, self.schedule(self.step))
            self.engine.step()
            loss_sum += loss.detach()
        return loss_sum / self.accum, data_wait

    def agree_on_step(self, loss: torch.Tensor) -> int:
        """The ranks' one collective (and host sync) of a step: any rank's stop signal, any rank's
        non-finite loss. Returns the stop signal (0: none); raises DivergenceError on divergence."""
        stop_flag = torch.tensor(signals.requested() or 0, device=self.device)
        flags = torch.stack([stop_flag, (~torch.isfinite(loss)).long()])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_signal, nonfinite = flags.tolist()
        self.nonfinite_steps = self.nonfinite_steps + 1 if nonfinite else 0
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_steps and (self.nonfinite_steps >= limit or not weights_finite(self.engine)):
            raise DivergenceError(
                f"training diverged at step {self.step}: the loss was not finite for {self.nonfinite_steps} "
                f"consecutive step(s) (optim.max_nonfinite_steps={limit}); {self.diverged_hint()}",
                every_rank=True,
            )
        return stop_signal

    def maybe_end_epoch(self) -> None:
        """When this step completed an epoch: move on, and evaluate if the config asks for it."""
        position = self.loader.state()
        if position.epoch == self.epoch:
            return
        self.epoch = position.epoch
        if position.samples_consumed == 0:
            self.batches = None  # used up: the next fetch starts the next epoch
        every = self.cfg.eval.every_epochs
        if every and self.epoch % every == 0 and self.step < self.stop_step:
            self.evaluate()

    def maybe_save(self, stop_signal: int) -> None:
        """Save on a stop signal, every `checkpoint.every_steps` and at the end; never a step whose loss
        was not finite (the last good checkpoint stays the one to resume)."""
        due = stop_signal or self.step % self.cfg.checkpoint.every_steps == 0 or self.step == self.stop_step
        if due and not self.nonfinite_steps:
            self.save()

    def save(self) -> None:
        """Every rank writes its part of the checkpoint of this step; rank 0 adds the trainer state and,
        once every file is digested, the completion marker."""
        if not weights_finite(self.engine):  # never let non-finite weights become the checkpoint to resume
            raise DivergenceError(
                f"the weights are not finite at step {self.step}: not saving them ({self.diverged_hint()})",
                every_rank=True,
            )
        tag = tag_for_step(self.step)
        tag_dir = self.checkpoints.folder / tag
        needed = self.checkpoints.save_bytes(checkpoint_bytes_estimate(self.engine))

        def refused(err: BaseException) -> str | None:
            return save_refusal(err, self.checkpoints.folder, needed)

        if self.rank == 0:
            self.checkpoints.warn_if_short()
            self.checkpoints.prepare(tag)
        with buffers_averaged_over_ranks(self.engine.module):
            refusal = save_checkpoint(self.engine, self.checkpoints.folder, tag, refused)
        mine = self.rank_parts.state_dict()
        ranks: list[Any] = [None] * self.world
        dist.all_gather_object(ranks, mine)
        if self.rank == 0 and refusal is None:
            state = TrainerState(
                self.step,
                self.epoch,
                self.world,
                to_dict(self.cfg),
                config_hash(self.cfg),
                self.model_arguments,
                ranks,
                self.micro_batch,
                self.accum,
            )
            refusal = refused_write(lambda: self.checkpoints.write_state(tag, state), refused)
        # Every rank's files are on disk (or refused): stop together, or digest them (shared out).
        self.stop_unless_written(refusal, tag, needed)
        files = gather_digests(tag_dir, on_rank0(lambda: checkpoint_files(tag_dir)))
        if self.rank == 0:
            refusal = refused_write(
                lambda: self.checkpoints.finalize(tag, self.step, self.world, files), refused
            )
        self.stop_unless_written(refusal, tag, needed)
        if self.rank == 0:
            note("train", f"saved checkpoint {tag_dir}")

    def stop_unless_written(self, refusal: str | None, tag: str, needed: int) -> None:
        """The ranks agree on whether the storage refused any of their writes of `tag`; if it did, rank 0
        removes the partial tag and every rank raises the same one line (not requeued: a restart meets
        the same disk)."""
        refusals: list[Any] = [None] * self.world
        dist.all_gather_object(refusals, refusal)
        reason = next((r for r in refusals if r is not None), None)
        if reason is not None:

            def discard() -> None:
                raise self.checkpoints.discard(tag, reason, needed)

            on_rank0(discard)

    def diverged_hint(self) -> str:
        """What a user can do after a divergence."""
        newest = find_resume_checkpoint(self.checkpoints.folder, "auto") if self.rank == 0 else None
        where = f"the newest good checkpoint is {newest}" if newest else "no checkpoint was saved yet"
        return f"{where}; lower optim.lr or set engine.clip_grad_norm, then resume"

    def evaluate(self) -> EvalResult:
        """Evaluate on the validation split with the ranks' mean BatchNorm statistics; log scalars and
        pictures (confusion matrix, per-class accuracy, StructSA structure maps)."""
        self.engine.eval()
        with buffers_averaged_over_ranks(self.engine.module):
            batches = build_eval_loader(
                self.cfg.data, rank=self.rank, world_size=self.world, run_dir=self.cfg.run_dir
            )
            with pictures.StructureMapProbe(self.engine.module) as probe:
                result = evaluate(self.engine, batches, self.device, self.dtype, across_ranks=True)
        self.engine.train()
        scalars = result.scalars(self.cfg.eval.mean_class_accuracy)
        self.metrics.write(self.step, scalars, epoch=self.epoch)
        if self.rank == 0:
            pictures.log_evaluation(self.metrics.writer, self.step, result.confusion, probe.maps)
            line = " ".join(f"{k} {v:.2f}" for k, v in scalars.items())
            note("eval", f"step {self.step}: {line}")
        return result

    def finish(self, stop_signal: int) -> TrainResult:
        """A final evaluation when the schedule is done; close the logs."""
        final = None
        if not stop_signal and self.step >= self.schedule.total_steps:
            final = self.evaluate().scalars(self.cfg.eval.mean_class_accuracy)
            if self.rank == 0:
                atomic_write_json(self.cfg.run_dir / "eval.json", {"step": self.step, **final})
        self.profiler.close()
        self.metrics.close()
        name = signal.Signals(stop_signal).name if stop_signal else None
        if name and self.rank == 0:
            note("train", f"stopped by {name} at step {self.step} after saving")
        return TrainResult(self.step, self.epoch, bool(stop_signal), signal=name, eval=final)
