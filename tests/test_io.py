"""Atomic writes leave either the old file or the new one, and no temp files."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.io import atomic_open, atomic_write_json


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "manifest.json"
    atomic_write_json(target, {"b": 1, "a": "é"})
    atomic_write_json(target, {"b": 2, "a": "é"})
    assert json.loads(target.read_text()) == {"a": "é", "b": 2}
    assert target.read_text().index('"a"') < target.read_text().index('"b"')  # sorted: stable bytes
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]
