"""UCF-101 and HMDB-51: the readers on list files in the publishers' exact formats, their bad lines, the
CLI end to end on synthetic AVI trees, and why their MPEG-4 Part 2 AVIs are re-encoded."""

from __future__ import annotations

import argparse
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from pipeline.data.decoders import CPU_DECODERS, PyAVDecoder, available_decoders, build_decoder
from shards.__main__ import build_parser, main
from shards.datasets import READERS, read_split
from shards.records import AnnotationError, DatasetIndex
from shards.synth import encode_video, motion_clip, synth_dataset
from shards.video import EncodeOptions, transcode

UCF_CLASSES = "1 ApplyEyeMakeup\r\n2 Hammering \r\n3 HammerThrow\r\n\r\n4 HandstandPushups\r\n"


def read(dataset: str, root: Path, split: str, *flags: str) -> DatasetIndex:
    """Run a reader as the CLI does: its flags parsed, then the core's read_split."""
    parser = argparse.ArgumentParser()
    READERS[dataset].add_arguments(parser)
    return read_split(READERS[dataset].from_args(parser.parse_args(list(flags))), root, split)


def write(path: Path, text: str) -> Path:
    """A list file byte for byte (the publishers' are CRLF: no newline translation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def sequential_decode(data: bytes) -> np.ndarray:
    """Every frame from the start, no seeking: the ground truth."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def avi_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real XviD-tagged MPEG-4 Part 2 AVI with B-frames (4 frames, 32x24)."""
    path = tmp_path_factory.mktemp("avi") / "clip.avi"
    encode_video(motion_clip(0, 2, 4, 24, 32, np.random.default_rng(0)), path, codec="mpeg4", fourcc="XVID")
    return path.read_bytes()


@pytest.fixture
def ucf_root(tmp_path: Path, avi_bytes: bytes) -> Path:
    lists = tmp_path / "ucfTrainTestlist"
    write(lists / "classInd.txt", UCF_CLASSES)
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1  \r\n"
        "\r\n"
        "Hammering/v_Hammering_g08_c01.avi 2\r\n"
        "HammerThrow/v_HammerThrow_g08_c01.avi 3\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 4\r\n"
        "HandstandPushups/v_HandstandPushups_g09_c01.avi 4\r\n"  # on disk: v_HandStandPushups_g09_c01.avi
        "HammerThrow/v_HammerThrow_g09_c01.avi 2\r\n"  # label disagrees with the folder
        "Hammering/v_Hammering_g09_c01.avi\r\n"  # no label
        "Skiing/v_Skiing_g08_c01.avi 5\r\n"  # not in classInd
        "Hammering/v_Hammering_g10_c01.avi 2\r\n",  # no such file
    )
    write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nHammerThrow/v_HammerThrow_g01_c01.avi 3\r\n\r\n",
    )
    write(lists / "trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")
    for relative in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "Hammering/v_Hammering_g08_c01.avi",
        "HammerThrow/v_HammerThrow_g08_c01.avi",
        "HammerThrow/v_HammerThrow_g09_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g09_c01.avi",
    ):
        (tmp_path / "UCF-101" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "UCF-101" / relative).write_bytes(avi_bytes)
    return tmp_path


def test_ucf101_train_list_every_quirk(ucf_root: Path) -> None:
    index = read("ucf101", ucf_root, "train")
    # classInd's numbers minus one: the names sorted ignoring case (Hammering before HammerThrow)
    assert index.label_map == {0: "ApplyEyeMakeup", 1: "Hammering", 2: "HammerThrow", 3: "HandstandPushups"}
    assert [(r.id, r.label, r.label_name) for r in index.records] == [
        ("v_ApplyEyeMakeup_g08_c01", 0, "ApplyEyeMakeup"),
        ("v_Hammering_g08_c01", 1, "Hammering"),
        ("v_HammerThrow_g08_c01", 2, "HammerThrow"),
        ("v_HandStandPushups_g08_c01", 3, "HandstandPushups"),
        ("v_HandstandPushups_g09_c01", 3, "HandstandPushups"),
    ]
    # the path as listed, else ignoring case
    assert index.records[4].source == ucf_root / "UCF-101/HandstandPushups/v_HandStandPushups_g09_c01.avi"
    assert index.missing == ["v_Hammering_g10_c01"]
    reasons = {r.id: (r.source.rsplit("/", 1)[-1], r.reason) for r in index.rejects}
    assert reasons == {
        "v_HammerThrow_g09_c01": ("trainlist01.txt:7", "label 2 disagrees with class HammerThrow (3)"),
        "v_Hammering_g09_c01": (
            "trainlist01.txt:8",
            "malformed line 'Hammering/v_Hammering_g09_c01.avi' (expected <Class>/<file>.avi <label>)",
        ),
        "v_Skiing_g08_c01": ("trainlist01.txt:9", "unknown class 'Skiing' (not in classInd.txt)"),
    }


