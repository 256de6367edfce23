"""The dataset registry of the sharder, and the helpers every raw-layout reader shares.

Each reader module (kinetics, ssv2, ssv1, diving48, finegym, ucf101, hmdb51, imagenet) registers a `Reader`
subclass when imported; the CLI looks one up in `READERS` by name, adds its flags (one per field of its
`Options` dataclass) and hands the reader built from them to `read_split`, which turns the rows of
`Reader.list_split` into a `DatasetIndex`. A reader never decodes media: it maps annotation rows to files.
"""

from __future__ import annotations

import argparse
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.console import one_line
from shards.records import AnnotationError, DatasetIndex, Record, Reject

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")

READERS: dict[str, type[Reader]] = {}  # name -> the Reader subclass of that dataset


def register(reader: type[Reader]) -> type[Reader]:
    """Add `reader` to `READERS` (a name registered twice is a programming error)."""
    if reader.name in READERS:
        raise ValueError(f"dataset reader {reader.name!r} registered twice")
    READERS[reader.name] = reader
    return reader


def safe_id(raw_id: str) -> str:
    """A record id usable in a webdataset key.

    webdataset splits member names at the first '.', so a '.' inside an id would cut the key:
    it becomes '_'. Publisher ids (YouTube ids, SSv2 numbers, Diving-48 names) never have one.
    """
    return raw_id.replace(".", "_")


def resolve_path(override: Path | None, candidates: Iterable[Path], what: str) -> Path:
    """The file to read: the flag's value if given, else the first candidate that exists.

    Raises AnnotationError naming the flag's path, or every default tried, when none exists.
    """
    if override is not None:
        if not override.is_file():
            raise AnnotationError(f"{what} not found: {override}")
        return override
    tried = list(candidates)
    for path in tried:
        if path.is_file():
            return path
    raise AnnotationError(f"{what} not found: tried {', '.join(str(p) for p in tried)}")


def load_json(path: Path, expected: type, what: str) -> Any:
    """Parse the JSON file `path` whose top level must be an `expected` (list or dict).

    Unreadable files, bad JSON and a wrong top-level type are one-line AnnotationErrors.
    """
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read {what}: {one_line(err)}") from None
    if not isinstance(data, expected):
        raise AnnotationError(
            f"{path}: {what} must be a JSON {expected.__name__}, found {type(data).__name__}"
        )
    return data


def read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, or a one-line AnnotationError if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read {what}: {one_line(err)}") from None


def numbered_lines(path: Path, what: str) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, whitespace-separated fields) of each non-blank line (CRLF and trailing spaces go)."""
    for number, line in enumerate(read_text_lines(path, what), start=1):
        if line.strip():
            yield f"{path}:{number}", line.split()


def index_videos(folder: Path, recursive: bool = False) -> dict[str, Path]:
    """Map file stem -> path for the videos in `folder` (one level of sub-folders if `recursive`).

    The folder is listed once with os.scandir: looking each row up in this dict is what keeps
    readers fast on folders of several hundred thousand files. Entries are visited in sorted
    order and the first file of a stem wins, so duplicates resolve the same way on every run.
    A missing folder is an empty index: every row then counts as missing.
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir():
            if recursive:
                for stem, path in index_videos(Path(entry.path)).items():
                    found.setdefault(stem, path)
            continue
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in VIDEO_SUFFIXES:
            found.setdefault(stem, Path(entry.path))
    return found


# ---------------------------------------------------------------------------------------------
# The reader core: a reader says where its files are and yields rows; `read_split` owns the row loop
# (ids made key-safe, duplicates, missing files, rejects, records) for every dataset alike.

Modality = Literal["video", "frames", "image"]


@dataclass(frozen=True)
class Row:
    """One annotation row as a reader found it: the record it names, or (path None) that its file is missing.

    id: the dataset's own id (made key-safe by the core). origin: where the row is (`file:line`,
    `file[index]`), named by rejects and duplicates. path: the media: a video or image file, a folder of
    frames, or the file that holds `content`. content: the media's bytes when one file holds many samples
    (CIFAR's pickled batches, SVHN's .mat), already in the stored format (PNG for raw pixels).
    """

    id: str
    origin: str
    label: int = -1
    label_name: str = ""
    path: Path | None = None
    start_s: float | None = None
    end_s: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True)
class Listing:
    """What a reader found for one split: its label map (index -> name) and its rows in annotation order,
    each a Row or a Reject (a row that cannot be parsed: malformed, unknown label, ...)."""

    label_map: dict[int, str]
    rows: Iterable[Row | Reject]


