"""Diving-48 (V2) in its publisher layout.

`Diving48_V2_{train,test}.json` are lists of `{"vid_name": "-mmq0PT-u8k_00155", "label": 0,
"start_frame": 0, "end_frame": 48}`; `Diving48_vocab.json` is a list of 48 lists
`[takeoff, somersault, twist, flight_position]` indexed by label, and a readable class name joins
them with '+'. Videos `rgb/{vid_name}.mp4` are already the clips: nothing is trimmed.
The publisher's only held-out split is `test`; `val` reads the same file.
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

SPLIT_FILES = {"train": "train", "test": "test", "val": "test"}
INT_FIELDS = ("label", "start_frame", "end_frame")


@dataclass(frozen=True)
class Diving48Options:
    """Where the split JSON, the vocabulary and the rgb folder are (None: the publisher's places)."""

    annotations: Path | None = path_option_field("split JSON (default RAW/Diving48_V2_{train,test}.json)")
    vocab: Path | None = path_option_field("class vocabulary (default RAW/Diving48_vocab.json)")
    videos: Path | None = path_option_field("folder of {vid_name}.mp4 (default RAW/rgb)")


def read_vocab(path: Path) -> dict[int, str]:
    """Class index -> 'takeoff+somersault+twist+flight_position' from Diving48_vocab.json."""
    vocab = load_json(path, list, "Diving-48 vocabulary")
    names: dict[int, str] = {}
    for index, parts in enumerate(vocab):
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
            raise AnnotationError(f"{path}: vocabulary entry {index} is not a list of strings: {parts!r}")
        names[index] = "+".join(parts)
    return names


class Diving48(Reader):
    """`python -m shards diving48`: the V2 split lists, the vocabulary and rgb/{vid_name}.mp4."""

    name = "diving48"
    Options = Diving48Options

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SPLIT_FILES:
            raise AnnotationError(f"diving48: unknown split {split!r} (expected train, test or val)")
        options = self.options
        split_path = resolve_path(
            options.annotations, [root / f"Diving48_V2_{SPLIT_FILES[split]}.json"], f"diving48 {split} JSON"
        )
        vocab_path = resolve_path(options.vocab, [root / "Diving48_vocab.json"], "diving48 vocabulary")
        label_map = read_vocab(vocab_path)
        entries = load_json(split_path, list, f"Diving-48 {split} list")
        videos = index_videos(options.videos if options.videos is not None else root / "rgb")
        return Listing(label_map, entry_rows(entries, split_path, vocab_path.name, label_map, videos))


def entry_rows(
    entries: list[Any], split_path: Path, vocab_name: str, label_map: dict[int, str], videos: dict[str, Path]
) -> Iterator[Row | Reject]:
    """One row per entry of the split list, in file order."""
    for position, entry in enumerate(entries):
        origin = f"{split_path}[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("vid_name"), str) or not entry["vid_name"]:
            yield Reject(f"entry-{position}", origin, "entry has no 'vid_name'")
            continue
        vid_name = entry["vid_name"]
        record_id = safe_id(vid_name)
        # bool is an int subclass: `true` in a label field is as wrong as a string.
        bad = [f for f in INT_FIELDS if not isinstance(entry.get(f), int) or isinstance(entry.get(f), bool)]
        if bad:
            yield Reject(record_id, origin, f"missing or non-integer {', '.join(bad)}")
            continue
        label, start_frame, end_frame = (entry[f] for f in INT_FIELDS)
        if label not in label_map:
            yield Reject(record_id, origin, f"label {label} is not in {vocab_name}")
            continue
        if not 0 <= start_frame <= end_frame:
            yield Reject(record_id, origin, f"bad frame range {start_frame}..{end_frame}")
            continue
        # The publisher's frame count is end_frame + 1 (frames are numbered from the clip's start).
        extras = {"start_frame": start_frame, "end_frame": end_frame, "expected_frames": end_frame + 1}
        yield Row(vid_name, origin, label, label_map[label], videos.get(vid_name), extras=extras)


register(Diving48)