def test_ucf101_test_list_labels_come_from_the_folder(ucf_root: Path) -> None:
    for split in ("test", "val"):
        index = read("ucf101", ucf_root, split)
        assert [(r.id, r.label) for r in index.records] == [("v_ApplyEyeMakeup_g01_c01", 0)]
        assert [(r.id, r.source.rsplit("/", 1)[-1]) for r in index.rejects] == [
            ("v_HammerThrow_g01_c01", "testlist01.txt:2")
        ]  # a testlist line has no label field


def test_ucf101_fold_2_and_bad_annotations(ucf_root: Path) -> None:
    index = read("ucf101", ucf_root, "train", "--fold", "2")
    assert [r.id for r in index.records] == ["v_ApplyEyeMakeup_g01_c01"]
    with pytest.raises(AnnotationError, match=r"testlist02\.txt"):
        read("ucf101", ucf_root, "test", "--fold", "2")
    with pytest.raises(AnnotationError, match="unknown split"):
        read("ucf101", ucf_root, "validation")
    # classInd in case-sensitive order: its numbers are not the index the published models use
    write(
        ucf_root / "ucfTrainTestlist" / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HammerThrow\r\n3 Hammering\r\n"
    )
    with pytest.raises(
        AnnotationError, match=r"classInd\.txt: classes are not numbered 1\.\.N in name order"
    ):
        read("ucf101", ucf_root, "train")
    write(ucf_root / "ucfTrainTestlist" / "classInd.txt", "1 ApplyEyeMakeup\r\nHammering\r\n")
    with pytest.raises(AnnotationError, match=r"classInd\.txt:2: expected '<number> <ClassName>'"):
        read("ucf101", ucf_root, "train")


HMDB_NAMES = {
    "brush_hair": [
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "Brushing_Hair_(Tom_&_Jerry)!_brush_hair_h_nm_np1_fr_goo_1.avi",
    ],
    "draw_sword": [
        "AMADEUS_draw_sword_f_nm_np1_ri_med_1.avi",
        "Bad_Boys_[HD]_draw_sword_u_cm_np1_fr_med_0.avi",
    ],
    "walk": [
        "#122_Cleaning_Up_The_Beach_In_Chiba_Japan_walk_f_nm_np1_fr_bad_2.avi",
        "Veoh_Alpha_Dog_1_walk_f_cm_np1_le_goo_5.avi",
        "Ali's_Walk_walk_f_cm_np1_ba_med_0.avi",
    ],
}


@pytest.fixture(params=["flat", "hmdb51_org"])
def hmdb_root(request: pytest.FixtureRequest, tmp_path: Path, avi_bytes: bytes) -> Path:
    """HMDB-51 as the rar unpacks: `RAW/<class>/` or `RAW/hmdb51_org/<class>/`, and the split files."""
    videos = tmp_path if request.param == "flat" else tmp_path / "hmdb51_org"
    for class_name, names in HMDB_NAMES.items():
        for name in names:
            (videos / class_name).mkdir(parents=True, exist_ok=True)
            (videos / class_name / name).write_bytes(avi_bytes)
    splits = tmp_path / "testTrainMulti_7030_splits"
    brush, draw, walk = HMDB_NAMES.values()
    write(splits / "brush_hair_test_split1.txt", f"{brush[0]} 1 \r\n{brush[1]} 2 \r\n\r\n")
    write(
        splits / "draw_sword_test_split1.txt",
        f"{draw[0]} 1 \r\n{draw[1]} 0 \r\nnot_there_draw_sword_0.avi 1 \r\n",
    )
    write(splits / "walk_test_split1.txt", f"{walk[0]} 1 \r\n{walk[1]} 3 \r\n{walk[2]}\r\n")
    for class_name, names in HMDB_NAMES.items():
        write(splits / f"{class_name}_test_split2.txt", "".join(f"{name} 2 \r\n" for name in names[::-1]))
    return tmp_path


