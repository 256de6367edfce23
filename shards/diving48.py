"""Diving-48 (V2) in its publisher layout.

`Diving48_V2_{train,test}.json` are lists of `{"vid_name": "-mmq0PT-u8k_00155", "label": 0,
"start_frame": 0, "end_frame": 48}`; `Diving48_vocab.json` is a list of 48 lists
`[takeoff, somersault, twist, flight_position]` indexed by label, and a readable class name joins
them with '+'. Videos `rgb/{vid_name}.mp4` are already the clips: nothing is trimmed.
The publisher's only held-out split is `test`; `val` reads the same file.
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

SPLIT_FILES = {"train": "train", "test": "test", "val": "test"}
INT_FIELDS = ("label", "start_frame", "end_frame")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Diving-48 flags: where the split JSON, the vocabulary and the rgb folder are."""
    path_option(parser, "--annotations", "split JSON (default RAW/Diving48_V2_{train,test}.json)")
    path_option(parser, "--vocab", "class vocabulary (default RAW/Diving48_vocab.json)")
    path_option(parser, "--videos", "folder of {vid_name}.mp4 (default RAW/rgb)")


def read_vocab(path: Path) -> dict[int, str]:
    """Class index -> 'takeoff+somersault+twist+flight_position' from Diving48_vocab.json."""
    vocab = load_json(path, list, "Diving-48 vocabulary")
    names: dict[int, str] = {}
    for index, parts in enumerate(vocab):
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
            raise AnnotationError(f"{path}: vocabulary entry {index} is not a list of strings: {parts!r}")
        names[index] = "+".join(parts)
    return names


def read(root: Path, split: str, args: argparse.Namespace) -> DatasetIndex:
    """Read one Diving-48 split (train, test; val = test) into records in file order."""
    if split not in SPLIT_FILES:
        raise AnnotationError(f"diving48: unknown split {split!r} (expected train, test or val)")
    split_path = resolve_path(
        args.annotations, [root / f"Diving48_V2_{SPLIT_FILES[split]}.json"], f"diving48 {split} JSON"
    )
    vocab_path = resolve_path(args.vocab, [root / "Diving48_vocab.json"], "diving48 vocabulary")
    label_map = read_vocab(vocab_path)
    entries = load_json(split_path, list, f"Diving-48 {split} list")
    videos = index_videos(args.videos if args.videos is not None else root / "rgb")

    index = DatasetIndex(dataset="diving48", split=split, records=[], label_map=label_map, root=root)
    for position, entry in enumerate(entries):
        source = f"{split_path}[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("vid_name"), str) or not entry["vid_name"]:
            index.rejects.append(Reject(f"entry-{position}", source, "entry has no 'vid_name'"))
            continue
        vid_name = entry["vid_name"]
        record_id = safe_id(vid_name)
        # bool is an int subclass: `true` in a label field is as wrong as a string.
        bad = [f for f in INT_FIELDS if not isinstance(entry.get(f), int) or isinstance(entry.get(f), bool)]
        if bad:
            index.rejects.append(Reject(record_id, source, f"missing or non-integer {', '.join(bad)}"))
            continue
        label, start_frame, end_frame = (entry[f] for f in INT_FIELDS)
        if label not in label_map:
            index.rejects.append(Reject(record_id, source, f"label {label} is not in {vocab_path.name}"))
            continue
        if not 0 <= start_frame <= end_frame:
            index.rejects.append(Reject(record_id, source, f"bad frame range {start_frame}..{end_frame}"))
            continue
        if not index.claim(record_id, source, "duplicate vid_name"):
            continue
        video = videos.get(vid_name)
        if video is None:
            index.missing.append(record_id)
            continue
        # The publisher's frame count is end_frame + 1 (frames are numbered from the clip's start).
        extras = {"start_frame": start_frame, "end_frame": end_frame, "expected_frames": end_frame + 1}
        index.records.append(Record(record_id, label, label_map[label], video, extras=extras))
    return index


register(DatasetReader(name="diving48", add_arguments=add_arguments, read=read, store_ext="mp4"))
