"""FineGym element-level subsets (Gym99 / Gym288) in their publisher layout.

The temporal annotation `finegym_annotation_info_v1.1.json` (or v1.0) maps
youtube_id -> event id `E_{start:06d}_{end:06d}` -> {"event": 1..4, "timestamps": [[abs_s, abs_e]],
"segments": null | {action id `A_{s:04d}_{e:04d}`: {"stages": n, "timestamps": [[s, e], ...]}}}
where segment timestamps are seconds from the event start. Split lists hold lines
`{ytid}_E_{es:06d}_{ee:06d}_A_{as:04d}_{ae:04d} {Clabel}`; category files name each Clabel.
Videos are whole YouTube videos, so every record is a window of its `videos/{ytid}.{mp4,mkv,webm}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.datasets import (
    Listing,
    Reader,
    Row,
    index_videos,
    load_json,
    option,
    path_option_field,
    read_text_lines,
    register,
    resolve_path,
    safe_id,
)
from shards.records import AnnotationError, Reject

SUBSETS = ("gym99", "gym288")
SPLIT_LISTS = {"train": ("train_element_v1.1", "train_element"), "val": ("val_element",)}
SPLIT_ALIASES = {"validation": "val"}
ANNOTATION_FILES = ("finegym_annotation_info_v1.1.json", "finegym_annotation_info_v1.0.json")
CATEGORY_LINE = re.compile(r"^Clabel:\s*(\d+);\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*(.+?)\s*$")


@dataclass(frozen=True)
class FineGymOptions:
    """The subset, and where the annotation, split list, categories and videos are (None: the publisher's
    places)."""

    subset: str = option("element-level subset (default gym99)", default="gym99", choices=SUBSETS)
    annotations: Path | None = path_option_field(
        "temporal annotation JSON (default RAW/annotations/finegym_annotation_info_v1.1.json)"
    )
    split_list: Path | None = path_option_field(
        "element list of the split (default RAW/annotations/{subset}_{split}_element*.txt)"
    )
    categories: Path | None = path_option_field(
        "category file (default RAW/annotations/{subset}_categories.txt)"
    )
    videos: Path | None = path_option_field(
        "folder of whole videos {ytid}.{mp4,mkv,webm} (default RAW/videos)"
    )


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


class FineGym(Reader):
    """`python -m shards finegym`: the element lists of one subset, cut from whole videos."""

    name = "finegym"
    Options = FineGymOptions

    def list_split(self, root: Path, split: str) -> Listing:
        canonical = SPLIT_ALIASES.get(split, split)
        if canonical not in SPLIT_LISTS:
            raise AnnotationError(f"finegym: unknown split {split!r} (expected train or val)")
        options = self.options
        subset = options.subset
        folder = root / "annotations"
        annotation_path = resolve_path(
            options.annotations, [folder / name for name in ANNOTATION_FILES], "finegym temporal annotation"
        )
        list_path = resolve_path(
            options.split_list,
            [folder / f"{subset}_{name}.txt" for name in SPLIT_LISTS[canonical]],
            f"finegym {subset} {split} list",
        )
        categories_path = resolve_path(
            options.categories, [folder / f"{subset}_categories.txt"], f"finegym {subset} categories"
        )
        label_map = read_categories(categories_path)
        annotation = load_json(annotation_path, dict, "FineGym temporal annotation")
        lines = read_text_lines(list_path, f"FineGym {subset} {split} list")
        videos = index_videos(options.videos if options.videos is not None else root / "videos")
        rows = element_rows(lines, list_path, categories_path.name, label_map, annotation, videos, subset)
        return Listing(label_map, rows)


def element_rows(
    lines: list[str],
    list_path: Path,
    categories_name: str,
    label_map: dict[int, str],
    annotation: dict[str, Any],
    videos: dict[str, Path],
    subset: str,
) -> Iterator[Row | Reject]:
    """One row per line of the element list, in list order: the element's window of its whole video."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        origin = f"{list_path}:{number}"
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            yield Reject(fields[0], origin, f"expected '<element id> <label>', got {line.strip()!r}")
            continue
        element_id, label = fields[0], int(fields[1])
        record_id = safe_id(element_id)
        if label not in label_map:
            yield Reject(record_id, origin, f"label {label} is not in {categories_name}")
            continue
        try:
            ytid, extras, start_s, end_s = locate(annotation, element_id)
        except ValueError as err:
            yield Reject(record_id, origin, str(err))
            continue
        extras["subset"] = subset
        yield Row(element_id, origin, label, label_map[label], videos.get(ytid), start_s, end_s, extras)


register(FineGym)
