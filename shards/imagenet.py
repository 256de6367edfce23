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

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.console import one_line
from shards.datasets import (
    Listing,
    Reader,
    Row,
    option,
    path_option_field,
    read_text_lines,
    register,
    resolve_path,
    safe_id,
)
from shards.records import AnnotationError, Reject

IMAGE_SUFFIXES = (".jpeg", ".jpg")
WNID = re.compile(r"n\d{8}")
DEVKIT = Path("ILSVRC2012_devkit_t12") / "data"
KAGGLE_IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC"
SPLITS = ("train", "val")
SPLIT_ALIASES = {"validation": "val"}


@dataclass(frozen=True)
class ImageNetOptions:
    """Where the images, the synset list and the validation labels are (None: the publishers' places)."""

    images: Path | None = path_option_field(
        "image folder of the split (default RAW/{split} or RAW/ILSVRC/Data/CLS-LOC/{split})"
    )
    synsets: Path | None = path_option_field(
        "LOC_synset_mapping.txt or the devkit's meta.mat (default: whichever is in RAW)"
    )
    val_labels: str = option(
        "validation labels: devkit ground truth + meta.mat, or LOC_val_solution.csv (auto: devkit)",
        default="auto",
        choices=("auto", "devkit", "kaggle"),
    )
    ground_truth: Path | None = path_option_field(
        "devkit ILSVRC2012_validation_ground_truth.txt (default in RAW/devkit)"
    )
    solution: Path | None = path_option_field(
        "Kaggle LOC_val_solution.csv (default RAW/LOC_val_solution.csv)"
    )


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
    root: Path, options: ImageNetOptions, ilsvrc_ids: dict[int, str]
) -> dict[str, tuple[str, str]]:
    """Validation image stem -> (wnid, where the label comes from), from the devkit or the Kaggle CSV."""
    devkit = [root / DEVKIT / "ILSVRC2012_validation_ground_truth.txt"]
    kaggle = [root / "LOC_val_solution.csv"]
    choice = options.val_labels
    if choice == "auto":
        devkit_found = options.ground_truth is not None or devkit[0].is_file()
        choice = "devkit" if devkit_found and options.solution is None else "kaggle"
    if choice == "devkit":
        path = resolve_path(options.ground_truth, devkit, "imagenet devkit validation ground truth")
        if not ilsvrc_ids:
            meta = resolve_path(
                None, [path.parent / "meta.mat", root / DEVKIT / "meta.mat"], "devkit meta.mat"
            )
            ilsvrc_ids = read_meta_mat(meta)[1]
        return read_ground_truth(path, ilsvrc_ids)
    return read_solution(resolve_path(options.solution, kaggle, "imagenet LOC_val_solution.csv"))


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


class ImageNet(Reader):
    """`python -m shards imagenet`: the train split (class folders) or the validation split (flat images
    + labels)."""

    name = "imagenet"
    modality = "image"
    Options = ImageNetOptions
    split_aliases = SPLIT_ALIASES

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLITS:
            raise AnnotationError(f"imagenet: unknown split {split!r} (expected train or val)")
        words, ilsvrc_ids = read_synsets(root, self.options.synsets)
        wnids = sorted(words)
        classes = {wnid: index for index, wnid in enumerate(wnids)}
        folder = image_folder(root, split, self.options.images)
        if not folder.is_dir():
            raise AnnotationError(f"imagenet: no {split} image folder at {folder}")
        if split == "train":
            rows = train_rows(folder, classes, words)
        else:
            rows = val_rows(list_images(folder), val_labels(root, self.options, ilsvrc_ids), classes, words)
        return Listing(dict(enumerate(wnids)), rows)


def image_row(
    stem: str, wnid: str, path: Path, origin: str, classes: dict[str, int], words: dict[str, str]
) -> Row | Reject:
    """The row of one labelled image, or a reject when its class is not in the synset list."""
    if wnid not in classes:
        return Reject(safe_id(stem), origin, f"class {wnid!r} is not in the synset list")
    return Row(stem, origin, classes[wnid], wnid, path, extras={"wnid": wnid, "words": words[wnid]})


def train_rows(folder: Path, classes: dict[str, int], words: dict[str, str]) -> Iterator[Row | Reject]:
    """The images of `train/<wnid>/`, class folder by class folder in name order."""
    with os.scandir(folder) as listing:
        class_folders = sorted(entry.name for entry in listing if entry.is_dir())
    for wnid in class_folders:
        for stem, path in list_images(folder / wnid).items():
            yield image_row(stem, wnid, path, f"train/{wnid}/{path.name}", classes, words)


def val_rows(
    images: dict[str, Path],
    labels: dict[str, tuple[str, str]],
    classes: dict[str, int],
    words: dict[str, str],
) -> Iterator[Row | Reject]:
    """The labelled validation images in id order; a label without its image is a missing row."""
    for stem, (wnid, origin) in sorted(labels.items()):
        if stem not in images:
            yield Row(stem, origin)
        else:
            yield image_row(stem, wnid, images[stem], origin, classes, words)


register(ImageNet)
