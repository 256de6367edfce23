"""UCF-101 in its publisher layout: `UCF-101/<Class>/v_<Class>_gXX_cYY.avi` and the split lists.

`ucfTrainTestlist/classInd.txt` numbers the 101 classes from 1 (`1 ApplyEyeMakeup`),
`trainlist0{1,2,3}.txt` lists `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1` (the label 1-based too),
`testlist0{1,2,3}.txt` lists the path only: there the label is the class folder's. The three folds
split the 25 groups (gXX) differently; `--fold` picks one. The publisher's files have Windows line
endings, trailing spaces and blank lines, and the folder `HandstandPushups` holds
`v_HandStandPushups_*.avi`: a listed path is matched exactly, else ignoring case.

Class index = classInd's number - 1, which is the class names sorted ignoring case (classInd puts
`Hammering` before `HammerThrow`; a case-sensitive sort would not): the lists TSN, mmaction2 and
VideoMAE train with use the same index. A classInd out of that order is refused; a trainlist label
that disagrees with its folder's class, or a folder not in classInd, is a reject.

The AVIs are MPEG-4 Part 2 (XviD) with B-frames, which decord and torchcodec do not seek
frame-exactly: the reader re-encodes by default (see `shards.video`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shards.datasets import (
    ClassFolders,
    Listing,
    Reader,
    Row,
    numbered_lines,
    option,
    path_option_field,
    register,
    resolve_path,
)
from shards.records import AnnotationError, Reject

SPLIT_LISTS = {"train": "trainlist", "test": "testlist", "val": "testlist"}
FOLDS = (1, 2, 3)


def read_class_index(path: Path) -> dict[int, str]:
    """classInd.txt -> {index from 0: class name}; AnnotationError (file:line) on a malformed line or
    an order other than the names sorted ignoring case."""
    numbered: dict[int, str] = {}
    for origin, fields in numbered_lines(path, "UCF-101 class index"):
        if len(fields) != 2 or not fields[0].isdigit():
            raise AnnotationError(f"{origin}: expected '<number> <ClassName>', found {' '.join(fields)!r}")
        numbered[int(fields[0]) - 1] = fields[1]
    names = sorted(numbered.values(), key=str.casefold)
    if sorted(numbered) != list(range(len(names))) or [numbered[i] for i in range(len(names))] != names:
        raise AnnotationError(f"{path}: classes are not numbered 1..N in name order (ignoring case)")
    return numbered


class UCF101(Reader):
    """UCF-101: split train or test (val = test) of fold 1, 2 or 3."""

    name = "ucf101"
    reencode_by_default = True

    @dataclass(frozen=True)
    class Options:
        fold: int = option(
            "train/test split of the publisher (default 1)", type=int, default=1, choices=FOLDS
        )
        lists: Path | None = path_option_field(
            "folder of classInd.txt and the split lists (default RAW/ucfTrainTestlist)"
        )
        videos: Path | None = path_option_field("folder of the class folders (default RAW/UCF-101)")

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLIT_LISTS:
            raise AnnotationError(f"ucf101: unknown split {split!r} (expected train, test or val)")
        lists = self.options.lists if self.options.lists is not None else root / "ucfTrainTestlist"
        class_path = resolve_path(None, [lists / "classInd.txt"], "ucf101 class index")
        list_name = f"{SPLIT_LISTS[split]}{self.options.fold:02d}.txt"
        list_path = resolve_path(None, [lists / list_name], f"ucf101 {split} list")
        label_map = read_class_index(class_path)
        videos = ClassFolders(self.options.videos if self.options.videos is not None else root / "UCF-101")
        return Listing(label_map, self.rows(list_path, label_map, videos, labelled=split == "train"))

    @staticmethod
    def rows(
        list_path: Path, label_map: dict[int, str], videos: ClassFolders, labelled: bool
    ) -> Iterator[Row | Reject]:
        """One row per listed video: a trainlist line is `<Class>/<file>.avi <label>`, a testlist line the
        path alone."""
        index_of = {name: index for index, name in label_map.items()}
        for origin, fields in numbered_lines(list_path, "UCF-101 split list"):
            relative = PurePosixPath(fields[0]) if fields else PurePosixPath()
            clip_id = relative.stem
            if len(fields) != (2 if labelled else 1) or len(relative.parts) != 2:
                expected = "<Class>/<file>.avi <label>" if labelled else "<Class>/<file>.avi"
                yield Reject(
                    clip_id or "?", origin, f"malformed line {' '.join(fields)!r} (expected {expected})"
                )
                continue
            class_name = relative.parts[0]
            if class_name not in index_of:
                yield Reject(clip_id, origin, f"unknown class {class_name!r} (not in classInd.txt)")
                continue
            label = index_of[class_name]
            if labelled and fields[1] != str(label + 1):
                yield Reject(
                    clip_id, origin, f"label {fields[1]} disagrees with class {class_name} ({label + 1})"
                )
                continue
            path = videos.find(relative.as_posix())
            yield Row(clip_id, origin, label, class_name, path)


register(UCF101)
