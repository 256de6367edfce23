"""The sharder end to end on every dataset, its determinism, and its re-encoding and trimming rules.

Expected counts, labels and windows are re-derived here from the raw publisher files with plain
csv/json code, independently of the dataset readers, and compared with what the shards hold.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from shards.__main__ import main
from shards.folder import LocalFolder
from shards.synth import encode_video, motion_clip
from shards.verify import verify_shards
from shards.video import EncodeOptions, VideoError, clip_window, output_size, probe_video, transcode
from shards.writer import foreign_files

DATASETS = ["kinetics400", "kinetics600", "kinetics700", "ssv2", "diving48", "finegym"]


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member extension: bytes} over every shard listed in the manifest, in order."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    samples: dict[str, dict[str, bytes]] = {}
    for entry in manifest["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            for member in tar:
                folder, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                samples.setdefault(f"{folder}/{stem}", {})[ext] = tar.extractfile(member).read()
    return samples


def _kinetics_truth(raw: Path, split: str) -> dict[str, tuple[int, str, tuple[float, float]]]:
    def rows(name: str) -> list[dict[str, str]]:
        with (raw / "annotations" / name).open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    classes = sorted({row["label"] for row in rows("train.csv")})
    return {
        row["youtube_id"]: (
            classes.index(row["label"]),
            row["label"],
            (float(row["time_start"]), float(row["time_end"])),
        )
        for row in rows(f"{split}.csv")
    }


def publisher_truth(dataset: str, raw: Path, split: str) -> dict[str, tuple[int, str, Any]]:
    """id (Kinetics: YouTube id) -> (class index, class name, window or None) from the raw files."""
    if dataset.startswith("kinetics"):
        return _kinetics_truth(raw, split)
    if dataset == "ssv2":
        labels = json.loads((raw / "labels" / "labels.json").read_text(encoding="utf-8"))
        entries = json.loads((raw / "labels" / f"{split}.json").read_text(encoding="utf-8"))
        plain = {e["id"]: e["template"].replace("[", "").replace("]", "") for e in entries}
        return {i: (int(labels[name]), name, None) for i, name in plain.items()}
    if dataset == "diving48":
        vocab = json.loads((raw / "Diving48_vocab.json").read_text(encoding="utf-8"))
        entries = json.loads((raw / f"Diving48_V2_{split}.json").read_text(encoding="utf-8"))
        return {e["vid_name"]: (e["label"], "+".join(vocab[e["label"]]), None) for e in entries}
    assert dataset == "finegym"
    notes = raw / "annotations"
    names = {}
    for line in (notes / "gym99_categories.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split(";", 3)
        names[int(fields[0].split(":")[1])] = fields[3].strip()
    annotation = json.loads((notes / "finegym_annotation_info_v1.1.json").read_text(encoding="utf-8"))
    truth = {}
    for line in (notes / f"gym99_{split}_element_v1.1.txt").read_text(encoding="utf-8").splitlines():
        element, label = line.split()
        video_event, action = element.split("_A_")
        ytid, event = video_event.split("_E_")
        event_entry = annotation[ytid][f"E_{event}"]
        stamps = event_entry["segments"][f"A_{action}"]["timestamps"]
        origin = event_entry["timestamps"][0][0]
        truth[element] = (int(label), names[int(label)], (origin + stamps[0][0], origin + stamps[-1][1]))
    return truth


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_end_to_end(make_shards, dataset: str) -> None:
    """synth raw -> shards -> verify; counts, labels and trimmed windows match the raw annotations."""
    out = make_shards(dataset, "train", num_videos=6, classes=3, max_samples=4)
    problems, checked = verify_shards(out)
    assert problems == []
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    raw = Path(manifest["options"]["root"])
    truth = publisher_truth(dataset, raw, "train")
    assert len(manifest["missing"]) >= 1  # synth lists one row per split without its video
    assert manifest["total"] == checked == len(truth) - len(manifest["missing"]) - len(manifest["rejects"])
    assert [s["num_samples"] for s in manifest["shards"]] == [4] * (checked // 4) + (
        [checked % 4] if checked % 4 else []
    )

    samples = read_samples(out)
    assert len(samples) == checked
    trimmed = 0
    for key, members in samples.items():
        meta = json.loads(members["json"])
        assert key == f"{dataset}/train/{meta['id']}"
        label, name, window = truth[meta["id"][:11] if dataset.startswith("kinetics") else meta["id"]]
        assert (meta["label"], meta["label_name"], int(members["cls"])) == (label, name, label)
        assert manifest["label_map"][str(label)] == name
        if "clip_start_s" in meta:
            trimmed += 1
            assert (meta["clip_start_s"], meta["clip_end_s"]) == pytest.approx(window)
            info = probe_video(members["mp4"])
            assert abs(info.num_frames / info.fps - (window[1] - window[0])) <= 1.0 / info.fps
    # FineGym always cuts from whole videos; the K600 synth mirror ships whole {ytid}.mp4 files too.
    assert trimmed == (checked if dataset in ("finegym", "kinetics600") else 0)


def test_same_inputs_give_identical_shards_across_runs_and_worker_counts(make_shards, tmp_path: Path) -> None:
    """Two runs (1 worker, then 2) over the same raw tree write byte-identical shards and manifests."""
    first = make_shards(
        "kinetics600", "train", num_videos=6, classes=3, max_samples=2, extra_args=("--workers", "1")
    )
    raw = json.loads((first / "manifest.json").read_text(encoding="utf-8"))["options"]["root"]
    second = tmp_path / "second"
    args = ["kinetics600", "--root", raw, "--split", "train", "--out", str(second), "--max-samples", "2"]
    assert main([*args, "--shuffle-seed", "0", "--workers", "2"]) == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert len(names) >= 4
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    reshuffled = tmp_path / "reshuffled"
    assert main([*args[:-2], "--out", str(reshuffled), "--max-samples", "2", "--shuffle-seed", "1"]) == 0
    assert list(read_samples(reshuffled)) != list(read_samples(first))  # a new seed, a new order
    assert sorted(read_samples(reshuffled)) == sorted(read_samples(first))


def test_shuffle_mixes_classes_across_shards(make_shards) -> None:
    """Sorted by id and then shuffled: the first shards do not hold one class each."""
    out = make_shards("ssv2", "train", num_videos=16, classes=4, max_samples=4)
    labels_per_shard = []
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["shards"]:
        with tarfile.open(out / entry["name"]) as tar:
            labels_per_shard.append({int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")})
    assert len(labels_per_shard) == 4
    assert max(len(labels) for labels in labels_per_shard) >= 2


def test_reencode_normalises_codec_size_gop_and_frame_rate(make_shards) -> None:
    """--reencode: H.264 yuv420p mp4, short side as asked, keyframes every --gop frames, CFR, no audio."""
    out = make_shards(
        "ssv2",
        "train",
        num_videos=4,
        classes=2,
        reencode=True,
        extra_args=("--short-side", "32", "--gop", "5"),
    )
    samples = read_samples(out)
    assert samples and all(set(m) == {"mp4", "json", "cls", "sha256"} for m in samples.values())
    for members in samples.values():
        meta = json.loads(members["json"])
        with av.open(io.BytesIO(members["mp4"])) as container:
            assert len(container.streams) == 1 and not container.streams.audio
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            packets = [p for p in container.demux(stream) if p.size]
            keyframes = [i for i, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe]
            pts = sorted(p.pts for p in packets)
            pixel_format, width, height = stream.codec_context.format.name, stream.width, stream.height
        assert pixel_format == "yuv420p"
        assert min(width, height) == 32 == min(meta["width"], meta["height"])
        assert keyframes == list(range(0, len(packets), 5))
        assert len(set(np.diff(pts))) == 1  # constant frame rate
        assert meta["codec"] == "h264" and meta["num_frames"] == len(packets) == 24


def test_max_bytes_bounds_every_shard(make_shards) -> None:
    """--max-bytes: every shard with more than one sample stays within the bound."""
    out = make_shards(
        "diving48", "train", num_videos=8, classes=2, max_samples=100, extra_args=("--max-bytes", "40000")
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["shards"]) >= 2
    for entry in manifest["shards"]:
        assert entry["bytes"] == (out / entry["name"]).stat().st_size
        assert entry["bytes"] <= 40000 or entry["num_samples"] == 1
    assert verify_shards(out)[0] == []


def test_clip_window_rule() -> None:
    """Cut inside a longer video, keep an already-cut clip whole, reject a window outside the video."""
    assert clip_window(60.0, 10.0, 12.5) == (10.0, 12.5)
    assert clip_window(10.4, 58.0, 68.0) is None  # a pre-cut 10 s Kinetics clip under its ytid name
    assert clip_window(30.0, 25.0, 30.3) == (25.0, 30.0)  # overrun by rounding: clamped
    with pytest.raises(VideoError, match="outside the video"):
        clip_window(30.0, 40.0, 45.0)
    with pytest.raises(VideoError, match="empty window"):
        clip_window(30.0, 5.0, 5.0)
    assert output_size(320, 240, 256) == (342, 256)
    assert output_size(97, 55, None) == (96, 54)


def test_variable_frame_rate_source_becomes_constant_rate(tmp_path: Path) -> None:
    """A VFR source (irregular timestamps) is re-encoded on a regular grid, gaps filled, window exact."""
    frames = motion_clip(1, 4, 40, 32, 48, np.random.default_rng(3))
    source = tmp_path / "vfr.mkv"
    # Timestamps in ms: 25 fps on average but with a 200 ms hole and doubled-up frames.
    stamps = (
        [i * 40 for i in range(20)] + [1000 + i * 40 for i in range(5)] + [1200 + i * 20 for i in range(15)]
    )
    with av.open(str(source), mode="w") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, pts in zip(frames, stamps, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    video = transcode(source, EncodeOptions(preset="ultrafast"), window=(0.4, 1.4))
    info = probe_video(video)
    assert info.num_frames == round(1.0 * info.fps)
    with av.open(io.BytesIO(video)) as container:
        pts = sorted(p.pts for p in container.demux() if p.size)
    assert len(set(np.diff(pts))) == 1


def test_probe_rejects_broken_files_with_a_reason(tmp_path: Path) -> None:
    """Truncated, empty and non-video files fail validation with a one-line reason."""
    good = tmp_path / "good.mp4"
    encode_video(motion_clip(0, 2, 20, 32, 48, np.random.default_rng(0)), good, gop=4)
    data = good.read_bytes()
    assert probe_video(good).num_frames == 20
    for broken in (data[: len(data) // 2], b"", b"not a video\n"):
        with pytest.raises(VideoError) as err:
            probe_video(broken)
        assert "\n" not in str(err.value) and str(err.value)


def test_a_progress_file_removed_after_the_listing_is_no_other_jobs(tmp_path: Path, monkeypatch) -> None:
    """The parts of a job array share a folder: one lists it, another finishes and removes its progress file,
    then the first reads it. That file is nobody's to refuse (refused as another job's, it failed a task)."""
    job = {"dataset": "ssv2", "split": "train", "options": {}}
    out = LocalFolder(tmp_path)
    (tmp_path / "ssv2-train-p001-progress.json").write_text(json.dumps({"job": {**job, "split": "val"}}))
    listed = [*out.names(), "ssv2-train-p002-progress.json"]  # listed, then removed by its part
    monkeypatch.setattr(out, "names", lambda: listed)
    assert foreign_files(out, job) == ["ssv2-train-p001-progress.json"]
