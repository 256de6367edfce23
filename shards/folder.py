"""Where shards go and come from: a local folder or an object-store prefix (`s3://bucket/prefix`, any URL
fsspec serves).

The sharder writes every file in a local `staging` folder first. For a local output that is the output
folder itself, and a file is in place once it is renamed there (`publish` has nothing left to do). For a
URL it is `--work-dir` (or a temporary folder): `publish` uploads the finished file in one request, so a
reader of the store sees a shard whole or not at all, and removes the local copy, so the staging folder
holds no more than the shard being written. `shards verify` and `shards merge` read through the same
two classes. Store failures are `pipeline.storage.StorageError` lines naming the URL, never credentials.

Verify's reads are the loader's (`pipeline.data.shard_io.ShardReader`): ranged GETs, each retried.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pipeline import errors
from pipeline.data.manifest import Manifest
from pipeline.data.shard_io import ShardReader
from pipeline.storage import StorageError, describe, filesystem, is_url, join, with_retries

T = TypeVar("T")


class OutputError(errors.StorageError):
    """An output folder that cannot be written or holds another job's files; the message is one line."""


class LocalFolder:
    """A shard folder on a local (or mounted) file system; it is its own staging folder."""

    remote = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.staging = self.path

    @property
    def location(self) -> str:
        """The folder as messages name it."""
        return str(self.path)

    def path_of(self, name: str) -> str:
        """File `name` in the folder, as messages name it."""
        return str(self.path / name)

    def check_writable(self) -> None:
        """Create the folder and check that files can be created in it; OutputError (one line) if not."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.path} is a file, not a folder")
        check_folder_writable(self.path, f"the output folder {self.path}")

    def check_readable(self) -> None:
        """Nothing to check up front: a missing folder is a missing manifest, named where it is read."""

    def names(self) -> list[str]:
        """The names of the files in the folder, sorted ([] when it does not exist)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def read_text(self, name: str) -> str | None:
        """File `name` as UTF-8 text; None when there is none (OSError when it cannot be read)."""
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def load_manifest(self, name: str) -> Manifest:
        """Manifest `name` of the folder (ManifestError, one line, when missing or invalid)."""
        return Manifest.load(self.path / name)

    def size(self, name: str) -> int | None:
        """Bytes of file `name`; None when it does not exist."""
        path = self.path / name
        return path.stat().st_size if path.is_file() else None

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """File `name` open for reading."""
        with (self.path / name).open("rb") as f:
            yield f

    def delete(self, name: str) -> None:
        """Remove file `name` (nothing when it is not there)."""
        (self.path / name).unlink(missing_ok=True)

    def publish(self, name: str) -> dict[str, Any]:
        """Make the staged file `name` visible in the folder: renamed there already, nothing to do."""
        return {}

    def holds(self, entry: dict[str, Any]) -> bool:
        """Whether the shard a progress entry describes is still there with its size (a rewrite of the
        same size by another program is out of scope: the files are this job's own)."""
        return self.size(entry["name"]) == entry["bytes"]

    def save_manifest(self, manifest: Manifest, name: str) -> None:
        """Write `manifest` as file `name`, atomically."""
        manifest.save(self.path / name)

    def close(self) -> None:
        """Nothing to release."""


