"""Shard manifests: the typed `Manifest` file that the sharder writes, and the ShardSet the loader reads.

`Manifest` is the one reader and writer of `manifest.json` (and of the partial manifests of
`--part i/n` runs): the sharder writes it, `shards verify` and `shards merge` read it, the loader
turns one or more into a ShardSet. No torch here: the sharder imports this module on CPU nodes.

A split may be spread over several shard folders (each with its own manifest.json); they are
concatenated in the order given and must agree on the label map. Any problem is one ManifestError
line naming the file and the key. A folder may be an object-store URL (`s3://bucket/prefix`): its manifest
is fetched and its shards listed through `pipeline.storage`, and the ShardSet holds the shards' URLs.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.console import one_line
from pipeline.data.shard_io import ShardReader, read_manifest_bytes
from pipeline.io import atomic_write_json

MANIFEST_NAME = "manifest.json"
PART_MANIFEST = re.compile(r"manifest-p(\d{3})-of-(\d{3})\.json")


def manifest_name(part: tuple[int, int] | None = None) -> str:
    """`manifest.json`, or the partial manifest of part i of n."""
    return MANIFEST_NAME if part is None else f"manifest-p{part[0]:03d}-of-{part[1]:03d}.json"


class ManifestError(ValueError):
    """A shard folder whose manifest is missing, unreadable or inconsistent with its files."""


@dataclass(frozen=True)
class ShardEntry:
    """One tar file as the manifest lists it.

    frame_counts: clips per decoded frame count; None in manifests written before they were recorded.
    """

    name: str
    num_samples: int
    bytes: int
    sha256: str
    frame_counts: dict[int, int] | None = None

    @classmethod
    def from_json(cls, entry: Any, path: Path | str, index: int) -> ShardEntry:
        """Entry `index` of the manifest (or progress file) at `path`, checked."""
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: key 'shards[{index}]' is not an object")
        fields = _Fields(entry, path, f"shards[{index}].")
        num_samples = fields.get("num_samples", int)
        if num_samples < 0:
            raise ManifestError(f"{path}: key 'shards[{index}].num_samples' is negative ({num_samples})")
        counts = fields.get("frame_counts", dict, None)
        frame_counts = None if counts is None else {_as_int(n): c for n, c in counts.items()}
        if frame_counts and (None in frame_counts or any(type(c) is not int for c in frame_counts.values())):
            raise ManifestError(f"{path}: key 'shards[{index}].frame_counts' needs frame count -> clips")
        return cls(
            name=fields.get("name", str),
            num_samples=num_samples,
            bytes=fields.get("bytes", int),
            sha256=fields.get("sha256", str),
            frame_counts=frame_counts,
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as it is stored (JSON object keys are strings)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "num_samples": self.num_samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }
        if self.frame_counts is not None:
            entry["frame_counts"] = {str(n): c for n, c in sorted(self.frame_counts.items())}
        return entry


@dataclass(frozen=True)
class Manifest:
    """What one sharding run (or the merge of its parts) wrote: the on-disk format of manifest.json.

    label_map: class index -> class name. modality: "video" or "image" (manifests written before
    images existed have no such key and hold videos). part: (index, count) of a `--part` run's
    partial manifest, None for a whole one. rejects: {id, source, reason} per unusable record;
    missing: ids whose video does not exist.
    """

    dataset: str
    split: str
    tool_version: str
    options: dict[str, Any]
    label_map: dict[int, str]
    shards: list[ShardEntry]
    total: int
    rejects: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    modality: str = "video"
    part: tuple[int, int] | None = None

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        """Read and check `path` (a file or a URL); any problem is one ManifestError line naming the file
        (or URL, credentials left out) and the key."""
        try:
            if storage.is_url(str(path)):
                data = json.loads(read_manifest_bytes(str(path)).decode("utf-8"))
            else:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
        except storage.StorageError as err:
            if err.cause == "no such key":
                folder, name = str(path).rsplit("/", 1)
                raise ManifestError(f"shard folder {storage.describe(folder)} has no {name}") from None
            raise ManifestError(str(err)) from None
        except FileNotFoundError:
            path = Path(path)
            raise ManifestError(f"shard folder {path.parent} has no {path.name}") from None
        except (OSError, ValueError) as err:
            raise ManifestError(f"{path} cannot be read as JSON: {one_line(err)}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: not a JSON object")
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | str) -> Manifest:
        """The manifest stored as `data` (read from `path`, which error messages name)."""
        fields = _Fields(data, path)
        label_map = {}
        for key, name in fields.get("label_map", dict).items():
            index = _as_int(key)
            if index is None or not isinstance(name, str):
                raise ManifestError(f"{path}: key 'label_map' maps {key!r} to {name!r}, not index -> name")
            label_map[index] = name
        part = fields.get("part", dict, None)
        if part is not None:
            part_fields = _Fields(part, path, "part.")
            part = (part_fields.get("index", int), part_fields.get("count", int))
        return cls(
            dataset=fields.get("dataset", str),
            split=fields.get("split", str),
            tool_version=fields.get("tool_version", str),
            options=fields.get("options", dict),
            label_map=label_map,
            shards=[ShardEntry.from_json(e, path, i) for i, e in enumerate(fields.get("shards", list))],
            total=fields.get("total", int),
            rejects=fields.get("rejects", list),
            missing=fields.get("missing", list),
            modality=fields.get("modality", str, "video"),
            part=part,
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest as it is stored; `part` only in a partial manifest."""
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "modality": self.modality,
            "tool_version": self.tool_version,
            "options": self.options,
            "label_map": {str(k): v for k, v in sorted(self.label_map.items())},
            "shards": [entry.to_json() for entry in self.shards],
            "total": self.total,
            "rejects": self.rejects,
            "missing": self.missing,
        }
        if self.part is not None:
            data["part"] = {"index": self.part[0], "count": self.part[1]}
        return data

    def save(self, path: Path) -> None:
        """Write the manifest to `path` atomically (temp file + rename: readers never see half of it)."""
        atomic_write_json(path, self.to_json())


