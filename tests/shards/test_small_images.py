"""CIFAR-10, CIFAR-100, SVHN and Tiny-ImageNet as published -> shards -> the loader, and their bad inputs.

Real pickles (bytes keys), real .mat files and real JPEGs from `python -m shards synth`; the pixels the
loader delivers are compared with the published arrays, read here with pickle and scipy directly."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

from pipeline.config import from_dict, load_config
from pipeline.data.config import DataConfig
from pipeline.data.loader import build_eval_loader, build_train_loader
from pipeline.train.config import Config
from shards.__main__ import main as shards_main
from shards.synth import synth_dataset

REPO = Path(__file__).resolve().parents[2]
DATASETS = ("cifar10", "cifar100", "svhn", "tinyimagenet")
CIFAR10 = "cifar-10-batches-py"
CIFAR100 = "cifar-100-python"
TINY = "tiny-imagenet-200"
DALI_INSTALLED = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali")


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic raw tree per dataset: 12 images per split (CIFAR-100: 100, one of each class)."""
    made = {}
    for dataset in DATASETS:
        root = tmp_path_factory.mktemp(dataset) / "raw"
        count, classes = (100, 100) if dataset == "cifar100" else (12, 3)
        synth_dataset(dataset, root, num_videos=count, classes=classes, seed=5)
        made[dataset] = root
    return made


def copy_raw(raws: dict[str, Path], dataset: str, tmp_path: Path) -> Path:
    """A copy of a raw tree that a test may damage."""
    return Path(shutil.copytree(raws[dataset], tmp_path / "raw"))


