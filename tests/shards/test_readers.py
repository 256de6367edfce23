"""Dataset readers on publisher-format annotation files: every quirk, bad rows, broken files."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shards.datasets import READERS, read_split, safe_id
from shards.records import AnnotationError, DatasetIndex
from shards.synth import encode_video, motion_clip, synth_dataset

Put = Callable[[Path], Path]


def read(dataset: str, root: Path, split: str, *flags: str) -> DatasetIndex:
    """Run a reader the way the CLI does: its own flags parsed into its options, then read_split."""
    parser = argparse.ArgumentParser()
    reader = READERS[dataset]
    reader.add_arguments(parser)
    return read_split(reader.from_args(parser.parse_args(list(flags))), root, split)


def write(path: Path, text: str | bytes) -> Path:
    """Write an annotation file (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A real tiny encoded video per container suffix."""
    folder = tmp_path_factory.mktemp("clips")
    frames = motion_clip(0, 2, 4, 16, 16, np.random.default_rng(0))
    out = {}
    for suffix, codec in ((".mp4", "h264"), (".mkv", "h264"), (".webm", "vp9")):
        encode_video(frames, folder / f"clip{suffix}", codec=codec)
        out[suffix] = (folder / f"clip{suffix}").read_bytes()
    return out


@pytest.fixture
def put(clip_bytes: dict[str, bytes]) -> Put:
    """Place a real video at a path (its suffix picks the container)."""

    def place(path: Path) -> Path:
        return write(path, clip_bytes[path.suffix])

    return place


def test_registry_has_every_dataset_with_its_modality() -> None:
    modalities = {name: reader.modality for name, reader in READERS.items()}
    assert modalities.items() >= {
        "kinetics400": "video", "kinetics600": "video", "kinetics700": "video", "ssv2": "video",
        "diving48": "video", "finegym": "video", "ucf101": "video", "hmdb51": "video",
        "ssv1": "frames", "imagenet": "image",
    }.items()  # fmt: skip
    assert safe_id("a.b.c") == "a_b_c"


# --------------------------------------------------------------------------------------- Kinetics

K400_TRAIN = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,--07WQ2iBlw,1,11,train,0
"passing American football (in game)",-0bRCT_z2iU,84.0,94.0,train,0
"skiing, cross-country",a_b-c_d-e_f,12,22,train,0
"making crêpes",crepe1_abcd,0.0,10.0,train,0
abseiling,broken_rowx,1,11
zumba,ytmissing01,5,15,train,0
abseiling,bad_times__,x,11,train,0
"""


@pytest.fixture
def kinetics_root(tmp_path: Path, put: Put) -> Path:
    write(tmp_path / "annotations" / "train.csv", K400_TRAIN)
    videos = tmp_path / "videos" / "train"
    put(videos / "abseiling" / "--07WQ2iBlw_000001_000011.mp4")  # label folder
    put(videos / "passing_American_football_(in_game)" / "-0bRCT_z2iU_000084_000094.mp4")  # '_' for ' '
    put(videos / "making crêpes" / "crepe1_abcd_000000_000010.mp4")  # spaces kept
    put(videos / "a_b-c_d-e_f.mp4")  # a mirror's `{ytid}.mp4`, flat
    return tmp_path


def test_kinetics_train_every_quirk(kinetics_root: Path) -> None:
    index = read("kinetics400", kinetics_root, "train")
    classes = [
        "abseiling",
        "making crêpes",
        "passing American football (in game)",
        "skiing, cross-country",
        "zumba",
    ]
    assert index.label_map == dict(enumerate(classes))
    assert [r.id for r in index.records] == [
        "--07WQ2iBlw_000001_000011", "-0bRCT_z2iU_000084_000094", "a_b-c_d-e_f_000012_000022",
        "crepe1_abcd_000000_000010",
    ]  # fmt: skip
    football, skiing = index.records[1], index.records[2]
    assert (football.label, football.label_name, football.needs_trim) == (2, classes[2], False)
    assert football.extras == {"youtube_id": "-0bRCT_z2iU", "time_start": 84.0, "time_end": 94.0}
    # The `{ytid}.mp4` file gets the annotation window; the writer decides whether to cut it.
    assert (skiing.label, skiing.start_s, skiing.end_s, skiing.source.name) == (
        3,
        12.0,
        22.0,
        "a_b-c_d-e_f.mp4",
    )
    assert index.missing == ["ytmissing01_000005_000015"]
    reasons = {r.id: r.reason for r in index.rejects}
    assert set(reasons) == {"broken_rowx", "bad_times__"}
    assert "4 fields" in reasons["broken_rowx"] and "not numbers" in reasons["bad_times__"]
    assert all(r.source.endswith(("train.csv:6", "train.csv:8")) for r in index.rejects)


def test_kinetics700_validate_split_uses_train_classes(kinetics_root: Path, put: Put) -> None:
    write(
        kinetics_root / "annotations" / "validate.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,val_clip_01,3.0,13.0,validate\n"
        '"not a train class",val_clip_02,3.0,13.0,validate\n'
        '"making crêpes",val_clip_03,0.0,10.0,validate\n',
    )
    put(kinetics_root / "videos" / "validate" / "zumba" / "val_clip_01_000003_000013.mp4")
    for split in ("val", "validate"):
        index = read("kinetics700", kinetics_root, split)
        assert [(r.id, r.label) for r in index.records] == [("val_clip_01_000003_000013", 4)]
        assert index.missing == ["val_clip_03_000000_000010"]
        assert [r.id for r in index.rejects] == ["val_clip_02"]
        assert "not a train class" in index.rejects[0].reason


def test_kinetics_test_csv_without_labels(kinetics_root: Path, put: Put) -> None:
    write(
        kinetics_root / "annotations" / "test.csv",
        "youtube_id,time_start,time_end,split\nT-est_id_01,7,17,test\n",
    )
    put(kinetics_root / "videos" / "test" / "T-est_id_01_000007_000017.mp4")
    index = read("kinetics600", kinetics_root, "test")
    assert [(r.id, r.label, r.label_name) for r in index.records] == [("T-est_id_01_000007_000017", -1, "")]


def test_kinetics_flags_override_the_default_paths(
    kinetics_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("moved")
    (kinetics_root / "annotations" / "train.csv").rename(elsewhere / "k400_train.csv")
    (kinetics_root / "videos" / "train").rename(elsewhere / "clips")
    flags = ["--annotations", str(elsewhere / "k400_train.csv"), "--videos", str(elsewhere / "clips")]
    flags += ["--train-annotations", str(elsewhere / "k400_train.csv")]
    assert len(read("kinetics400", kinetics_root, "train", *flags).records) == 4


def test_kinetics_bad_files_are_one_line_errors(kinetics_root: Path) -> None:
    with pytest.raises(AnnotationError, match=r"val\.csv") as missing:
        read("kinetics400", kinetics_root, "val")
    write(kinetics_root / "annotations" / "val.csv", '{"not": "a csv"}\n')
    with pytest.raises(AnnotationError, match=r"val\.csv: not a Kinetics CSV") as wrong:
        read("kinetics400", kinetics_root, "val")
    write(kinetics_root / "annotations" / "val.csv", b"\xff\xfe\x00binary\x00")
    with pytest.raises(AnnotationError, match=r"val\.csv: cannot read") as binary:
        read("kinetics400", kinetics_root, "val")
    (kinetics_root / "annotations" / "train.csv").unlink()
    with pytest.raises(AnnotationError, match=r"train\.csv") as no_train:
        read("kinetics400", kinetics_root, "val")
    for error in (missing, wrong, binary, no_train):
        assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------- SSv2

SSV2_LABELS = {
    "Holding something next to something": "0",
    "Pushing something from left to right": "1",
    "Putting something into something": "2",
}


@pytest.fixture
def ssv2_root(tmp_path: Path, put: Put) -> Path:
    # The older file names at the root of the download.
    write(tmp_path / "something-something-v2-labels.json", json.dumps(SSV2_LABELS))
    entries = [
        {
            "id": "78687",
            "label": "holding potato next to vicks vaporub bottle",
            "template": "Holding [something] next to [something]",
            "placeholders": ["potato", "vicks vaporub bottle"],
        },
        {
            "id": 42,
            "label": "pushing pen from left to right",
            "template": "Pushing [something] from left to right",
            "placeholders": ["pen"],
        },
        {"label": "an entry without id"},
        {"id": "100", "label": "no template"},
        {"id": "101", "template": "Throwing [something] in the air", "placeholders": ["ball"]},
        {"id": "102", "template": "Putting [something] into [something]", "placeholders": ["a", "b"]},
        {"id": "v1.2", "template": "Putting [something] into [something]", "placeholders": ["c", "d"]},
    ]
    write(tmp_path / "something-something-v2-train.json", json.dumps(entries))
    write(tmp_path / "something-something-v2-test.json", json.dumps([{"id": "5"}, {"id": "6"}]))
    for video_id in ("78687", "42", "v1.2", "5"):
        put(tmp_path / "20bn-something-something-v2" / f"{video_id}.webm")
    return tmp_path


def test_ssv2_train_every_quirk(ssv2_root: Path) -> None:
    index = read("ssv2", ssv2_root, "train")
    assert index.label_map == {
        0: "Holding something next to something",
        1: "Pushing something from left to right",
        2: "Putting something into something",
    }
    assert [(r.id, r.label) for r in index.records] == [("78687", 0), ("42", 1), ("v1_2", 2)]
    first = index.records[0]
    assert first.extras == {"template": "Holding [something] next to [something]",
                            "placeholders": ["potato", "vicks vaporub bottle"],
                            "caption": "holding potato next to vicks vaporub bottle"}  # fmt: skip
    assert index.records[2].source.name == "v1.2.webm"
    assert index.missing == ["102"]
    reasons = {r.id: r.reason for r in index.rejects}
    assert set(reasons) == {"entry-2", "100", "101"}
    assert "'Throwing something in the air' is not in" in reasons["101"] and "template" in reasons["100"]


def test_ssv2_test_split_is_unlabelled(ssv2_root: Path) -> None:
    index = read("ssv2", ssv2_root, "test")
    assert [(r.id, r.label) for r in index.records] == [("5", -1)] and index.missing == ["6"]


def test_ssv2_bad_files_are_one_line_errors(ssv2_root: Path) -> None:
    with pytest.raises(AnnotationError, match=r"validation\.json"):
        read("ssv2", ssv2_root, "val")
    write(ssv2_root / "labels" / "validation.json", '{"id": "1"}')
    with pytest.raises(AnnotationError, match=r"validation\.json: SSv2 val list must be a JSON list"):
        read("ssv2", ssv2_root, "val")
    write(ssv2_root / "labels" / "validation.json", '[{"id": "1",')
    with pytest.raises(AnnotationError, match=r"validation\.json: cannot read"):
        read("ssv2", ssv2_root, "val")
    write(ssv2_root / "labels" / "labels.json", json.dumps({"Holding something": "zero"}))
    with pytest.raises(AnnotationError, match=r"labels\.json: index of template 'Holding something'"):
        read("ssv2", ssv2_root, "train")


# -------------------------------------------------------------------------------------- Diving-48

VOCAB = [
    ["Back", "15som", "05Twis", "FREE"],
    ["Forward", "15som", "NoTwis", "PIKE"],
    ["Inward", "2som", "NoTwis", "TUCK"],
]


def test_diving48_every_quirk(tmp_path: Path, put: Put) -> None:
    write(tmp_path / "Diving48_vocab.json", json.dumps(VOCAB))
    entries = [
        {"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 48},
        {"vid_name": "a_b_00001", "label": 0, "start_frame": 0},
        {"vid_name": "a_b_00002", "label": 7, "start_frame": 0, "end_frame": 10},
        {"vid_name": "a_b_00003", "label": "1", "start_frame": 0, "end_frame": 10},
        {"vid_name": "gone_00004", "label": 2, "start_frame": 0, "end_frame": 10},
    ]
    write(tmp_path / "Diving48_V2_test.json", json.dumps(entries))
    put(tmp_path / "rgb" / "-mmq0PT-u8k_00155.mp4")
    index = read("diving48", tmp_path, "test")
    assert index.label_map == {
        0: "Back+15som+05Twis+FREE",
        1: "Forward+15som+NoTwis+PIKE",
        2: "Inward+2som+NoTwis+TUCK",
    }
    (record,) = index.records
    assert (record.id, record.label, record.label_name) == (
        "-mmq0PT-u8k_00155",
        1,
        "Forward+15som+NoTwis+PIKE",
    )
    assert (
        record.extras == {"start_frame": 0, "end_frame": 48, "expected_frames": 49} and not record.needs_trim
    )
    assert index.missing == ["gone_00004"]
    reasons = {r.id: r.reason for r in index.rejects}
    assert (
        "end_frame" in reasons["a_b_00001"]
        and "label 7" in reasons["a_b_00002"]
        and "label" in reasons["a_b_00003"]
    )
    assert len(read("diving48", tmp_path, "val").records) == 1  # val reads the publisher's test list
    write(tmp_path / "Diving48_vocab.json", json.dumps({"0": "Back"}))
    with pytest.raises(
        AnnotationError, match=r"Diving48_vocab\.json: Diving-48 vocabulary must be a JSON list"
    ):
        read("diving48", tmp_path, "test")


# --------------------------------------------------------------------------------------- FineGym

GYM99_CATEGORIES = (
    "Clabel:   0; set:   1; Glabel:   1; (VT) round-off, flic-flac with 0.5 turn on, "
    "stretched salto forward with 0.5 turn off\n"
    "Clabel:   1; set:  21; Glabel:  10; (FX) switch leap with 1 turn\n"
    "Clabel:   2; set:  31; Glabel:  25; (BB) split jump – ring position\n"
)
GYM288_CATEGORIES = "Clabel:   0; set:   1; Glabel:   1; (FX) switch leap with 1 turn\n"
ANNOTATION = {
    "Xy_E_9-abcd": {  # a youtube id that contains '_E_'
        "E_000010_000040": {
            "event": 2,
            "timestamps": [[10.5, 40.25]],
            "segments": {
                "A_0001_0004": {"stages": 3, "timestamps": [[1.5, 2.0], [2.0, 3.0], [3.0, 4.25]]},
                "A_0006_0008": {"stages": 1, "timestamps": [[6.0, 8.0]]},
            },
        },
        "E_000050_000070": {"event": 4, "timestamps": [[50.0, 70.0]], "segments": None},
    },
    "-a_A_bcd-ef": {  # starts with '-' and contains '_A_'
        "E_000100_000120": {"event": 1, "timestamps": [[100.0, 120.0]],
                            "segments": {"A_0002_0003": {"stages": 1, "timestamps": [[2.0, 3.0]]}}},
    },
    "nofile00000": {
        "E_000001_000009": {"event": 3, "timestamps": [[1.0, 9.0]],
                            "segments": {"A_0001_0002": {"stages": 1, "timestamps": [[1.0, 2.0]]}}},
    },
}  # fmt: skip
GYM99_TRAIN = """Xy_E_9-abcd_E_000010_000040_A_0001_0004 2
-a_A_bcd-ef_E_000100_000120_A_0002_0003 0
Xy_E_9-abcd_E_000050_000070_A_0001_0002 1
Xy_E_9-abcd_E_000010_000040_A_0006_0008 99
Xy_E_9-abcd_E_000010_000040_A_0009_0010 1
nofile00000_E_000001_000009_A_0001_0002 1
garbage line with words

"""


@pytest.fixture
def finegym_root(tmp_path: Path, put: Put) -> Path:
    folder = tmp_path / "annotations"
    write(folder / "finegym_annotation_info_v1.0.json", json.dumps(ANNOTATION))  # only the older version
    write(folder / "gym99_categories.txt", GYM99_CATEGORIES)
    write(folder / "gym288_categories.txt", GYM288_CATEGORIES)
    write(folder / "gym99_train_element_v1.1.txt", GYM99_TRAIN)
    write(folder / "gym288_train_element_v1.1.txt", "Xy_E_9-abcd_E_000010_000040_A_0006_0008 0\n")
    put(tmp_path / "videos" / "Xy_E_9-abcd.mkv")
    put(tmp_path / "videos" / "-a_A_bcd-ef.webm")
    return tmp_path


def test_finegym_every_quirk(finegym_root: Path) -> None:
    index = read("finegym", finegym_root, "train", "--subset", "gym99")
    assert index.label_map[0].startswith("(VT) round-off, flic-flac") and index.label_map[2].endswith(
        "– ring position"
    )
    first, second = index.records
    assert (first.id, first.label, first.source.name) == (
        "Xy_E_9-abcd_E_000010_000040_A_0001_0004",
        2,
        "Xy_E_9-abcd.mkv",
    )
    # Element times are relative to the event start; the window spans the first to the last stage.
    assert (first.start_s, first.end_s) == (12.0, 14.75)
    assert first.extras["event_id"] == "E_000010_000040" and first.extras["event_label"] == 2
    assert first.extras["stages"] == 3 and first.extras["youtube_id"] == "Xy_E_9-abcd"
    assert (second.label, second.start_s, second.end_s, second.source.suffix) == (0, 102.0, 103.0, ".webm")
    assert index.missing == ["nofile00000_E_000001_000009_A_0001_0002"]
    reasons = {r.source.rsplit(":", 1)[1]: r.reason for r in index.rejects}
    assert set(reasons) == {"3", "4", "5", "7"}
    assert "no segments" in reasons["3"] and "label 99" in reasons["4"] and "A_0009_0010" in reasons["5"]
    assert "expected '<element id> <label>'" in reasons["7"]


def test_finegym_subset_picks_its_own_files(finegym_root: Path) -> None:
    index = read("finegym", finegym_root, "train", "--subset", "gym288")
    assert index.label_map == {0: "(FX) switch leap with 1 turn"}
    assert [(r.id, r.label, r.start_s, r.end_s) for r in index.records] == [
        ("Xy_E_9-abcd_E_000010_000040_A_0006_0008", 0, 16.5, 18.5)
    ]


def test_finegym_bad_files_are_one_line_errors(finegym_root: Path) -> None:
    with pytest.raises(AnnotationError, match=r"gym99_val_element\.txt"):
        read("finegym", finegym_root, "val")
    write(finegym_root / "annotations" / "gym99_categories.txt", GYM99_CATEGORIES + "0 round-off\n")
    with pytest.raises(AnnotationError, match=r"gym99_categories\.txt:4: not a FineGym category line"):
        read("finegym", finegym_root, "train")
    write(finegym_root / "annotations" / "finegym_annotation_info_v1.1.json", "[]")
    with pytest.raises(
        AnnotationError, match=r"v1\.1\.json: FineGym temporal annotation must be a JSON dict"
    ):
        read("finegym", finegym_root, "train", "--subset", "gym288")


# ------------------------------------------------------------------------------ on synthetic trees


@pytest.fixture(scope="module")
def synth_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic raw trees (4 clips per split, 3 classes, 1 missing row) of every dataset."""
    base = tmp_path_factory.mktemp("raw")
    for dataset in READERS:
        synth_dataset(dataset, base / dataset, num_videos=4, classes=3, seed=1, frames=6)
    return {dataset: base / dataset for dataset in READERS}


@pytest.mark.parametrize("dataset", ["kinetics400", "kinetics600", "kinetics700"])
def test_synth_kinetics_counts_order_and_classes(synth_trees: dict[str, Path], dataset: str) -> None:
    root = synth_trees[dataset]
    train_csv = root / "annotations" / "train.csv"
    with train_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any("," in row["label"] for row in rows) and any(not row["label"].isascii() for row in rows)
    for split in ("train", "val", "test"):
        index = read(dataset, root, split)
        assert index.label_map == dict(enumerate(sorted({row["label"] for row in rows})))
        assert (len(index.records), len(index.missing), index.rejects) == (4, 1, [])
        if split == "train":  # annotation order is kept
            ids = [r.id for r in index.records] + index.missing
            assert ids == [
                f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
                for r in rows
            ]
            assert [r.label_name for r in index.records] == [row["label"] for row in rows[:4]]
        assert all((r.label == -1) == (split == "test" and dataset != "kinetics400") for r in index.records)
        assert all(r.needs_trim == (dataset == "kinetics600") for r in index.records)


def test_synth_ssv2_diving48_finegym_label_maps(synth_trees: dict[str, Path]) -> None:
    ssv2 = read("ssv2", synth_trees["ssv2"], "val")
    labels = json.loads((synth_trees["ssv2"] / "labels" / "labels.json").read_text(encoding="utf-8"))
    assert ssv2.label_map == {int(i): template for template, i in labels.items()}
    assert all("[" in r.extras["template"] and "[" not in r.label_name for r in ssv2.records)

    diving = read("diving48", synth_trees["diving48"], "train")
    vocab = json.loads((synth_trees["diving48"] / "Diving48_vocab.json").read_text(encoding="utf-8"))
    assert diving.label_map == {i: "+".join(parts) for i, parts in enumerate(vocab)}
    assert {r.extras["expected_frames"] for r in diving.records} == {6}

    for subset in ("gym99", "gym288"):
        gym = read("finegym", synth_trees["finegym"], "val", "--subset", subset)
        categories = (synth_trees["finegym"] / "annotations" / f"{subset}_categories.txt").read_text(
            encoding="utf-8"
        )
        assert gym.label_map == {i: line.split("; ", 3)[3] for i, line in enumerate(categories.splitlines())}
        assert (len(gym.records), len(gym.missing), gym.rejects) == (4, 1, [])
        assert all(0 <= r.start_s < r.end_s <= r.extras["event_end_s"] for r in gym.records)
    gym99 = read("finegym", synth_trees["finegym"], "train", "--subset", "gym99")
    gym288 = read("finegym", synth_trees["finegym"], "train", "--subset", "gym288")
    assert [r.label for r in gym288.records] == [2 - r.label for r in gym99.records]


# The split list of each reader that has one, by its override flag: a second copy of a row is a duplicate.
SPLIT_LISTS = {
    "kinetics400": ("--annotations", "annotations/train.csv"),
    "ssv2": ("--annotations", "labels/train.json"),
    "diving48": ("--annotations", "Diving48_V2_train.json"),
    "finegym": ("--split-list", "annotations/gym99_train_element_v1.1.txt"),
}


@pytest.mark.parametrize("dataset", sorted(SPLIT_LISTS))
def test_a_repeated_row_is_one_duplicate_reject_naming_the_first(
    synth_trees: dict[str, Path], dataset: str, tmp_path: Path
) -> None:
    """The core claims ids for every reader alike: the second row of an id is a reject naming the first
    row's place, and the records, missing ids and other rejects stay as they were."""
    root = synth_trees[dataset]
    flag, relative = SPLIT_LISTS[dataset]
    listed = root / relative
    copy = tmp_path / listed.name
    if listed.suffix == ".json":
        entries = json.loads(listed.read_text(encoding="utf-8"))
        copy.write_text(json.dumps([*entries, entries[0]]), encoding="utf-8")
        first, again = f"{copy}[0]", f"{copy}[{len(entries)}]"
    else:
        lines = listed.read_text(encoding="utf-8").splitlines()
        row = 1 if listed.suffix == ".csv" else 0  # a CSV's first line is its header
        copy.write_text("\n".join([*lines, lines[row]]) + "\n", encoding="utf-8")
        first, again = f"{copy}:{row + 1}", f"{copy}:{len(lines) + 1}"
    plain, repeated = read(dataset, root, "train"), read(dataset, root, "train", flag, str(copy))
    assert [r.id for r in repeated.records] == [r.id for r in plain.records] and repeated.records
    assert repeated.missing == plain.missing
    (duplicate,) = repeated.rejects[len(plain.rejects) :]
    assert (duplicate.source, duplicate.reason) == (again, f"duplicate id (first at {first})")
    assert duplicate.id in {r.id for r in plain.records} | set(plain.missing)