def test_hmdb51_split_files_and_their_bad_lines(hmdb_root: Path) -> None:
    index = read("hmdb51", hmdb_root, "train")
    assert index.label_map == {0: "brush_hair", 1: "draw_sword", 2: "walk"}
    # the publisher's names as ids: '#', '&', '(', ')', '!', "'", '[', ']' kept
    assert [(r.id, r.label) for r in index.records] == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0", 0),
        ("AMADEUS_draw_sword_f_nm_np1_ri_med_1", 1),
        ("#122_Cleaning_Up_The_Beach_In_Chiba_Japan_walk_f_nm_np1_fr_bad_2", 2),
    ]
    assert index.missing == ["not_there_draw_sword_0"]
    assert {r.id: (r.source.rsplit("/", 1)[-1], r.reason) for r in index.rejects} == {
        "Veoh_Alpha_Dog_1_walk_f_cm_np1_le_goo_5": (
            "walk_test_split1.txt:2",
            "malformed line 'Veoh_Alpha_Dog_1_walk_f_cm_np1_le_goo_5.avi 3' (expected <name>.avi 0|1|2)",
        ),
        "Ali's_Walk_walk_f_cm_np1_ba_med_0": (
            "walk_test_split1.txt:3",
            'malformed line "Ali\'s_Walk_walk_f_cm_np1_ba_med_0.avi" (expected <name>.avi 0|1|2)',
        ),
    }
    test = read("hmdb51", hmdb_root, "test")  # 0 (unused) is neither train nor test
    assert [r.id for r in test.records] == [
        "Brushing_Hair_(Tom_&_Jerry)!_brush_hair_h_nm_np1_fr_goo_1"
    ] and not test.missing
    assert [r.id for r in test.rejects] == [r.id for r in index.rejects]  # the same bad lines


def test_hmdb51_fold_2(hmdb_root: Path) -> None:
    index = read("hmdb51", hmdb_root, "val", "--fold", "2")
    assert sorted(r.id for r in index.records) == sorted(
        name.removesuffix(".avi") for names in HMDB_NAMES.values() for name in names
    )
    assert not index.rejects and not index.missing
    assert not read("hmdb51", hmdb_root, "train", "--fold", "2").records
    with pytest.raises(AnnotationError, match=r"no <class>_test_split3\.txt"):
        read("hmdb51", hmdb_root, "train", "--fold", "3")


