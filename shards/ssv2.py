"""Something-Something V2 in its publisher layout.

`labels.json` maps each template, written without brackets, to its class index as a STRING
("0".."173"). The split files are JSON lists of `{"id": "78687", "label": caption, "template":
"Holding [something] next to [something]", "placeholders": [...]}`; test entries carry only the id.
The class of an entry is labels[template with '[' and ']' removed]. Videos are `{id}.webm`.
Older downloads name the files `something-something-v2-{labels,train,validation,test}.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shards.datasets import (
    DatasetReader,
    index_videos,
    load_json,
    path_option,
    register,
    resolve_path,
    safe_id,
)
from shards.records import AnnotationError, DatasetIndex, Record, Reject

SPLIT_FILES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
VIDEO_FOLDER = "20bn-something-something-v2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SSv2 flags: where labels.json, the split JSON and the webm folder are."""
    path_option(parser, "--labels", "labels.json (default RAW/labels/labels.json)")
    path_option(parser, "--annotations", "split JSON (default RAW/labels/{train,validation,test}.json)")
    path_option(parser, "--videos", f"folder of {{id}}.webm (default RAW/{VIDEO_FOLDER})")


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


def read(root: Path, split: str, args: argparse.Namespace) -> DatasetIndex:
    """Read one SSv2 split (train, val/validation, test) into records in file order."""
    if split not in SPLIT_FILES:
        raise AnnotationError(f"ssv2: unknown split {split!r} (expected train, val, validation or test)")
    stem = SPLIT_FILES[split]
    labels_path = resolve_path(
        args.labels,
        [
            root / "labels" / "labels.json",
            root / "labels" / "something-something-v2-labels.json",
            root / "something-something-v2-labels.json",
        ],
        "ssv2 labels.json",
    )
    split_path = resolve_path(
        args.annotations,
        [
            root / "labels" / f"{stem}.json",
            root / "labels" / f"something-something-v2-{stem}.json",
            root / f"something-something-v2-{stem}.json",
        ],
        f"ssv2 {split} JSON",
    )
    labels = read_labels(labels_path)
    # Some tools rewrite capitalisation; an exact match is tried first, then a case-insensitive one.
    labels_folded = {template.casefold(): index for template, index in labels.items()}
    label_names = {index: template for template, index in labels.items()}
    entries = load_json(split_path, list, f"SSv2 {split} list")
    videos = index_videos(args.videos if args.videos is not None else root / VIDEO_FOLDER)

    label_map = dict(sorted(label_names.items()))
    index = DatasetIndex(dataset="ssv2", split=split, records=[], label_map=label_map, root=root)
    for position, entry in enumerate(entries):
        source = f"{split_path}[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)):
            index.rejects.append(Reject(f"entry-{position}", source, "entry has no 'id'"))
            continue
        # ids are strings in the publisher files; some converted copies store numbers.
        raw_id = str(entry["id"]).strip()
        record_id = safe_id(raw_id)
        template = entry.get("template")
        if template is None and split != "test":
            index.rejects.append(Reject(record_id, source, "entry has no 'template'"))
            continue
        label, label_name = -1, ""
        if template is not None:
            if not isinstance(template, str):
                index.rejects.append(Reject(record_id, source, f"template is not a string: {template!r}"))
                continue
            plain = strip_brackets(template)
            label = labels.get(plain, labels_folded.get(plain.casefold(), -1))
            if label < 0:
                index.rejects.append(
                    Reject(record_id, source, f"template {plain!r} is not in {labels_path.name}")
                )
                continue
            label_name = label_names[label]
        if not index.claim(record_id, source, "duplicate id"):
            continue
        video = videos.get(raw_id)
        if video is None:
            index.missing.append(record_id)
            continue
        extras = {}
        if template is not None:
            extras = {"template": template, "placeholders": entry.get("placeholders", [])}
        if "label" in entry:
            extras["caption"] = entry["label"]
        index.records.append(Record(record_id, label, label_name, video, extras=extras))
    return index


register(DatasetReader(name="ssv2", add_arguments=add_arguments, read=read, store_ext="webm"))
