"""Where a shard's bytes come from: a local file, or an object-store URL streamed or cached on local disk.

The loader stages read every shard through `ShardReader.open`, so reading, shuffling, digests and
stand-ins are the same whatever holds the bytes; only this module knows about URLs.

From a URL (no cache): the object is read in ranged GETs of CHUNK_BYTES, one chunk in memory at a time.
A GET that fails on the network (connection refused or reset, a stalled read past the read timeout, a
5xx, throttling) is retried with exponential backoff (`pipeline.storage.with_retries`), from the same
byte; one that still fails after its tries, or fails for good (the object was deleted, access denied),
raises a StorageError, an OSError, so the reading stage turns the samples it could not read into
failed samples (stand-ins, counted, logged) and the run goes on.

With a cache (`data.cache_dir`, `data.cache_gb`): a shard is fetched whole into `<cache_dir>/<sha256>.tar`
(temp file + rename, so a killed worker leaves no half shard under that name) and checked against the
manifest's sha256 as it arrives; the next epoch opens the local copy. A cached copy is checked again
the first time each process opens it (and whenever its size or time changes): a damaged one is dropped
and fetched again. Past `cache_gb` the least recently used copies are removed. A cache that cannot be
written (the disk is full, read-only) gives one warning and the process streams without it.

`REQUESTS` counts this process's GETs (by "manifest" and "shard"): the tests read it to prove that a
cached epoch fetches nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline import storage
from pipeline.console import note
from pipeline.io import atomic_open, storage_problem

if TYPE_CHECKING:  # the manifest module imports this one
    from pipeline.data.manifest import ShardInfo

CHUNK_BYTES = 8 << 20
CACHE_SUFFIX = ".tar"

REQUESTS: Counter[str] = Counter()
_verified: dict[str, tuple[int, int]] = {}  # cached copy -> (size, mtime_ns) checked in this process
_cache_refused: set[str] = set()  # cache folders this process found unwritable (warned once)


def read_manifest_bytes(url: str) -> bytes:
    """The manifest object at `url`, with retries."""
    REQUESTS["manifest"] += 1
    return storage.read_bytes(url)


class RemoteShard(io.RawIOBase):
    """A seekable, read-only view of the object at `url` (`size` bytes), fetched CHUNK_BYTES at a time."""

    def __init__(self, url: str, size: int) -> None:
        super().__init__()
        self.url, self.size = url, size
        self.position = 0
        self.chunk_start, self.chunk = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if not self.chunk_start <= self.position < self.chunk_start + len(self.chunk):
            self.chunk_start = self.position
            end = min(self.size, self.position + CHUNK_BYTES)
            self.chunk = self.fetch(self.position, end)
        view = memoryview(self.chunk)[self.position - self.chunk_start :]
        count = min(len(buffer), len(view))
        buffer[:count] = view[:count]
        self.position += count
        return count

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object: one ranged GET, retried; a short answer is an error."""
        REQUESTS["shard"] += 1
        data = storage.read_bytes(self.url, start, end)
        if len(data) != end - start:
            raise storage.StorageError(
                self.url, f"asked for bytes {start}-{end}, got {len(data)} (the object changed?)"
            )
        return data