def shard(dataset: str, root: Path, split: str, out: Path, *extra: str) -> int:
    return shards_main([dataset, "--root", str(root), "--split", split, "--out", str(out), *extra])


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def sample_members(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a folder."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def loaded_pixels(out: Path, decoder: str = "auto") -> dict[str, tuple[np.ndarray, int]]:
    """key -> (uint8 (32, 32, 3) pixels, label) as the evaluation loader delivers them (no resize, mean 0,
    std 1: the normalised pixels times 255 are the decoded ones)."""
    values = {
        "modality": "image",
        "train": [str(out)],
        "val": [str(out)],
        "num_frames": 1,
        "crop_size": 32,
        "batch_size": 5,
        "workers": 0,
        "decoder": decoder,
        "aug": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    }
    loaded = {}
    for batch in build_eval_loader(from_dict(DataConfig, values), rank=0, world_size=1):
        for row, key in enumerate(batch.key):
            if int(batch.view[row]) >= 0:
                pixels = (batch.inputs[row] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                loaded[key] = (pixels, int(batch.label[row]))
    return loaded


def read_cifar(path: Path) -> dict[bytes, Any]:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def write_cifar(path: Path, data: dict[bytes, Any]) -> None:
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=2)


def planar_to_rgb(rows: np.ndarray) -> np.ndarray:
    """CIFAR's N x 3072 channel-planar rows as N x 32 x 32 x 3."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# --- the published formats, as synth writes them ---


@pytest.mark.parametrize("dataset", DATASETS)
def test_synth_is_byte_identical_for_a_seed(raws: dict[str, Path], dataset: str, tmp_path: Path) -> None:
    count, classes = (100, 100) if dataset == "cifar100" else (12, 3)
    synth_dataset(dataset, tmp_path / "again", num_videos=count, classes=classes, seed=5)
    files = sorted(p.relative_to(raws[dataset]) for p in raws[dataset].rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert files == again and files
    assert all((raws[dataset] / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)


def test_synth_writes_the_published_files(raws: dict[str, Path]) -> None:
    cifar10 = raws["cifar10"] / CIFAR10
    assert sorted(p.name for p in cifar10.iterdir()) == [
        "batches.meta",
        *(f"data_batch_{n}" for n in range(1, 6)),
        "test_batch",
    ]
    written = (cifar10 / "data_batch_2").read_bytes()  # Python 2's protocol 2: 8-bit strings, numpy.core
    assert written.startswith(b"\x80\x02}") and b"U\x04data" in written and b"_codecs" not in written
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in written
    batch = read_cifar(cifar10 / "data_batch_2")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape[1] == 3072
    assert len(batch[b"labels"]) == len(batch[b"filenames"]) == len(batch[b"data"])
    assert len(read_cifar(cifar10 / "batches.meta")[b"label_names"]) == 10
    meta = read_cifar(raws["cifar100"] / CIFAR100 / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    mat = loadmat(raws["svhn"] / "train_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 12) and mat["X"].dtype == np.uint8 and mat["y"].shape == (12, 1)
    assert set(mat["y"].ravel()) <= set(range(1, 11)) and 10 in mat["y"]  # the digit 0 is labelled 10
    tiny = raws["tinyimagenet"] / TINY
    wnids = (tiny / "wnids.txt").read_text().split()
    assert wnids != sorted(wnids)  # the published file is not sorted: the reader sorts
    with Image.open(next((tiny / "val" / "images").iterdir())) as image:
        assert image.format == "JPEG" and image.size == (64, 64)


# --- round trips: synth -> shards -> verify -> loader ---


def test_cifar10_round_trip_gives_the_published_pixels_and_labels(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    root = raws["cifar10"]
    assert shard("cifar10", root, "train", tmp_path / "train", "--max-samples", "5") == 0
    assert shards_main(["verify", str(tmp_path / "train")]) == 0
    batches = [read_cifar(root / CIFAR10 / f"data_batch_{n}") for n in range(1, 6)]
    images = planar_to_rgb(np.concatenate([b[b"data"] for b in batches]))
    labels = [label for b in batches for label in b[b"labels"]]
    names = [n.decode() for n in read_cifar(root / CIFAR10 / "batches.meta")[b"label_names"]]
    found = manifest(tmp_path / "train")
    assert found["modality"] == "image" and found["total"] == 12 and not found["rejects"]
    assert found["label_map"] == {str(i): name for i, name in enumerate(names)}
    members = sample_members(tmp_path / "train")
    first = members["cifar10/train/train_000000"]
    assert set(first) == {"png", "json", "cls", "sha256"}
    assert json.loads(first["json"])["filename"] == batches[0][b"filenames"][0].decode()
    loaded = loaded_pixels(tmp_path / "train")
    assert sorted(loaded) == [f"cifar10/train/train_{i:06d}" for i in range(12)]
    for index in range(12):
        pixels, label = loaded[f"cifar10/train/train_{index:06d}"]
        assert np.array_equal(pixels, images[index]) and label == labels[index]


def test_fewer_train_images_than_batches_leave_empty_batches_that_read(tmp_path: Path) -> None:
    synth_dataset("cifar10", tmp_path / "raw", num_videos=3, classes=2)
    assert len(read_cifar(tmp_path / "raw" / CIFAR10 / "data_batch_5")[b"data"]) == 0
    assert shard("cifar10", tmp_path / "raw", "train", tmp_path / "out") == 0
    assert manifest(tmp_path / "out")["total"] == 3


def test_the_same_run_gives_byte_identical_shards(raws: dict[str, Path], tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert shard("cifar10", raws["cifar10"], "test", tmp_path / out, "--workers", "2") == 0
    tars = sorted(p.name for p in (tmp_path / "a").glob("*.tar"))
    assert tars and all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in tars)


def test_cifar100_fine_labels_and_the_20_coarse_superclasses(raws: dict[str, Path], tmp_path: Path) -> None:
    root = raws["cifar100"]
    train = read_cifar(root / CIFAR100 / "train")
    meta = read_cifar(root / CIFAR100 / "meta")
    assert shard("cifar100", root, "train", tmp_path / "fine", "--max-samples", "40") == 0
    assert shard("cifar100", root, "train", tmp_path / "coarse", "--coarse", "--max-samples", "40") == 0
    fine, coarse = manifest(tmp_path / "fine"), manifest(tmp_path / "coarse")
    assert len(fine["label_map"]) == 100 and fine["total"] == 100
    assert coarse["label_map"] == {str(i): n.decode() for i, n in enumerate(meta[b"coarse_label_names"])}
    assert shards_main(["verify", str(tmp_path / "coarse")]) == 0
    loaded = loaded_pixels(tmp_path / "coarse")
    images = planar_to_rgb(train[b"data"])
    for index in range(100):
        key = f"cifar100/train/train_{index:06d}"
        pixels, label = loaded[key]
        assert np.array_equal(pixels, images[index]) and label == train[b"coarse_labels"][index]
        meta_json = json.loads(sample_members(tmp_path / "fine")[key]["json"]) if index == 0 else None
        if meta_json is not None:
            assert meta_json["label"] == meta_json["fine_label"] == train[b"fine_labels"][0]
            assert meta_json["coarse_label"] == train[b"coarse_labels"][0]
    assert sorted({label for _, label in loaded.values()}) == list(range(20))  # every superclass, 5 each


def test_svhn_round_trip_labels_digit_zero_as_class_zero(raws: dict[str, Path], tmp_path: Path) -> None:
    root = raws["svhn"]
    mat = loadmat(root / "test_32x32.mat")
    assert shard("svhn", root, "test", tmp_path / "test") == 0
    assert shards_main(["verify", str(tmp_path / "test")]) == 0
    assert manifest(tmp_path / "test")["label_map"] == {str(d): str(d) for d in range(10)}
    loaded = loaded_pixels(tmp_path / "test")
    assert len(loaded) == 12
    for index in range(12):
        pixels, label = loaded[f"svhn/test/test_{index:06d}"]
        assert np.array_equal(pixels, mat["X"][:, :, :, index]) and label == int(mat["y"][index, 0]) % 10
    assert 0 in {label for _, label in loaded.values()}


def test_svhn_extra_split(raws: dict[str, Path], tmp_path: Path) -> None:
    root = copy_raw(raws, "svhn", tmp_path)
    shutil.copy(root / "train_32x32.mat", root / "extra_32x32.mat")
    assert shard("svhn", root, "extra", tmp_path / "extra") == 0
    assert manifest(tmp_path / "extra")["total"] == 12
    assert "svhn/extra/extra_000011" in sample_members(tmp_path / "extra")


def test_png_shards_train_with_the_recipes_augmentation(raws: dict[str, Path], tmp_path: Path) -> None:
    """The recipe's padded crop, AutoAugment, repeated views, mixup / cutmix on the CPU path (DALI offers
    resized crops only)."""
    assert shard("cifar10", raws["cifar10"], "test", tmp_path / "test") == 0
    recipe = load_config(Config, REPO / "configs" / "cifar10_vit_tiny_spt_lsa.yaml").data
    overrides = {"train": [str(tmp_path / "test")], "batch_size": 6, "workers": 0}
    loader = build_train_loader(replace(recipe, **overrides), rank=0, world_size=1, seed=0)
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch == 6  # 12 images, 2 per batch, 3 views each
    for batch in batches:
        assert batch.inputs.shape == (6, 3, 32, 32) and torch.isfinite(batch.inputs).all()
        assert batch.label.shape == (6, 10)  # soft targets: mixup / cutmix, label smoothing


@pytest.mark.skipif(not DALI_INSTALLED, reason="nvidia-dali is not installed (pip install -e .[dali])")
def test_dali_image_path_decodes_png_members_exactly(raws: dict[str, Path], tmp_path: Path) -> None:
    assert shard("svhn", raws["svhn"], "train", tmp_path / "train") == 0
    dali, cpu = loaded_pixels(tmp_path / "train", "dali"), loaded_pixels(tmp_path / "train")
    assert dali.keys() == cpu.keys() and len(dali) == 12
    for key, (pixels, label) in dali.items():
        assert np.array_equal(pixels, cpu[key][0]) and label == cpu[key][1]


def test_tinyimagenet_classes_are_the_sorted_wnids_and_jpegs_are_stored_as_they_are(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    tiny = raws["tinyimagenet"] / TINY
    wnids = sorted((tiny / "wnids.txt").read_text().split())
    for split in ("train", "val", "test"):
        assert shard("tinyimagenet", raws["tinyimagenet"], split, tmp_path / split) == 0
        assert shards_main(["verify", str(tmp_path / split)]) == 0
        assert manifest(tmp_path / split)["label_map"] == {str(i): w for i, w in enumerate(wnids)}
    train = sample_members(tmp_path / "train")
    assert len(train) == 12
    for key, members in train.items():
        meta = json.loads(members["json"])
        source = raws["tinyimagenet"] / meta["source"]
        assert members["jpg"] == source.read_bytes()  # not re-encoded (the greyscale one neither)
        assert meta["label_name"] == meta["wnid"] == source.parts[-3] and meta["label"] == wnids.index(
            meta["wnid"]
        )
        assert key == f"tinyimagenet/train/{source.stem}"
    annotations = dict(
        line.split("\t")[:2] for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines()
    )
    val = manifest(tmp_path / "val")
    assert val["total"] == 12 and val["missing"] == ["val_12"]  # annotated, no file
    for members in sample_members(tmp_path / "val").values():
        meta = json.loads(members["json"])
        assert meta["wnid"] == annotations[f"{meta['id']}.JPEG"] and len(meta["box"]) == 4
    test = sample_members(tmp_path / "test")
    assert len(test) == 12 and {json.loads(m["json"])["label"] for m in test.values()} == {-1}


# --- bad inputs ---


@pytest.mark.parametrize(
    ("dataset", "damaged", "split"),
    [
        ("cifar10", f"{CIFAR10}/data_batch_3", "train"),
        ("cifar10", f"{CIFAR10}/batches.meta", "test"),
        ("cifar100", f"{CIFAR100}/test", "test"),
        ("svhn", "train_32x32.mat", "train"),
    ],
)
def test_a_truncated_pickle_or_mat_is_one_line_naming_it(
    raws: dict[str, Path],
    dataset: str,
    damaged: str,
    split: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    root = copy_raw(raws, dataset, tmp_path)
    path = root / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert shard(dataset, root, split, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_pickle_naming_a_callable_is_refused_unrun(
    raws: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(tmp_path / "ran"),))

    root = copy_raw(raws, "cifar10", tmp_path)
    write_cifar(root / CIFAR10 / "test_batch", {b"data": Exploit()})
    assert shard("cifar10", root, "test", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "test_batch" in err and "refusing" in err and not (tmp_path / "ran").exists()


def test_cifar_rows_with_a_bad_label_a_bad_shape_or_no_label_are_rejects(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    root = copy_raw(raws, "cifar10", tmp_path)
    path = root / CIFAR10 / "test_batch"
    published = read_cifar(path)
    labels = published[b"labels"]
    write_cifar(path, {**published, b"labels": [*labels[:3], 10, *labels[4:11]]})  # out of range; one short
    assert shard("cifar10", root, "test", tmp_path / "out") == 0
    found = manifest(tmp_path / "out")
    reasons = {r["source"]: r["reason"] for r in found["rejects"]}
    assert found["total"] == 10 and set(reasons) == {f"{path}[3]", f"{path}[11]"}, reasons
    assert "out of range 0..9" in reasons[f"{path}[3]"] and "no label" in reasons[f"{path}[11]"]

    write_cifar(path, {**published, b"data": published[b"data"][:, :3000]})  # not 32 x 32 x 3
    assert shard("cifar10", root, "test", tmp_path / "shape", "--overwrite") == 0
    rejects = manifest(tmp_path / "shape")["rejects"]
    assert len(rejects) == 12 and all("shape (3000,)" in r["reason"] for r in rejects)


def test_svhn_labels_out_of_range_are_rejects_and_a_wrong_x_is_one_line(
    raws: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_raw(raws, "svhn", tmp_path)
    path = root / "test_32x32.mat"
    mat = loadmat(path)
    labels = mat["y"].copy()
    labels[2, 0], labels[5, 0] = 0, 11
    savemat(path, {"X": mat["X"], "y": labels})
    assert shard("svhn", root, "test", tmp_path / "out") == 0
    found = manifest(tmp_path / "out")
    assert found["total"] == 10 and sorted(r["source"] for r in found["rejects"]) == [
        f"{path}[2]",
        f"{path}[5]",
    ]
    capsys.readouterr()
    savemat(path, {"X": mat["X"][:, :, :2], "y": labels})  # two channels
    assert shard("svhn", root, "test", tmp_path / "bad", "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "(32, 32, 3, N)" in err


def test_tinyimagenet_bad_rows_are_rejects_naming_their_line_and_nothing_else_is_lost(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    root = copy_raw(raws, "tinyimagenet", tmp_path)
    val = root / TINY / "val"
    lines = (val / "val_annotations.txt").read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split("\t")[1], "n99999999")  # unknown wnid
    lines[4] = "\t".join(lines[4].split("\t")[:3])  # malformed: no box
    (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (val / "images" / "val_6.JPEG").unlink()  # annotated, no file
    (val / "images" / "val_7.JPEG").write_bytes((val / "images" / "val_7.JPEG").read_bytes()[:300])
    assert shard("tinyimagenet", root, "val", tmp_path / "val") == 0
    found = manifest(tmp_path / "val")
    rejects = {r["id"]: r for r in found["rejects"]}
    annotations = val / "val_annotations.txt"
    assert (
        rejects["val_1"]["source"] == f"{annotations}:2"
        and "unknown wnid 'n99999999'" in rejects["val_1"]["reason"]
    )
    assert rejects["val_4"]["source"] == f"{annotations}:5" and "malformed" in rejects["val_4"]["reason"]
    assert "does not decode" in rejects["val_7"]["reason"] and set(rejects) == {"val_1", "val_4", "val_7"}
    assert sorted(found["missing"]) == ["val_12", "val_6"] and found["total"] == 12 - 3 - 1

    stray = root / TINY / "train" / "n00000001" / "images"
    stray.mkdir(parents=True)
    shutil.copy(val / "images" / "val_0.JPEG", stray / "n00000001_0.JPEG")
    assert shard("tinyimagenet", root, "train", tmp_path / "train") == 0
    found = manifest(tmp_path / "train")
    assert found["total"] == 12 and [r["id"] for r in found["rejects"]] == ["n00000001_0"]
    assert "unknown wnid" in found["rejects"][0]["reason"]


def test_unknown_splits_are_one_line(
    raws: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for dataset in DATASETS:
        assert shard(dataset, raws[dataset], "holdout", tmp_path / dataset) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{dataset}: unknown split 'holdout'" in err
