"""Sharding and verify faults on real raw trees and shards: a truncated video is a reject, verify names a
changed sample and a missing shard, an output folder is never mixed or lost (other shards, a killed
re-run), and an unusable output path is one line with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.train.config import load_train_config
from shards.__main__ import main
from tests.faults.conftest import copy_shards, flip_member_byte, manifest_of, shard_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic SSv2-layout raw tree (VP9 .webm videos) with train and validation splits."""
    root = tmp_path_factory.mktemp("raw") / "ssv2"
    synth = ["synth", "ssv2", "--out", str(root), "--num-videos", "6", "--classes", "2", "--height", "32"]
    assert main(synth) == 0
    return root


def shard(raw: Path, out: Path, *extra: str, split: str = "train") -> int:
    return main(
        ["ssv2", "--root", str(raw), "--split", split, "--out", str(out), "--max-samples", "2", *extra]
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_webm_cut_to_half_its_length_is_a_reject(raw: Path, tmp_path: Path, capsys) -> None:
    cut_raw = tmp_path / "raw"
    copy_shards(raw, cut_raw)  # a plain folder copy
    first_id = json.loads((cut_raw / "labels" / "train.json").read_text())[0]["id"]
    (video,) = cut_raw.rglob(f"{first_id}.webm")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    out = tmp_path / "shards"
    assert shard(cut_raw, out) == 0
    manifest = manifest_of(out)
    rejects = [r for r in manifest["rejects"] if r["id"] == video.stem]
    assert len(rejects) == 1 and "truncated" in rejects[0]["reason"]
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0  # what was written is whole
    whole = tmp_path / "whole"
    assert shard(raw, whole) == 0
    assert manifest["total"] == manifest_of(whole)["total"] - 1  # nothing else lost


def test_verify_names_the_changed_sample_and_the_missing_shard(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shards"
    assert shard(raw, out) == 0
    first, second = shard_files(out)[:2]
    key = flip_member_byte(first, ".cls")
    second.unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{first.name}: {key}: sample bytes differ" in err
    assert f"{second.name}: shard file is missing" in err


def test_sharding_into_a_folder_of_other_shards_is_refused_unless_overwrite(
    raw: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "shards"
    assert shard(raw, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for other in (["--shuffle-seed", "3"], ["--reencode"]):  # other options
        assert shard(raw, out, *other) == 2
        assert "another dataset, split or options" in one_line(capsys.readouterr().err)
    assert shard(raw, out, split="validation") == 2  # another split
    assert "--overwrite" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost or mixed
    assert shard(raw, out) == 0  # the same command again: its own files
    assert shard(raw, out, "--overwrite", split="validation") == 0
    manifest = manifest_of(out)
    assert manifest["split"] == "validation"
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == sorted(entry["name"] for entry in manifest["shards"])  # only the new set
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0


def test_a_killed_rerun_leaves_a_clearly_unfinished_folder_that_the_same_command_finishes(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    command = ["ssv2", "--root", str(raw), "--split", "train", "--out", str(out), "--max-samples", "1"]
    command += ["--reencode"]  # slow enough to be killed mid-run
    assert main(command) == 0
    finished = manifest_of(out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rerun = subprocess.Popen(
        [sys.executable, "-m", "shards", *command], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("*progress.json")) and time.monotonic() < deadline and rerun.poll() is None:
        time.sleep(0.005)
    rerun.send_signal(signal.SIGKILL)
    rerun.wait()
    if rerun.returncode == 0:
        pytest.skip("the re-run finished before it could be killed")
    assert not (out / "manifest.json").exists()  # never the old manifest beside new shards
    overrides = [f"data.train=[{out}]", f"data.val=[{out}]"]
    with pytest.raises(ConfigError, match="unfinished sharding run"):
        load_train_config(REPO / "configs" / "demo.yaml", overrides, world_size=1)
    assert main(command) == 0
    assert manifest_of(out)["shards"] == finished["shards"]  # the same bytes as the first run


def test_an_output_path_that_is_a_file_is_one_line(raw: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "file"
    file.write_text("not a folder")
    for out in (file, file / "shards"):
        assert shard(raw, out) == 2
        assert str(file) in one_line(capsys.readouterr().err)


def test_an_unwritable_output_folder_is_one_line(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "locked"
    out.mkdir(mode=0o555)
    # Root writes into read-only folders; an immutable one (chattr +i) refuses even root (CI runs as root).
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(out)]).returncode == 0
    if os.geteuid() == 0 and not immutable:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        assert shard(raw, out) == 2
        assert "cannot write" in one_line(capsys.readouterr().err)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(out)], check=True)
