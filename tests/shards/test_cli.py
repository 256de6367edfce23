"""`python -m shards` as users run it: bad inputs, bad options, kill and resume, parts and merge, verify."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from shards.__main__ import build_parser, main
from shards.datasets import READERS
from shards.synth import synth_dataset

REPO = Path(__file__).resolve().parents[2]


def manifest_of(out: Path, name: str = "manifest.json") -> dict:
    return json.loads((out / name).read_text(encoding="utf-8"))


def samples_of(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> members, read back through webdataset itself from the shards the manifest lists."""
    urls = [str(out / entry["name"]) for entry in manifest_of(out)["shards"]]
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        samples[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    return samples


def shard_command(dataset: str, raw: Path, out: Path, *extra: str) -> list[str]:
    return [dataset, "--root", str(raw), "--split", "train", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def ssv2_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("ssv2") / "raw"
    synth_dataset("ssv2", raw, num_videos=10, classes=3, seed=1, splits=("train",))
    return raw


@pytest.fixture(scope="module")
def ssv2_single(ssv2_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    assert main(shard_command("ssv2", ssv2_raw, out, "--max-samples", "3")) == 0
    return out


VIDEO_ENCODE_FLAGS = ("--reencode", "--gop", "--crf", "--preset", "--store", "--frame-quality")


@pytest.mark.parametrize("dataset", sorted(READERS))
def test_only_clip_datasets_take_the_video_encode_flags(dataset: str, capsys: pytest.CaptureFixture) -> None:
    """`--help` of an image dataset lists --short-side and no video flag (giving one is a one-line error);
    a video or frame-folder dataset lists them all."""
    assert main([dataset, "--help"]) == 0
    usage = capsys.readouterr().out
    assert "--short-side" in usage and "--max-samples" in usage
    if READERS[dataset].modality == "image":
        assert [flag for flag in VIDEO_ENCODE_FLAGS if flag in usage] == []
        assert main([dataset, "--root", "r", "--split", "train", "--out", "o", "--crf", "20"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--crf" in err[0]
    else:
        assert [flag for flag in VIDEO_ENCODE_FLAGS if flag not in usage] == []


def flag_value(spec: Field) -> tuple[list[str], Any]:
    """Command-line words that set a reader option to something other than its default, and the value."""
    flag = "--" + spec.name.replace("_", "-")
    kwargs = spec.metadata
    if kwargs.get("action") == "store_true":
        return [flag], True
    if "choices" in kwargs:
        value = next(choice for choice in reversed(kwargs["choices"]) if choice != spec.default)
        return [flag, str(value)], value
    if kwargs.get("type") is Path:
        return [flag, "some/where"], Path("some/where")
    if kwargs.get("type") is not None:
        return [flag, "7"], kwargs["type"]("7")
    raise AssertionError(f"{spec.name}: no rule for an option declared with {dict(kwargs)}")


@pytest.mark.parametrize("dataset", sorted(READERS))
def test_each_reader_option_is_a_flag_of_its_subcommand(dataset: str, capsys: pytest.CaptureFixture) -> None:
    """Every field of a reader's Options is `--field-name` on its subcommand, with the field's default and
    help; the value given reaches the reader's options."""
    reader = READERS[dataset]
    base = [dataset, "--root", "r", "--split", "train", "--out", "o"]
    assert reader.from_args(build_parser().parse_args(base)).options == reader.Options()
    assert main([dataset, "--help"]) == 0
    usage = capsys.readouterr().out
    for spec in fields(reader.Options):
        assert spec.default is not MISSING and spec.metadata["help"], spec.name
        words, value = flag_value(spec)
        assert words[0] in usage, words[0]
        options = reader.from_args(build_parser().parse_args([*base, *words])).options
        assert getattr(options, spec.name) == value != spec.default, spec.name


def test_bad_inputs_are_listed_and_good_clips_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Broken videos, missing files and bad annotation entries are each reported; the rest is written."""
    raw = tmp_path / "raw"
    synth_dataset("diving48", raw, num_videos=8, classes=3, seed=2, splits=("train",))
    listing = raw / "Diving48_V2_train.json"
    entries = json.loads(listing.read_text(encoding="utf-8"))
    names = [e["vid_name"] for e in entries if (raw / "rgb" / f"{e['vid_name']}.mp4").exists()]
    # Keep an id that begins with '-' (and has '_') among the good ones.
    dashed = [name for name in names if name.startswith("-") and "_" in name][:1]
    truncated, empty, text, *good = [name for name in names if name not in dashed] + dashed
    data = (raw / "rgb" / f"{truncated}.mp4").read_bytes()
    (raw / "rgb" / f"{truncated}.mp4").write_bytes(data[: len(data) // 2])
    (raw / "rgb" / f"{empty}.mp4").write_bytes(b"")
    (raw / "rgb" / f"{text}.mp4").write_text("this is not a video\n", encoding="utf-8")
    shutil.copy(raw / "rgb" / f"{good[0]}.mp4", raw / "rgb" / "-odd_label_00001.mp4")
    entries += [
        {"vid_name": "-odd_label_00001", "label": 999, "start_frame": 0, "end_frame": 23},  # unknown label
        {"vid_name": "-no_label_00002", "start_frame": 0, "end_frame": 23},  # malformed entry
        {"vid_name": "-never_here_00003", "label": 0, "start_frame": 0, "end_frame": 23},  # no video
    ]
    listing.write_text(json.dumps(entries), encoding="utf-8")

    out = tmp_path / "out"
    assert main(shard_command("diving48", raw, out, "--max-samples", "2")) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = manifest_of(out)
    reasons = {r["id"]: r["reason"] for r in manifest["rejects"]}
    assert "cannot decode" in reasons[truncated] and "cannot decode" in reasons[text]
    assert reasons[empty] == "empty file (0 bytes)"
    assert "label 999" in reasons["-odd_label_00001"] and "label" in reasons["-no_label_00002"]
    assert {"-never_here_00003"} < set(manifest["missing"])
    written = samples_of(out)
    assert {k.split("/")[-1] for k in written} == set(good)
    assert any(k.split("/")[-1].startswith("-") and "_" in k for k in written)
    assert f"written {len(good)} samples" in summary and f"rejected {len(reasons)}" in summary
    assert f"missing {len(manifest['missing'])}" in summary
    assert main(["verify", str(out)]) == 0


def test_csv_rows_and_non_ascii_labels(tmp_path: Path) -> None:
    """A malformed Kinetics CSV row is a reject; a label with 'ê' and spaces survives into the samples."""
    raw = tmp_path / "raw"
    synth_dataset("kinetics400", raw, num_videos=3, classes=3, seed=3, splits=("train",))
    with (raw / "annotations" / "train.csv").open("a", encoding="utf-8") as f:
        f.write('"making crêpes",only-three-fields\n')
    out = tmp_path / "out"
    assert main(shard_command("kinetics400", raw, out)) == 0
    manifest = manifest_of(out)
    assert len(manifest["rejects"]) == 1 and manifest["rejects"][0]["reason"]
    names = {json.loads(s["json"])["label_name"] for s in samples_of(out).values()}
    assert "making crêpes" in names


def test_unreadable_annotations_and_bad_options_are_one_line(tmp_path: Path, capsys) -> None:
    """Exit 2 with one stderr line that names the file or the option."""
    raw = tmp_path / "raw"
    synth_dataset("diving48", raw, num_videos=3, classes=3, seed=0, splits=("train",))
    (raw / "Diving48_V2_train.json").write_bytes(b"\x00{ not json")
    capsys.readouterr()
    assert main(shard_command("diving48", raw, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Diving48_V2_train.json" in err[0]
    assert not (tmp_path / "out" / "manifest.json").exists()
    for option, value in (("--max-samples", "0"), ("--part", "3/2"), ("--max-bytes", "lots")):
        assert main(shard_command("diving48", raw, tmp_path / "out", option, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and option in err[0] and value in err[0]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_shards(tmp_path: Path) -> None:
    """SIGKILL a real run after its first shards and rerun it: same bytes as one run, no temp files."""
    raw = tmp_path / "raw"
    synth_dataset(
        "kinetics600", raw, num_videos=10, classes=2, seed=4, frames=40, height=96, splits=("train",)
    )
    # A slow preset keeps the run long enough to be killed part-way on any machine.
    options = ("--max-samples", "2", "--reencode", "--preset", "veryslow", "--workers", "2")
    reference = tmp_path / "reference"
    assert main(shard_command("kinetics600", raw, reference, *options)) == 0

    out = tmp_path / "out"
    command = [sys.executable, "-m", "shards", *shard_command("kinetics600", raw, out, *options)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = out / "kinetics600-train-progress.json"
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended before it could be killed"
        )
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "killed too late: the run had finished"
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert len(kept) >= 2

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())  # no *.tmp, no progress file left
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    # Resumed, not restarted: the shards finished before the kill were not written again.
    finished = [e["name"] for e in manifest_of(out)["shards"]][: len(kept) - 1]
    assert all((out / name).stat().st_mtime_ns == kept[name] for name in finished)


def test_parts_merged_equal_a_single_run(ssv2_raw: Path, ssv2_single: Path, tmp_path: Path) -> None:
    """Three --part runs into one folder, then merge: the same samples, rejects and missing as one run."""
    out = tmp_path / "parts"
    for part in range(3):
        assert main(shard_command("ssv2", ssv2_raw, out, "--max-samples", "3", "--part", f"{part}/3")) == 0
    assert not (out / "manifest.json").exists()
    assert main(["merge", str(out)]) == 0
    merged, single = manifest_of(out), manifest_of(ssv2_single)
    assert all(e["name"].startswith("ssv2-train-p00") for e in merged["shards"])
    for field in ("total", "rejects", "missing", "label_map", "options", "tool_version"):
        assert merged[field] == single[field], field
    assert samples_of(out) == samples_of(ssv2_single)
    assert main(["verify", str(out)]) == 0


def test_merge_refuses_incomplete_or_inconsistent_parts(ssv2_raw: Path, tmp_path: Path, capsys) -> None:
    """A missing part, or parts made with different options, is an error naming the problem."""
    out = tmp_path / "parts"
    assert main(shard_command("ssv2", ssv2_raw, out, "--part", "0/2")) == 0
    capsys.readouterr()
    assert main(["merge", str(out)]) == 1
    assert "p001" in capsys.readouterr().err
    # A part with other options is refused when it is sharded (the folder holds part 0's) ...
    assert main(shard_command("ssv2", ssv2_raw, out, "--part", "1/2", "--max-samples", "2")) == 2
    assert "another dataset, split or options" in capsys.readouterr().err
    # ... and merge still checks the parts' options against each other.
    assert main(shard_command("ssv2", ssv2_raw, out, "--part", "1/2")) == 0
    part = out / "manifest-p001-of-002.json"
    part.write_text(json.dumps({**json.loads(part.read_text()), "options": {"max_samples": 2}}))
    capsys.readouterr()
    assert main(["merge", str(out)]) == 1
    assert "'options'" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def _rewrite_member(shard: Path, suffix: str, change) -> None:
    """Rewrite one member of a tar (the first whose name ends with `suffix`) through `change`."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    target = next(i for i, (m, _) in enumerate(members) if m.name.endswith(suffix))
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, (member, data) in enumerate(members):
            data = change(data) if i == target else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_verify_detects_corruption(ssv2_single: Path, tmp_path: Path, capsys) -> None:
    """Truncated shard, changed bytes, a manifest whose sha no longer matches, an undecodable clip."""
    assert main(["verify", str(ssv2_single)]) == 0

    def fresh(name: str) -> tuple[Path, Path]:
        out = tmp_path / name
        shutil.copytree(ssv2_single, out)
        return out, out / manifest_of(out)["shards"][0]["name"]

    out, shard = fresh("truncated")
    shard.write_bytes(shard.read_bytes()[:-2048])
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "bytes, the manifest says" in capsys.readouterr().err

    out, shard = fresh("flipped")
    data = bytearray(shard.read_bytes())
    data[3000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "sha256 differs" in err and "ssv2/train/" in err  # the changed sample is named

    # A clip broken inside a shard whose manifest entry was updated to match: the sample's digest
    # member catches it (and decoding would).
    out, shard = fresh("undecodable")
    _rewrite_member(shard, ".webm", lambda data: data[: len(data) // 3])
    manifest = manifest_of(out)
    entry = manifest["shards"][0]
    entry["bytes"] = shard.stat().st_size
    entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "sha256 member mismatch" in err and "ssv2/train/" in err

    out, _ = fresh("count")
    manifest = manifest_of(out)
    manifest["shards"][0]["num_samples"] += 1
    manifest["total"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["verify", str(out)]) == 1
    assert "samples, the manifest says" in capsys.readouterr().err
