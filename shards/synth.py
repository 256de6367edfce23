"""Tiny raw datasets in each publisher's layout, with real encoded videos whose motion is the label.

(ImageNet's tree, with JPEGs whose shape is the label, is written by `shards.synth_imagenet`; the small image
sets' (CIFAR pickles, SVHN .mat files, Tiny-ImageNet JPEGs) by `shards.synth_small_images`.)

`python -m shards synth <dataset> --out RAW --num-videos N --classes K` writes annotations and videos
exactly as the publisher ships them (see the dataset readers), so the sharder, the loader and the
training demo run end to end on files that look like the real ones. Every clip shows one shape
moving in one of K directions; colours, start position and background are random, so the class can
only be told from motion. Same seed and options give a byte-identical tree.
"""

from __future__ import annotations

import argparse
import itertools
import re
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, report
from pipeline.io import atomic_open, atomic_write_json, atomic_write_text
from shards.image import encode_jpeg
from shards.synth_imagenet import write_imagenet
from shards.synth_small_images import write_cifar10, write_cifar100, write_svhn, write_tinyimagenet

# Container format per file suffix, and the encoder behind each codec name.
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "mpeg4": "mpeg4"}
WEBM_CODECS = {"vp9"}
AVI_CODECS = {"mpeg4"}
# What XviD and DivX 5 write by default, as in UCF-101's and HMDB-51's AVIs: two B-frames between anchors.
MPEG4_B_FRAMES = 2

# Fraction of the short side the shape travels over a whole clip: 8 frames sampled across the clip
# then see steps of ~9% of the short side (~5 px at 64x48), plenty to learn the direction from.
TRAVEL_FRACTION = 0.75
SHAPE_RADIUS_FRACTION = 0.18


