"""FineGym element-level subsets (Gym99 / Gym288) in their publisher layout.

The temporal annotation `finegym_annotation_info_v1.1.json` (or v1.0) maps
youtube_id -> event id `E_{start:06d}_{end:06d}` -> {"event": 1..4, "timestamps": [[abs_s, abs_e]],
"segments": null | {action id `A_{s:04d}_{e:04d}`: {"stages": n, "timestamps": [[s, e], ...]}}}
where segment timestamps are seconds from the event start. Split lists hold lines
`{ytid}_E_{es:06d}_{ee:06d}_A_{as:04d}_{ae:04d} {Clabel}`; category files name each Clabel.
Videos are whole YouTube videos, so every record is a window of its `videos/{ytid}.{mp4,mkv,webm}`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from shards.datasets import (
    DatasetReader,
    index_videos,
    load_json,
    path_option,
    read_text_lines,
    register,
    resolve_path,
    safe_id,
)
from shards.records import AnnotationError, DatasetIndex, Record, Reject

SUBSETS = ("gym99", "gym288")
SPLIT_LISTS = {"train": ("train_element_v1.1", "train_element"), "val": ("val_element",)}
SPLIT_ALIASES = {"validation": "val"}
ANNOTATION_FILES = ("finegym_annotation_info_v1.1.json", "finegym_annotation_info_v1.0.json")
CATEGORY_LINE = re.compile(r"^Clabel:\s*(\d+);\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*(.+?)\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FineGym flags: the subset, and where the annotation, split list, categories and videos are."""
    parser.add_argument(
        "--subset", choices=SUBSETS, default="gym99", help="element-level subset (default gym99)"
    )
    path_option(
        parser,
        "--annotations",
        "temporal annotation JSON (default RAW/annotations/finegym_annotation_info_v1.1.json)",
    )
    path_option(
        parser,
        "--split-list",
        "element list of the split (default RAW/annotations/{subset}_{split}_element*.txt)",
    )
    path_option(parser, "--categories", "category file (default RAW/annotations/{subset}_categories.txt)")
    path_option(parser, "--videos", "folder of whole videos {ytid}.{mp4,mkv,webm} (default RAW/videos)")


def read_categories(path: Path) -> dict[int, str]:
    """Clabel -> element name from lines `Clabel:   0; set:  1; Glabel:   1; (VT) round-off, ...`."""
    names: dict[int, str] = {}
    for number, line in enumerate(read_text_lines(path, "FineGym categories"), start=1):
        if not line.strip():
            continue
        match = CATEGORY_LINE.match(line.strip())
        if match is None:
            raise AnnotationError(f"{path}:{number}: not a FineGym category line: {line.strip()[:80]!r}")
        names[int(match[1])] = match[4]
    if not names:
        raise AnnotationError(f"{path}: no categories")
    return dict(sorted(names.items()))


def parse_element_id(element_id: str) -> tuple[str, str, str]:
    """'{ytid}_E_{es}_{ee}_A_{as}_{ae}' -> (ytid, 'E_{es}_{ee}', 'A_{as}_{ae}').

    YouTube ids contain '_' and '-' (even '_E_' or '_A_'), so the id is cut at the LAST '_A_' and
    then the last '_E_': the event and action parts never contain those markers.
    """
    event_part, sep_a, action = element_id.rpartition("_A_")
    ytid, sep_e, event = event_part.rpartition("_E_")
    if not (sep_a and sep_e and ytid and event and action):
        raise ValueError(f"element id {element_id!r} is not {{ytid}}_E_{{start}}_{{end}}_A_{{start}}_{{end}}")
    return ytid, f"E_{event}", f"A_{action}"


def _window(entry: Any, what: str) -> list[list[float]]:
    """A non-empty list of [start, end] seconds, or ValueError saying what is wrong."""
    stamps = entry.get("timestamps") if isinstance(entry, dict) else None
    if (
        not isinstance(stamps, list)
        or not stamps
        or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, (int, float)) for x in pair)
            for pair in stamps
        )
    ):
        raise ValueError(f"{what} has no valid 'timestamps' list of [start, end]")
    return [[float(s), float(e)] for s, e in stamps]


