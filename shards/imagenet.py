"""ImageNet-1K (ILSVRC-2012) in its publishers' layouts: the image-net.org tarballs and the Kaggle copy.

Train: `train/<wnid>/<wnid>_<n>.JPEG`, 1000 folders (Kaggle: `ILSVRC/Data/CLS-LOC/train/...`). Validation:
50,000 flat `ILSVRC2012_val_<8 digits>.JPEG` (Kaggle: under `ILSVRC/Data/CLS-LOC/val/`), labelled by either
- the devkit: `ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`, line i the ILSVRC2012_ID
  of image i, mapped to a wnid through `meta.mat`'s `synsets` (ILSVRC2012_ID order is not wnid order), or
- Kaggle's `LOC_val_solution.csv`: `ImageId,PredictionString`, the wnid the first token of the string.
The class index is the sorted wnids of the synset list (`LOC_synset_mapping.txt`, `<wnid> <words>` lines,
or the devkit's meta.mat leaves), as every ImageNet codebase numbers them. A file that does not decode
is a reject (the writer validates every image, see `shards.image`); an annotated image without a file
is missing.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from pathlib import Path

from pipeline.console import one_line
from shards.datasets import DatasetReader, path_option, read_text_lines, register, resolve_path, safe_id
from shards.records import AnnotationError, DatasetIndex, Record, Reject

IMAGE_SUFFIXES = (".jpeg", ".jpg")
WNID = re.compile(r"n\d{8}")
DEVKIT = Path("ILSVRC2012_devkit_t12") / "data"
KAGGLE_IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC"
SPLITS = ("train", "val")
SPLIT_ALIASES = {"validation": "val"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """ImageNet flags: where the images, the synset list and the validation labels are."""
    path_option(
        parser,
        "--images",
        "image folder of the split (default RAW/{split} or RAW/ILSVRC/Data/CLS-LOC/{split})",
    )
    path_option(
        parser, "--synsets", "LOC_synset_mapping.txt or the devkit's meta.mat (default: whichever is in RAW)"
    )
    parser.add_argument(
        "--val-labels",
        choices=("auto", "devkit", "kaggle"),
        default="auto",
        help="validation labels: devkit ground truth + meta.mat, or LOC_val_solution.csv (auto: devkit)",
    )
    path_option(
        parser, "--ground-truth", "devkit ILSVRC2012_validation_ground_truth.txt (default in RAW/devkit)"
    )
    path_option(parser, "--solution", "Kaggle LOC_val_solution.csv (default RAW/LOC_val_solution.csv)")


def read_synset_mapping(path: Path) -> dict[str, str]:
    """wnid -> words from LOC_synset_mapping.txt (`n01440764 tench, Tinca tinca` per line)."""
    synsets: dict[str, str] = {}
    for number, line in enumerate(read_text_lines(path, "synset mapping"), start=1):
        wnid, _, words = line.strip().partition(" ")
        if not line.strip():
            continue
        if not WNID.fullmatch(wnid):
            raise AnnotationError(f"{path}:{number}: not a '<wnid> <words>' line: {line.strip()!r}")
        synsets[wnid] = words.strip()
    return synsets


def read_meta_mat(path: Path) -> tuple[dict[str, str], dict[int, str]]:
    """(wnid -> words, ILSVRC2012_ID -> wnid) of the devkit's meta.mat leaves (the 1000 classes)."""
    from scipy.io import loadmat  # only the devkit layout needs scipy

    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        rows = [
            (int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]), int(s["num_children"]))
            for s in synsets
        ]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise AnnotationError(f"{path}: cannot read the devkit synsets: {one_line(err)}") from None
    leaves = [(ilsvrc_id, wnid, words) for ilsvrc_id, wnid, words, children in rows if children == 0]
    return {wnid: words for _, wnid, words in leaves}, {ilsvrc_id: wnid for ilsvrc_id, wnid, _ in leaves}


def read_synsets(root: Path, override: Path | None) -> tuple[dict[str, str], dict[int, str]]:
    """wnid -> words, and ILSVRC2012_ID -> wnid when the list is the devkit's meta.mat (else empty)."""
    path = resolve_path(
        override, [root / "LOC_synset_mapping.txt", root / DEVKIT / "meta.mat"], "imagenet synsets"
    )
    if path.suffix == ".mat":
        return read_meta_mat(path)
    return read_synset_mapping(path), {}