@dataclass(frozen=True, eq=False)  # hashed by identity: sample_offsets caches per (path, reader)
class ShardReader:
    """Opens shards for the loader's stages: local paths as files, URLs streamed or through the cache.

    expected: shard URL -> (bytes, sha256) from the manifests (a URL missing here is asked for its size).
    cache_dir: where fetched shards are kept ("" = no cache); cache_bytes: their bound.
    """

    expected: dict[str, tuple[int, str]] = field(default_factory=dict)
    cache_dir: str = ""
    cache_bytes: int = 0

    @classmethod
    def for_shards(
        cls, shards: Sequence[ShardInfo], cache_dir: str = "", cache_gb: float = 0.0
    ) -> ShardReader:
        """The reader of a ShardSet's `shards` (their sizes and digests), caching when `cache_dir` is set."""
        expected = {s.path: (s.bytes, s.sha256) for s in shards if storage.is_url(s.path)}
        return cls(expected, cache_dir, int(cache_gb * 1e9))

    def open(self, path: str) -> BinaryIO:
        """A readable, seekable binary stream of shard `path`."""
        if not storage.is_url(path):
            return open(path, "rb")
        size, sha256 = self.expected.get(path, (-1, ""))
        if size < 0:
            size = storage.size(path)
        if (
            self.cache_dir
            and sha256
            and self.cache_dir not in _cache_refused
            and 0 < size <= self.cache_bytes
        ):
            cached = self.cached(path, size, sha256)
            if cached is not None:
                return cached
        return io.BufferedReader(RemoteShard(path, size), buffer_size=1 << 20)

    @staticmethod
    def streams(stream: BinaryIO) -> bool:
        """Whether `stream` (from `open`) reads from the object store, where a seek costs a GET."""
        return isinstance(getattr(stream, "raw", None), RemoteShard)

    def cached(self, url: str, size: int, sha256: str) -> BinaryIO | None:
        """The verified local copy of `url`, open (fetched now if absent or damaged); None when the cache
        cannot be written (warned once) or the object's bytes differ from the manifest's digest."""
        local = Path(self.cache_dir) / f"{sha256}{CACHE_SUFFIX}"
        if self.intact(local, size, sha256):
            with contextlib.suppress(OSError):  # a read-only cache still serves what it holds
                os.utime(local)  # least recently used goes first: a use counts as a touch
                _verified[str(local)] = _stamp(local)
            with contextlib.suppress(FileNotFoundError):  # else evicted by another process just now
                return open(local, "rb")  # open: an eviction from now on leaves this reader its file
        try:
            make_room(Path(self.cache_dir), self.cache_bytes - size)
            fetched = self.fetch_into(url, local, size, sha256)
        except OSError as err:
            problem = storage_problem(err)
            if problem is None or isinstance(err, storage.StorageError):
                raise
            _cache_refused.add(self.cache_dir)
            note(
                "data",
                f"warning: shard cache {self.cache_dir} cannot be written ({problem}): streaming "
                "shards without it",
            )
            return None
        return open(local, "rb") if fetched else None

    @staticmethod
    def intact(local: Path, size: int, sha256: str) -> bool:
        """Whether `local` exists with `size` bytes and `sha256` (not hashed again while unchanged)."""
        try:
            stamp = _stamp(local)
        except FileNotFoundError:
            return False
        if stamp[0] != size:
            local.unlink(missing_ok=True)
            return False
        if _verified.get(str(local)) == stamp:
            return True
        if _file_sha256(local) == sha256:
            return True
        note("data", f"warning: cached shard {local} is damaged (sha256 differs): fetching it again")
        local.unlink(missing_ok=True)
        return False

    @staticmethod
    def fetch_into(url: str, local: Path, size: int, sha256: str) -> bool:
        """Copy the object into `local` atomically, hashing it on the way; False (nothing kept) when its
        digest is not the manifest's (its samples' own digests then judge them as they are read)."""
        digest = hashlib.sha256()
        remote = RemoteShard(url, size)
        try:
            with atomic_open(local) as out:
                for start in range(0, size, CHUNK_BYTES):
                    data = remote.fetch(start, min(size, start + CHUNK_BYTES))
                    digest.update(data)
                    out.write(data)
                if digest.hexdigest() != sha256:
                    raise _NotCached
        except _NotCached:
            note("data", f"warning: {storage.describe(url)} differs from its manifest's sha256: not cached")
            return False
        _verified[str(local)] = _stamp(local)
        return True


class _NotCached(Exception):
    """Raised inside atomic_open to drop the temp file of a fetch whose digest is wrong."""


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def make_room(folder: Path, budget: int) -> None:
    """Remove the least recently used cached shards of `folder` until they take at most `budget` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in folder.glob(f"*{CACHE_SUFFIX}"):
        try:
            status = path.stat()
        except FileNotFoundError:  # another worker evicted it meanwhile
            continue
        entries.append((status.st_mtime_ns, status.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= budget:
            break
        path.unlink(missing_ok=True)
        _verified.pop(str(path), None)
        total -= size
