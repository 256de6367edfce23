"""Training from a real S3-compatible server (SeaweedFS): 2 ranks trained from the bucket end with the bits
of the same run from local disk, also when the server is killed mid-epoch and started again; a missing
bucket, a missing manifest or refused credentials are one line before any rank starts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.object_store import Bucket, ObjectStore
from tests.train.conftest import job_overrides, run_local, start_job
from tests.train.test_resume import assert_bit_identical, exported, wait_for_step

EPOCHS = 2  # 8 steps: 32 clips / (2 ranks x 4 per batch) per epoch


def training(shards: tuple[str, str], root: Path, name: str, *extra: str) -> list[str]:
    return job_overrides(shards, root, name, f"optim.epochs={EPOCHS}", "log.every_steps=1", *extra)


def upload(bucket: Bucket, small_shards: tuple[Path, Path]) -> tuple[str, str]:
    train, val = small_shards
    return bucket.upload(train, "demo/train"), bucket.upload(val, "demo/val")


@pytest.fixture(scope="module")
def local_run(small_shards: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the job trained from the local shard folders."""
    root = tmp_path_factory.mktemp("local-runs")
    done = run_local(training(small_shards, root, "local"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "local"


@pytest.mark.slow
def test_two_ranks_trained_from_the_bucket_end_with_the_local_bits(
    s3_bucket: Bucket, small_shards: tuple[Path, Path], local_run: Path, tmp_path: Path
) -> None:
    done = run_local(
        training(upload(s3_bucket, small_shards), tmp_path, "remote", f"data.cache_dir={tmp_path}/c")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_bit_identical(exported(tmp_path / "remote"), exported(local_run))
    assert not (tmp_path / "remote" / "bad_samples.jsonl").exists()


@pytest.mark.slow
def test_a_server_killed_mid_epoch_and_restarted_loses_no_sample(
    small_shards: tuple[Path, Path], local_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "store")
    store.start()
    try:
        for name, value in store.env.items():
            monkeypatch.setenv(name, value)  # the job inherits them
        folders = upload(store.bucket(), small_shards)
        log = tmp_path / "job.log"
        # No cache: every epoch streams from the server, and the shuffle buffer of 8 reads a shard at a time.
        job = start_job(training(folders, tmp_path, "remote"), log)
        wait_for_step(job, tmp_path / "remote", 2)
        store.stop()
        restart = threading.Timer(2.0, store.start)
        restart.start()
        assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
        restart.join()
    finally:
        store.stop()
    assert "cannot connect" in log.read_text()  # the reads met the dead server and retried
    assert_bit_identical(exported(tmp_path / "remote"), exported(local_run))
    assert not (tmp_path / "remote" / "bad_samples.jsonl").exists()  # nothing skipped, nothing replaced


@pytest.mark.parametrize("problem", ["missing bucket", "missing manifest", "wrong secret"])
def test_a_bad_bucket_url_is_one_line_before_any_rank_starts(
    problem: str, s3_bucket: Bucket, small_shards: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    train, val = upload(s3_bucket, small_shards)
    if problem == "missing bucket":
        train, expected = "s3://no-such-bucket-here/demo/train", "the bucket does not exist"
    elif problem == "missing manifest":
        train, expected = f"{s3_bucket.url}/demo/nothing", "has no manifest.json"
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        expected = "access denied"
    done = run_local(training((train, val), tmp_path, "bad"), timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: data.train: ") and train in line and expected in line
    assert "not-the-secret" not in line
    assert not (tmp_path / "bad").exists()  # no rank ran
