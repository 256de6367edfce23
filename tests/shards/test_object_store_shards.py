"""`python -m shards` with an object-store `--out` on a real S3 server (SeaweedFS): the bytes of a local
run, a killed run resumed from what the store holds, verify and merge on URLs, and every URL the store
or this machine cannot serve as one line with exit status 2, never a local folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shards.__main__ import main
from shards.folder import StoreFolder
from shards.synth import synth_dataset
from tests.object_store import ACCESS_KEY, SECRET_KEY, Bucket, ObjectStore

REPO = Path(__file__).resolve().parents[2]
OPTIONS = ("--max-samples", "3")


def shard_command(raw: Path, out: str | Path, *extra: str) -> list[str]:
    return ["ssv2", "--root", str(raw), "--split", "train", "--out", str(out), *OPTIONS, *extra]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def store_bytes(bucket: Bucket, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` of the bucket (what a reader of the store sees), by name."""
    fs = bucket.store.client()
    root = f"{bucket.name}/{prefix}"
    if not fs.exists(root):
        return {}
    entries = fs.ls(root, detail=True, refresh=True)
    return {e["name"].rsplit("/", 1)[-1]: fs.cat_file(e["name"]) for e in entries if e["type"] == "file"}


def error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic SSv2 raw tree: 10 VP9 clips of 3 classes (4 shards of up to 3)."""
    root = tmp_path_factory.mktemp("ssv2") / "raw"
    synth_dataset("ssv2", root, num_videos=10, classes=3, seed=5, splits=("train",))
    return root


@pytest.fixture(scope="module")
def local_run(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of the same command into a local folder."""
    out = tmp_path_factory.mktemp("local") / "train"
    assert main(shard_command(raw, out)) == 0
    return folder_bytes(out)


def test_a_bucket_gets_the_bytes_of_a_local_run_and_no_local_folder(
    raw: Path, local_run: dict[str, bytes], s3_bucket: Bucket, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    staging_parent = tmp_path / "tmp"
    staging_parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging_parent))
    url = f"{s3_bucket.url}/ssv2/train"
    assert main(shard_command(raw, url)) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {url}/manifest.json")
    assert store_bytes(s3_bucket, "ssv2/train") == local_run  # manifest.json and every tar, byte for byte
    assert len([name for name in local_run if name.endswith(".tar")]) == 4
    # The URL never became a path, and the temporary staging folder went with the run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert list(staging_parent.iterdir()) == []
    assert main(["verify", url]) == 0
    assert capsys.readouterr().out.strip() == f"verify {url}: OK, 10 samples"


