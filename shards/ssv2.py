"""Something-Something V2 in its publisher layout.

`labels.json` maps each template, written without brackets, to its class index as a STRING
("0".."173"). The split files are JSON lists of `{"id": "78687", "label": caption, "template":
"Holding [something] next to [something]", "placeholders": [...]}`; test entries carry only the id.
The class of an entry is labels[template with '[' and ']' removed]. Videos are `{id}.webm`.
Older downloads name the files `something-something-v2-{labels,train,validation,test}.json`.
"""

from __future__ import annotations

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
    path_option_field,
    register,
    resolve_path,
    safe_id,
)
from shards.records import AnnotationError, Reject

SPLIT_FILES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
VIDEO_FOLDER = "20bn-something-something-v2"


@dataclass(frozen=True)
class SSv2Options:
    """Where labels.json, the split JSON and the webm folder are (None: the publisher's places)."""

    labels: Path | None = path_option_field("labels.json (default RAW/labels/labels.json)")
    annotations: Path | None = path_option_field(
        "split JSON (default RAW/labels/{train,validation,test}.json)"
    )
    videos: Path | None = path_option_field(f"folder of {{id}}.webm (default RAW/{VIDEO_FOLDER})")


def strip_brackets(template: str) -> str:
    """'Holding [something] next to [something]' -> 'Holding something next to something'."""
    return template.replace("[", "").replace("]", "")


def read_labels(path: Path) -> dict[str, int]:
    """Template (without brackets) -> class index, from labels.json whose indexes are strings."""
    raw = load_json(path, dict, "SSv2 labels")
    labels: dict[str, int] = {}
    for template, value in raw.items():
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise AnnotationError(
                f"{path}: index of template {template!r} is {value!r}, not a number"
            ) from None
        labels[strip_brackets(template)] = index
    if len(set(labels.values())) != len(labels):
        raise AnnotationError(f"{path}: two templates share a class index")
    return labels


class SSv2Reader(Reader):
    """`python -m shards ssv2`: labels.json, the split JSON lists and the webm folder."""

    name = "ssv2"
    Options = SSv2Options

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLIT_FILES:
            raise AnnotationError(f"ssv2: unknown split {split!r} (expected train, val, validation or test)")
        stem = SPLIT_FILES[split]
        options = self.options
        labels_path = resolve_path(
            options.labels,
            [
                root / "labels" / "labels.json",
                root / "labels" / "something-something-v2-labels.json",
                root / "something-something-v2-labels.json",
            ],
            "ssv2 labels.json",
        )
        split_path = resolve_path(
            options.annotations,
            [
                root / "labels" / f"{stem}.json",
                root / "labels" / f"something-something-v2-{stem}.json",
                root / f"something-something-v2-{stem}.json",
            ],
            f"ssv2 {split} JSON",
        )
        labels = read_labels(labels_path)
        entries = load_json(split_path, list, f"SSv2 {split} list")
        videos = index_videos(options.videos if options.videos is not None else root / VIDEO_FOLDER)
        label_map = dict(sorted((index, template) for template, index in labels.items()))
        rows = entry_rows(entries, split_path, labels_path.name, labels, videos, unlabelled=split == "test")
        return Listing(label_map, rows)


def entry_rows(
    entries: list[Any],
    split_path: Path,
    labels_name: str,
    labels: dict[str, int],
    videos: dict[str, Path],
    unlabelled: bool,
) -> Iterator[Row | Reject]:
    """One row per entry of the split list, in file order; test entries (`unlabelled`) may lack a template."""
    # Some tools rewrite capitalisation; an exact match is tried first, then a case-insensitive one.
    labels_folded = {template.casefold(): index for template, index in labels.items()}
    label_names = {index: template for template, index in labels.items()}
    for position, entry in enumerate(entries):
        origin = f"{split_path}[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)):
            yield Reject(f"entry-{position}", origin, "entry has no 'id'")
            continue
        # ids are strings in the publisher files; some converted copies store numbers.
        raw_id = str(entry["id"]).strip()
        record_id = safe_id(raw_id)
        template = entry.get("template")
        if template is None and not unlabelled:
            yield Reject(record_id, origin, "entry has no 'template'")
            continue
        label, label_name = -1, ""
        if template is not None:
            if not isinstance(template, str):
                yield Reject(record_id, origin, f"template is not a string: {template!r}")
                continue
            plain = strip_brackets(template)
            label = labels.get(plain, labels_folded.get(plain.casefold(), -1))
            if label < 0:
                yield Reject(record_id, origin, f"template {plain!r} is not in {labels_name}")
                continue
            label_name = label_names[label]
        extras = {}
        if template is not None:
            extras = {"template": template, "placeholders": entry.get("placeholders", [])}
        if "label" in entry:
            extras["caption"] = entry["label"]
        yield Row(raw_id, origin, label, label_name, videos.get(raw_id), extras=extras)


register(SSv2Reader)