def test_both_readers_reencode_by_default() -> None:
    parser = build_parser()
    for dataset in ("ucf101", "hmdb51"):
        assert parser.parse_args([dataset, "--root", "r", "--split", "train", "--out", "o"]).reencode
    assert not parser.parse_args(["diving48", "--root", "r", "--split", "train", "--out", "o"]).reencode


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
def test_cli_end_to_end_on_synthetic_avi_trees(
    tmp_path: Path, dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    synth_dataset(dataset, raw, num_videos=4, classes=2, frames=10, height=24)
    assert main(["synth", dataset, "--out", str(tmp_path / "again"), "--num-videos", "4", "--classes", "2",
                 "--frames", "10", "--height", "24"]) == 0  # fmt: skip
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == {
        p.relative_to(tmp_path / "again"): p.read_bytes()
        for p in (tmp_path / "again").rglob("*")
        if p.is_file()
    }  # the same options give the same bytes
    avis = sorted(raw.rglob("*.avi"))
    with av.open(str(avis[0])) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.name, codec.codec_tag) == ("mpeg4", "XVID" if dataset == "ucf101" else "DX50")
    for split in ("train", "test"):
        out = tmp_path / split
        assert main([dataset, "--root", str(raw), "--split", split, "--out", str(out)]) == 0
        assert main(["verify", str(out)]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert (manifest["total"], len(manifest["missing"]), manifest["rejects"]) == (4, 1, [])
        assert manifest["options"]["reencode"] is True and manifest["options"]["fold"] == 1
        urls = [str(out / entry["name"]) for entry in manifest["shards"]]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            # the key is the id, special characters and all; every source frame is there once
            assert sample["__key__"] == f"{dataset}/{split}/{meta['id']}"
            assert meta["codec"] == "h264" and meta["num_frames"] == 10
            assert len(sequential_decode(sample["mp4"])) == 10
    assert "written 4 samples" in capsys.readouterr().out
    if dataset == "hmdb51":
        assert any(c in "".join(manifest["missing"]) + "".join(p.name for p in avis) for c in "#&()!'[]")


def test_avi_decoders_disagree_and_reencoded_frames_do_not(avi_bytes: bytes, tmp_path: Path) -> None:
    """Why UCF-101 / HMDB-51 are re-encoded: on an MPEG-4 Part 2 AVI with B-frames, PyAV's seeking
    decoder gives the sequential frames, but decord and torchcodec give other frames for some indices
    (decord seeks to wrong frames, torchcodec is one frame off: measured with decord2 3.4.0 and
    torchcodec 0.13.0). The re-encoded clip has every source frame at its own index, for every decoder."""
    clip = motion_clip(1, 4, 40, 48, 64, np.random.default_rng(0))
    source = tmp_path / "v_Class_g01_c01.avi"
    encode_video(clip, source, codec="mpeg4", fourcc="XVID")
    data = source.read_bytes()
    truth = sequential_decode(data)
    indices = [0, 5, 13, 14, 27, 39]
    assert len(truth) == 40
    assert np.array_equal(PyAVDecoder().decode(data, indices).numpy(), truth[indices])
    others = [name for name in CPU_DECODERS if name != "pyav" and name in available_decoders()]
    if not others:
        pytest.skip("only PyAV is installed")
    disagree = []
    for name in others:
        try:
            if not np.array_equal(build_decoder(name).decode(data, indices).numpy(), truth[indices]):
                disagree.append(name)
        except RuntimeError:
            disagree.append(name)
    assert disagree, "every decoder now reads B-frame AVIs frame-exactly: they could be stored as-is"

    reencoded = transcode(source, EncodeOptions(crf=0, preset="ultrafast"))
    frames = sequential_decode(reencoded)
    assert len(frames) == len(truth)
    # crf 0 is lossless in yuv420p: each frame is its source frame but for the rgb <-> yuv rounding
    errors = np.abs(frames.astype(int) - truth.astype(int)).mean(axis=(1, 2, 3))
    shifted = np.abs(frames[1:].astype(int) - truth[:-1].astype(int)).mean(axis=(1, 2, 3))
    assert errors.max() < 0.5 < shifted.min()
    for name in ["pyav", *others]:
        assert np.array_equal(build_decoder(name).decode(reencoded, indices).numpy(), frames[indices]), name


VOP_START = b"\x00\x00\x01\xb6"


def packed_avi(frames: np.ndarray, path: Path, fps: int = 25) -> None:
    """An AVI in DivX 5's packed bitstream, as many HMDB-51 / UCF-101 files are: each P-frame and the
    B-frame after it share one chunk, the next chunk is an N-VOP (a not-coded placeholder), and the user
    data `DivX503b1393p` ('p': packed) tells the decoder so. FFmpeg can only unpack this, so the chunks
    are repacked from its mpeg4 encoder's packets (one B-frame between anchors)."""
    encoder = av.CodecContext.create("mpeg4", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    encoder.time_base, encoder.gop_size, encoder.max_b_frames = Fraction(1, fps), 12, 1
    encoder.flags |= av.codec.context.Flags.bitexact
    packets = []
    for index, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    kinds = ["IPBS"[data[data.find(VOP_START) + 4] >> 6] for data in packets]
    increment_bits = (fps - 1).bit_length()  # vop_time_increment's width for a resolution of fps
    chunks, position = [], 0
    while position < len(packets):
        if kinds[position] == "P" and kinds[position + 1 : position + 2] == ["B"]:
            # vop_coding_type P, modulo_time_base 0, marker, vop_time_increment, marker, vop_coded 0
            bits = f"0101{position % fps:0{increment_bits}b}10"
            bits += "0" + "1" * (-(len(bits) + 1) % 8)  # stuffing to the byte boundary
            chunks += [
                packets[position] + packets[position + 1],
                VOP_START + int(bits, 2).to_bytes(len(bits) // 8),
            ]
            position += 2
        else:
            chunks.append(packets[position])
            position += 1
    first_vop = chunks[0].find(VOP_START)
    chunks[0] = chunks[0][:first_vop] + b"\x00\x00\x01\xb2DivX503b1393p" + chunks[0][first_vop:]
    with av.open(str(path), mode="w", format="avi", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.codec_context.codec_tag = encoder.width, encoder.height, "DX50"
        for number, data in enumerate(chunks):
            packet = av.Packet(data)
            packet.pts = packet.dts = number
            packet.time_base, packet.stream = Fraction(1, fps), stream
            packet.is_keyframe = data[data.find(VOP_START) + 4] >> 6 == 0
            container.mux(packet)


def test_packed_bitstream_avi_is_reencoded_in_decode_order(tmp_path: Path) -> None:
    """DivX's packed B-frames: no seeking decoder gives the sequential frames (PyAV's neither: the pts
    FFmpeg derives for them are swapped in pairs), and re-encoding keeps the sequential decoder's order."""
    source = tmp_path / "Yes!_We_Can't_Stop_sit_f_nm_np1_fr_med_0.avi"
    packed_avi(motion_clip(2, 4, 40, 48, 64, np.random.default_rng(1)), source)
    data = source.read_bytes()
    truth = sequential_decode(data)
    assert len(truth) == 40
    indices = [0, 5, 13, 14, 27, 39]
    exact = []
    for name in available_decoders():
        try:
            exact.append(np.array_equal(build_decoder(name).decode(data, indices).numpy(), truth[indices]))
        except RuntimeError:
            exact.append(False)
    assert not any(exact)
    frames = sequential_decode(transcode(source, EncodeOptions(crf=0, preset="ultrafast")))
    assert len(frames) == len(truth)
    assert np.abs(frames.astype(int) - truth.astype(int)).mean(axis=(1, 2, 3)).max() < 0.5