def test_verify_on_a_url_names_a_changed_shard_and_an_unlisted_one(
    raw: Path, local_run: dict[str, bytes], s3_bucket: Bucket, capsys
) -> None:
    url = f"{s3_bucket.url}/train"
    assert main(shard_command(raw, url)) == 0
    fs = s3_bucket.store.client()
    name = sorted(n for n in local_run if n.endswith(".tar"))[1]
    changed = bytearray(local_run[name])
    changed[3000] ^= 0xFF
    fs.pipe_file(f"{s3_bucket.name}/train/{name}", bytes(changed))
    fs.pipe_file(f"{s3_bucket.name}/train/ssv2-train-000099.tar", local_run[name])
    capsys.readouterr()
    assert main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert f"{name}: sha256 differs from the manifest" in err and f"{name}: ssv2/train/" in err
    assert "ssv2-train-000099.tar: shard file not listed in the manifest" in err


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing in the sharder catches it."""


def test_a_run_killed_between_an_upload_and_its_progress_resumes_to_the_same_bytes(
    raw: Path, local_run: dict[str, bytes], s3_bucket: Bucket, tmp_path: Path, monkeypatch
) -> None:
    """Killed right after shard 2 is uploaded, before the progress file counts it: the rerun keeps
    shards 0 and 1 (not uploaded again), redoes shard 2 and ends with the bytes of a local run."""
    url, work = f"{s3_bucket.url}/k/train", tmp_path / "work"
    publish = StoreFolder.publish
    published: list[str] = []

    def publish_then_die_after_the_third_shard(self: StoreFolder, name: str) -> dict:
        published.append(name)
        if name.endswith("progress.json") and published.count(name) == 3:
            raise Killed
        return publish(self, name)

    monkeypatch.setattr(StoreFolder, "publish", publish_then_die_after_the_third_shard)
    with pytest.raises(Killed):
        main(shard_command(raw, url, "--work-dir", str(work)))
    held = store_bytes(s3_bucket, "k/train")
    tars = sorted(name for name in held if name.endswith(".tar"))
    assert tars == ["ssv2-train-000000.tar", "ssv2-train-000001.tar", "ssv2-train-000002.tar"]
    assert "manifest.json" not in held
    assert all(held[name] == local_run[name] for name in tars)  # an object is whole or absent
    progress = json.loads(held["ssv2-train-progress.json"])
    assert [entry["name"] for entry in progress["shards"]] == tars[:2]

    uploads: list[str] = []
    monkeypatch.setattr(
        StoreFolder, "publish", lambda self, name: uploads.append(name) or publish(self, name)
    )
    assert main(shard_command(raw, url, "--work-dir", str(work))) == 0
    assert store_bytes(s3_bucket, "k/train") == local_run  # no duplicate, no progress file, same bytes
    assert [name for name in uploads if name.endswith(".tar")] == [
        "ssv2-train-000002.tar",
        "ssv2-train-000003.tar",
    ]
    assert list(work.iterdir()) == []  # the staging folder holds nothing once uploaded


def test_a_shard_changed_in_the_store_after_its_upload_is_redone(
    raw: Path, local_run: dict[str, bytes], s3_bucket: Bucket, monkeypatch
) -> None:
    """The progress file counts a shard only while the store holds it as uploaded (its checksum)."""
    url = f"{s3_bucket.url}/c/train"
    publish = StoreFolder.publish
    published: list[str] = []

    def publish_then_die(self: StoreFolder, name: str) -> dict:
        published.append(name)
        if name == "ssv2-train-000002.tar":
            raise Killed
        return publish(self, name)

    monkeypatch.setattr(StoreFolder, "publish", publish_then_die)
    with pytest.raises(Killed):
        main(shard_command(raw, url))
    fs = s3_bucket.store.client()
    first = f"{s3_bucket.name}/c/train/ssv2-train-000000.tar"
    same_size = bytearray(fs.cat_file(first))
    same_size[-1] ^= 0xFF  # in the zero padding: still a valid tar of the same size
    fs.pipe_file(first, bytes(same_size))
    monkeypatch.setattr(StoreFolder, "publish", publish)
    assert main(shard_command(raw, url)) == 0
    assert store_bytes(s3_bucket, "c/train") == local_run


def test_a_prefix_of_other_options_is_refused_unless_overwrite(
    raw: Path, local_run: dict[str, bytes], s3_bucket: Bucket, capsys
) -> None:
    """The local rule in the store: another job's shards are refused with one line, --overwrite
    removes exactly them, and the prefix ends as a fresh run would leave it."""
    url = f"{s3_bucket.url}/mixed"
    assert main([*shard_command(raw, url), "--max-samples", "5"]) == 0
    capsys.readouterr()
    assert main(shard_command(raw, url)) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        f"error: {url} holds files of another dataset, split or options (manifest.json and 2 more files; "
        "manifest.json was written with other options: max_samples 5 -> 3); "
        "pass --overwrite to replace them, or choose another --out"
    )
    assert main(shard_command(raw, url, "--overwrite")) == 0
    assert store_bytes(s3_bucket, "mixed") == local_run


def test_parts_merged_in_the_store_equal_parts_merged_locally(
    raw: Path, s3_bucket: Bucket, tmp_path: Path, capsys
) -> None:
    local, url = tmp_path / "parts", f"{s3_bucket.url}/parts"
    for part in ("0/2", "1/2"):
        assert main(shard_command(raw, local, "--part", part)) == 0
        assert main(shard_command(raw, url, "--part", part)) == 0
    assert "manifest.json" not in store_bytes(s3_bucket, "parts")
    assert main(["merge", str(local)]) == 0
    capsys.readouterr()
    assert main(["merge", url]) == 0
    assert capsys.readouterr().out.strip() == f"merge {url}: 10 samples in 4 shards"
    assert store_bytes(s3_bucket, "parts") == folder_bytes(local)
    assert main(["verify", url]) == 0


def test_merge_on_a_url_with_a_missing_part_names_it(raw: Path, s3_bucket: Bucket, capsys) -> None:
    url = f"{s3_bucket.url}/half"
    assert main(shard_command(raw, url, "--part", "0/2")) == 0
    capsys.readouterr()
    assert main(["merge", url]) == 1
    assert capsys.readouterr().err.strip() == f"merge: error: {url}: parts p001 of 2 are missing"


@pytest.mark.parametrize("command", ["shard", "verify", "merge"])
def test_an_unknown_protocol_is_one_line_and_no_local_folder(
    raw: Path, command: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "nosuchstore://bucket/ssv2/train"
    argv = shard_command(raw, url) if command == "shard" else [command, url]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {url}: no file system for nosuchstore:// URLs"), line
    assert list(tmp_path.iterdir()) == []


def test_s3_without_s3fs_is_one_line_naming_the_extra(raw: Path, tmp_path: Path) -> None:
    """A machine without s3fs: the `s3` extra is named; nothing is written anywhere."""
    code = (
        "import sys; sys.modules['s3fs'] = None\n"  # what `import s3fs` meets where it is not installed
        "from shards.__main__ import main\n"
        f"sys.exit(main({shard_command(raw, 's3://bucket/ssv2/train')!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert line.startswith("error: s3://bucket/ssv2/train: no file system for s3:// URLs") and "[s3]" in line
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bucket_is_one_line_before_any_work(s3_bucket: Bucket, tmp_path: Path, capsys) -> None:
    """Named before the raw tree is even read (here there is none), and the bucket is not created."""
    url = "s3://no-such-bucket-for-shards/ssv2/train"
    assert main(shard_command(tmp_path / "no-raw-tree", url)) == 2
    assert error_line(capsys.readouterr().err) == f"error: {url}: the bucket does not exist"
    assert not s3_bucket.store.client().exists("no-such-bucket-for-shards")
    for command in ("verify", "merge"):
        assert main([command, url]) == 2
        assert error_line(capsys.readouterr().err) == f"error: {url}: the bucket does not exist"


def test_a_wrong_secret_is_one_line_without_the_secret(
    raw: Path, s3_bucket: Bucket, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    url = f"{s3_bucket.url}/ssv2/train"
    assert main(shard_command(raw, url)) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {url}: access denied") and "not-the-secret" not in line
    assert SECRET_KEY not in line
    assert store_bytes(s3_bucket, "ssv2/train") == {}


READER_KEY, READER_SECRET = "structvit-reader", "structvit-reader-secret"


@pytest.fixture(scope="module")
def read_only_store(tmp_path_factory: pytest.TempPathFactory):
    """A second server whose identities are the tests' own and a reader that may list and read only."""
    store = ObjectStore(tmp_path_factory.mktemp("read-only-store"))
    identities = json.loads(store.config.read_text())["identities"]
    reader = {
        "name": "reader",
        "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
        "actions": ["Read", "List"],
    }
    store.config.write_text(json.dumps({"identities": [*identities, reader]}))
    store.start()
    yield store
    store.stop()


