"""Something-Something V1 (`shards ssv1`) on files in the publisher's exact format, and frame samples: the
JPEGs stored byte for byte, bad folders and lines rejected or missing (nothing lost), the CLI end to end,
resume, verify; `--store frames` on a video dataset and `--store video` on SSv1's frames."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import shards.writer
from shards.__main__ import build_parser, check_store_arguments, main
from shards.datasets import READERS, read_split
from shards.records import DatasetIndex
from shards.synth import synth_dataset
from shards.video import count_decoded_frames
from tests.shards.test_synth import angle_error, motion_direction

REPO = Path(__file__).resolve().parents[2]
FRAMES = "20bn-something-something-v1"
PREFIX = "something-something-v1-"
# As the labels file lists them (not sorted); sorted, they are the class index.
CLASSES = (
    "Putting something, something and something on the table",
    "Pushing something so that it almost falls off but doesn't",
    "Holding something",
    "Tearing something just a little bit",
)
HOLDING, PUSHING, PUTTING, TEARING = sorted(CLASSES)
TRAIN_LINES = (
    f"101;{PUTTING}",  # line 1: good
    f"102;{PUSHING}",  # 2: good
    f"103;{HOLDING}",  # 3: frame 00002.jpg truncated
    f"104;{HOLDING}",  # 4: frame 00003.jpg is not a JPEG
    f"105;{TEARING}",  # 5: frames 00001, 00002, 00004: a gap
    f"106;{HOLDING}",  # 6: no folder: missing
    "107;Dancing with something",  # 7: unknown label
    f"108 109;{HOLDING}",  # 8: malformed id
    "",  # 9: blank, not a row
    f";{HOLDING}",  # 10: no id
    "110",  # 11: no label in a labelled split
    f"111;{TEARING}",  # 12: good, another size (SSv1's widths vary)
    f"112;{PUSHING}",  # 13: frame 00002.jpg of another size
)


def jpeg(seed: int, width: int = 32, height: int = 24, quality: int = 85) -> bytes:
    """A real JPEG (Pillow's encoder) of a smooth random picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_folder(root: Path, video_id: str, frames: dict[int, bytes]) -> None:
    folder = root / FRAMES / video_id
    folder.mkdir(parents=True)
    for number, data in frames.items():
        (folder / f"{number:05d}.jpg").write_bytes(data)


def good(video_id: int, count: int = 3, width: int = 32) -> dict[int, bytes]:
    return {n: jpeg(video_id * 100 + n, width) for n in range(1, count + 1)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SSv1 tree as distributed: the frame folders, the labels file and the three `;` lists."""
    root = tmp_path_factory.mktemp("ssv1") / "raw"
    root.mkdir()
    (root / f"{PREFIX}labels.csv").write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
    (root / f"{PREFIX}train.csv").write_text("".join(f"{line}\n" for line in TRAIN_LINES), encoding="utf-8")
    (root / f"{PREFIX}validation.csv").write_text(f"201;{HOLDING}\n202;{TEARING}\n", encoding="utf-8")
    (root / f"{PREFIX}test.csv").write_text("301\n302\n", encoding="utf-8")
    for video_id in (101, 102, 201, 202, 301, 302):
        write_folder(root, str(video_id), good(video_id))
    write_folder(root, "103", {**good(103), 2: jpeg(1032)[:-300]})
    write_folder(root, "104", {**good(104), 3: b"<html>404</html>"})
    write_folder(root, "105", {n: jpeg(1050 + n) for n in (1, 2, 4)})
    write_folder(root, "111", good(111, count=4, width=40))
    write_folder(root, "112", {**good(112), 2: jpeg(1122, width=40)})
    (root / FRAMES / "111" / "Thumbs.db").write_bytes(b"not a frame")  # other files are not frames
    return root


def read(root: Path, split: str) -> DatasetIndex:
    return read_split(READERS["ssv1"](), root, split)


def shard(root: Path, split: str, out: Path, *flags: str) -> int:
    return main(["ssv1", "--root", str(root), "--split", split, "--out", str(out), *flags])


def samples_of(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> members, read back through webdataset from the shards the manifest lists."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    urls = [str(out / entry["name"]) for entry in manifest["shards"]]
    return {
        sample["__key__"]: {k: v for k, v in sample.items() if not k.startswith("__")}
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    }


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_reader_class_index_is_the_names_sorted_and_every_line_is_accounted_for(raw: Path) -> None:
    index = read(raw, "train")
    assert index.label_map == dict(enumerate(sorted(CLASSES)))
    records = {r.id: (r.label, r.label_name, r.source.name) for r in index.records}
    assert records["101"] == (sorted(CLASSES).index(PUTTING), PUTTING, "101")
    assert records["102"] == (sorted(CLASSES).index(PUSHING), PUSHING, "102")
    assert sorted(records) == ["101", "102", "103", "104", "105", "111", "112"]  # folders: checked later
    assert index.missing == ["106"]
    rejects = {r.source.rsplit(":", 1)[1]: r.reason for r in index.rejects}
    assert all(r.source.startswith(str(raw / f"{PREFIX}train.csv:")) for r in index.rejects)
    assert set(rejects) == {"7", "8", "10", "11"}
    assert "'Dancing with something' is not in something-something-v1-labels.csv" in rejects["7"]
    assert "malformed line" in rejects["8"] and "malformed line" in rejects["10"]
    assert "has no ';label'" in rejects["11"]
    # Nothing lost: every non-blank line is a record, a missing id or a reject.
    lines = [line for line in TRAIN_LINES if line]
    assert len(index.records) + len(index.missing) + len(index.rejects) == len(lines)
    assert all(r.extras == {"fps": 12.0} for r in index.records)


def test_test_split_is_unlabelled_and_val_reads_the_validation_list(raw: Path) -> None:
    test = read(raw, "test")
    assert [(r.id, r.label, r.label_name) for r in test.records] == [("301", -1, ""), ("302", -1, "")]
    assert test.label_map == dict(enumerate(sorted(CLASSES)))  # the manifest still names the classes
    val = read(raw, "val")
    assert [(r.id, r.label) for r in val.records] == [("201", 0), ("202", 3)]


def test_labels_file_with_a_class_twice_is_one_line(raw: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{HOLDING}\n{TEARING}\n{HOLDING}\n", encoding="utf-8")
    flags = ("--labels", str(labels))
    assert shard(raw, "train", tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {labels}:3: class {HOLDING!r} given twice (first at line 1)"
    assert shard(tmp_path / "nowhere", "train", tmp_path / "out2") == 2
    assert "ssv1 something-something-v1-labels.csv" in capsys.readouterr().err


def test_cli_stores_the_jpegs_byte_for_byte_and_rejects_bad_folders(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    assert shard(raw, "train", out, "--max-samples", "2") == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["modality"] == "video" and manifest["options"]["store"] == "frames"
    assert manifest["label_map"] == {str(i): name for i, name in enumerate(sorted(CLASSES))}
    assert manifest["missing"] == ["106"] and manifest["total"] == 3
    reasons = {r["id"]: r["reason"] for r in manifest["rejects"]}
    assert reasons.keys() == {"103", "104", "105", "107", "108 109", "line-10", "110", "112"}
    assert reasons["103"].startswith("frame 00002.jpg: does not decode")
    assert reasons["104"] == "frame 00003.jpg: not an image (starts with b'<html>40')"
    assert reasons["105"].startswith("gap in the frame numbering: frame 3 is missing")
    assert reasons["112"] == "frame 00002.jpg is 40x24, frame 00001.jpg is 32x24"

    samples = samples_of(out)
    assert sorted(samples) == ["ssv1/train/101", "ssv1/train/102", "ssv1/train/111"]
    for video_id, count, width in (("101", 3, 32), ("102", 3, 32), ("111", 4, 40)):
        members = samples[f"ssv1/train/{video_id}"]
        frames = [f"{i:06d}.jpg" for i in range(count)]
        assert sorted(members) == sorted(["json", "cls", "sha256", *frames])
        for i, name in enumerate(frames):  # frame i is the publisher's 0000{i+1}.jpg, unchanged
            assert members[name] == (raw / FRAMES / video_id / f"{i + 1:05d}.jpg").read_bytes()
        meta = json.loads(members["json"])
        assert meta["storage"] == "frames" and meta["codec"] == "jpeg"
        assert (meta["num_frames"], meta["width"], meta["height"], meta["fps"]) == (count, width, 24, 12.0)
        assert meta["source"] == f"{FRAMES}/{video_id}"
        assert members["cls"] == str(meta["label"]).encode()
        assert meta["label_name"] == manifest["label_map"][str(meta["label"])]
    assert main(["verify", str(out)]) == 0


def test_verify_fails_on_a_damaged_frame_member(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "val"
    assert shard(raw, "val", out) == 0
    assert main(["verify", str(out)]) == 0
    path = next(out.glob("*.tar"))
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.name.endswith(".000001.jpg"))
    data = bytearray(path.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "sha256 differs from the manifest" in err and member.name.rsplit(".", 2)[0] in err


def test_command_line_rerun_and_resume_give_identical_shards(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m shards ssv1` as a user runs it, twice; a run interrupted after its first shard resumes."""
    command = [sys.executable, "-m", "shards", "ssv1", "--root", str(raw), "--split", "train"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        run = subprocess.run(
            [*command, "--out", str(out), "--max-samples", "1"], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "written 3 samples in 3 shards, rejected 8, missing 1" in run.stdout
    assert shard_bytes(outs[0]) == shard_bytes(outs[1])

    interrupted = tmp_path / "interrupted"
    original = shards.writer.read_frame_folder

    def interrupt_after_the_first_shard(*args, **kwargs):  # Ctrl-C while a later folder is read
        if any(interrupted.glob("*.tar")):
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(shards.writer, "read_frame_folder", interrupt_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        shard(raw, "train", interrupted, "--max-samples", "1")
    monkeypatch.setattr(shards.writer, "read_frame_folder", original)
    kept = {p.name: p.stat().st_mtime_ns for p in interrupted.glob("*.tar")}
    assert kept and not (interrupted / "manifest.json").exists()
    assert shard(raw, "train", interrupted, "--max-samples", "1") == 0
    assert shard_bytes(interrupted) == shard_bytes(outs[0])
    assert all(interrupted.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in kept.items())


def test_store_video_encodes_the_frames_as_short_gop_h264(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "video"
    assert shard(raw, "val", out, "--store", "video", "--gop", "2") == 0
    samples = samples_of(out)
    assert sorted(samples) == ["ssv1/val/201", "ssv1/val/202"]
    for members in samples.values():
        assert sorted(members) == ["cls", "json", "mp4", "sha256"]
        meta = json.loads(members["json"])
        assert (meta["codec"], meta["num_frames"], meta["fps"], meta["width"]) == ("h264", 3, 12.0, 32)
        assert count_decoded_frames(members["mp4"]) == 3
        with av.open(io.BytesIO(members["mp4"])) as container:
            keyframes = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
        assert keyframes == [True, False, True]  # --gop 2
    assert main(["verify", str(out)]) == 0


@pytest.fixture(scope="module")
def kinetics_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("k400") / "raw"
    synth_dataset("kinetics400", raw, num_videos=2, classes=2, seed=3, frames=6, height=32, splits=("train",))
    return raw


def quantization_at(quality: int) -> dict:
    """The quantization tables Pillow writes at `quality`."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, format="JPEG", quality=quality)
    return Image.open(out).quantization


def test_store_frames_on_a_video_dataset(kinetics_raw: Path, tmp_path: Path) -> None:
    """Every decoded frame becomes a JPEG at --frame-quality and --short-side, the same bytes on every run."""
    flags = ("--store", "frames", "--frame-quality", "60", "--short-side", "24")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert (
            main(["kinetics400", "--root", str(kinetics_raw), "--split", "train", "--out", str(out), *flags])
            == 0
        )
    assert shard_bytes(outs[0]) == shard_bytes(outs[1])
    samples = samples_of(outs[0])
    assert len(samples) == 2
    for key, members in samples.items():
        meta = json.loads(members["json"])
        source = kinetics_raw / meta["source"]
        num_frames = count_decoded_frames(source)
        assert (meta["storage"], meta["codec"], meta["num_frames"]) == ("frames", "jpeg", num_frames)
        assert (meta["width"], meta["height"]) == (32, 24)  # 4:3 at 32 px high, short side 24
        frames = [members[f"{i:06d}.jpg"] for i in range(num_frames)]
        assert len([name for name in members if name.endswith(".jpg")]) == num_frames, key
        for data in frames:
            image = Image.open(io.BytesIO(data))
            assert (image.format, image.size) == ("JPEG", (32, 24))
            assert image.quantization == quantization_at(60)
    assert main(["verify", str(outs[0])]) == 0


def test_store_options_are_checked(kinetics_raw: Path, tmp_path: Path, capsys) -> None:
    """--store frames with --reencode is one line; datasets re-encoded by default take --store frames;
    image datasets have no --store at all."""
    base = ["--root", str(kinetics_raw), "--split", "train", "--out", str(tmp_path / "out")]
    assert main(["kinetics400", *base, "--store", "frames", "--reencode"]) == 2
    assert (
        capsys.readouterr().err.strip().startswith("error: --reencode re-encodes videos; with --store frames")
    )
    args = build_parser().parse_args(["ucf101", *base, "--store", "frames"])
    check_store_arguments(READERS["ucf101"], args)  # --reencode is on by default there: no conflict
    assert main(["imagenet", *base, "--store", "frames"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--store" in err and len(err.splitlines()) == 1
    assert main(["ssv1", *base, "--frame-quality", "101"]) == 2
    assert "expected a JPEG quality 1..100, got '101'" in capsys.readouterr().err


def test_synth_ssv1_is_the_published_layout_and_moves_as_labelled(tmp_path: Path) -> None:
    """`synth ssv1`: unsorted labels file, `;` lists, `00001.jpg` folders whose motion is the sorted index;
    the same seed gives the same bytes."""
    trees = [tmp_path / "a", tmp_path / "b"]
    for tree in trees:
        synth_dataset("ssv1", tree, num_videos=3, classes=3, seed=5, frames=8, height=32, missing=1)
    digests = [{p.relative_to(t): p.read_bytes() for p in sorted(t.rglob("*")) if p.is_file()} for t in trees]
    assert digests[0] == digests[1]
    names = (trees[0] / f"{PREFIX}labels.csv").read_text(encoding="utf-8").splitlines()
    assert len(names) == 3 and names != sorted(names)
    for split in ("train", "val", "test"):
        index = read(trees[0], split)
        assert (len(index.records), len(index.missing), index.rejects) == (3, 1, [])
        assert index.label_map == dict(enumerate(sorted(names)))
        for record in index.records:
            files = sorted(record.source.iterdir())
            assert [p.name for p in files] == [f"{n:05d}.jpg" for n in range(1, 9)]
            frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
            assert frames.shape[1] == 32
            if split == "test":
                assert record.label == -1
            else:
                assert angle_error(motion_direction(frames), record.label, 3) < 0.3, record


def test_frames_above_the_short_side_are_shrunk_at_the_frame_quality(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    assert shard(raw, "val", out, "--short-side", "16", "--frame-quality", "50") == 0
    for members in samples_of(out).values():
        meta = json.loads(members["json"])
        assert (meta["width"], meta["height"], meta["num_frames"]) == (21, 16, 3)
        for i in range(3):
            image = Image.open(io.BytesIO(members[f"{i:06d}.jpg"]))
            assert image.size == (21, 16) and image.quantization == quantization_at(50)
    assert main(["verify", str(out)]) == 0
