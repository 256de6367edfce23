"""Something-Something V1 as distributed: each video a folder of JPEG frames, `;`-separated label lists.

`20bn-something-something-v1/<id>/00001.jpg ...` holds a video's frames (5 digits, from 1, 12 fps, 100 px
high); `something-something-v1-labels.csv` is one class name per line (174); the split files
`something-something-v1-{train,validation}.csv` hold lines `id;label`, and `-test.csv` ids only (an
unlabelled split, label -1). Class names hold commas, apostrophes and the word "something" but never ';', so
a line splits at its first ';'. Class index = the class names sorted, the order of the lists TSM's
`gen_label_sthv1.py` makes, on which the published TSM and UniFormer SSv1 models were trained. The files may
also sit under RAW/labels/. A folder's frames are validated by the writer (`shards.frames`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shards.datasets import (
    Listing,
    Reader,
    Row,
    option,
    path_option_field,
    read_text_lines,
    register,
    resolve_path,
)
from shards.records import AnnotationError, Reject

SPLIT_FILES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
FRAMES_FOLDER = "20bn-something-something-v1"
FILE_PREFIX = "something-something-v1-"
FPS = 12.0  # the rate at which the publisher extracted the frames


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


LABELS_HELP = f"{FILE_PREFIX}labels.csv (default RAW/ or RAW/labels/)"
SPLIT_HELP = f"split CSV (default RAW/[labels/]{FILE_PREFIX}{{train,validation,test}}.csv)"
FRAMES_HELP = f"folder of <id>/00001.jpg ... (default RAW/{FRAMES_FOLDER})"


@dataclass(frozen=True)
class SSv1Options:
    """Where the SSv1 files are (None: the publisher's places under RAW or RAW/labels) and the frame rate."""

    # path_option_field returns a dataclasses.field (default None): nothing mutable is shared.
    labels: Path | None = path_option_field(LABELS_HELP)
    annotations: Path | None = path_option_field(SPLIT_HELP)
    frames: Path | None = path_option_field(FRAMES_HELP)
    fps: float = option(f"frame rate of the frames (default {FPS:g})", type=positive_float, default=FPS)


def read_class_index(path: Path) -> dict[str, int]:
    """Class name -> index (the names sorted) from the labels file; a name given twice is an
    AnnotationError naming both lines."""
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_text_lines(path, "SSv1 labels"), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise AnnotationError(
                f"{path}:{number}: class {name!r} given twice (first at line {first_line[name]})"
            )
        first_line[name] = number
    if not first_line:
        raise AnnotationError(f"{path}: no class names")
    return {name: index for index, name in enumerate(sorted(first_line))}


def frame_folders(folder: Path) -> dict[str, Path]:
    """Map folder name -> path for the sub-folders of `folder` (listed once: SSv1 has 108,499); a missing
    folder is an empty map, which makes every row missing."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as listing:
        return {entry.name: Path(entry.path) for entry in listing if entry.is_dir()}


class SSv1Reader(Reader):
    """`python -m shards ssv1`: the frame folders and the `;`-separated lists of SSv1."""

    name = "ssv1"
    modality = "frames"
    Options = SSv1Options

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLIT_FILES:
            raise AnnotationError(f"ssv1: unknown split {split!r} (expected train, val, validation or test)")
        options = self.options
        names = [f"{FILE_PREFIX}labels.csv", f"{FILE_PREFIX}{SPLIT_FILES[split]}.csv"]
        labels_path, split_path = (
            resolve_path(override, [root / name, root / "labels" / name], f"ssv1 {name}")
            for override, name in zip((options.labels, options.annotations), names, strict=True)
        )
        class_index = read_class_index(labels_path)
        lines = read_text_lines(split_path, f"SSv1 {split} list")
        folders = frame_folders(options.frames if options.frames is not None else root / FRAMES_FOLDER)
        label_map = {index: name for name, index in class_index.items()}
        rows = self._rows(lines, split_path, labels_path.name, class_index, folders, split == "test")
        return Listing(label_map, rows)

    def _rows(
        self,
        lines: list[str],
        split_path: Path,
        labels_name: str,
        class_index: dict[str, int],
        folders: dict[str, Path],
        unlabelled: bool,
    ) -> Iterator[Row | Reject]:
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            origin = f"{split_path}:{number}"
            raw_id, sep, label_name = (part.strip() for part in text.partition(";"))
            if not raw_id or any(c.isspace() or c in "/\\" for c in raw_id) or (sep and not label_name):
                yield Reject(
                    raw_id or f"line-{number}", origin, f"malformed line {text!r} (expected 'id;label')"
                )
                continue
            if not sep and not unlabelled:
                yield Reject(raw_id, origin, f"line {text!r} has no ';label'")
                continue
            label = class_index.get(label_name, -1) if sep else -1
            if sep and label < 0:
                yield Reject(raw_id, origin, f"label {label_name!r} is not in {labels_name}")
                continue
            extras = {"fps": self.options.fps}
            yield Row(raw_id, origin, label, label_name, folders.get(raw_id), extras=extras)


register(SSv1Reader)
