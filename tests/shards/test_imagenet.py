"""ImageNet as published -> shards: both validation label layouts, bad JPEGs, missing files, parts, verify.

Real JPEGs from `python -m shards synth imagenet` (shapes whose class the content decides), real shards."""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decoders import decode_image
from shards.__main__ import main as shards_main
from shards.datasets import READERS, read_split
from shards.imagenet import DEVKIT, read_meta_mat, read_synset_mapping
from shards.records import DatasetIndex
from shards.synth import synth_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic ILSVRC-2012 tree: 12 train and 12 (+1 missing) val images of 3 classes."""
    root = tmp_path_factory.mktemp("imagenet") / "raw"
    synth_dataset("imagenet", root, num_videos=12, classes=3, seed=3, height=40)
    return root


def test_same_seed_gives_the_same_tree(raw: Path, tmp_path: Path) -> None:
    synth_dataset("imagenet", tmp_path / "again", num_videos=12, classes=3, seed=3, height=40)
    files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    assert all((raw / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)


def read(root: Path, split: str, *argv: str) -> DatasetIndex:
    """The index the CLI reads: the reader's flags parsed into its options, then read_split."""
    parser = argparse.ArgumentParser()
    READERS["imagenet"].add_arguments(parser)
    return read_split(READERS["imagenet"].from_args(parser.parse_args(list(argv))), root, split)


