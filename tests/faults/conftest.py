"""Helpers of the fault-injection tests: copies of real shard folders, and the faults done to them.

Every fault is done to real bytes (a flipped byte inside a tar member, a cut file, a deleted shard),
never by replacing code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any


def copy_shards(folder: Path, dest: Path) -> Path:
    """A copy of shard folder `folder` at `dest` (faults are done to copies: the fixtures are shared)."""
    shutil.copytree(folder, dest)
    return dest


def manifest_of(folder: Path) -> dict[str, Any]:
    """The folder's manifest.json."""
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def shard_files(folder: Path) -> list[Path]:
    """The folder's shards, in manifest order."""
    return [folder / entry["name"] for entry in manifest_of(folder)["shards"]]


def flip_member_byte(shard: Path, suffix: str, index: int = 0) -> str:
    """Flip the lowest bit of the first byte of the `index`-th member ending in `suffix`; returns its key.

    The tar stays well-formed and the same size (a `.cls` "1" becomes "0": another valid label).
    """
    with tarfile.open(shard) as tar:
        member = [m for m in tar if m.isreg() and m.name.endswith(suffix)][index]
    data = bytearray(shard.read_bytes())
    data[member.offset_data] ^= 0x01
    shard.write_bytes(bytes(data))
    return member.name.rsplit(".", 1)[0]


def cut_shard(shard: Path, keep: float) -> None:
    """Keep only the first `keep` share of a shard file (a copy that broke off)."""
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * keep)])


def resync_manifest(folder: Path) -> None:
    """Make the manifest's sizes and sha256 match the files again (a fault the size check cannot see)."""
    manifest = manifest_of(folder)
    for entry in manifest["shards"]:
        data = (folder / entry["name"]).read_bytes()
        entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def bad_sample_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of `run_dir/bad_samples.jsonl`."""
    path = run_dir / "bad_samples.jsonl"
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )
