"""The synthetic raw datasets: real encoded videos, byte-identical for a seed, labelled by motion only."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from shards.datasets import READERS, read_split
from shards.synth import (
    PUBLISHER_SPLITS,
    WRITERS,
    add_arguments,
    encode_video,
    motion_clip,
    run,
    synth_dataset,
)

# The video datasets and their publisher splits, from the code's own tables (imagenet, a picture
# dataset, has its own tests in test_imagenet.py).
VIDEO_SPLITS = {
    name: splits for name, splits in PUBLISHER_SPLITS.items() if READERS[name].modality == "video"
}


def test_every_reader_has_a_synth_writer_and_publisher_splits() -> None:
    assert set(WRITERS) == set(PUBLISHER_SPLITS) == set(READERS)
    assert set(VIDEO_SPLITS) >= {"kinetics400", "ssv2", "diving48", "finegym"}
    for name, splits in PUBLISHER_SPLITS.items():
        assert splits and set(splits) <= {"train", "val", "test"} and "train" in splits, name
        assert len(set(splits)) == len(splits), name


def motion_direction(frames: np.ndarray) -> float:
    """Direction (radians, image axes) in which the content of a clip moves.

    The centroid of each frame-to-frame change is tracked on the torus (the shape wraps around the
    edges) and the unwrapped steps are summed; static background and colours cancel out, and
    still stretches (no change) are skipped.
    """
    change = np.abs(np.diff(frames.astype(np.float64), axis=0)).sum(-1)
    change = np.where(change > 40, change, 0.0)
    _, height, width = change.shape
    size = np.array([width, height])
    centroids = []
    for image in change:
        if np.count_nonzero(image) < 10:  # a still stretch (lead-in, gap): nothing moves there
            continue
        centre = []
        for profile, length in ((image.sum(0), width), (image.sum(1), height)):
            phase = np.exp(2j * np.pi * np.arange(length) / length)
            centre.append(np.angle((profile * phase).sum()) * length / (2 * np.pi))
        centroids.append(centre)
    steps = np.diff(np.array(centroids), axis=0)
    steps = (steps + size / 2) % size - size / 2
    total = steps.sum(0)
    return float(np.arctan2(total[1], total[0]) % (2 * np.pi))


def angle_error(angle: float, label: int, classes: int) -> float:
    """Absolute angular distance between `angle` and the direction of class `label`."""
    return abs((angle - 2 * np.pi * label / classes + np.pi) % (2 * np.pi) - np.pi)


def decode(path: Path) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8, decoded by PyAV."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_window(path: Path, start_s: float | None, end_s: float | None) -> np.ndarray:
    """The frames of `path` whose timestamps fall in [start_s, end_s) (all frames when no window)."""
    with av.open(str(path)) as container:
        frames = [
            f.to_ndarray(format="rgb24")
            for f in container.decode(video=0)
            if start_s is None or start_s - 1e-3 <= f.time < end_s - 1e-3
        ]
    return np.stack(frames)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "h264"), (".mkv", "h264"), (".webm", "vp9")])
def test_encode_video_is_deterministic_and_decodable(tmp_path: Path, suffix: str, codec: str) -> None:
    frames = motion_clip(1, 4, 12, 48, 64, np.random.default_rng(0))
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    encode_video(frames, first, codec=codec, fps=12.0, gop=4)
    encode_video(frames, second, codec=codec, fps=12.0, gop=4)
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"
    with av.open(str(first)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        assert stream.average_rate == 12
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert not container.streams.audio
    decoded = decode(first)
    assert decoded.shape == frames.shape
    # Lossy, but close to the source: mean absolute error of a few levels.
    assert np.abs(decoded.astype(int) - frames).mean() < 10


def test_encode_video_rejects_bad_input(tmp_path: Path) -> None:
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"clip\.webm.*vp9"):
        encode_video(frames, tmp_path / "clip.webm", codec="h264")
    with pytest.raises(ValueError, match=r"clip\.avi"):
        encode_video(frames, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="even height"):
        encode_video(np.zeros((4, 47, 64, 3), np.uint8), tmp_path / "odd.mp4")
    assert not any(tmp_path.iterdir())


def test_motion_reveals_the_class_but_single_frames_do_not() -> None:
    classes, per_class = 4, 40
    rng = np.random.default_rng(3)
    clips = {
        k: np.stack([motion_clip(k, classes, 8, 24, 32, rng) for _ in range(per_class)])
        for k in range(classes)
    }
    # Motion: the direction estimated from frame differences names the class of every clip.
    for label, group in clips.items():
        errors = [angle_error(motion_direction(clip), label, classes) for clip in group]
        assert max(errors) < 0.2, f"class {label}: direction off by up to {max(errors):.2f} rad"
    # Appearance: a nearest-class-mean classifier fitted on single frames of half the clips is at
    # chance (1/4) on the other half: colours, positions and background carry no label.
    half = per_class // 2
    means = np.stack([clips[k][:half].astype(np.float64).mean((0, 1)) for k in range(classes)])
    hits = [
        int(np.abs(means - frame).mean((1, 2, 3)).argmin() == label)
        for label, group in clips.items()
        for clip in group[half:]
        for frame in clip
    ]
    assert np.mean(hits) < 0.4, f"single frames predict the class {np.mean(hits):.0%} of the time"


def test_motion_survives_encoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for label, (suffix, codec) in enumerate([(".mp4", "h264"), (".webm", "vp9"), (".mkv", "h264")]):
        path = tmp_path / f"clip{suffix}"
        encode_video(motion_clip(label * 2 + 1, 8, 8, 48, 64, rng), path, codec=codec)
        assert angle_error(motion_direction(decode(path)), label * 2 + 1, 8) < 0.2


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small synthetic tree per dataset (6 clips per split, 3 classes, 1 missing row)."""
    base = tmp_path_factory.mktemp("synth")
    for dataset in VIDEO_SPLITS:
        synth_dataset(dataset, base / dataset, num_videos=6, classes=3, seed=7, frames=12)
    return {dataset: base / dataset for dataset in VIDEO_SPLITS}