class StoreFolder:
    """A shard folder in an object store: the objects under one URL prefix, staged locally before upload.

    Every request goes through `pipeline.storage.with_retries`: a network failure, a 5xx or throttling is
    tried again with backoff; what still fails is a StorageError line naming the URL.
    """

    remote = True

    def __init__(self, url: str, work_dir: Path | None = None) -> None:
        self.url = url.rstrip("/") if is_url(url.rstrip("/")) else url
        self.fs, root = filesystem(self.url)
        self.root = root.rstrip("/")
        if not self.root:
            raise StorageError(self.url, "the URL names no bucket or folder (e.g. s3://bucket/prefix)")
        self._work_dir = work_dir

    @property
    def location(self) -> str:
        """The URL as messages name it (no credentials)."""
        return describe(self.url)

    def path_of(self, name: str) -> str:
        """Object `name` under the prefix, as messages name it."""
        return describe(join(self.url, name))

    @cached_property
    def staging(self) -> Path:
        """The local folder files are written in before their upload: --work-dir, else a new temporary one."""
        if self._work_dir is not None:
            return self._work_dir
        return Path(tempfile.mkdtemp(prefix="shards-staging-"))

    def _request(self, name: str, request: Callable[[], T]) -> T:
        """`request()` about object `name` (the prefix itself for ""), with retries."""
        return with_retries(join(self.url, name) if name else self.url, request)

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def check_readable(self) -> None:
        """StorageError (one line naming the URL) unless the store answers, the bucket exists and the
        credentials may list it; an empty prefix is fine (a new output, or a folder without a manifest)."""
        self.names()

    def check_writable(self) -> None:
        """check_readable, then a probe object written and removed (a read-only key fails here, before any
        work), then the staging folder created and written to (OutputError naming it if it cannot be)."""
        self.check_readable()  # first: some stores create a missing bucket on a write
        probe = self._key(f".write-check-{uuid.uuid4().hex}")
        self._request("", lambda: self.fs.pipe_file(probe, b""))
        self._request("", lambda: self.fs.rm_file(probe))
        check_folder_writable(self.staging, f"the staging folder {self.staging} of {self.location}")

    def names(self) -> list[str]:
        """The names of the objects directly under the prefix, sorted ([] for an empty prefix)."""
        try:
            entries = self._request("", lambda: self.fs.ls(self.root, detail=True, refresh=True))
        except StorageError as err:
            if err.cause == "no such key":
                return []
            raise
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file")

    def read_text(self, name: str) -> str | None:
        """Object `name` as UTF-8 text; None when there is none (StorageError when it cannot be read)."""
        try:
            return self._request(name, lambda: self.fs.cat_file(self._key(name))).decode("utf-8")
        except StorageError as err:
            if err.cause == "no such key":
                return None
            raise

    def load_manifest(self, name: str) -> Manifest:
        """Manifest `name` under the prefix (ManifestError, one line, when missing, invalid or unreadable)."""
        return Manifest.load(join(self.url, name))

    def _info(self, name: str) -> dict[str, Any] | None:
        key = self._key(name)

        def request() -> dict[str, Any]:
            self.fs.invalidate_cache(key)
            return self.fs.info(key)

        try:
            return self._request(name, request)
        except StorageError as err:
            if err.cause == "no such key":
                return None
            raise

    def size(self, name: str) -> int | None:
        """Bytes of object `name`; None when it does not exist."""
        info = self._info(name)
        return None if info is None or info["type"] != "file" else int(info["size"])

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """Object `name` open for streamed reading (ranged GETs, each retried: the loader's reader)."""
        with ShardReader().open(join(self.url, name)) as f:
            yield f

    def delete(self, name: str) -> None:
        """Remove object `name` (nothing when it is not there)."""
        try:
            self._request(name, lambda: self.fs.rm_file(self._key(name)))
        except StorageError as err:
            if err.cause != "no such key":
                raise

    def publish(self, name: str) -> dict[str, Any]:
        """Upload the staged file `name` (one object, there once whole), drop the local copy, and return
        the object's store checksum: the same checksum later means the same bytes (fsspec's contract;
        S3's ETag), so a resume can trust the upload without reading it back."""
        staged, key = self.staging / name, self._key(name)
        self._request(name, lambda: self.fs.put_file(str(staged), key))
        checksum = self._checksum(name)
        staged.unlink()
        return {"store_checksum": checksum}

    def _checksum(self, name: str) -> str:
        key = self._key(name)

        def request() -> str:
            self.fs.invalidate_cache(key)
            return str(self.fs.checksum(key))

        return self._request(name, request)

    def holds(self, entry: dict[str, Any]) -> bool:
        """Whether the shard of a progress entry is in the store as uploaded: its size and the checksum the
        store gave right after the upload (an object replaced or cut since then fails)."""
        if self.size(entry["name"]) != entry["bytes"]:
            return False
        return self._checksum(entry["name"]) == entry.get("store_checksum")

    def save_manifest(self, manifest: Manifest, name: str) -> None:
        """Upload `manifest` as object `name` (the bytes Manifest.save writes locally)."""
        manifest.save(self.staging / name)
        self.publish(name)

    def close(self) -> None:
        """Remove the staging folder if it is a temporary one of this process's own."""
        if self._work_dir is None and "staging" in self.__dict__:
            shutil.rmtree(self.staging, ignore_errors=True)


ShardFolder = LocalFolder | StoreFolder


def check_folder_writable(folder: Path, what: str) -> None:
    """Create local `folder` and check that files can be created in it; OutputError naming `what` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"cannot write to {what}: {err.strerror or err}") from None


def open_folder(location: str | Path, work_dir: Path | None = None) -> ShardFolder:
    """The shard folder `location` names: a StoreFolder for a URL (StorageError, one line, for a protocol
    nothing here serves), else a LocalFolder. `work_dir` stages a store's uploads; a local folder is
    written in place, so --work-dir with one is an OutputError."""
    if is_url(str(location)):
        return StoreFolder(str(location), work_dir)
    if work_dir is not None:
        raise OutputError(
            f"--work-dir stages uploads to an object store; --out {location} is written in place"
        )
    return LocalFolder(Path(location))