def encode_video(
    frames: np.ndarray,
    path: Path,
    codec: str = "h264",
    fps: float = 25.0,
    gop: int | None = None,
    fourcc: str | None = None,
) -> None:
    """Encode RGB `frames` (T, H, W, 3) uint8 to `path` (.mp4 / .mkv / .webm / .avi), atomically.

    h264 is libx264, vp9 is libvpx-vp9 and mpeg4 FFmpeg's MPEG-4 Part 2 encoder (the codec of XviD and
    DivX, with their two B-frames; .avi only, tagged `fourcc`, e.g. XVID or DX50), all yuv420p at
    constant frame rate, no audio. One encoder thread and bit-exact muxing make equal inputs give equal
    bytes.
    """
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width, _ = frames.shape
    if num_frames == 0 or height % 2 or width % 2:
        raise ValueError(f"{path}: need >= 1 frame and even height/width for yuv420p, got {frames.shape}")
    fmt = CONTAINER_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported video suffix, expected one of {sorted(CONTAINER_FORMATS)}")
    if codec not in ENCODERS:
        raise ValueError(f"{path}: unsupported codec {codec!r}, expected one of {sorted(ENCODERS)}")
    if fmt == "webm" and codec not in WEBM_CODECS:
        raise ValueError(f"{path}: codec {codec!r} cannot be stored in .webm (use vp9)")
    if (fmt == "avi") != (codec in AVI_CODECS):
        raise ValueError(f"{path}: .avi holds mpeg4 here, and mpeg4 goes in .avi (got {codec!r})")

    rate = Fraction(fps).limit_denominator(1001)
    options = {"threads": "1"}
    if codec == "h264":
        # A fixed preset, no scene-cut heuristics and no rate-control lookahead: with lookahead
        # (mb-tree) this libx264 build gave different bytes for equal frames on a few clips.
        # cpu-independent: the same bytes whatever SIMD the CPU has (AVX-512 paths differ otherwise).
        params = "scenecut=0:rc-lookahead=0:cpu-independent=1"
        options.update({"preset": "veryfast", "crf": "23", "x264-params": params})
    elif codec == "vp9":
        options.update({"deadline": "good", "cpu-used": "8", "row-mt": "0", "crf": "32", "b": "0"})
    # bitexact keeps the muxers from writing random segment ids and creation dates.
    with (
        atomic_open(path) as file,
        av.open(file, mode="w", format=fmt, options={"fflags": "+bitexact"}) as container,
    ):
        stream = container.add_stream(ENCODERS[codec], rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "mpeg4":
            stream.codec_context.max_b_frames = MPEG4_B_FRAMES
            if fourcc is not None:
                stream.codec_context.codec_tag = fourcc
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def motion_clip(
    label: int, num_classes: int, num_frames: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A (T, H, W, 3) uint8 clip of a disc moving in direction 2*pi*label/num_classes.

    Directions are in image axes (x to the right, y downwards). The disc starts anywhere and wraps
    around the frame edges (a torus), so its position in any single frame is uniform whatever the
    class: colours, position and the noisy background carry no label, only the motion does.
    """
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    angle = 2.0 * np.pi * label / num_classes
    travel = TRAVEL_FRACTION * min(height, width)
    step = travel / max(num_frames - 1, 1)
    start = rng.uniform(0.0, [width, height])
    radius = SHAPE_RADIUS_FRACTION * min(height, width)
    background_rgb = rng.uniform(0, 255, size=3)
    # Random colours, but always >= 88 levels apart in every channel so the shape stays visible.
    shape_rgb = (background_rgb + rng.uniform(88, 168, size=3)) % 256
    texture = rng.normal(0.0, 18.0, size=(height, width, 1))  # static background noise

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        cx = start[0] + t * step * np.cos(angle)
        cy = start[1] + t * step * np.sin(angle)
        # Signed offsets on the torus: the shortest way round in each axis.
        dx = (xs - cx + width / 2) % width - width / 2
        dy = (ys - cy + height / 2) % height - height / 2
        # Soft 1-pixel edge so sub-pixel motion is visible, not quantised to whole pixels.
        coverage = np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)[..., None]
        flicker = rng.normal(0.0, 3.0, size=(height, width, 1))  # a little sensor noise per frame
        image = background_rgb + texture + flicker
        image = image * (1.0 - coverage) + shape_rgb * coverage
        clip[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return clip


# ---------------------------------------------------------------------------------------------
# Raw trees in each publisher's layout.

PUBLISHER_SPLITS = {
    "kinetics400": ("train", "val", "test"),
    "kinetics600": ("train", "val", "test"),
    "kinetics700": ("train", "val", "test"),
    "ssv1": ("train", "val", "test"),
    "ssv2": ("train", "val", "test"),
    "diving48": ("train", "test"),
    "finegym": ("train", "val"),
    "imagenet": ("train", "val"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "svhn": ("train", "test"),
    "tinyimagenet": ("train", "val", "test"),
    "ucf101": ("train", "test"),
    "hmdb51": ("train", "test"),
}
IMAGE_DATASETS = ("imagenet", "cifar10", "cifar100", "svhn", "tinyimagenet")
DEFAULT_FPS = {"ssv1": 12.0, "ssv2": 12.0, "finegym": 10.0, "ucf101": 25.0, "hmdb51": 30.0}  # others: 15 fps
# 4:3 (UCF-101 is 320x240, HMDB-51 240 px high, mostly 4:3); others: 16:9
ASPECT = {"kinetics400": 4 / 3, "kinetics600": 4 / 3, "kinetics700": 4 / 3, "ucf101": 4 / 3, "hmdb51": 4 / 3}
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Class-name pools: the first entries carry the quirks (spaces, a comma, non-ASCII) so that even a
# three-class tree exercises the readers' quoting and encoding.
KINETICS_NAMES = (
    "passing American football (in game)",
    "skiing, cross-country",
    "making crêpes",
    "abseiling",
    "playing guitar",
    "tying bow tie",
    "jumping into pool",
    "riding mule",
    "petting cat",
    "zumba",
)
SSV2_TEMPLATES = (
    "Holding [something] next to [something]",
    "Pushing [something] from left to right",
    "Putting [something] into [something]",
    "Moving [something] up",
    "Moving [something] down",
    "Pretending to pick [something] up",
    "Turning [something] upside down",
    "Showing [something] behind [something]",
    "Spinning [something] that quickly stops spinning",
    "Pushing [something] from right to left",
)
# SSv1's class names as its labels file writes them (commas, an apostrophe), not in sorted order.
SSV1_NAMES = (
    "Putting something, something and something on the table",
    "Pushing something so that it almost falls off but doesn't",
    "Pretending to put something behind something",
    "Moving something and something so they pass each other",
    "Holding something",
    "Tearing something just a little bit",
    "Dropping something into something",
    "Letting something roll along a flat surface",
)
SSV2_OBJECTS = ("potato", "vicks vaporub bottle", "crème brûlée", "pen", "a cup", "remote control")
DIVING_PARTS = (
    ("Back", "Forward", "Reverse", "Inward", "Armstand"),
    ("05som", "1som", "15som", "2som", "25som", "3som", "35som"),
    ("NoTwis", "05Twis", "1Twis", "15Twis", "2Twis", "25Twis"),
    ("TUCK", "PIKE", "FREE", "STR"),
)
GYM_ELEMENTS = (
    "(VT) round-off, flic-flac with 0.5 turn on, stretched salto forward with 0.5 turn off",
    "(FX) switch leap with 1 turn",
    "(BB) salto backward tucked",
    "(UB) giant circle backward with 1 turn",
    "(VT) Tsukahara – stretched",
    "(BB) split leap forward",
    "(UB) clear hip circle to handstand",
    "(VT) handspring forward on, salto forward piked off",
)
GYM_EVENTS = {"VT": 1, "FX": 2, "BB": 3, "UB": 4}
# UCF-101: the folder HandstandPushups whose files say HandStandPushups; Hammering / HammerThrow and
# JumpingJack / JumpRope, which classInd orders ignoring case.
UCF_CLASSES = (
    "HandstandPushups",
    "Hammering",
    "HammerThrow",
    "ApplyEyeMakeup",
    "JumpingJack",
    "JumpRope",
    "Basketball",
    "BasketballDunk",
    "YoYo",
    "PlayingDaf",
)
UCF_FILE_CLASS = {"HandstandPushups": "HandStandPushups"}
UCF_FOLD_GROUPS = 7  # fold k tests on groups 7(k-1)+1 .. 7k and trains on the others (of 25)
UCF_GROUPS = 25
HMDB_CLASSES = (
    "brush_hair",
    "draw_sword",
    "sword",
    "sword_exercise",
    "sit",
    "situp",
    "climb_stairs",
    "cartwheel",
    "walk",
    "shoot_bow",
)
# Film titles of HMDB-51's file names, with the characters the real ones hold.
HMDB_SOURCES = (
    "#122_Cleaning_Up_The_Beach_In_Chiba_Japan",
    "AMADEUS",
    "Veoh_Alpha_Dog_1",
    "Tom_&_Jerry_(1940)",
    "Yes!_We_Can't_Stop",
    "Dance_Battle_[HD]",
)
HMDB_TAGS = ("f_nm_np1_fr_bad", "h_cm_np1_le_goo", "u_nm_np2_ri_med", "f_cm_np1_ba_med")
HMDB_SPLIT_FOLDER = "testTrainMulti_7030_splits"
SPLIT_CODES = {"train": 1, "test": 2}  # HMDB-51's split files; 0: unused in that fold


def class_names(pool: tuple[str, ...], classes: int) -> list[str]:
    """The first `classes` names of `pool`, numbered extras when the pool is too short."""
    return [pool[i] if i < len(pool) else f"{pool[i % len(pool)]} {i // len(pool)}" for i in range(classes)]


class RawTree:
    """Writes one synthetic dataset: random streams per split, videos, and counters."""

    def __init__(
        self, dataset: str, out: Path, classes: int, seed: int, frames: int, height: int, fps: float
    ) -> None:
        self.dataset, self.out, self.classes, self.seed = dataset, out, classes, seed
        self.frames, self.height, self.fps = frames, height, fps
        # Even width for yuv420p, at the publisher's aspect ratio.
        self.width = 2 * round(height * ASPECT.get(dataset, 16 / 9) / 2)
        self.videos_written = 0

    def rng(self, split: str) -> np.random.Generator:
        """The random stream of one split: independent of which other splits are generated."""
        return np.random.default_rng([self.seed, zlib.crc32(f"{self.dataset}/{split}".encode())])

    def labels(self, rng: np.random.Generator, count: int) -> list[int]:
        """`count` labels cycling through every class, in a random order."""
        return [int(x) for x in rng.permutation(np.arange(count) % self.classes)]

    def clip(self, rng: np.random.Generator, label: int) -> np.ndarray:
        """One labelled motion clip at the tree's size."""
        return motion_clip(label, self.classes, self.frames, self.height, self.width, rng)

    def video(
        self, relative: str, frames: np.ndarray, codec: str = "h264", fourcc: str | None = None
    ) -> None:
        """Encode `frames` to OUT/`relative` with a short GOP."""
        encode_video(frames, self.out / relative, codec=codec, fps=self.fps, gop=16, fourcc=fourcc)
        self.videos_written += 1


def youtube_ids(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct 11-character YouTube-style ids; the first starts with '-' and has a '_'."""
    ids: list[str] = []
    while len(ids) < count:
        chars = rng.choice(list(ID_ALPHABET), size=11)
        if not ids:
            chars[0], chars[5] = "-", "_"
        if "".join(chars) not in ids:
            ids.append("".join(chars))
    return ids


def _quoted(value: str) -> str:
    # The publisher quotes labels with spaces too, not only those the csv module would quote.
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ' ,"') else value


def _kinetics(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """K400: int times, label folders with '_', clip names; K600: whole `{ytid}.mp4` files, flat;
    K700: no is_cc, `validate`, float times, label folders with spaces, clip names."""
    variant = tree.dataset
    names = sorted(class_names(KINETICS_NAMES, tree.classes))
    for split in splits:
        rng = tree.rng(split)
        csv_split = "validate" if variant == "kinetics700" and split == "val" else split
        labelled = split != "test" or variant == "kinetics400"
        columns = (["label"] if labelled else []) + ["youtube_id", "time_start", "time_end", "split"]
        columns += [] if variant == "kinetics700" else ["is_cc"]
        lines = [",".join(columns)]
        labels = tree.labels(rng, count + missing)
        for row, (ytid, label) in enumerate(zip(youtube_ids(rng, count + missing), labels, strict=True)):
            clip = tree.clip(rng, label)
            if variant == "kinetics600":
                # A mirror's whole video: >= 1 s of still lead-in, the action, a still tail; the CSV
                # window covers the action in whole seconds as the publisher's do.
                lead = int(np.ceil(tree.fps))
                window = int(np.ceil((lead + len(clip)) / tree.fps)) - 1
                tail = int(np.ceil((window + 2) * tree.fps)) - lead - len(clip)
                frames = np.concatenate([clip[:1].repeat(lead, 0), clip, clip[-1:].repeat(tail, 0)])
                start, end, relative = 1, 1 + window, f"videos/{split}/{ytid}.mp4"
            else:
                start = int(rng.integers(0, 300))
                end, frames = start + 10, clip
                folder = names[label].replace(" ", "_") if variant == "kinetics400" else names[label]
                relative = f"videos/{split}/{folder}/{ytid}_{start:06d}_{end:06d}.mp4"
            times = [str(start), str(end)] if variant == "kinetics400" else [f"{start:.1f}", f"{end:.1f}"]
            fields = ([_quoted(names[label])] if labelled else []) + [ytid, *times, csv_split]
            lines.append(",".join(fields + ([] if variant == "kinetics700" else ["0"])))
            if row < count:  # the last `missing` rows are deleted videos
                tree.video(relative, frames)
        atomic_write_text(tree.out / "annotations" / f"{csv_split}.csv", "\n".join(lines) + "\n")


def _ssv2(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """labels.json (string indexes, no brackets), split JSON lists, VP9 `{id}.webm`."""
    templates = sorted(class_names(SSV2_TEMPLATES, tree.classes), key=lambda t: t.replace("[", ""))
    plain = [t.replace("[", "").replace("]", "") for t in templates]
    atomic_write_json(tree.out / "labels" / "labels.json", {p: str(i) for i, p in enumerate(plain)})
    files = {"train": "train", "val": "validation", "test": "test"}
    for split in splits:
        rng = tree.rng(split)
        ids = [str(x) for x in rng.choice(np.arange(1, 220_000), size=count + missing, replace=False)]
        entries: list[dict] = []
        for row, (video_id, label) in enumerate(zip(ids, tree.labels(rng, count + missing), strict=True)):
            template = templates[label]
            objects = [str(rng.choice(SSV2_OBJECTS)) for _ in range(template.count("["))]
            caption = template
            for name in objects:
                caption = re.sub(r"\[[^]]*\]", name, caption, count=1)
            if split == "test":
                entries.append({"id": video_id})
            else:
                entries.append(
                    {"id": video_id, "label": caption.lower(), "template": template, "placeholders": objects}
                )
            if row < count:
                tree.video(f"20bn-something-something-v2/{video_id}.webm", tree.clip(rng, label), codec="vp9")
        atomic_write_json(tree.out / "labels" / f"{files[split]}.json", entries)


def _ssv1(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """The labels file (one class name per line, unsorted), `id;label` split lists (test: ids only) and a
    folder of JPEG frames `00001.jpg ...` per video; every third video is 4:3 instead of 16:9, as SSv1's
    sizes vary. The motion encodes the class index, i.e. the position of the name in sorted order."""
    names = class_names(SSV1_NAMES, tree.classes)
    atomic_write_text(tree.out / "something-something-v1-labels.csv", "".join(f"{name}\n" for name in names))
    by_index = sorted(names)
    files = {"train": "train", "val": "validation", "test": "test"}
    for split in splits:
        rng = tree.rng(split)
        ids = [str(x) for x in rng.choice(np.arange(1, 108_500), size=count + missing, replace=False)]
        lines = []
        for row, (video_id, label) in enumerate(zip(ids, tree.labels(rng, count + missing), strict=True)):
            lines.append(video_id if split == "test" else f"{video_id};{by_index[label]}")
            if row >= count:
                continue
            width = tree.width if row % 3 else 2 * round(tree.height * 2 / 3)
            clip = motion_clip(label, tree.classes, tree.frames, tree.height, width, rng)
            for number, frame in enumerate(clip, start=1):
                path = tree.out / "20bn-something-something-v1" / video_id / f"{number:05d}.jpg"
                with atomic_open(path) as file:
                    file.write(encode_jpeg(Image.fromarray(frame), (width, tree.height)))
            tree.videos_written += 1
        text = "".join(f"{line}\n" for line in lines)
        atomic_write_text(tree.out / f"something-something-v1-{files[split]}.csv", text)


def _diving48(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """Diving48_vocab.json, Diving48_V2_{train,test}.json, `rgb/{vid_name}.mp4` clips."""
    combos = list(itertools.product(*DIVING_PARTS))
    if tree.classes > len(combos):
        raise ValueError(f"diving48 synth supports at most {len(combos)} classes")
    # Spread the classes over the product so that takeoffs and somersaults vary too.
    vocab = [list(combos[i * (len(combos) // tree.classes)]) for i in range(tree.classes)]
    atomic_write_json(tree.out / "Diving48_vocab.json", vocab)
    for split in splits:
        rng = tree.rng(split)
        entries = []
        ytids = youtube_ids(rng, count + missing)
        for row, (ytid, label) in enumerate(zip(ytids, tree.labels(rng, count + missing), strict=True)):
            vid_name = f"{ytid}_{int(rng.integers(0, 100_000)):05d}"
            entries.append(
                {"vid_name": vid_name, "label": label, "start_frame": 0, "end_frame": tree.frames - 1}
            )
            if row < count:
                tree.video(f"rgb/{vid_name}.mp4", tree.clip(rng, label))
        atomic_write_json(tree.out / f"Diving48_V2_{split}.json", entries)


def _gym_video(
    tree: RawTree, rng: np.random.Generator, ytid: str, event_labels: list[list[int]]
) -> tuple[np.ndarray, dict[str, dict], list[tuple[str, int]]]:
    """One whole video: per event, its sub-actions (motion clips) between still gaps; an event
    without labels is a still shape with `segments: null`. Returns frames, the video's entry of
    the temporal annotation, and (element id, class) per sub-action.
    """
    fps = tree.fps
    # Every sub-action slot lasts >= 1 s so the integer-second ids of events and actions are unique.
    gap = max(1, round(0.3 * fps), int(np.ceil(fps)) - tree.frames)
    pieces = [tree.clip(rng, 0)[:1].repeat(gap, 0)]
    position = gap
    events: dict[str, dict] = {}
    elements: list[tuple[str, int]] = []
    for event_number, labels in enumerate(event_labels):
        event_start = position
        actions = []
        for label in labels:
            clip = tree.clip(rng, label)
            pieces += [clip[:1].repeat(gap, 0), clip]
            actions.append((label, position + gap - event_start, position + gap + len(clip) - event_start))
            position += gap + len(clip)
        if not labels:
            pieces.append(tree.clip(rng, 0)[:1].repeat(tree.frames + gap, 0))
            position += tree.frames + gap
        pieces.append(pieces[-1][-1:].repeat(gap, 0))
        position += gap
        start_s, end_s = event_start / fps, position / fps
        event_id = f"E_{int(start_s):06d}_{int(np.ceil(end_s)):06d}"
        segments = {}
        for label, first, last in actions:
            # Segment times are relative to the event start, cut into 1 or 3 stages.
            cuts = np.linspace(first / fps, last / fps, int(rng.choice([1, 3])) + 1)
            action_id = f"A_{int(cuts[0]):04d}_{int(np.ceil(cuts[-1])):04d}"
            stamps = [[round(float(a), 3), round(float(b), 3)] for a, b in itertools.pairwise(cuts)]
            segments[action_id] = {"stages": len(stamps), "timestamps": stamps}
            elements.append((f"{ytid}_{event_id}_{action_id}", label))
        events[event_id] = {
            "event": 1 + event_number % 4,
            "timestamps": [[round(start_s, 3), round(end_s, 3)]],
            "segments": segments or None,
        }
    return np.concatenate(pieces), events, elements


def _finegym(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """Annotation JSON, Gym99/Gym288 split lists and categories, whole videos (mp4/mkv/webm).

    Each whole video holds two events of up to two sub-actions each (the motion encodes the Gym99
    Clabel) and one event without element annotations. Gym288 numbers the same elements in
    reverse, so a reader that mixes up the subsets gives wrong labels. The `missing` elements
    belong to one more video that is annotated but not written.
    """
    elements = class_names(GYM_ELEMENTS, tree.classes)
    subsets = {"gym99": list(range(tree.classes)), "gym288": list(range(tree.classes))[::-1]}
    for subset, numbers in subsets.items():
        lines = [
            f"Clabel: {clabel:3d}; set: {GYM_EVENTS[name[1:3]] * 10:3d}; Glabel: {clabel + 1:3d}; {name}"
            for clabel, name in sorted(zip(numbers, elements, strict=True))
        ]
        atomic_write_text(tree.out / "annotations" / f"{subset}_categories.txt", "\n".join(lines) + "\n")

    annotation: dict[str, dict] = {}
    for split in splits:
        rng = tree.rng(split)
        labels = tree.labels(rng, count + missing)
        groups = [labels[i : min(i + 4, count)] for i in range(0, count, 4)]
        if missing:
            groups.append(labels[count:])
        element_lines: list[tuple[str, int]] = []
        for number, (ytid, group) in enumerate(zip(youtube_ids(rng, len(groups)), groups, strict=True)):
            half = (len(group) + 1) // 2
            frames, annotation[ytid], video_elements = _gym_video(
                tree, rng, ytid, [group[:half], group[half:], []]
            )
            element_lines += video_elements
            if number * 4 < count:
                # Rotate the containers across splits too, so every split mixes them.
                offset = number + PUBLISHER_SPLITS["finegym"].index(split)
                container, codec = [(".mp4", "h264"), (".mkv", "h264"), (".webm", "vp9")][offset % 3]
                tree.video(f"videos/{ytid}{container}", frames, codec=codec)
        list_name = {"train": "train_element_v1.1", "val": "val_element"}[split]
        for subset, numbers in subsets.items():
            text = "".join(f"{element_id} {numbers[label]}\n" for element_id, label in element_lines)
            atomic_write_text(tree.out / "annotations" / f"{subset}_{list_name}.txt", text)
    atomic_write_json(tree.out / "annotations" / "finegym_annotation_info_v1.1.json", annotation)


def _crlf(lines: list[str]) -> str:
    """The publisher's list files: Windows line endings, and a blank line at the end."""
    return "".join(f"{line}\r\n" for line in [*lines, ""])


def _ucf101(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """`UCF-101/<Class>/v_<Class>_gXX_cYY.avi` (MPEG-4 Part 2, XVID), classInd.txt and the three folds'
    train / test lists. Fold 1 puts the test clips in groups 1-7 and the train clips in 8-25, so it
    holds `count` + `missing` rows per split; folds 2 and 3 split the same clips by their own groups."""
    names = sorted(class_names(UCF_CLASSES, tree.classes), key=str.casefold)
    names = [name.replace(" ", "") for name in names]  # numbered extras: UCF names have no spaces
    lists = tree.out / "ucfTrainTestlist"
    atomic_write_text(lists / "classInd.txt", _crlf([f"{i + 1} {name}" for i, name in enumerate(names)]))
    clips: list[tuple[str, int, int]] = []  # (listed path, label, group)
    for split in splits:
        rng = tree.rng(split)
        first_group, groups = (1, UCF_FOLD_GROUPS) if split == "test" else (8, UCF_GROUPS - UCF_FOLD_GROUPS)
        seen = [0] * tree.classes  # clips of each class so far: the next group, then the next clip
        for row, label in enumerate(tree.labels(rng, count + missing)):
            group, clip_number = first_group + seen[label] % groups, 1 + seen[label] // groups
            seen[label] += 1
            stem = UCF_FILE_CLASS.get(names[label], names[label])
            relative = f"{names[label]}/v_{stem}_g{group:02d}_c{clip_number:02d}.avi"
            clips.append((label, relative, group))
            if row < count:
                tree.video(f"UCF-101/{relative}", tree.clip(rng, label), codec="mpeg4", fourcc="XVID")
    for fold in (1, 2, 3):
        test_groups = range(UCF_FOLD_GROUPS * (fold - 1) + 1, UCF_FOLD_GROUPS * fold + 1)
        # In classInd's order, as the publisher's lists are.
        train = [f"{path} {label + 1}" for label, path, group in sorted(clips) if group not in test_groups]
        test = [path for _, path, group in sorted(clips) if group in test_groups]
        atomic_write_text(lists / f"trainlist{fold:02d}.txt", _crlf(train))
        atomic_write_text(lists / f"testlist{fold:02d}.txt", _crlf(test))


def _hmdb51(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """`<class>/<name>.avi` (MPEG-4 Part 2, DX50) as the rar unpacks, and
    `testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt` with `<name>.avi <0|1|2>` lines. Fold 1
    marks the split's clips 1 (train) or 2 (test); folds 2 and 3 give every third clip 0 (unused) and
    swap train and test on another third."""
    names = sorted(class_names(HMDB_CLASSES, tree.classes))
    names = [name.replace(" ", "_") for name in names]
    codes: dict[str, list[tuple[str, list[int]]]] = {name: [] for name in names}  # name -> (file, folds)
    for split in splits:
        rng = tree.rng(split)
        for row, label in enumerate(tree.labels(rng, count + missing)):
            source = HMDB_SOURCES[row % len(HMDB_SOURCES)]
            tag = HMDB_TAGS[int(rng.integers(len(HMDB_TAGS)))]
            file_name = f"{source}_{names[label]}_{tag}_{len(codes[names[label]])}.avi"
            own = SPLIT_CODES[split]
            other = 3 - own
            codes[names[label]].append((file_name, [own, [0, other, own][row % 3], [own, 0, other][row % 3]]))
            if row < count:
                tree.video(f"{names[label]}/{file_name}", tree.clip(rng, label), codec="mpeg4", fourcc="DX50")
    for name, entries in codes.items():
        for fold in (1, 2, 3):
            lines = [f"{file_name} {folds[fold - 1]} " for file_name, folds in sorted(entries)]
            atomic_write_text(tree.out / HMDB_SPLIT_FOLDER / f"{name}_test_split{fold}.txt", _crlf(lines))


WRITERS = {
    "kinetics400": _kinetics,
    "kinetics600": _kinetics,
    "kinetics700": _kinetics,
    "ssv1": _ssv1,
    "ssv2": _ssv2,
    "diving48": _diving48,
    "finegym": _finegym,
    "imagenet": write_imagenet,
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "tinyimagenet": write_tinyimagenet,
    "ucf101": _ucf101,
    "hmdb51": _hmdb51,
}


def synth_dataset(
    dataset: str,
    out: Path,
    num_videos: int,
    classes: int,
    seed: int = 0,
    frames: int = 24,
    height: int = 48,
    fps: float | None = None,
    missing: int = 1,
    splits: tuple[str, ...] | None = None,
) -> int:
    """Write a raw `dataset` tree under `out` in its publisher's layout; returns the files written.

    Every split gets `num_videos` clips (labels cycle through all `classes`) plus `missing`
    annotated rows whose video does not exist. `out` must be new or empty, so that the same
    options always give the same tree, byte for byte.
    """
    if dataset not in WRITERS:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {', '.join(WRITERS)}")
    chosen = PUBLISHER_SPLITS[dataset] if splits is None else tuple(splits)
    unknown = [s for s in chosen if s not in PUBLISHER_SPLITS[dataset]]
    if unknown:
        raise ValueError(
            f"{dataset} has no split {unknown[0]!r} (publisher splits: {PUBLISHER_SPLITS[dataset]})"
        )
    if classes < 2 or num_videos < classes or missing < 0:
        raise ValueError(
            f"need classes >= 2, num_videos >= classes and missing >= 0, got "
            f"classes={classes} num_videos={num_videos} missing={missing}"
        )
    if frames < 2 or height < 16 or height % 2:
        raise ValueError(f"need frames >= 2 and an even height >= 16, got frames={frames} height={height}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    tree = RawTree(dataset, out, classes, seed, frames, height, fps or DEFAULT_FPS.get(dataset, 15.0))
    WRITERS[dataset](tree, chosen, num_videos, missing)
    return tree.videos_written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m shards synth`."""
    parser.add_argument("dataset", choices=sorted(WRITERS), help="publisher layout to imitate")
    parser.add_argument("--out", type=Path, required=True, help="raw root to create (new or empty)")
    parser.add_argument("--num-videos", type=int, default=8, help="clips (or images) per split (default 8)")
    parser.add_argument("--classes", type=int, default=4, help="number of classes = motion directions")
    parser.add_argument("--seed", type=int, default=0, help="same seed and options give the same bytes")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    parser.add_argument("--height", type=int, default=48, help="frame height in pixels, even (default 48)")
    parser.add_argument(
        "--fps", type=float, default=None, help="frame rate (default: ssv2 12, finegym 10, else 15)"
    )
    parser.add_argument("--missing", type=int, default=1, help="annotated rows per split without a video")
    parser.add_argument(
        "--splits",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help="comma-separated subset of the publisher's splits (default: all)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `python -m shards synth`: 0 on success, 2 with one error line otherwise."""
    try:
        written = synth_dataset(
            args.dataset,
            args.out,
            args.num_videos,
            args.classes,
            args.seed,
            frames=args.frames,
            height=args.height,
            fps=args.fps,
            missing=args.missing,
            splits=args.splits,
        )
    except ValueError as err:
        return report(ConfigError(str(err)), prog="shards synth")
    kind = "images" if args.dataset in IMAGE_DATASETS else "videos"
    print(f"wrote {written} {kind} of a synthetic {args.dataset} tree to {args.out}")
    return 0
