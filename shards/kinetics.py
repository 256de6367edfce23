"""Kinetics-400 / 600 / 700 in their publisher layout: one CSV per split plus a folder of videos.

CSV header `label,youtube_id,time_start,time_end,split,is_cc` (K700: no `is_cc`, split `validate`;
test CSVs may lack `label`). Labels with spaces or commas are quoted, so rows go through the csv
module. Videos come under two naming schemes, flat or inside label folders:
`{youtube_id}_{start:06d}_{end:06d}.mp4` (already the clip) and `{youtube_id}.mp4` (a mirror's
file: the row's window is passed on so the writer can cut it when the file is the whole video).
The class index is the sorted set of train labels, so the train CSV is read for every split.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.console import one_line
from shards.datasets import Listing, Reader, Row, index_videos, path_option_field, register, resolve_path
from shards.records import AnnotationError, Reject

SPLIT_FILES = {"train": ("train",), "val": ("val", "validate"), "test": ("test",)}
SPLIT_ALIASES = {"validate": "val", "validation": "val"}
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")
CLIP_STEM = re.compile(r"^(?P<ytid>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


@dataclass(frozen=True)
class KineticsOptions:
    """Where the split CSV, the train CSV (class map) and the videos are (None: the publisher's places)."""

    annotations: Path | None = path_option_field("split CSV (default RAW/annotations/{split}.csv)")
    train_annotations: Path | None = path_option_field(
        "train CSV defining the class index (default RAW/annotations/train.csv)"
    )
    videos: Path | None = path_option_field("video folder of the split (default RAW/videos/{split})")


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The lower-cased header of a Kinetics CSV and its non-blank rows with their line numbers.

    A file that cannot be read, is empty, or whose header lacks the id/time columns is not a
    Kinetics annotation file at all: AnnotationError naming it.
    """
    rows: list[tuple[int, list[str]]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [name.strip().lower() for name in next(reader, [])]
            rows.extend((reader.line_num, row) for row in reader if any(cell.strip() for cell in row))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AnnotationError(f"{path}: cannot read Kinetics CSV: {one_line(err)}") from None
    absent = [name for name in REQUIRED_COLUMNS if name not in header]
    if absent:
        raise AnnotationError(
            f"{path}: not a Kinetics CSV, header {','.join(header) or '(empty)'} lacks {','.join(absent)}"
        )
    return header, rows


def train_classes(path: Path) -> list[str]:
    """The sorted set of labels of the train CSV: index i is class i (abseiling = 0 for K400)."""
    header, rows = read_table(path)
    if "label" not in header:
        raise AnnotationError(f"{path}: train CSV has no 'label' column, cannot build the class index")
    column = header.index("label")
    # Malformed rows are this split's rejects when it is read; they never define a class.
    labels = {row[column].strip() for _, row in rows if len(row) == len(header) and row[column].strip()}
    if not labels:
        raise AnnotationError(f"{path}: train CSV has no labelled rows, cannot build the class index")
    return sorted(labels)


def split_videos(folder: Path) -> tuple[dict[tuple[str, int, int], Path], dict[str, Path]]:
    """Index a split's video folder (flat or label folders) once, by both naming schemes.

    Returns (youtube_id, start, end) -> clip file and youtube_id -> whole file.
    """
    clips: dict[tuple[str, int, int], Path] = {}
    wholes: dict[str, Path] = {}
    for stem, path in index_videos(folder, recursive=True).items():
        match = CLIP_STEM.match(stem)
        if match:
            clips[(match["ytid"], int(match["start"]), int(match["end"]))] = path
        else:
            wholes[stem] = path
    return clips, wholes


class Kinetics(Reader):
    """A Kinetics release: one CSV per split, videos flat or in label folders, either naming scheme."""

    Options = KineticsOptions

    def list_split(self, root: Path, split: str) -> Listing:
        canonical = SPLIT_ALIASES.get(split, split)
        if canonical not in SPLIT_FILES:
            raise AnnotationError(
                f"{self.name}: unknown split {split!r} (expected train, val, validate or test)"
            )
        names = SPLIT_FILES[canonical]
        options = self.options
        csv_path = resolve_path(
            options.annotations,
            [root / "annotations" / f"{n}.csv" for n in names],
            f"{self.name} {split} CSV",
        )
        train_path = resolve_path(
            options.train_annotations,
            [root / "annotations" / "train.csv"],
            f"{self.name} train CSV (class index)",
        )
        classes = train_classes(train_path)
        header, rows = read_table(csv_path)
        if options.videos is not None:
            video_dir = options.videos
        else:
            video_dir = next(
                (root / "videos" / n for n in names if (root / "videos" / n).is_dir()),
                root / "videos" / names[0],
            )
        clips, wholes = split_videos(video_dir)
        return Listing(
            dict(enumerate(classes)), csv_rows(csv_path, header, rows, classes, clips, wholes, split)
        )


def csv_rows(
    csv_path: Path,
    header: list[str],
    rows: list[tuple[int, list[str]]],
    classes: list[str],
    clips: dict[tuple[str, int, int], Path],
    wholes: dict[str, Path],
    split: str,
) -> Iterator[Row | Reject]:
    """One row per CSV line, in CSV order: its clip file, else the window of its whole video, else missing.
    An empty label is a reject unless the split is unlabelled (test)."""
    labelled = SPLIT_ALIASES.get(split, split) != "test"
    class_index = {label: i for i, label in enumerate(classes)}
    column = {key: i for i, key in enumerate(header)}
    for line, row in rows:
        origin = f"{csv_path}:{line}"
        ytid = row[column["youtube_id"]].strip() if column["youtube_id"] < len(row) else ""
        row_id = ytid or f"line-{line}"
        if len(row) != len(header):
            yield Reject(row_id, origin, f"malformed row: {len(row)} fields, header has {len(header)}")
            continue
        try:
            start, end = float(row[column["time_start"]]), float(row[column["time_end"]])
        except ValueError:
            times = f"{row[column['time_start']]!r}, {row[column['time_end']]!r}"
            yield Reject(row_id, origin, f"time_start/time_end not numbers: {times}")
            continue
        if not ytid or start < 0 or end <= start:
            yield Reject(row_id, origin, f"bad youtube_id or window {start}-{end}")
            continue
        label_name = row[column["label"]].strip() if "label" in column else ""
        if label_name and label_name not in class_index:
            yield Reject(row_id, origin, f"label {label_name!r} is not a train class")
            continue
        if not label_name and labelled:
            yield Reject(row_id, origin, f"empty label in the {split} split")
            continue
        clip_id = f"{ytid}_{int(start):06d}_{int(end):06d}"
        label = class_index[label_name] if label_name else -1
        extras = {"youtube_id": ytid, "time_start": start, "time_end": end}
        clip = clips.get((ytid, int(start), int(end)))
        whole = wholes.get(ytid)
        if clip is not None:
            yield Row(clip_id, origin, label, label_name, clip, extras=extras)
        elif whole is not None:
            # A `{ytid}.mp4` may be the whole video or already the clip: the writer decides from
            # its duration whether to cut this window.
            yield Row(clip_id, origin, label, label_name, whole, start, end, extras)
        else:
            yield Row(clip_id, origin, label, label_name)


class Kinetics400(Kinetics):
    """`python -m shards kinetics400`."""

    name = "kinetics400"


class Kinetics600(Kinetics):
    """`python -m shards kinetics600`."""

    name = "kinetics600"


class Kinetics700(Kinetics):
    """`python -m shards kinetics700`."""

    name = "kinetics700"


for _reader in (Kinetics400, Kinetics600, Kinetics700):
    register(_reader)
