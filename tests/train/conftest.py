"""Fixtures of the training tests: small real shards (synth -> sharder) and a launcher for real jobs.

Jobs run `launch/local.py` with the demo config and overrides, as a user would: real processes, gloo,
DeepSpeed, real decoded videos. Clips are tiny (8 frames of 32 px) so a job takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from shards.__main__ import main as shards_main

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def synth_split(root: Path, split: str, num_videos: int, classes: int, seed: int, frames: int = 16) -> Path:
    """Raw SSv2-layout videos of one split -> a shard folder; returns the folder."""
    raw, out = root / f"raw-{split}", root / split
    synth = ["synth", "ssv2", "--out", str(raw), "--num-videos", str(num_videos), "--classes", str(classes)]
    synth += ["--seed", str(seed), "--height", "32", "--frames", str(frames), "--splits", split]
    assert shards_main(synth) == 0
    assert (
        shards_main(["ssv2", "--root", str(raw), "--split", split, "--out", str(out), "--max-samples", "16"])
        == 0
    )
    return out


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 train and 16 val videos of 2 motion classes (train and val from different seeds)."""
    root = tmp_path_factory.mktemp("train-shards")
    return synth_split(root, "train", 32, 2, seed=1), synth_split(root, "val", 16, 2, seed=2)


def job_overrides(shards: tuple[Path, Path], run_root: Path, name: str, *extra: str) -> list[str]:
    """Overrides that point the demo config at test shards and a test run folder, small and fast."""
    train, val = shards
    return [
        f"name={name}",
        f"out_dir={run_root}",
        f"data.train=[{train}]",
        f"data.val=[{val}]",
        "data.batch_size=4",
        "data.shuffle_buffer=8",
        *extra,
    ]


def job_env() -> dict[str, str]:
    """The environment of a job: this interpreter's, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def start_job(
    overrides: Sequence[str], log: Path, nproc: int = 2, config: Path = DEMO_CONFIG
) -> subprocess.Popen:
    """Start `launch/local.py` in the background, output to `log`."""
    command = [
        sys.executable,
        str(REPO / "launch" / "local.py"),
        "--config",
        str(config),
        "--nproc",
        str(nproc),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, *overrides], cwd=REPO, env=job_env(), stdout=out, stderr=subprocess.STDOUT
        )


def run_local(
    overrides: Sequence[str], nproc: int = 2, config: Path = DEMO_CONFIG, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `launch/local.py` to the end; returns the completed process (output captured)."""
    command = [sys.executable, str(REPO / "launch" / "local.py"), "--config", str(config)]
    command += ["--nproc", str(nproc), *overrides]
    return subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_job() -> Callable[..., subprocess.CompletedProcess]:
    """`run_local`, as a fixture."""
    return run_local


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 train and 24 val synthetic ImageNet JPEGs of 3 shapes, sharded."""
    root = tmp_path_factory.mktemp("imagenet")
    raw = root / "raw"
    assert shards_main(["synth", "imagenet", "--out", str(raw), "--num-videos", "32", "--classes", "3"]) == 0
    for split in ("train", "val"):
        assert (
            shards_main(["imagenet", "--root", str(raw), "--split", split, "--out", str(root / split)]) == 0
        )
    return root / "train", root / "val"
