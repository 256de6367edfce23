"""Full and read-only disks, for real: a small tmpfs mounted for the test (the suite runs as root), grown
with `mount -o remount,size=...` or made read-only with `remount,ro` (chmod does not stop root).

Sharding onto a full disk is one line and exit 2, and the same command, once there is room, ends with the
bytes of an uninterrupted run; a training run whose disk fills during a save stops with one line on
every rank (exit 2), its partial tag removed and the earlier one intact, and resumes once there is room.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards.__main__ import main as shards_main


class Tmpfs:
    """A tmpfs mounted at `path` for one test; `resize` and `read_only` remount it."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or 'mount failed'}")

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """`tmpfs(size)` mounts a tmpfs of `size` (e.g. "64k") under tmp_path; unmounted after the test."""
    mounted: list[Tmpfs] = []

    def mount(size: str) -> Tmpfs:
        mounted.append(Tmpfs(tmp_path / f"tmpfs{len(mounted)}", size))
        return mounted[-1]

    yield mount
    for disk in mounted:
        disk.unmount()


@pytest.fixture(scope="module")
def raw_ssv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 tiny SSv2-layout videos (about 7 KB each)."""
    raw = tmp_path_factory.mktemp("raw-ssv2")
    synth = ["synth", "ssv2", "--out", str(raw), "--num-videos", "24", "--classes", "2", "--height", "32"]
    assert shards_main([*synth, "--frames", "16", "--splits", "train"]) == 0
    return raw


def shard_command(raw: Path, out: Path) -> list[str]:
    return ["ssv2", "--root", str(raw), "--split", "train", "--out", str(out), "--max-samples", "4"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sharding_onto_a_full_disk_is_one_line_and_the_same_command_finishes_with_the_same_bytes(
    raw_ssv2: Path, tmpfs, tmp_path: Path, capsys
) -> None:
    assert shards_main(shard_command(raw_ssv2, tmp_path / "uninterrupted")) == 0
    expected = folder_bytes(tmp_path / "uninterrupted")
    disk = tmpfs("64k")
    out = disk.path / "train"
    capsys.readouterr()
    assert shards_main(shard_command(raw_ssv2, out)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert f"cannot write shards to {out}: the file system is full (about " in errors[0]
    assert "more bytes needed" in errors[0] and "free)" in errors[0]
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.endswith(".tmp")], left  # the partial shard's temp file went
    assert "manifest.json" not in left and any(name.endswith(".tar") for name in left)
    disk.remount("size=1m")
    assert shards_main(shard_command(raw_ssv2, out)) == 0
    assert folder_bytes(out) == expected


def test_sharding_to_a_read_only_output_is_one_line(raw_ssv2: Path, tmpfs, capsys) -> None:
    disk = tmpfs("1m")
    (disk.path / "train").mkdir()
    disk.remount("ro")
    assert shards_main(shard_command(raw_ssv2, disk.path / "train")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot write to the output folder {disk.path / 'train'}: Read-only file system"
    ]
