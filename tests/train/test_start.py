"""How a run starts, without a process group: which kind a checkpoint and the config make, and what
each kind answers (its line, batch layout, first step, whether the engine loads a universal form).
Their loading on real ranks is what test_resume.py and test_elastic.py run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pipeline.config import ConfigError, config_hash, load_config, to_dict
from pipeline.train.checkpoint import TrainerState
from pipeline.train.config import Config
from pipeline.train.metrics import MetricsProcessor
from pipeline.train.optim import LrSchedule
from pipeline.train.start import BatchLayout, Elastic, Exact, Fresh, WeightsOnly, checkpoint_start

REPO = Path(__file__).resolve().parents[2]
TAG = Path("runs/demo/checkpoints/step_00000012")


def config(*overrides: str) -> Config:
    """The demo config (8 rows per rank, ZeRO-2) with `overrides`."""
    return load_config(Config, REPO / "configs" / "demo.yaml", overrides)


def saved_by(cfg: Config, world: int, micro: int, accum: int, step: int = 12, epoch: int = 3) -> TrainerState:
    """The trainer state a job of `world` ranks with that layout saved at `step`."""
    return TrainerState(step, epoch, world, to_dict(cfg), config_hash(cfg), {}, [], micro, accum)


@pytest.fixture
def process_group() -> object:
    """A one-rank gloo process group (what the metrics reduce over)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_checkpoint_and_the_config_decide_the_kind() -> None:
    cfg = config()
    saved = saved_by(cfg, world=2, micro=8, accum=1)
    assert type(checkpoint_start(cfg, 2, TAG, saved)) is Exact
    assert type(checkpoint_start(cfg, 4, TAG, saved)) is Elastic
    weights_only = config("checkpoint.weights_only=true", "optim.lr=2e-3")
    assert type(checkpoint_start(weights_only, 2, TAG, saved)) is WeightsOnly


def test_a_changed_config_is_refused_on_every_rank_unless_only_the_weights_are_taken() -> None:
    saved = saved_by(config(), world=2, micro=8, accum=1)
    with pytest.raises(ConfigError, match=r"config changed since checkpoint .*optim\.lr") as caught:
        checkpoint_start(config("optim.lr=2e-3"), 2, TAG, saved)
    assert caught.value.every_rank


def test_each_kind_says_how_it_starts() -> None:
    cfg = config()
    saved = saved_by(cfg, world=2, micro=8, accum=1)
    assert Fresh(cfg, 2).describe() == "starting fresh"
    assert Exact(cfg, 2, TAG, saved).describe() == f"resuming {TAG}"
    assert Elastic(cfg, 4, TAG, saved).describe() == f"resuming {TAG} saved by 2 ranks, on 4 ranks"
    assert WeightsOnly(cfg, 2, TAG, saved).describe() == f"resuming {TAG} (its weights only)"


def test_the_batch_layout_is_the_configs_the_checkpoints_or_keeps_the_global_batch() -> None:
    cfg = config("data.batch_size=4", "engine.grad_accum_steps=2")
    saved = saved_by(cfg, world=2, micro=2, accum=3)  # global batch 12
    assert Fresh(cfg, 2).layout() == WeightsOnly(cfg, 2, TAG, saved).layout() == BatchLayout(4, 2)
    assert Exact(cfg, 2, TAG, saved).layout() == BatchLayout(2, 3)
    on_three = Elastic(cfg, 3, TAG, saved).layout()
    assert on_three == BatchLayout(4, 1) and on_three.global_batch(3) == 12
    assert Elastic(cfg, 1, TAG, saved).layout() == BatchLayout(4, 3)
    with pytest.raises(ConfigError, match="global batch of 12 rows cannot be kept on 5 ranks") as caught:
        Elastic(cfg, 5, TAG, saved).layout()
    assert caught.value.every_rank


def test_the_layout_applies_to_the_config_it_runs_with() -> None:
    applied = BatchLayout(2, 3).applied(config())
    assert (applied.data.batch_size, applied.engine.grad_accum_steps) == (2, 3)


def test_the_first_step_continues_the_checkpoint_or_starts_its_epoch_afresh() -> None:
    cfg = config()
    saved = saved_by(cfg, world=2, micro=8, accum=1, step=12, epoch=3)
    assert Fresh(cfg, 2).position(steps_per_epoch=5) == (0, 0)
    assert Exact(cfg, 2, TAG, saved).position(5) == Elastic(cfg, 4, TAG, saved).position(5) == (12, 3)
    assert WeightsOnly(cfg, 2, TAG, saved).position(5) == (15, 3)  # the first step of epoch 3


def test_only_an_elastic_start_under_zero_1_to_3_loads_a_universal_checkpoint() -> None:
    saved = saved_by(config(), world=2, micro=8, accum=1)
    assert Elastic(config(), 4, TAG, saved).load_universal
    assert not Elastic(config("engine.zero_stage=0"), 4, TAG, saved).load_universal
    kinds = Fresh(config(), 2), Exact(config(), 2, TAG, saved), WeightsOnly(config(), 2, TAG, saved)
    assert not any(kind.load_universal for kind in kinds)


def test_with_repeated_augmentation_the_global_batch_and_the_learning_rate_count_rows() -> None:
    # 6 rows per rank = 2 samples x 3 views; 4 ranks x 2 accumulation steps: 48 rows of 16 samples
    cfg = config("data.batch_size=6", "data.aug.repeated_aug=3", "engine.grad_accum_steps=2")
    layout = Fresh(cfg, 4).layout()
    assert cfg.data.samples_per_batch == 2 and layout.global_batch(4) == 6 * 4 * 2
    assert layout.describe(4, 3) == (
        "6 rows per rank x 2 accumulation steps (global batch 48 rows: 16 samples x 3 views)"
    )
    # DeiT's convention: the rate scales with the batch the model sees, its repeated views included
    schedule = LrSchedule.of_run(cfg.optim, steps_per_epoch=10, global_batch=layout.global_batch(4))
    assert schedule.peak == pytest.approx(cfg.optim.lr * 48 / cfg.optim.base_batch_size)
    saved = saved_by(cfg, world=4, micro=6, accum=2)
    assert saved.global_batch == 48  # what an elastic start keeps
    assert Elastic(cfg, 8, TAG, saved).layout() == BatchLayout(6, 1)  # 8 x 6 rows: whole samples per rank


def test_the_progress_line_and_the_metrics_give_rows_per_second(tmp_path, capsys, process_group) -> None:
    metrics = MetricsProcessor(tmp_path, rank=0, device=torch.device("cpu"), total_steps=4)
    for _ in range(2):
        metrics.record_step(torch.tensor(1.0), rows=48, data_wait_s=0.0, step_s=0.5)
    scalars = metrics.log(step=2, epoch=0, lr=1e-3)
    metrics.close()
    assert scalars is not None and scalars["train/rows_per_s"] == pytest.approx(96.0)
    assert "rows/s 96.0 " in capsys.readouterr().err
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["train/rows_per_s"] == pytest.approx(96.0)