@pytest.mark.parametrize("dataset", list(VIDEO_SPLITS))
def test_same_seed_gives_the_same_bytes(trees: dict[str, Path], tmp_path: Path, dataset: str) -> None:
    synth_dataset(dataset, tmp_path / "again", num_videos=6, classes=3, seed=7, frames=12)
    assert tree_digest(tmp_path / "again") == tree_digest(trees[dataset])


def test_another_seed_gives_other_videos(trees: dict[str, Path], tmp_path: Path) -> None:
    synth_dataset("diving48", tmp_path / "other", num_videos=6, classes=3, seed=8, frames=12)
    videos = {
        name: digest for name, digest in tree_digest(trees["diving48"]).items() if name.endswith(".mp4")
    }
    other = {
        name: digest for name, digest in tree_digest(tmp_path / "other").items() if name.endswith(".mp4")
    }
    assert len(other) == len(videos) == 12
    assert set(other.values()).isdisjoint(videos.values())


@pytest.mark.parametrize("dataset", list(VIDEO_SPLITS))
def test_synth_videos_decode_and_move_as_labelled(trees: dict[str, Path], dataset: str) -> None:
    parser = argparse.ArgumentParser()
    READERS[dataset].add_arguments(parser)
    args = parser.parse_args([])
    for split in VIDEO_SPLITS[dataset]:
        index = read_split(READERS[dataset].from_args(args), trees[dataset], split)
        assert len(index.records) == 6 and len(index.missing) == 1 and not index.rejects
        for record in index.records[:2]:
            frames = decode_window(record.source, record.start_s, record.end_s)
            assert frames.shape[1] == 48 and frames.shape[2] % 2 == 0
            if record.label >= 0:  # test splits carry no label to compare with
                assert angle_error(motion_direction(frames), record.label, 3) < 0.3, record


def test_finegym_whole_videos_mix_containers(trees: dict[str, Path]) -> None:
    suffixes = {p.suffix for p in (trees["finegym"] / "videos").iterdir()}
    assert suffixes == {".mp4", ".mkv", ".webm"}


def test_run_reports_bad_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ok = parser.parse_args(
        [
            "ssv2",
            "--out",
            str(tmp_path / "raw"),
            "--num-videos",
            "2",
            "--classes",
            "2",
            "--splits",
            "test",
            "--missing",
            "0",
        ]
    )
    assert run(ok) == 0
    assert len(list((tmp_path / "raw" / "20bn-something-something-v2").glob("*.webm"))) == 2
    again = run(ok)  # the folder is no longer empty: refusing keeps trees reproducible
    bad_split = run(parser.parse_args(["diving48", "--out", str(tmp_path / "d"), "--splits", "val"]))
    too_few = run(parser.parse_args(["finegym", "--out", str(tmp_path / "f"), "--num-videos", "2"]))
    assert (again, bad_split, too_few) == (2, 2, 2)
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert "not an empty folder" in errors[0] and "'val'" in errors[1] and "num_videos=2" in errors[2]
