"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the project writes for another stage (shards, manifests, checkpoints markers, configs)
goes through here: write to a temporary name in the same folder, fsync, then rename.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"
# Writes the storage refuses, whatever the program does: a restart on the same disk meets them again.
STORAGE_ERRORS = {
    errno.ENOSPC: "the file system is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
}
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Iterator[BinaryIO]:
    """Open `path` for binary writing through a temp file that is renamed over `path` on success.

    On an exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        # mkstemp makes the file 0600; shards and checkpoints are read by other users on a cluster.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically (stable bytes for equal objects)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def storage_problem(err: BaseException) -> str | None:
    """Why the storage refused a write (full, over quota, read-only, not permitted), or None for any
    other error."""
    return STORAGE_ERRORS.get(getattr(err, "errno", None))  # type: ignore[arg-type]


def nearest_folder(path: str | os.PathLike) -> Path:
    """`path` itself if it exists, else its nearest existing parent (where it would be created)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free on the file system that holds (or would hold) `path`."""
    return shutil.disk_usage(nearest_folder(path)).free


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why files cannot be created in folder `path` (or where it would be made): a read-only file
    system or no permission, found by creating and dropping a temporary file; None when they can."""
    try:
        with tempfile.TemporaryFile(dir=nearest_folder(path)):
            pass
    except OSError as err:
        return storage_problem(err) or err.strerror or str(err)
    return None
