"""Training metrics: timed on every rank, reduced and written by rank 0 only when logging.

Per step the trainer records the time spent waiting for data and the whole step time; the loss stays
on the device until a log step, so the hot loop never synchronises. At a log step the loss is averaged
over ranks and written to TensorBoard, `metrics.jsonl` and a progress line with an ETA.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from pipeline.console import note
from pipeline.io import atomic_write_text


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory, or the resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only the rows of `path` with step <= `last_step` (atomically; a missing file stays missing)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= last_step]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `42s`."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class MetricsProcessor:
    """Accumulates step timings and losses; `log()` reduces them and, on rank 0, writes them out."""

    def __init__(
        self, run_dir: Path, rank: int, device: torch.device, total_steps: int, start_step: int = 0
    ) -> None:
        self.rank = rank
        self.device = device
        self.total_steps = total_steps
        self.writer = None
        self.jsonl = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is heavy: rank 0 only loads it

            # A resumed run repeats the steps after its checkpoint: drop what the killed run logged
            # for them, so every step appears once in TensorBoard and in metrics.jsonl.
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            jsonl_path = run_dir / "metrics.jsonl"
            truncate_jsonl(jsonl_path, start_step)
            self.jsonl = jsonl_path.open("a", encoding="utf-8")
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.steps = 0
        self.rows = 0
        self.data_wait_s = 0.0
        self.step_s = 0.0

    def record_step(self, loss: torch.Tensor, rows: int, data_wait_s: float, step_s: float) -> None:
        """Account one optimizer step: its mean loss (kept on device), rows (augmented views) over all ranks,
        timings."""
        self.loss_sum += loss.detach().to(torch.float64)
        self.steps += 1
        self.rows += rows
        self.data_wait_s += data_wait_s
        self.step_s += step_s

    def log(self, step: int, epoch: int, lr: float, bad_samples: int = 0) -> dict[str, float] | None:
        """Reduce and write the metrics of the steps since the last call (collective: every rank calls it).

        `bad_samples` is this rank's count of skipped corrupt samples so far; the log shows the sum.
        """
        if self.steps == 0:
            return None
        reduced = torch.stack([self.loss_sum, self.loss_sum.new_tensor(float(bad_samples))])
        dist.all_reduce(reduced)  # the one device sync per log interval
        loss = reduced[0].item() / (self.steps * dist.get_world_size())
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "train/rows_per_s": self.rows / max(self.step_s, 1e-9),
            "train/data_wait_frac": self.data_wait_s / max(self.step_s, 1e-9),
            "train/step_s": self.step_s / self.steps,
            "mem/peak_gb": peak_memory_gb(self.device),
            "data/bad_samples": reduced[1].item(),
        }
        eta = (self.total_steps - step) * scalars["train/step_s"]
        self._reset()
        if self.rank == 0:
            self.write(step, scalars, epoch=epoch)
            note(
                "train",
                f"step {step}/{self.total_steps} epoch {epoch} loss {loss:.4f} lr {lr:.2e} "
                f"rows/s {scalars['train/rows_per_s']:.1f} data {scalars['train/data_wait_frac']:.0%} "
                f"step {scalars['train/step_s']:.2f}s mem {scalars['mem/peak_gb']:.2f}GB "
                f"eta {format_duration(eta)}",
            )
        return scalars

    def write(self, step: int, scalars: dict[str, float], **extra: Any) -> None:
        """Rank 0: one TensorBoard point per scalar and one metrics.jsonl row (no-op on other ranks)."""
        if self.writer is None or self.jsonl is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        row = {"step": step, "time": time.time(), **extra, **scalars}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        """Flush and close the writers."""
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


class StepProfiler:
    """`log.profile_steps`: a torch profiler trace of that many optimizer steps, after 2 steps of
    warm-up (the first steps fill allocators and caches), written into the run's tensorboard folder
    (TensorBoard's profiler tab reads it). Rank 0 only; `step()` after every optimizer step; with 0
    steps, or on other ranks, every call does nothing."""

    WAIT, WARMUP = 1, 1

    def __init__(self, steps: int, folder: Path, rank: int) -> None:
        self.profiler = None
        if steps and rank == 0:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self.profiler = profile(
                activities=activities,
                schedule=schedule(wait=self.WAIT, warmup=self.WARMUP, active=steps, repeat=1),
                on_trace_ready=tensorboard_trace_handler(str(folder)),
                record_shapes=True,
            )
            self.profiler.start()

    def step(self) -> None:
        """Mark the end of an optimizer step."""
        if self.profiler is not None:
            self.profiler.step()

    def close(self) -> None:
        """Stop (a run shorter than the schedule writes what it traced)."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
