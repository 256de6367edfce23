"""Elastic resume: a run saved by 2 ranks continues on 4 or on 1 with its full state.

- The state loaded on the new world size is the state the old one saved: consolidated fp32 weights and
  every Adam moment equal (torch.equal), read back through DeepSpeed's universal form of both.
- A run interrupted on 2 ranks finishes on 4 (and on 1) with its global batch, its step count and
  an evaluation; and a world size that cannot keep the global batch is one line naming those that can.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.train.checkpoint import read_trainer_state, tag_for_step
from pipeline.train.engine import consolidated_state_dict, convert_to_universal
from tests.train.conftest import REPO, job_env, job_overrides

pytestmark = pytest.mark.slow
SAVED_AT = 5  # mid-epoch: 4 steps per epoch on 2 ranks (32 clips, 4 per rank)
STEPS = 12  # 3 epochs: the runs continued on 4 and on 1 rank take 7 steps each


def start_ranks(nproc: int, module: str, *args: str, port: int) -> list[subprocess.Popen]:
    """`python -m module args` as `nproc` ranks of one job (torchrun-style variables)."""
    procs = []
    for rank in range(nproc):
        env = {
            **job_env(),
            "RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> str:
    """Wait for every rank; fail with their output when one fails."""
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(o[-2000:] for o in outputs)
    return outputs[0]


@pytest.fixture(scope="module")
def saved_on_two(small_shards, tmp_path_factory, request) -> dict[int, Path]:
    """Runs stopped at step SAVED_AT by 2 ranks, ZeRO 2 and ZeRO 3: {stage: run dir}."""
    root = tmp_path_factory.mktemp("elastic")
    runs = {}
    for stage in (2, 3):
        name = f"zero{stage}"
        overrides = job_overrides(
            small_shards, root, name, f"max_steps={SAVED_AT}", "optim.epochs=3", f"engine.zero_stage={stage}"
        )
        command = [
            sys.executable,
            str(REPO / "launch" / "local.py"),
            "--config",
            str(REPO / "configs" / "demo.yaml"),
        ]
        done = subprocess.run(
            [*command, "--nproc", "2", *overrides], cwd=REPO, env=job_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[stage] = root / name
    return runs


def universal_tensors(folder: Path, tag: str, out: Path, stage: int) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 value and Adam moments of checkpoint `folder/tag`, world-size independent."""
    convert_to_universal(folder / tag, out, stage)
    tensors = {}
    for path in sorted((out / "zero").glob("*/*.pt")):
        if path.stem in ("fp32", "exp_avg", "exp_avg_sq"):
            data = torch.load(path, weights_only=False)  # ZeRO 1/2: {"param": t, "cat_dim": d}; ZeRO 3: t
            tensors[f"{path.parent.name}/{path.stem}"] = data["param"] if isinstance(data, dict) else data
    return tensors


@pytest.mark.parametrize(("stage", "world"), [(2, 4), (2, 1), (3, 4)])
def test_state_loaded_on_another_world_size_equals_the_state_saved(
    saved_on_two: dict[int, Path], stage: int, world: int, tmp_path: Path
) -> None:
    run_dir, tag = saved_on_two[stage], tag_for_step(SAVED_AT)
    out = tmp_path / "resaved"
    output = finish(
        start_ranks(
            world, "tests.train.elastic_worker", str(run_dir), tag, str(out), port=29900 + stage * 10 + world
        )
    )
    micro, accum = (2, 1) if world == 4 else (4, 2)  # global batch 8 = 2 ranks x 4 rows
    assert f"world {world}: micro-batch {micro} x {accum} accumulation steps" in output
    before = consolidated_state_dict(run_dir / "checkpoints", tag)
    after = consolidated_state_dict(out, tag)
    assert before.keys() == after.keys() and len(after) > 10
    assert [name for name in after if not torch.equal(after[name], before[name])] == []
    saved = universal_tensors(run_dir / "checkpoints", tag, tmp_path / "saved_universal", stage)
    loaded = universal_tensors(out, tag, tmp_path / "loaded_universal", stage)
    assert saved.keys() == loaded.keys()
    assert sum(name.endswith("exp_avg_sq") for name in saved) > 10
    assert [name for name in saved if not torch.equal(saved[name], loaded[name])] == []


def test_a_run_saved_by_two_ranks_finishes_on_four_and_on_one(run_job, saved_on_two, tmp_path) -> None:
    for world in (4, 1):
        run_dir = tmp_path / f"on{world}"
        subprocess.run(["cp", "-r", str(saved_on_two[2]), str(run_dir)], check=True)
        overrides = [o for o in saved_on_two_overrides(run_dir) if not o.startswith("max_steps")]
        result = run_job(overrides, nproc=world)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"saved by 2 ranks, on {world} ranks" in result.stderr
        state = read_trainer_state(run_dir / "checkpoints" / tag_for_step(STEPS))
        assert (state.step, state.world_size, state.global_batch) == (STEPS, world, 8)
        assert json.loads((run_dir / "eval.json").read_text())["step"] == STEPS


def saved_on_two_overrides(run_dir: Path) -> list[str]:
    """The overrides of the run saved in `run_dir` (read from its resolved config), pointing at `run_dir`."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = cfg["data"]
    return [
        f"name={run_dir.name}",
        f"out_dir={run_dir.parent}",
        f"data.train=[{data['train'][0]}]",
        f"data.val=[{data['val'][0]}]",
        f"data.batch_size={data['batch_size']}",
        f"data.shuffle_buffer={data['shuffle_buffer']}",
        f"engine.zero_stage={cfg['engine']['zero_stage']}",
        f"optim.epochs={cfg['optim']['epochs']}",
    ]


def test_a_world_size_that_cannot_keep_the_global_batch_is_one_line(run_job, saved_on_two, tmp_path) -> None:
    run_dir = tmp_path / "on3"
    subprocess.run(["cp", "-r", str(saved_on_two[2]), str(run_dir)], check=True)
    result = run_job(saved_on_two_overrides(run_dir), nproc=3)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the run's global batch of 8 rows cannot be kept on 3 ranks (micro-batch at most "
        "data.batch_size=4); world sizes that can: 1, 2, 4, 8"
    ], result.stderr[-3000:]
