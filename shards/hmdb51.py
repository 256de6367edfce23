"""HMDB-51 in its publisher layout: one folder of AVIs per class and the 7030 split files.

The publisher's rar unpacks to `RAW/<class>/<name>.avi` (also accepted: `RAW/hmdb51_org/<class>/`);
`RAW/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt` gives per line `<name>.avi <0|1|2>`:
1 train, 2 test, 0 unused in that fold (skipped, neither written nor counted). The split files
define the classes; class index = the class names sorted (51, all lower case: the index of mmaction2's
and VideoMAE's lists).

File names keep the publisher's `#`, `&`, `(`, `)`, `!`, `'`, `[`, `]` (`#122_Cleaning_Up_The_Beach...`):
none of them cuts a webdataset key or a tar member name (only '.' does, which `safe_id` replaces), and
rewriting them could make two names one. The names carry their class (`..._draw_sword_f_nm_...`), so the
stem alone is unique.

The AVIs are MPEG-4 Part 2 (DivX / XviD) with B-frames: the reader re-encodes by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shards.datasets import (
    ClassFolders,
    Listing,
    Reader,
    Row,
    numbered_lines,
    option,
    path_option_field,
    register,
)
from shards.records import AnnotationError, Reject

SPLIT_CODES = {"train": "1", "test": "2", "val": "2"}
UNUSED_CODE = "0"
FOLDS = (1, 2, 3)
SPLIT_FILE = re.compile(r"^(?P<class_name>.+)_test_split(?P<fold>[123])\.txt$")


def split_files(folder: Path, fold: int) -> dict[str, Path]:
    """class name -> its split file of `fold`; AnnotationError when the folder has none."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = SPLIT_FILE.match(path.name)
            if match and int(match["fold"]) == fold and path.is_file():
                found[match["class_name"]] = path
    if not found:
        raise AnnotationError(f"hmdb51: no <class>_test_split{fold}.txt in {folder}")
    return found


class HMDB51(Reader):
    """HMDB-51: split train or test (val = test) of fold 1, 2 or 3."""

    name = "hmdb51"
    reencode_by_default = True

    @dataclass(frozen=True)
    class Options:
        fold: int = option(
            "train/test split of the publisher (default 1)", type=int, default=1, choices=FOLDS
        )
        splits: Path | None = path_option_field(
            "folder of <class>_test_split{1,2,3}.txt (default RAW/testTrainMulti_7030_splits)"
        )
        videos: Path | None = path_option_field(
            "folder of the class folders (default RAW/hmdb51_org if it exists, else RAW)"
        )

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLIT_CODES:
            raise AnnotationError(f"hmdb51: unknown split {split!r} (expected train, test or val)")
        splits = self.options.splits or root / "testTrainMulti_7030_splits"
        files = split_files(splits, self.options.fold)
        label_map = dict(enumerate(sorted(files)))
        videos = self.options.videos or (root / "hmdb51_org" if (root / "hmdb51_org").is_dir() else root)
        return Listing(label_map, self.rows(files, label_map, ClassFolders(videos), SPLIT_CODES[split]))

    @staticmethod
    def rows(
        files: dict[str, Path], label_map: dict[int, str], videos: ClassFolders, code: str
    ) -> Iterator[Row | Reject]:
        """The videos whose split code is `code`, class by class in index order, each file in line order."""
        for label, class_name in label_map.items():
            for origin, fields in numbered_lines(files[class_name], "HMDB-51 split file"):
                name = fields[0]
                clip_id = name.removesuffix(".avi")
                if len(fields) != 2 or fields[1] not in (*SPLIT_CODES.values(), UNUSED_CODE):
                    yield Reject(
                        clip_id, origin, f"malformed line {' '.join(fields)!r} (expected <name>.avi 0|1|2)"
                    )
                    continue
                if "/" in name or not name.lower().endswith(".avi"):
                    yield Reject(clip_id, origin, f"malformed line: {name!r} is not a <name>.avi file name")
                    continue
                if fields[1] == code:
                    yield Row(clip_id, origin, label, class_name, videos.find(f"{class_name}/{name}"))


register(HMDB51)