def locate(annotation: dict[str, Any], element_id: str) -> tuple[str, dict[str, Any], float, float]:
    """Find an element in the temporal annotation: (ytid, extras, absolute start_s, absolute end_s).

    ValueError names what is missing (video, event, null segments, action, timestamps).
    """
    ytid, event_id, action_id = parse_element_id(element_id)
    events = annotation.get(ytid)
    if not isinstance(events, dict):
        raise ValueError(f"youtube id {ytid!r} is not in the temporal annotation")
    event = events.get(event_id)
    if not isinstance(event, dict):
        raise ValueError(f"event {event_id} of {ytid!r} is not in the temporal annotation")
    event_start, event_end = _window(event, f"event {event_id}")[0]
    segments = event.get("segments")
    if not isinstance(segments, dict):
        raise ValueError(f"event {event_id} of {ytid!r} has no segments")
    if action_id not in segments:
        raise ValueError(f"sub-action {action_id} is not in event {event_id} of {ytid!r}")
    stages = _window(segments[action_id], f"sub-action {action_id}")
    # Segment times are relative to the event start; a sub-action spans its first to last stage.
    # Rounded to the microsecond: the sum must not print as 1.4000000000000001 in the sample json.
    start_s, end_s = round(event_start + stages[0][0], 6), round(event_start + stages[-1][1], 6)
    if end_s <= start_s:
        raise ValueError(f"sub-action {action_id} has an empty window {start_s}..{end_s}")
    extras = {
        "youtube_id": ytid,
        "event_id": event_id,
        "event_label": event.get("event"),
        "event_start_s": event_start,
        "event_end_s": event_end,
        "action_id": action_id,
        "stages": segments[action_id].get("stages", len(stages)),
        "stage_times_s": [[round(event_start + s, 6), round(event_start + e, 6)] for s, e in stages],
    }
    return ytid, extras, start_s, end_s


def read(root: Path, split: str, args: argparse.Namespace) -> DatasetIndex:
    """Read one FineGym element split (train or val) of `args.subset` into records in list order."""
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in SPLIT_LISTS:
        raise AnnotationError(f"finegym: unknown split {split!r} (expected train or val)")
    subset = args.subset
    folder = root / "annotations"
    annotation_path = resolve_path(
        args.annotations, [folder / name for name in ANNOTATION_FILES], "finegym temporal annotation"
    )
    list_path = resolve_path(
        args.split_list,
        [folder / f"{subset}_{name}.txt" for name in SPLIT_LISTS[canonical]],
        f"finegym {subset} {split} list",
    )
    categories_path = resolve_path(
        args.categories, [folder / f"{subset}_categories.txt"], f"finegym {subset} categories"
    )
    label_map = read_categories(categories_path)
    annotation = load_json(annotation_path, dict, "FineGym temporal annotation")
    lines = read_text_lines(list_path, f"FineGym {subset} {split} list")
    videos = index_videos(args.videos if args.videos is not None else root / "videos")

    index = DatasetIndex(dataset="finegym", split=split, records=[], label_map=label_map, root=root)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{list_path}:{number}"
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            index.rejects.append(
                Reject(fields[0], source, f"expected '<element id> <label>', got {line.strip()!r}")
            )
            continue
        element_id, label = fields[0], int(fields[1])
        record_id = safe_id(element_id)
        if label not in label_map:
            index.rejects.append(Reject(record_id, source, f"label {label} is not in {categories_path.name}"))
            continue
        try:
            ytid, extras, start_s, end_s = locate(annotation, element_id)
        except ValueError as err:
            index.rejects.append(Reject(record_id, source, str(err)))
            continue
        if not index.claim(record_id, source, "duplicate element id"):
            continue
        video = videos.get(ytid)
        if video is None:
            index.missing.append(record_id)
            continue
        extras["subset"] = subset
        index.records.append(Record(record_id, label, label_map[label], video, start_s, end_s, extras))
    return index


register(DatasetReader(name="finegym", add_arguments=add_arguments, read=read, store_ext="mp4"))