_MISSING = object()


class _Fields:
    """Typed access to a JSON object's keys: a missing key or a wrong type is a ManifestError naming it."""

    def __init__(self, data: dict[str, Any], path: Path | str, prefix: str = "") -> None:
        self.data, self.path, self.prefix = data, path, prefix

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        """`data[key]`, which must be a `kind` (bool is not an int); `default` when absent, if given."""
        if key not in self.data and default is not _MISSING:
            return default
        value = self.data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{self.path}: key '{self.prefix}{key}' is missing or not a {kind.__name__}")
        return value


def _as_int(text: str) -> int | None:
    """The integer a JSON object key spells, or None."""
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ShardInfo:
    """One tar file (a path or a URL), the number of samples the manifest says it holds, and its size
    and sha256 as the manifest records them (what a cached copy of a remote shard is checked against)."""

    path: str
    num_samples: int
    bytes: int = 0
    sha256: str = ""


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


def _shard_infos(folder: str, manifest: Manifest) -> list[ShardInfo]:
    sizes = _file_sizes(folder)
    manifest_path = _manifest_path(folder)
    infos = []
    for entry in manifest.shards:
        size = sizes.get(entry.name)
        if size is None:
            where = storage.describe(folder)
            raise ManifestError(f"{manifest_path}: shard {entry.name} does not exist in {where}")
        if size != entry.bytes:
            raise ManifestError(
                f"{manifest_path}: shard {entry.name} holds {size} bytes, the manifest says "
                f"{entry.bytes} (truncated or rewritten since it was sharded)"
            )
        if entry.num_samples:
            path = storage.join(folder, entry.name)
            infos.append(ShardInfo(path, entry.num_samples, entry.bytes, entry.sha256))
    return infos


def _manifest_path(folder: str) -> str:
    """The manifest of `folder` as messages name it."""
    if storage.is_url(folder):
        return storage.describe(storage.join(folder, MANIFEST_NAME))
    return str(Path(folder) / MANIFEST_NAME)


def _file_sizes(folder: str) -> dict[str, int]:
    """Name -> size of the files in `folder` (one listing of a URL; a local folder's regular files)."""
    if not storage.is_url(folder):
        return {path.name: path.stat().st_size for path in Path(folder).iterdir() if path.is_file()}
    try:
        return storage.list_sizes(folder)
    except storage.StorageError as err:
        raise ManifestError(str(err)) from None


def load_shard_set(folders: list[str]) -> ShardSet:
    """Read the manifests of `folders` into one ShardSet (shards in folder order, then manifest order)."""
    if not folders:
        raise ManifestError("no shard folders given (data.train / data.val is empty)")
    shards: list[ShardInfo] = []
    datasets: list[str] = []
    label_map: dict[int, str] | None = None
    frame_counts: dict[int, int] | None = {}
    modalities: set[str] = set()
    for folder in folders:
        where = _manifest_path(folder)
        manifest = Manifest.load(storage.join(folder, MANIFEST_NAME))
        modalities.add(manifest.modality)
        if len(modalities) > 1:
            raise ManifestError(f"{where}: images and videos mixed in one split ({folders})")
        labels = manifest.label_map
        if sorted(labels) != list(range(len(labels))):
            raise ManifestError(f"{where}: label_map indexes are not 0..{len(labels) - 1}")
        if label_map is not None and labels != label_map:
            raise ManifestError(f"{where}: its label_map differs from that of {storage.describe(folders[0])}")
        label_map = labels
        shards += _shard_infos(folder, manifest)
        frame_counts = _add_frame_counts(frame_counts, manifest.shards)
        if manifest.dataset not in datasets:
            datasets.append(manifest.dataset)
    if not shards:
        raise ManifestError(f"shard folders {folders} hold no samples")
    return ShardSet(tuple(shards), label_map or {}, tuple(datasets), frame_counts, modalities.pop())


def _add_frame_counts(counts: dict[int, int] | None, entries: list[ShardEntry]) -> dict[int, int] | None:
    """`counts` plus the shard entries' `frame_counts`; None once an entry has none (an older manifest)."""
    for entry in entries:
        if counts is None or entry.frame_counts is None:
            return None
        for frames, clips in entry.frame_counts.items():
            counts[frames] = counts.get(frames, 0) + clips
    return counts


@lru_cache(maxsize=4096)
def sample_offsets(path: str, reader: ShardReader | None = None) -> tuple[int, ...]:
    """Byte offset of each sample's first tar header in shard `path` (opened by `reader`), in order.

    Reading only the headers (tarfile seeks over the data) lets a worker start a shard in the
    middle without reading the samples before it. Cached per process.
    """
    # webdataset imports torch: only the loader calls this, the sharder must not pay for that import.
    from webdataset.tariterators import base_plus_ext

    offsets: list[int] = []
    last_key = None
    with (reader or ShardReader()).open(path) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _ = base_plus_ext(member.name)
            if key != last_key:
                # PAX extended headers sit before the member's own header: start from them.
                offsets.append(member.offset)
                last_key = key
    return tuple(offsets)
