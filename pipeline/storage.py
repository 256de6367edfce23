"""Object-store URLs: the one module that tells a URL from a path and opens what a URL names.

A shard folder may be a local path or a URL (`s3://bucket/prefix`, `gs://...`, `https://...`, any
protocol fsspec knows). `is_url` decides which, so a URL never silently becomes a local folder named
`s3:`. `filesystem` gives the fsspec file system of a URL; for S3 the endpoint and credentials come
the way the AWS tools take them (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID / ..., the config
and credentials files, instance roles): botocore reads all of them itself, and AWS_ENDPOINT_URL is
also handed over explicitly for s3fs versions that do not pass it on.

Every failure is a `StorageError`: one line naming the URL (as `describe` writes it: never a
password, token or signature) and the cause (no such bucket, no such key, access denied, cannot
connect). `with_retries` is the one retry policy: a request that fails for a transient cause (the
network, a 5xx, throttling, a stalled read past READ_TIMEOUT_S) is tried again with exponential
backoff, from scratch; the clients' own retry loops are turned off so that a dead endpoint costs
the same known time everywhere. No torch here: the sharder imports this module on CPU nodes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pipeline import errors
from pipeline.console import note, one_line

# A scheme of two or more letters followed by `://`: `C:/data` or `C:\data` (a Windows drive) is a path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# Environment variables that change which S3 endpoint or identity a client uses: a cached client is only
# reused while they are unchanged.
_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
# Seconds to open a connection / to wait for the next bytes of a response before the read fails.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
RETRIES = 6  # tries of one request before it fails for good
BACKOFF_S = 0.5  # the first wait; each next one doubles, up to MAX_BACKOFF_S (0.5 + 1 + 2 + 4 + 8 s)
MAX_BACKOFF_S = 8.0
# Causes worth another try: the network or the server may recover; a missing key or a refused key will not.
TRANSIENT = frozenset({"cannot connect", "timeout", "throttled", "server error"})
T = TypeVar("T")


class StorageError(errors.StorageError, OSError):
    """An object-store request that failed; its str is one line naming the URL and the cause.

    Of the storage kind (`pipeline.errors`: exit 2, not requeued) where it stops a command. An OSError,
    so a shard read that fails this way is a failed sample like any other read error.
    `cause` is a short label: "missing bucket", "no such key", "access denied", "cannot connect",
    "timeout", "throttled", "server error" or "error".
    """

    def __init__(self, url: str, reason: str, cause: str = "error") -> None:
        super().__init__(f"{describe(url)}: {reason}")
        self.url, self.reason, self.cause = url, reason, cause

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple:
        # Rebuilt from its own arguments when it crosses a process boundary (OSError's default would not).
        return (type(self), (self.url, self.reason, self.cause))


def is_url(text: str | os.PathLike) -> bool:
    """Whether `text` is a URL (`scheme://...`) rather than a local path."""
    return isinstance(text, str) and _URL.match(text) is not None


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base` and `parts` joined with `/` (a URL) or the local path separator (a path)."""
    if not is_url(base):
        return os.path.join(base, *parts)
    pieces = [str(base).rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
    return "/".join(pieces)


def describe(url: str) -> str:
    """`url` fit for a message: user name, password and query (signed URLs carry keys there) left out."""
    if not is_url(url):
        return str(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def protocol(url: str) -> str:
    """The URL's scheme in lower case (`s3`, `gs`, `https`, ...)."""
    return url.split("://", 1)[0].lower()


_FILESYSTEMS: dict[tuple, Any] = {}


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for `url`; a protocol without an installed implementation is
    a StorageError naming the package to install.

    Clients are cached per process and per AWS setting: DataLoader workers forked from a process that
    held one open their own (an event loop does not survive a fork).
    """
    import fsspec  # here: local runs never pay for it

    scheme = protocol(url)
    key = (os.getpid(), scheme, READ_TIMEOUT_S, tuple(os.environ.get(name) for name in _AWS_SETTINGS))
    if key not in _FILESYSTEMS:
        try:
            cls = fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as err:
            extra = " (pip install 'structvit-pipeline[s3]')" if scheme in ("s3", "s3a") else ""
            raise StorageError(url, f"no file system for {scheme}:// URLs: {one_line(err)}{extra}") from None
        options: dict[str, Any] = {"skip_instance_cache": True}
        if scheme in ("s3", "s3a"):
            options.update(_s3_options(READ_TIMEOUT_S))
        fs = cls(**options)
        if hasattr(fs, "retries"):  # s3fs's own loop (a class attribute, not an argument)
            fs.retries = 1
        _FILESYSTEMS[key] = fs
    fs = _FILESYSTEMS[key]
    return fs, fs._strip_protocol(url)


def _s3_options(read_timeout_s: float) -> dict[str, Any]:
    """s3fs arguments: the endpoint from AWS_ENDPOINT_URL(_S3), timeouts; the rest is botocore's own chain."""
    client: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    # One try per call (botocore's and s3fs's loops off): `with_retries` decides.
    config = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": read_timeout_s,
        "retries": {"max_attempts": 1},
    }
    options: dict[str, Any] = {"client_kwargs": client, "config_kwargs": config}
    if os.environ.get("AWS_PROFILE"):
        options["profile"] = os.environ["AWS_PROFILE"]
    return options


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Run a request on `url`; any failure of the store or the network leaves as one StorageError line."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        cause = classify(err)
        if cause is None:
            raise
        raise StorageError(url, reason(err, cause), cause) from err


def classify(err: BaseException) -> str | None:
    """The StorageError cause of an exception a store request raised; None for one that is not about
    storage (a bug in the caller)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    text = str(err)
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        return "missing bucket"
    if isinstance(err, FileNotFoundError) or "NoSuchKey" in names:
        return "no such key"
    if isinstance(err, PermissionError) or "NoCredentialsError" in names:
        return "access denied"
    if (
        "SlowDown" in text
        or "Throttl" in text
        or "TooManyRequests" in text
        or "Reduce your request rate" in text
    ):
        return "throttled"
    if names & {"ReadTimeoutError", "ConnectTimeoutError", "TimeoutError", "ServerTimeoutError"}:
        return "timeout"
    if names & {
        "EndpointConnectionError",
        "ConnectionError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ConnectionClosedError",
    }:
        return "cannot connect"
    if re.search(r"\b5\d\d\b|internal error|service unavailable", text, re.I) or names & {"InternalError"}:
        return "server error"
    if isinstance(err, OSError) or names & {"BotoCoreError", "ClientError", "ClientResponseError"}:
        return "error"
    return None


def reason(err: BaseException, cause: str) -> str:
    """The message of a StorageError: the cause in words, then what the store said."""
    said = one_line(err)
    if cause == "missing bucket":
        return "the bucket does not exist"
    if cause == "no such key":
        return "no such key (the object does not exist)"
    if cause == "access denied":
        if "NoCredentialsError" in {cls.__name__ for cls in type(err).__mro__}:
            return "access denied: no credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws/credentials)"
        return f"access denied ({said}): check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID)"
    if cause == "cannot connect":
        return f"cannot connect to the object store ({said}); check AWS_ENDPOINT_URL and the network"
    return f"{cause}: {said}" if cause != "error" else said


def with_retries(url: str, request: Callable[[], T]) -> T:
    """`request()` on `url`, tried up to RETRIES times with exponential backoff while it fails for a
    transient cause; its last failure (or a lasting one, at once) as a StorageError."""
    wait = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            with translated(url):
                return request()
        except StorageError as err:
            if err.cause not in TRANSIENT or attempt == RETRIES:
                raise
            note("storage", f"warning: {err}; try {attempt + 1} of {RETRIES} in {wait:g} s")
            time.sleep(wait)
            wait = min(2 * wait, MAX_BACKOFF_S)
    raise AssertionError("unreachable: the last try returns or raises")


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The object at `url` (bytes [start, end) when given), with retries; StorageError when it cannot be
    read."""

    def request() -> bytes:
        fs, path = filesystem(url)
        return fs.cat_file(path, start=start, end=end)

    return with_retries(url, request)


def write_bytes(url: str, data: bytes) -> None:
    """Store `data` as the object at `url` (one PUT: readers see the old object or the new one)."""

    def request() -> None:
        fs, path = filesystem(url)
        fs.pipe_file(path, data)

    with_retries(url, request)


def size(url: str) -> int:
    """The object's size in bytes, with retries."""

    def request() -> int:
        fs, path = filesystem(url)
        return int(fs.size(path))

    return with_retries(url, request)


def list_sizes(url: str) -> dict[str, int]:
    """Name -> size of the objects directly under folder `url` (one listing, fresh), with retries."""

    def request() -> dict[str, int]:
        fs, path = filesystem(url)
        listing = fs.ls(path, detail=True, refresh=True)
        return {
            entry["name"].rsplit("/", 1)[-1]: int(entry["size"])
            for entry in listing
            if entry["type"] == "file"
        }

    return with_retries(url, request)


def check_readable(url: str) -> None:
    """Fail with one StorageError line unless the folder `url` can be listed (the bucket exists, the
    credentials are accepted, the endpoint answers)."""
    list_sizes(url)
