"""Tiny CIFAR-10, CIFAR-100, SVHN and Tiny-ImageNet trees for `python -m shards synth`, as published.

CIFAR: real pickles as the python-version tarballs hold them (protocol 2 as Python 2 wrote it, bytes
keys, `Python2Pickler`) of uint8 N x 3072 channel-planar rows with their labels and file names; the train
split is spread over the five `data_batch_*` of CIFAR-10. SVHN: real MATLAB files (scipy's savemat) with
X 32 x 32 x 3 x N and y N x 1, the digit 0 labelled 10. Tiny-ImageNet: real 64 x 64 JPEGs (one train
image greyscale, as a few real ones are), wnids.txt unsorted, words.txt listing more synsets than the
200, val_annotations.txt with boxes, and `missing` annotated val images without their file. Every image
shows a square in its class's hue on a noisy grey background (`hue_square`), so the class is learnable.
Same seed and options give the same bytes (the MATLAB header's creation time is fixed).
"""

from __future__ import annotations

import colorsys
import io
import pickle
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.io import atomic_open, atomic_write_text
from shards.synth_imagenet import save_jpeg

if TYPE_CHECKING:
    from shards.synth import RawTree

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_COARSE = 20
CIFAR100_FINE = 100
SIDE = 32
TINY_SIDE = 64
# savemat writes the creation time into the header's text: a fixed text keeps the bytes reproducible.
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by shards synth".ljust(116, b" ")


