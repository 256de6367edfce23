"""`python -m shards merge OUT`: combine the partial manifests of `--part i/n` runs into manifest.json.

Each part (one task of a Slurm job array) writes its own shard range `<dataset>-<split>-pIII-NNNNNN.tar`
and `manifest-pIII-of-NNN.json`. Merging checks that all n parts are there and were made by the
same tool with the same options and label map, then lists their shards in part order: the merged
manifest holds the same samples as a single run over all records. OUT may be an object-store URL: the
parts are read from the store and manifest.json is uploaded there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.data.manifest import MANIFEST_NAME, PART_MANIFEST, Manifest, ManifestError
from shards.folder import ShardFolder, open_folder

# Fields every part must have in common for the merge to mean one dataset split.
SHARED_FIELDS = ("dataset", "split", "modality", "tool_version", "options", "label_map")


class MergeError(RuntimeError):
    """Parts that cannot be merged; the message is one line naming the file or the field."""


def load_parts(folder: ShardFolder) -> list[Manifest]:
    """Read every partial manifest in `folder`, checking that parts 0..n-1 are all present, in order."""
    found: dict[int, Manifest] = {}
    counts: set[int] = set()
    out = folder.location
    for name in folder.names():
        match = PART_MANIFEST.fullmatch(name)
        if match is None:
            continue
        try:
            manifest = folder.load_manifest(name)
        except ManifestError as err:
            raise MergeError(str(err)) from None
        index, count = int(match.group(1)), int(match.group(2))
        if manifest.part != (index, count):
            raise MergeError(
                f"{folder.path_of(name)}: its 'part' field {manifest.part} does not match its name"
            )
        found[index] = manifest
        counts.add(count)
    if not found:
        raise MergeError(f"{out}: no partial manifests (manifest-pIII-of-NNN.json) to merge")
    if len(counts) > 1:
        raise MergeError(f"{out}: partial manifests of different part counts {sorted(counts)}")
    count = counts.pop()
    absent = [f"p{i:03d}" for i in range(count) if i not in found]
    if absent:
        raise MergeError(f"{out}: parts {', '.join(absent)} of {count} are missing")
    return [found[i] for i in range(count)]


def merge_manifests(parts: list[Manifest]) -> Manifest:
    """One manifest from the parts' manifests (which must agree on SHARED_FIELDS)."""
    first = parts[0]
    for index, manifest in enumerate(parts[1:], start=1):  # load_parts gives part i at index i
        for name in SHARED_FIELDS:
            if getattr(manifest, name) != getattr(first, name):
                raise MergeError(f"part p{index:03d} differs from part p000 in '{name}'")
    shards = [entry for manifest in parts for entry in manifest.shards]
    names = [entry.name for entry in shards]
    if len(set(names)) != len(names):
        raise MergeError("two parts list the same shard name")
    rejects = [reject for manifest in parts for reject in manifest.rejects]
    return dataclasses.replace(
        first,
        shards=shards,
        total=sum(entry.num_samples for entry in shards),
        rejects=sorted(rejects, key=lambda r: (r["id"], r["source"], r["reason"])),
        missing=sorted(missing for manifest in parts for missing in manifest.missing),
        part=None,
    )


def merge_parts(out: str | Path) -> Manifest:
    """Merge the partial manifests in `out` (a folder or a URL) into its manifest.json (atomically: a
    rename, or one upload) and return it. A store that cannot be reached is a StorageError line."""
    folder = open_folder(out)
    try:
        folder.check_readable()
        merged = merge_manifests(load_parts(folder))
        folder.save_manifest(merged, MANIFEST_NAME)
    finally:
        folder.close()
    return merged
