"""Read shard manifests: which tar files make a split, how many samples each holds, the label map.

A split may be spread over several shard folders (each with its own manifest.json); they are
concatenated in the order given and must agree on the label map. Any problem is one ManifestError
line naming the folder, the file and the key.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from webdataset.tariterators import base_plus_ext

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A shard folder whose manifest is missing, unreadable or inconsistent with its files."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar file and the number of samples the manifest says it holds."""

    path: str
    num_samples: int


@dataclass(frozen=True)
class ShardSet:
    """All shards of a split (possibly several folders), the datasets they come from and the label map.

    frame_counts: clips per decoded frame count over all shards; None when a manifest predates them.
    modality: "video" or "image" (manifests from before images hold videos).
    """

    shards: tuple[ShardInfo, ...]
    label_map: dict[int, str]
    datasets: tuple[str, ...]
    frame_counts: dict[int, int] | None = None
    modality: str = "video"

    @property
    def total(self) -> int:
        """Samples in all shards."""
        return sum(s.num_samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        """Classes in the label map."""
        return len(self.label_map)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"shard folder {folder} has no {MANIFEST_NAME}") from None
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path} cannot be read as JSON: {err}") from None
    for key, kind in (("dataset", str), ("label_map", dict), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            raise ManifestError(f"{path}: key '{key}' is missing or not a {kind.__name__}")
    return manifest


def _shard_infos(folder: Path, manifest: dict) -> list[ShardInfo]:
    infos = []
    for i, entry in enumerate(manifest["shards"]):
        name, count = entry.get("name"), entry.get("num_samples")
        if not isinstance(name, str) or not isinstance(count, int) or count < 0:
            raise ManifestError(
                f"{folder / MANIFEST_NAME}: shards[{i}] needs a string 'name' and an int 'num_samples'"
            )
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{folder / MANIFEST_NAME}: shard {name} does not exist in {folder}")
        size, listed = path.stat().st_size, entry.get("bytes")
        if isinstance(listed, int) and size != listed:
            raise ManifestError(
                f"{folder / MANIFEST_NAME}: shard {name} holds {size} bytes, the manifest says {listed} "
                "(truncated or rewritten since it was sharded)"
            )
        if count:
            infos.append(ShardInfo(str(path), count))
    return infos


def load_shard_set(folders: list[str]) -> ShardSet:
    """Read the manifests of `folders` into one ShardSet (shards in folder order, then manifest order)."""
    if not folders:
        raise ManifestError("no shard folders given (data.train / data.val is empty)")
    shards: list[ShardInfo] = []
    datasets: list[str] = []
    label_map: dict[int, str] | None = None
    frame_counts: dict[int, int] | None = {}
    modalities: set[str] = set()
    for folder_name in folders:
        folder = Path(folder_name)
        manifest = _read_manifest(folder)
        modalities.add(str(manifest.get("modality", "video")))
        if len(modalities) > 1:
            raise ManifestError(f"{folder / MANIFEST_NAME}: images and videos mixed in one split ({folders})")
        try:
            labels = {int(k): str(v) for k, v in manifest["label_map"].items()}
        except ValueError:
            raise ManifestError(f"{folder / MANIFEST_NAME}: label_map keys must be integers") from None
        if sorted(labels) != list(range(len(labels))):
            raise ManifestError(f"{folder / MANIFEST_NAME}: label_map indexes are not 0..{len(labels) - 1}")
        if label_map is not None and labels != label_map:
            raise ManifestError(f"{folder / MANIFEST_NAME}: its label_map differs from that of {folders[0]}")
        label_map = labels
        shards += _shard_infos(folder, manifest)
        frame_counts = _add_frame_counts(frame_counts, manifest["shards"])
        if manifest["dataset"] not in datasets:
            datasets.append(manifest["dataset"])
    if not shards:
        raise ManifestError(f"shard folders {folders} hold no samples")
    return ShardSet(tuple(shards), label_map or {}, tuple(datasets), frame_counts, modalities.pop())


def _add_frame_counts(counts: dict[int, int] | None, entries: list[dict]) -> dict[int, int] | None:
    """`counts` plus the shard entries' `frame_counts`; None once an entry has none (an older manifest)."""
    for entry in entries:
        if counts is None or not isinstance(entry.get("frame_counts"), dict):
            return None
        for frames, clips in entry["frame_counts"].items():
            counts[int(frames)] = counts.get(int(frames), 0) + int(clips)
    return counts


@lru_cache(maxsize=4096)
def sample_offsets(path: str) -> tuple[int, ...]:
    """Byte offset of each sample's first tar header in shard `path`, in order.

    Reading only the headers (tarfile seeks over the data) lets a worker start a shard in the
    middle without reading the samples before it. Cached per process.
    """
    offsets: list[int] = []
    last_key = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _ = base_plus_ext(member.name)
            if key != last_key:
                # PAX extended headers sit before the member's own header: start from them.
                offsets.append(member.offset)
                last_key = key
    return tuple(offsets)
