"""The dataset registry of the sharder, and the helpers every raw-layout reader shares.

Each reader module (kinetics, ssv2, diving48, finegym, imagenet) registers a `DatasetReader` when imported;
the CLI looks one up in `READERS` by name, lets it add its flags, and calls `read(root, split, args)`
to get a `DatasetIndex`. A reader never decodes video: it maps annotation rows to files.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.console import one_line
from shards.records import AnnotationError, DatasetIndex

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class DatasetReader:
    """How the sharder reads one dataset: its flags, its reader, the suffix of its raw files, and whether
    they are videos or images (which decides how the writer validates them)."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    read: Callable[[Path, str, argparse.Namespace], DatasetIndex]
    store_ext: str
    modality: str = "video"


READERS: dict[str, DatasetReader] = {}


def register(reader: DatasetReader) -> DatasetReader:
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


def path_option(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """Add a path-valued override flag defaulting to None (None: use the publisher's default place)."""
    parser.add_argument(flag, type=Path, default=None, help=help_text)


# Importing the reader modules registers them; they import the helpers above, so this comes last.
from shards import diving48, finegym, imagenet, kinetics, ssv2  # noqa: E402, F401
