"""pipeline.storage against a real S3-compatible server: reads and writes, and each failure as one line."""

from __future__ import annotations

import pytest

from pipeline import storage
from tests.object_store import SECRET_KEY, Bucket


def test_urls_are_told_from_paths() -> None:
    assert storage.is_url("s3://bucket/k400/train")
    assert storage.is_url("gs://bucket/x") and storage.is_url("https://host/shards")
    assert not storage.is_url("/data/k400/train")
    assert not storage.is_url("C:/data/train") and not storage.is_url("C:\\data\\train")
    assert not storage.is_url("s3:/bucket/train")  # one slash: a local folder name, not a URL
    assert (
        storage.join("s3://bucket/k400/", "train", "manifest.json") == "s3://bucket/k400/train/manifest.json"
    )
    assert storage.join("/data", "train") == "/data/train"


def test_describe_leaves_credentials_out() -> None:
    described = storage.describe("https://alice:hunter2@store.example:9000/shards/x.tar?X-Amz-Signature=abc")
    assert described == "https://store.example:9000/shards/x.tar"
    assert storage.describe("s3://bucket/prefix") == "s3://bucket/prefix"


def test_write_then_read(s3_bucket: Bucket) -> None:
    url = storage.join(s3_bucket.url, "folder", "object.bin")
    storage.write_bytes(url, b"shard bytes")
    assert storage.read_bytes(url) == b"shard bytes"
    storage.check_readable(storage.join(s3_bucket.url, "folder"))


def test_missing_bucket_is_one_line(s3_bucket: Bucket) -> None:
    url = "s3://no-such-bucket-here/k400/train/manifest.json"
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes(url)
    assert str(caught.value) == f"{url}: the bucket does not exist"
    assert caught.value.cause == "missing bucket"


def test_missing_key_is_one_line(s3_bucket: Bucket) -> None:
    url = storage.join(s3_bucket.url, "nothing", "manifest.json")
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes(url)
    assert caught.value.cause == "no such key"
    assert str(caught.value).startswith(f"{url}: no such key") and "\n" not in str(caught.value)


def test_wrong_secret_is_access_denied_and_never_printed(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = storage.join(s3_bucket.url, "object.bin")
    storage.write_bytes(url, b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for request in (storage.read_bytes, storage.check_readable):
        with pytest.raises(storage.StorageError) as caught:
            request(url)
        message = str(caught.value)
        assert caught.value.cause == "access denied" and message.startswith(f"{url}: access denied")
        assert "\n" not in message and "not-the-secret" not in message and SECRET_KEY not in message


def test_no_server_is_cannot_connect(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.object_store import free_ports

    (port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)  # the backoff is tested with the loader
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes(f"{s3_bucket.url}/object.bin")
    assert caught.value.cause == "cannot connect" and "\n" not in str(caught.value)


def test_unknown_protocol_is_one_line() -> None:
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes("nosuchproto://bucket/x")
    assert str(caught.value).startswith("nosuchproto://bucket/x: no file system for nosuchproto://")