def image_folder(root: Path, split: str, override: Path | None) -> Path:
    """The split's image folder: the flag's, else the image-net.org or the Kaggle place, whichever exists."""
    if override is not None:
        return override
    candidates = [root / split, root / KAGGLE_IMAGES / split]
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def list_images(folder: Path) -> dict[str, Path]:
    """File stem -> path of the JPEGs directly in `folder` (one scandir, sorted: duplicates resolve alike)."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as listing:
        entries = sorted((e for e in listing if e.is_file()), key=lambda e: e.name)
    found: dict[str, Path] = {}
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(stem, Path(entry.path))
    return found


def val_labels(
    root: Path, args: argparse.Namespace, ilsvrc_ids: dict[int, str]
) -> dict[str, tuple[str, str]]:
    """Validation image stem -> (wnid, where the label comes from), from the devkit or the Kaggle CSV."""
    devkit = [root / DEVKIT / "ILSVRC2012_validation_ground_truth.txt"]
    kaggle = [root / "LOC_val_solution.csv"]
    choice = args.val_labels
    if choice == "auto":
        devkit_found = args.ground_truth is not None or devkit[0].is_file()
        choice = "devkit" if devkit_found and args.solution is None else "kaggle"
    if choice == "devkit":
        path = resolve_path(args.ground_truth, devkit, "imagenet devkit validation ground truth")
        if not ilsvrc_ids:
            meta = resolve_path(
                None, [path.parent / "meta.mat", root / DEVKIT / "meta.mat"], "devkit meta.mat"
            )
            ilsvrc_ids = read_meta_mat(meta)[1]
        return read_ground_truth(path, ilsvrc_ids)
    return read_solution(resolve_path(args.solution, kaggle, "imagenet LOC_val_solution.csv"))


def read_ground_truth(path: Path, ilsvrc_ids: dict[int, str]) -> dict[str, tuple[str, str]]:
    """Devkit ground truth: line i holds the ILSVRC2012_ID of ILSVRC2012_val_{i:08d}."""
    labels: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(read_text_lines(path, "validation ground truth"), start=1):
        text = line.strip()
        if not text.isdigit() or int(text) not in ilsvrc_ids:
            raise AnnotationError(f"{path}:{number}: {text!r} is not the ILSVRC2012_ID of a meta.mat class")
        labels[f"ILSVRC2012_val_{number:08d}"] = (ilsvrc_ids[int(text)], f"{path.name}:{number}")
    return labels


def read_solution(path: Path) -> dict[str, tuple[str, str]]:
    """Kaggle's LOC_val_solution.csv: `ImageId,PredictionString`, the wnid the string's first token."""
    labels: dict[str, tuple[str, str]] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise AnnotationError(f"{path}: header is not 'ImageId,PredictionString'")
            for row in reader:
                tokens = (row["PredictionString"] or "").split()
                labels[row["ImageId"]] = (tokens[0] if tokens else "", f"{path.name}:{reader.line_num}")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AnnotationError(f"{path}: cannot read: {one_line(err)}") from None
    return labels


def read(root: Path, split: str, args: argparse.Namespace) -> DatasetIndex:
    """Read the train split (class folders) or the validation split (flat images + labels)."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise AnnotationError(f"imagenet: unknown split {split!r} (expected train or val)")
    words, ilsvrc_ids = read_synsets(root, args.synsets)
    wnids = sorted(words)
    classes = {wnid: index for index, wnid in enumerate(wnids)}
    index = DatasetIndex(
        dataset="imagenet", split=split, records=[], label_map=dict(enumerate(wnids)), root=root
    )
    folder = image_folder(root, split, args.images)
    if not folder.is_dir():
        raise AnnotationError(f"imagenet: no {split} image folder at {folder}")

    def add(record_id: str, wnid: str, path: Path, source: str) -> None:
        if wnid not in classes:
            index.rejects.append(Reject(record_id, source, f"class {wnid!r} is not in the synset list"))
        elif index.claim(record_id, source, "duplicate image id"):
            extras = {"wnid": wnid, "words": words[wnid]}
            index.records.append(Record(record_id, classes[wnid], wnid, path, extras=extras))

    if split == "train":
        with os.scandir(folder) as listing:
            class_folders = sorted(entry.name for entry in listing if entry.is_dir())
        for wnid in class_folders:
            for stem, path in list_images(folder / wnid).items():
                add(safe_id(stem), wnid, path, f"train/{wnid}/{path.name}")
        return index
    images = list_images(folder)
    for stem, (wnid, source) in sorted(val_labels(root, args, ilsvrc_ids).items()):
        if stem not in images:
            if index.claim(safe_id(stem), source, "duplicate image id"):
                index.missing.append(safe_id(stem))
            continue
        add(safe_id(stem), wnid, images[stem], source)
    return index


register(
    DatasetReader(name="imagenet", add_arguments=add_arguments, read=read, store_ext="jpg", modality="image")
)
