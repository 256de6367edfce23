"""One rank of a job that loads a training checkpoint on this job's world size, through the trainer's own
path (batch adaptation, universal conversion, DeepSpeed load), and saves the loaded state again.

    python -m tests.train.elastic_worker RUN_DIR TAG OUT_FOLDER   (torchrun-style variables set)

tests/train/test_elastic.py compares what it saves with what the old world size saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline.models import create_model
from pipeline.train.checkpoint import checkpoint_folder, read_trainer_state
from pipeline.train.config import load_train_config
from pipeline.train.engine import build_engine, save_checkpoint, setup_distributed
from pipeline.train.optim import build_optimizer
from pipeline.train.start import checkpoint_start
from pipeline.train.trainer import model_arguments


def main(run_dir: str, tag: str, out: str) -> None:
    """Load `run_dir/checkpoints/tag` on this world size, save it as `out/tag`."""
    cfg = load_train_config(Path(run_dir) / "config.yaml")
    world = setup_distributed().world_size
    tag_dir = checkpoint_folder(cfg.run_dir) / tag
    saved = read_trainer_state(tag_dir)
    start = checkpoint_start(cfg, world, tag_dir, saved)
    layout = start.layout()
    micro, accum = layout.micro_batch, layout.grad_accum
    torch.manual_seed(cfg.seed)
    model = create_model(**model_arguments(cfg, saved.model_arguments["num_classes"]))
    engine = build_engine(
        model,
        build_optimizer(model, cfg.optim),
        layout.applied(cfg).engine,
        micro,
        world,
        load_universal=start.load_universal,
    )
    start.load_engine(engine)
    save_checkpoint(engine, Path(out), tag, refused=lambda err: None)  # no refusal: every write error raises
    torch.distributed.barrier()
    print(f"world {world}: micro-batch {micro} x {accum} accumulation steps", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
    torch.distributed.destroy_process_group()