def sample_members(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a folder."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_devkit_and_kaggle_validation_labels_agree_through_meta_mat(raw: Path) -> None:
    wnids = sorted(read_synset_mapping(raw / "LOC_synset_mapping.txt"))
    words, ilsvrc_ids = read_meta_mat(raw / DEVKIT / "meta.mat")
    assert sorted(words) == wnids and len(ilsvrc_ids) == 3  # the non-leaf synset is left out
    assert [ilsvrc_ids[i] for i in sorted(ilsvrc_ids)] != wnids, (
        "the devkit order must differ from wnid order"
    )
    devkit = read(raw, "val", "--val-labels", "devkit")
    kaggle = read(raw, "val", "--val-labels", "kaggle")
    assert devkit.label_map == kaggle.label_map == dict(enumerate(wnids))
    labels = {r.id: r.label for r in devkit.records}
    assert labels == {r.id: r.label for r in kaggle.records} and len(labels) == 12
    assert devkit.missing == kaggle.missing == ["ILSVRC2012_val_00000013"]
    train = read(raw, "train")
    assert all(r.label_name == r.source.parent.name == r.id.split("_")[0] for r in train.records)


def test_split_validation_is_read_and_named_as_val(raw: Path) -> None:
    """`--split validation` reads the val split, and its index (so its shard names and keys) says val."""
    validation, val = read(raw, "validation"), read(raw, "val")
    assert validation.split == val.split == "val"
    assert [(r.id, r.label, r.source) for r in validation.records] == [
        (r.id, r.label, r.source) for r in val.records
    ]
    assert validation.missing == val.missing and validation.records


def test_kaggle_folder_layout_reads_the_same(raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    (root / "ILSVRC" / "Data").mkdir(parents=True)
    shutil.copytree(raw / "train", root / "ILSVRC" / "Data" / "CLS-LOC" / "train")
    shutil.copytree(raw / "val", root / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    for name in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
        shutil.copy(raw / name, root / name)
    for split in ("train", "val"):
        ours = read(root, split)
        published = read(raw, split, "--val-labels", "kaggle")
        assert [(r.id, r.label) for r in ours.records] == [(r.id, r.label) for r in published.records]
        assert ours.missing == published.missing


def test_shards_hold_valid_jpegs_and_verify(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    assert shards_main(["imagenet", "--root", str(raw), "--split", "train", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "image" and manifest["total"] == 12 and not manifest["rejects"]
    metas = []
    for key, members in sample_members(out).items():
        meta = json.loads(members["json"])
        frame = decode_image(members["jpg"])
        assert frame.shape == (1, meta["height"], meta["width"], 3), key
        metas.append(meta)
    # The synth tree's greyscale JPEG is stored as-is, its CMYK one converted to RGB.
    assert {m["mode"] for m in metas} == {"L", "RGB"}
    assert [m["converted_from"] for m in metas if "converted_from" in m] == ["JPEG CMYK"]
    assert shards_main(["verify", str(out)]) == 0


def test_bad_jpegs_are_rejects_with_reasons_and_missing_images_are_listed(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    folder = next(p for p in sorted((root / "train").iterdir()))
    good = sorted(folder.iterdir())[-1].read_bytes()
    (folder / f"{folder.name}_1.JPEG").write_bytes(good[: len(good) // 2])  # truncated
    (folder / f"{folder.name}_2.JPEG").write_bytes(b"")  # zero bytes
    (folder / f"{folder.name}_3.JPEG").write_text("<html>403 Forbidden</html>\n")  # text named .JPEG
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / f"{folder.name}_4.JPEG", format="PNG")
    out = tmp_path / "train"
    assert shards_main(["imagenet", "--root", str(root), "--split", "train", "--out", str(out)]) == 0
    assert "written 13 samples in 1 shards, rejected 3" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {r["id"].rsplit("_", 1)[1]: r["reason"] for r in manifest["rejects"]}
    assert reasons["1"].startswith("does not decode: image file is truncated")
    assert reasons["2"] == "empty file (0 bytes)" and reasons["3"].startswith("not an image")
    png = json.loads(sample_members(out)[f"imagenet/train/{folder.name}_4"]["json"])
    assert png["converted_from"] == "PNG RGB" and (png["width"], png["height"]) == (30, 20)
    assert shards_main(["verify", str(out)]) == 0


def test_a_folder_sharded_with_the_old_video_flags_is_refused_in_one_line_until_overwrite(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imagenet` once took --reencode/--gop/--crf/--preset and recorded them in the manifest: a folder
    written then holds other options, so it is refused with one line naming them and --overwrite; with
    --overwrite the same shards come back (those flags never changed an image)."""
    out = tmp_path / "val"
    command = ["imagenet", "--root", str(raw), "--split", "val", "--out", str(out)]
    assert shards_main(command) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    shards = {path.name: path.read_bytes() for path in out.glob("*.tar")}
    old_flags = {"crf": 23, "gop": 16, "preset": "medium", "reencode": False}
    older = {**manifest, "options": {**manifest["options"], **old_flags}}
    (out / "manifest.json").write_text(json.dumps(older))
    capsys.readouterr()
    assert shards_main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --overwrite to replace them" in err[0]
    assert (
        'with other options: crf 23 -> unset, gop 16 -> unset, preset "medium" -> unset, reencode false'
        in err[0]
    )
    assert json.loads((out / "manifest.json").read_text()) == older  # nothing touched
    assert shards_main([*command, "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert {path.name: path.read_bytes() for path in out.glob("*.tar")} == shards


def test_short_side_parts_and_merge(raw: Path, tmp_path: Path) -> None:
    whole, parted = tmp_path / "whole", tmp_path / "parts"
    common = ["imagenet", "--root", str(raw), "--split", "val", "--short-side", "24", "--max-samples", "4"]
    assert shards_main([*common, "--out", str(whole)]) == 0
    for part in ("0/2", "1/2"):
        assert shards_main([*common, "--out", str(parted), "--part", part]) == 0
    assert shards_main(["merge", str(parted)]) == 0
    merged = json.loads((parted / "manifest.json").read_text())
    assert (
        merged["modality"] == "image"
        and merged["total"] == 12
        and merged["missing"] == ["ILSVRC2012_val_00000013"]
    )
    samples = sample_members(whole)
    assert samples.keys() == sample_members(parted).keys()
    for members in samples.values():
        meta = json.loads(members["json"])
        assert min(meta["width"], meta["height"]) == 24 and meta["mode"] == "RGB"
    assert shards_main(["verify", str(parted)]) == 0


def test_missing_annotation_files_are_one_line(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    (root / "LOC_val_solution.csv").unlink()
    out = str(tmp_path / "val")
    assert (
        shards_main(
            ["imagenet", "--root", str(root), "--split", "val", "--out", out, "--val-labels", "kaggle"]
        )
        == 2
    )
    assert "LOC_val_solution.csv not found" in capsys.readouterr().err
