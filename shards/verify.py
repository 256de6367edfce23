"""`python -m shards verify OUT`: re-read every shard against manifest.json.

Checks, per shard: the file exists, its size and sha256 match, it is a readable tar whose samples are
contiguous and complete (one video or image member (`jpg` or `png`), or the frames `000000.jpg ...` of a
frame sample, json, cls, and the sha256 digest member of shards written since digests exist), the sample
count matches; per sample: its digest matches its members, the key is `<dataset>/<split>/<id>`, cls
equals the json label, the label is in the label map, and the video decodes to exactly the json's
num_frames (an image: completely, at the json's width and height; a frame sample: num_frames frames, each
so). A shard whose size or sha256 differs is still read, so that the samples whose bytes changed are
named. Every mismatch is one line naming the shard (and sample); no problem means the shards can be
trained on as the manifest describes them.

OUT may be an object-store URL (`s3://bucket/prefix`): each shard is streamed once, its sha256 taken
while its samples are read, so a local folder and a bucket are checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.console import one_line
from pipeline.data.digest import DIGEST_MEMBER, digest_problem
from pipeline.data.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardEntry
from shards.folder import ShardFolder, open_folder
from shards.frames import FRAME_MEMBER, FRAMES_STORAGE, frame_member
from shards.image import IMAGE_EXTS, ImageError, open_image
from shards.video import STORE_AS_IS_EXTS, VideoError, count_decoded_frames

HASH_CHUNK = 1 << 20
SHARD_FILE = re.compile(r".+-\d{6}\.tar")


def verify_shards(out: str | Path) -> tuple[list[str], int]:
    """Check the shards in `out` (a folder or a URL) against its manifest.json; returns (problems, samples
    checked). A URL whose store cannot be reached or read is a StorageError line, not a problem list."""
    folder = open_folder(out)
    folder.check_readable()
    manifest_path = folder.path_of(MANIFEST_NAME)
    try:
        manifest = folder.load_manifest(MANIFEST_NAME)
    except ManifestError as err:
        return [str(err)], 0

    problems: list[str] = []
    seen_keys: set[str] = set()
    checked = 0
    for entry in manifest.shards:
        shard_problems, keys = _verify_shard(folder, entry, manifest)
        problems += shard_problems
        for key in keys:
            if key in seen_keys:
                problems.append(f"{entry.name}: sample {key} also appears in an earlier shard")
            seen_keys.add(key)
        checked += len(keys)
    total = sum(entry.num_samples for entry in manifest.shards)
    if manifest.total != total:
        problems.append(f"{manifest_path}: total {manifest.total} != {total}, the sum over its shards")
    listed = {entry.name for entry in manifest.shards}
    for name in folder.names():
        if SHARD_FILE.fullmatch(name) and name not in listed:
            problems.append(f"{name}: shard file not listed in the manifest")
    return problems, checked


def _verify_shard(folder: ShardFolder, entry: ShardEntry, manifest: Manifest) -> tuple[list[str], list[str]]:
    name = entry.name
    size = folder.size(name)
    if size is None:
        return [f"{name}: shard file is missing"], []
    problems = []
    if size != entry.bytes:
        problems.append(f"{name}: {size} bytes, the manifest says {entry.bytes}")
    samples: dict[str, dict[str, bytes]] = {}
    unreadable: Exception | None = None
    digest = None
    try:
        with folder.open(name) as f:
            reader = _HashingReader(f)
            try:
                samples = _read_samples(reader)
            except (tarfile.TarError, ValueError) as err:
                unreadable = err
            reader.drain()  # the bytes after the last member (or after a broken one) count in the sha256
            digest = reader.sha256.hexdigest()
    except OSError as err:
        unreadable = err
    if size == entry.bytes and digest is not None and digest != entry.sha256:
        problems.append(f"{name}: sha256 differs from the manifest")
    if unreadable is not None:
        return [*problems, f"{name}: cannot read the tar: {one_line(unreadable)}"], []
    if len(samples) != entry.num_samples:
        problems.append(f"{name}: {len(samples)} samples, the manifest says {entry.num_samples}")
    for key, members in samples.items():
        problems += [f"{name}: {key}: {problem}" for problem in _check_sample(key, members, manifest)]
    return problems, list(samples)


def _read_samples(file: BinaryIO | _HashingReader) -> dict[str, dict[str, bytes]]:
    """Group members into samples the way webdataset does: key = name up to the first '.' of its file name.

    `file` is read once, front to back (tar stream mode: a store object needs no seeks)."""
    samples: dict[str, dict[str, bytes]] = {}
    previous = None
    with tarfile.open(fileobj=file, mode="r|") as tar:  # type: ignore[arg-type]
        for member in tar:
            if not member.isfile():
                raise ValueError(f"member {member.name} is not a regular file")
            folder, _, file_name = member.name.rpartition("/")
            stem, dot, ext = file_name.partition(".")
            if not dot:
                raise ValueError(f"member {member.name} has no extension")
            key = f"{folder}/{stem}" if folder else stem
            if key != previous and key in samples:
                raise ValueError(f"members of sample {key} are not contiguous")
            previous = key
            data = tar.extractfile(member)
            samples.setdefault(key, {})[ext] = data.read() if data is not None else b""
    return samples


def _check_sample(key: str, members: dict[str, bytes], manifest: Manifest) -> list[str]:
    media = [ext for ext in members if ext in (*STORE_AS_IS_EXTS, *IMAGE_EXTS)]
    frames = sorted(ext for ext in members if FRAME_MEMBER.fullmatch(ext))
    expected = {"json", "cls"} | set(media) | set(frames)
    if len(media) + bool(frames) != 1 or set(members) - {DIGEST_MEMBER} != expected:
        accepted = [*STORE_AS_IS_EXTS, *IMAGE_EXTS, f"{frame_member(0)} ..."]
        found = sorted(set(members) - set(frames)) + ([f"{len(frames)} frames"] if frames else [])
        return [f"members {found}: expected one of {accepted} plus json and cls"]
    bytes_changed = digest_problem(members)
    if bytes_changed:
        return [bytes_changed]
    try:
        meta = json.loads(members["json"])
        label, sample_id, num_frames = meta["label"], meta["id"], meta["num_frames"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"json unreadable: {one_line(err)}"]
    problems = []
    if key != f"{manifest.dataset}/{manifest.split}/{sample_id}":
        problems.append(f"key does not match the json's dataset/split/id ({sample_id!r})")
    if members["cls"].decode("ascii", "replace") != str(label):
        problems.append(f"cls {members['cls']!r} differs from the json label {label}")
    if label != -1 and manifest.label_map.get(label) != meta.get("label_name"):
        problems.append(f"label {label} ({meta.get('label_name')!r}) is not in the label map as such")
    if frames:
        return problems + _check_frames(members, frames, meta)
    if media[0] in IMAGE_EXTS:
        return problems + _check_image(members[media[0]], meta)
    try:
        decoded = count_decoded_frames(members[media[0]])
    except VideoError as err:
        return [*problems, f"video does not decode: {err}"]
    if decoded != num_frames:
        problems.append(f"video decodes to {decoded} frames, the json says {num_frames}")
    return problems


def _check_frames(members: dict[str, bytes], frames: list[str], meta: dict[str, Any]) -> list[str]:
    """A frame sample's frames are 0 .. num_frames-1, each decodes completely at the json's size."""
    if meta.get("storage") != FRAMES_STORAGE:
        return [f"frame members, but the json's storage is {meta.get('storage')!r}"]
    if frames != [frame_member(i) for i in range(meta["num_frames"])]:
        return [f"{len(frames)} frames ({frames[0]} .. {frames[-1]}), the json says {meta['num_frames']}"]
    for ext in frames:
        problem = _check_image(members[ext], meta)
        if problem:
            return [f"frame {ext}: {problem[0]}"]
    return []


def _check_image(data: bytes, meta: dict[str, Any]) -> list[str]:
    """An image member decodes completely, at the size its json records."""
    try:
        image = open_image(data)
    except ImageError as err:
        return [f"image does not decode: {err}"]
    recorded = (meta.get("width"), meta.get("height"))
    if image.size != recorded:
        return [f"image is {image.width}x{image.height}, the json says {recorded[0]}x{recorded[1]}"]
    return []


class _HashingReader:
    """A read-only file wrapper that hashes what is read through it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        while self.read(HASH_CHUNK):
            pass