def test_a_key_that_may_not_write_is_one_line_before_any_work(
    raw: Path, read_only_store: ObjectStore, monkeypatch, capsys
) -> None:
    bucket = read_only_store.bucket()
    for name, value in {**read_only_store.env, "AWS_ACCESS_KEY_ID": READER_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER_SECRET)
    url = f"{bucket.url}/ssv2/train"
    assert main(shard_command(raw, url)) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {url}: access denied"), line
    assert READER_SECRET not in line and ACCESS_KEY not in line
    assert store_bytes(bucket, "ssv2/train") == {}


def test_work_dir_with_a_local_out_is_one_line(raw: Path, tmp_path: Path, capsys) -> None:
    assert main(shard_command(raw, tmp_path / "out", "--work-dir", str(tmp_path / "work"))) == 2
    assert "--work-dir stages uploads to an object store" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_full_staging_disk_is_one_line_and_the_same_command_finishes(
    raw: Path, s3_bucket: Bucket, tmp_path: Path, tmpfs, capsys
) -> None:
    """--work-dir on a 32 KB tmpfs, one shard of all 10 clips (about 120 KB): one line naming the URL and
    the staging folder, exit 2, no temp file left; once there is room the same command ends with the
    bytes of a local run."""
    one_shard = ("--max-samples", "10")
    assert main(shard_command(raw, tmp_path / "local", *one_shard)) == 0
    disk = tmpfs("32k")
    url = f"{s3_bucket.url}/full"
    command = shard_command(raw, url, *one_shard, "--work-dir", str(disk.path))
    capsys.readouterr()
    assert main(command) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors  # beside the progress bar
    assert errors[0].startswith(
        f"error: cannot write shards for {url} in {disk.path}: the file system is full (about "
    ), errors[0]
    assert list(disk.path.iterdir()) == []
    disk.remount("size=1m")
    assert main(command) == 0
    assert store_bytes(s3_bucket, "full") == folder_bytes(tmp_path / "local")


@pytest.mark.slow
def test_a_sigkilled_run_resumes_from_the_store_to_the_same_bytes(
    raw: Path, s3_bucket: Bucket, tmp_path: Path
) -> None:
    """SIGKILL a real run once the store's progress file counts two shards, rerun it (with a fresh
    staging folder, as on another machine): the bytes of an uninterrupted run, those two not redone."""
    # A slow preset and one clip per shard (10 shards: 8 still to do when 2 are recorded) keep the run
    # long enough to be killed part-way on any machine, however late the polling sees the progress.
    # Two workers: the pool is forked from a process that holds the store's client.
    slow = ("--max-samples", "1", "--reencode", "--preset", "veryslow", "--workers", "2")
    reference = tmp_path / "reference"
    assert main(shard_command(raw, reference, *slow)) == 0
    url = f"{s3_bucket.url}/killed"
    command = [sys.executable, "-m", "shards", *shard_command(raw, url, *slow)]
    env = {**os.environ, **s3_bucket.env, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    fs = s3_bucket.store.client()
    progress = f"{s3_bucket.name}/killed/ssv2-train-progress.json"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended before it could be killed"
        )
        fs.invalidate_cache()
        if fs.exists(progress) and len(json.loads(fs.cat_file(progress))["shards"]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    held = store_bytes(s3_bucket, "killed")
    assert "manifest.json" not in held, "killed too late: the run had finished"
    kept = {
        name: fs.info(f"{s3_bucket.name}/killed/{name}")["LastModified"]
        for name in held
        if name.endswith(".tar")
    }

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert store_bytes(s3_bucket, "killed") == folder_bytes(reference)
    done = json.loads(held["ssv2-train-progress.json"])["shards"]
    fs.invalidate_cache()
    for entry in done:
        assert fs.info(f"{s3_bucket.name}/killed/{entry['name']}")["LastModified"] == kept[entry["name"]]