def hue_square(label: int, classes: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 (side, side, 3) image: a square of random size and place in class `label`'s hue (spread
    around the colour wheel) on a noisy, nearly grey background."""
    background = rng.integers(40, 216) + rng.integers(-16, 17, 3)
    pixels = np.clip(background + rng.normal(0, 10, (side, side, 1)), 0, 255)
    size = int(rng.integers(side // 3, side * 3 // 4))
    top, left = (int(v) for v in rng.integers(0, side - size + 1, 2))
    rgb = colorsys.hsv_to_rgb(label / classes, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    pixels[top : top + size, left : left + size] = [255 * c for c in rgb]
    return pixels.astype(np.uint8)


def check_classes(tree: RawTree, at_most: int) -> None:
    """A dataset with a fixed label set takes at most its classes."""
    if tree.classes > at_most:
        raise ValueError(f"{tree.dataset} has {at_most} classes, asked for {tree.classes}")


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote CIFAR's batches: strings (bytes, and the few texts numpy's
    reduction names) as 8-bit strings (SHORT_BINSTRING / BINSTRING, where Python 3 writes `_codecs.encode`
    calls), numpy's functions under `numpy.core` (NumPy 2 calls it `numpy._core`). The pure-Python pickler
    is the one whose opcodes can be chosen per type."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_8bit(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    def save_text(self, obj: str) -> None:
        self.save_8bit(obj.encode("latin-1"))

    dispatch[bytes] = save_8bit
    dispatch[str] = save_text

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("numpy._core"):
            super().save_global(obj, name)
            return
        python2_module = "numpy.core" + module.removeprefix("numpy._core")
        self.write(pickle.GLOBAL + f"{python2_module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_pickle(tree: RawTree, relative: str, data: dict[bytes, Any]) -> None:
    """`data` pickled as the python-version tarballs hold it (`Python2Pickler`) under the tree."""
    with atomic_open(tree.out / relative) as file:
        Python2Pickler(file, protocol=2).dump(data)


def cifar_batch(
    tree: RawTree, labels: list[int], first: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[bytes]]:
    """The `data` rows (N x 3072, channel-planar) and file names of the images of `labels`."""
    rows = np.zeros((len(labels), 3 * SIDE * SIDE), np.uint8)
    for row, label in enumerate(labels):
        rows[row] = hue_square(label, tree.classes, SIDE, rng).transpose(2, 0, 1).reshape(-1)
    tree.videos_written += len(labels)
    return rows, [f"synthetic_s_{first + i:06d}.png".encode() for i in range(len(labels))]


def write_cifar10(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """cifar-10-batches-py/: batches.meta, data_batch_1..5 (the train images in five parts), test_batch."""
    check_classes(tree, len(CIFAR10_NAMES))
    folder = "cifar-10-batches-py"
    meta = {
        b"num_cases_per_batch": -(-count // 5),
        b"label_names": [name.encode() for name in CIFAR10_NAMES],
        b"num_vis": 3 * SIDE * SIDE,
    }
    write_pickle(tree, f"{folder}/batches.meta", meta)
    for split in splits:
        rng = tree.rng(split)
        labels = tree.labels(rng, count)
        parts = np.array_split(np.arange(count), 5) if split == "train" else [np.arange(count)]
        for number, part in enumerate(parts, start=1):
            data, filenames = cifar_batch(
                tree, [labels[i] for i in part], int(part[0]) if len(part) else 0, rng
            )
            name = f"data_batch_{number}" if split == "train" else "test_batch"
            batch_label = f"training batch {number} of 5" if split == "train" else "testing batch 1 of 1"
            batch = {b"batch_label": batch_label.encode(), b"labels": [labels[i] for i in part]}
            write_pickle(tree, f"{folder}/{name}", {**batch, b"data": data, b"filenames": filenames})


def cifar100_coarse(tree: RawTree) -> list[int]:
    """The superclass of each of the 100 classes: 5 classes each, in a random (seeded) assignment."""
    order = tree.rng("classes").permutation(CIFAR100_FINE)
    return [int(position) // (CIFAR100_FINE // CIFAR100_COARSE) for position in np.argsort(order)]


def write_cifar100(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """cifar-100-python/: meta (fine and coarse names), train, test."""
    check_classes(tree, CIFAR100_FINE)
    folder = "cifar-100-python"
    meta = {
        b"fine_label_names": [f"class_{i:02d}".encode() for i in range(CIFAR100_FINE)],
        b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(CIFAR100_COARSE)],
    }
    write_pickle(tree, f"{folder}/meta", meta)
    coarse = cifar100_coarse(tree)
    for split in splits:
        rng = tree.rng(split)
        fine = tree.labels(rng, count)
        data, filenames = cifar_batch(tree, fine, 0, rng)
        batch = {
            b"filenames": filenames,
            b"batch_label": {"train": b"training batch 1 of 1", "test": b"testing batch 1 of 1"}[split],
            b"fine_labels": fine,
            b"coarse_labels": [coarse[label] for label in fine],
            b"data": data,
        }
        write_pickle(tree, f"{folder}/{split}", batch)


def write_mat(tree: RawTree, relative: str, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB 5 file (scipy's savemat) with a fixed header text."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, variables)
    with atomic_open(tree.out / relative) as file:
        file.write(MAT_HEADER + buffer.getvalue()[len(MAT_HEADER) :])


def svhn_arrays(tree: RawTree, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """X (32, 32, 3, count) and y (count, 1) of an SVHN file; the digit 0 is labelled 10."""
    digits = tree.labels(rng, count)
    images = np.stack([hue_square(d, tree.classes, SIDE, rng) for d in digits], axis=-1)
    labels = np.array([[10 if d == 0 else d] for d in digits], np.uint8)
    tree.videos_written += count
    return {"X": images, "y": labels}


def write_svhn(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """train_32x32.mat, test_32x32.mat (the optional extra_32x32.mat has the same form)."""
    check_classes(tree, 10)
    for split in splits:
        write_mat(tree, f"{split}_32x32.mat", svhn_arrays(tree, count, tree.rng(split)))


def write_tinyimagenet(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/, val/ with its annotations, test/."""
    check_classes(tree, 200)
    folder = "tiny-imagenet-200"
    rng = tree.rng("synsets")
    chosen = rng.choice(10**8, size=tree.classes + 3, replace=False)
    synsets = [f"n{int(n):08d}" for n in chosen]
    wnids = synsets[: tree.classes]  # in random order, as the published wnids.txt
    atomic_write_text(tree.out / folder / "wnids.txt", "".join(f"{wnid}\n" for wnid in wnids))
    words = "".join(f"{wnid}\tsynset {wnid[-3:]}, thing\n" for wnid in sorted(synsets))
    atomic_write_text(tree.out / folder / "words.txt", words)
    for split in splits:
        rng = tree.rng(split)
        labels = tree.labels(rng, count + missing)
        if split == "train":
            boxes: dict[str, list[str]] = {}
            for number, label in enumerate(labels[:count]):
                wnid = wnids[label]
                image = Image.fromarray(hue_square(label, tree.classes, TINY_SIDE, rng))
                file_name = f"{wnid}_{number}.JPEG"
                save_jpeg(
                    tree,
                    f"{folder}/train/{wnid}/images/{file_name}",
                    image.convert("L" if number == 0 else "RGB"),
                )
                boxes.setdefault(wnid, []).append(f"{file_name}\t0\t0\t63\t63\n")
            for wnid, lines in boxes.items():
                atomic_write_text(tree.out / folder / "train" / wnid / f"{wnid}_boxes.txt", "".join(lines))
        elif split == "val":
            lines = []
            for number, label in enumerate(labels):
                x, y = (int(v) for v in rng.integers(0, 32, 2))
                lines.append(f"val_{number}.JPEG\t{wnids[label]}\t{x}\t{y}\t{x + 31}\t{y + 31}\n")
                if number < count:  # the last `missing` images are annotated but absent
                    image = Image.fromarray(hue_square(label, tree.classes, TINY_SIDE, rng))
                    save_jpeg(tree, f"{folder}/val/images/val_{number}.JPEG", image)
            atomic_write_text(tree.out / folder / "val" / "val_annotations.txt", "".join(lines))
        else:
            for number, label in enumerate(labels[:count]):
                image = Image.fromarray(hue_square(label, tree.classes, TINY_SIDE, rng))
                save_jpeg(tree, f"{folder}/test/images/test_{number}.JPEG", image)
