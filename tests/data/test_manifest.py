"""The Manifest file: a malformed one is one error line naming the file and the key; it round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.manifest import MANIFEST_NAME, Manifest, ManifestError


def _write(folder: Path, data: object) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_malformed_manifest_is_one_line_naming_file_and_key(tmp_path: Path, make_shards) -> None:
    good = json.loads((make_shards() / MANIFEST_NAME).read_text(encoding="utf-8"))
    broken_entry = {**good, "shards": [{**good["shards"][0], "num_samples": "4"}]}
    for data, key in (
        ({k: v for k, v in good.items() if k != "label_map"}, "'label_map'"),
        ({**good, "total": "12"}, "'total'"),
        (broken_entry, "'shards[0].num_samples'"),
        ({**good, "label_map": {"zero": "a"}}, "'label_map'"),
    ):
        path = _write(tmp_path, data)
        with pytest.raises(ManifestError) as caught:
            Manifest.load(path)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"{path}:") and key in message, message
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"dataset": ', encoding="utf-8")
    with pytest.raises(ManifestError, match="cannot be read as JSON") as caught:
        Manifest.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_manifest_round_trips_the_sharders_bytes(tmp_path: Path, make_shards) -> None:
    """load + save gives back the file the sharder wrote, byte for byte (the on-disk format is unchanged)."""
    written = make_shards() / MANIFEST_NAME
    Manifest.load(written).save(tmp_path / MANIFEST_NAME)
    assert (tmp_path / MANIFEST_NAME).read_bytes() == written.read_bytes()


def test_the_sharders_manifest_modules_import_no_torch() -> None:
    """shards/ runs on CPU nodes without torch: the manifest module it shares with the loader has none."""
    code = "import sys, shards.writer, shards.verify, shards.merge; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_manifests_from_before_modality_and_frame_counts_load(tmp_path: Path, make_shards) -> None:
    old = json.loads((make_shards() / MANIFEST_NAME).read_text(encoding="utf-8"))
    del old["modality"]
    for entry in old["shards"]:
        del entry["frame_counts"]
    manifest = Manifest.load(_write(tmp_path, old))
    assert manifest.modality == "video" and all(entry.frame_counts is None for entry in manifest.shards)