def option(help_text: str, *, default: Any = None, **argparse_kwargs: Any) -> Any:
    """A field of a reader's options dataclass that is also its command-line flag `--field-name`
    (argparse keywords, e.g. `type=Path`, `choices=...`, `action="store_true"`, go through)."""
    return field(default=default, metadata={"help": help_text, **argparse_kwargs})


def path_option_field(help_text: str) -> Any:
    """A path-valued reader option defaulting to None (None: the publisher's default place)."""
    return option(help_text, type=Path)


@dataclass(frozen=True)
class NoOptions:
    """A reader without flags of its own."""


class Reader(ABC):
    """How the sharder reads one dataset: its name, what its samples are, its flags (the `Options`
    dataclass, see `option`) and `list_split`, which maps the split's annotations to rows. A reader never
    decodes media and never builds the index itself: `read_split` does that."""

    name: ClassVar[str]
    modality: ClassVar[Modality] = "video"
    Options: ClassVar[type] = NoOptions
    # True for sources no training decoder reads frame-exactly (UCF-101's and HMDB-51's MPEG-4 Part 2
    # AVIs): the CLI then re-encodes by default, as `--reencode` does.
    reencode_by_default: ClassVar[bool] = False
    # Other names of a split that `read_split` reads, and names its shards, as the split itself
    # (ImageNet's `validation` is `val`); a split not named here keeps the name it was given.
    split_aliases: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def list_split(self, root: Path, split: str) -> Listing:
        """The split's label map and rows; raises AnnotationError (one line) when an annotation file cannot
        be read at all."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag per field of `Options`."""
        for spec in fields(cls.Options):
            flag = "--" + spec.name.replace("_", "-")
            parser.add_argument(flag, dest=spec.name, default=spec.default, **spec.metadata)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Reader:
        """The reader with the options the command line gave."""
        return cls(cls.Options(**{spec.name: getattr(args, spec.name) for spec in fields(cls.Options)}))


class ClassFolders:
    """The files one level below a folder of class folders (`<class>/<file>`), found by the relative
    path an annotation lists: exactly, else ignoring case (UCF-101's lists spell a folder's files
    `v_HandStandPushups_*` inside `HandstandPushups/`; other copies of a dataset differ the other way).

    The tree is listed once with os.scandir, in sorted order (the first of two names equal but for case
    wins, the same on every run); a missing folder finds nothing: every row then counts as missing.
    """

    def __init__(self, folder: Path) -> None:
        self.exact: dict[str, Path] = {}
        self.folded: dict[str, Path] = {}
        if not folder.is_dir():
            return
        with os.scandir(folder) as classes:
            class_entries = sorted((entry for entry in classes if entry.is_dir()), key=lambda e: e.name)
        for class_entry in class_entries:
            with os.scandir(class_entry.path) as listing:
                files = sorted((entry for entry in listing if entry.is_file()), key=lambda e: e.name)
            for entry in files:
                relative = f"{class_entry.name}/{entry.name}"
                self.exact[relative] = Path(entry.path)
                self.folded.setdefault(relative.casefold(), Path(entry.path))

    def find(self, relative: str) -> Path | None:
        """The file listed as `relative` (`<class>/<file>`), or None when there is none."""
        return self.exact.get(relative) or self.folded.get(relative.casefold())


def read_split(reader: Reader, root: Path, split: str) -> DatasetIndex:
    """The index of one split (named as `reader.split_aliases` names it): every row of `reader.list_split`
    becomes a record, a missing id or a reject (a second row with an id already seen is a reject naming
    the first)."""
    split = reader.split_aliases.get(split, split)
    listing = reader.list_split(root, split)
    index = DatasetIndex(reader.name, split, [], dict(listing.label_map), root=root)
    first_seen: dict[str, str] = {}
    for row in listing.rows:
        if isinstance(row, Reject):
            index.rejects.append(row)
            continue
        record_id = safe_id(row.id)
        if record_id in first_seen:
            index.rejects.append(
                Reject(record_id, row.origin, f"duplicate id (first at {first_seen[record_id]})")
            )
            continue
        first_seen[record_id] = row.origin
        if row.path is None:
            index.missing.append(record_id)
            continue
        index.records.append(
            Record(
                record_id,
                row.label,
                row.label_name,
                row.path,
                row.start_s,
                row.end_s,
                row.extras,
                row.content,
            )
        )
    return index


# Importing the reader modules registers them; they import the helpers above, so this comes last.
from shards import (  # noqa: E402, F401
    diving48,
    finegym,
    hmdb51,
    imagenet,
    kinetics,
    small_images,
    ssv1,
    ssv2,
    ucf101,
)
