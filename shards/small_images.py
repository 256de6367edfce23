"""The small image datasets of the SPT + LSA paper as published: CIFAR-10, CIFAR-100, SVHN, Tiny-ImageNet.

- CIFAR-10 (`cifar-10-batches-py/`): `data_batch_1` .. `data_batch_5` (split train, in that order) and
  `test_batch` (test), pickled dicts with bytes keys: `b'data'` uint8 N x 3072, channel-planar (1024 red,
  then green, then blue values, each plane row-major 32 x 32), `b'labels'`, `b'filenames'`; `batches.meta`
  holds `b'label_names'`. Class index = the label as published (`label_names` order).
- CIFAR-100 (`cifar-100-python/`): `train`, `test`, `meta` alike, with `b'fine_labels'` and
  `b'coarse_labels'` (`meta`: `fine_label_names`, `coarse_label_names`); `--coarse` labels the 20
  superclasses instead of the 100 classes. The sample json keeps both.
- SVHN (cropped digits): `train_32x32.mat`, `test_32x32.mat` and the optional `extra_32x32.mat` (split
  extra), MATLAB files with `X` uint8 32 x 32 x 3 x N and `y` N x 1, labels 1 .. 10 where 10 is the digit 0:
  class index = the digit.
- Tiny-ImageNet (`tiny-imagenet-200/`): `wnids.txt` (200 wnids, not sorted), `words.txt`
  (`wnid<TAB>names`), `train/<wnid>/images/<wnid>_<n>.JPEG`, `val/images/val_<n>.JPEG` labelled by
  `val/val_annotations.txt` (`file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h`), `test/images/test_<n>.JPEG`
  unlabelled (label -1). Class index = the wnids sorted (the order of torchvision's ImageFolder on
  train/, which Tiny-ImageNet models are trained with); the manifest's label_map lists them.

RAW is the folder that holds the published folder (or the .mat files), or that folder itself. CIFAR's and
SVHN's raw pixels are stored as lossless PNGs (`shards.image.encode_png`: decoded, the published array
exactly), Tiny-ImageNet's JPEGs as they are. Sample ids: `<split>_<index>` (6 digits, the position in the
split's files in order) for the arrays, the file stem for Tiny-ImageNet (`n01443537_0`, `val_0`).

A pickle or .mat that cannot be read is one AnnotationError line naming it. A sample whose pixels have
the wrong shape, whose label is out of range, or that has no label is a reject naming `file[index]`; a
Tiny-ImageNet image of an unknown wnid, or a malformed `val_annotations.txt` line, a reject naming the
file (and line); an annotated image without its file is missing.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.console import one_line
from shards.datasets import Listing, Reader, Row, option, read_text_lines, register, resolve_path
from shards.image import encode_png
from shards.records import AnnotationError, Reject

SIDE = 32  # CIFAR and SVHN images are 32 x 32 RGB
CIFAR_ROW = 3 * SIDE * SIDE
ID_DIGITS = 6
WNID = re.compile(r"n\d{8}")
TINY_FOLDER = "tiny-imagenet-200"


def sample_id(split: str, index: int) -> str:
    """The id of the `index`-th sample of a split of an array dataset: `train_000123`."""
    return f"{split}_{index:0{ID_DIGITS}d}"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a pickle can name any callable, and a dataset
    file has no reason to name anything else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 writes bytes ...
        ("__builtin__", "bytes"),  # ... and empty bytes (an empty array's buffer)
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not an array)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 renamed numpy.core
        return super().find_class(module, name)


def load_pickle(path: Path, what: str) -> dict[bytes, Any]:
    """A CIFAR pickle (a dict with bytes keys, written by Python 2), or a one-line AnnotationError."""
    try:
        with path.open("rb") as f:
            data = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a damaged pickle raises anything from EOFError to IndexError
        raise AnnotationError(f"{path}: cannot read {what}: {type(err).__name__}: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: {what} must be a pickled dict, found {type(data).__name__}")
    return data


def pickled_field(data: dict[bytes, Any], key: bytes, path: Path) -> Any:
    """`data[key]`, or an AnnotationError naming the file and the key it lacks."""
    if key not in data:
        found = ", ".join(repr(k) for k in list(data)[:6])
        raise AnnotationError(f"{path}: no {key!r} (keys: {found})")
    return data[key]


def label_names(path: Path, key: bytes) -> dict[int, str]:
    """The label map of a CIFAR meta pickle's list of names under `key`."""
    names = pickled_field(load_pickle(path, "CIFAR meta"), key, path)
    if not isinstance(names, Sequence) or not names:
        raise AnnotationError(f"{path}: {key!r} is not a list of class names")
    return {
        index: name.decode() if isinstance(name, bytes) else str(name) for index, name in enumerate(names)
    }


def label_problem(label: Any, num_classes: int) -> str | None:
    """Why `label` is no class index below `num_classes` (None: it is one)."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        return f"label {label!r} is not an integer"
    if not 0 <= int(label) < num_classes:
        return f"label {int(label)} out of range 0..{num_classes - 1}"
    return None


def cifar_image(row: Any) -> np.ndarray | str:
    """A CIFAR data row (3072 channel-planar values) as (32, 32, 3) RGB, or why it cannot be one."""
    pixels = np.asarray(row)
    if pixels.shape != (CIFAR_ROW,) or pixels.dtype != np.uint8:
        return f"pixels of shape {pixels.shape} {pixels.dtype}, expected ({CIFAR_ROW},) uint8"
    return pixels.reshape(3, SIDE, SIDE).transpose(1, 2, 0)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR set keeps its files and labels."""

    dataset: str
    folder: str
    meta: str
    split_files: dict[str, tuple[str, ...]]


CIFAR10 = CifarLayout(
    "cifar10",
    "cifar-10-batches-py",
    "batches.meta",
    {"train": tuple(f"data_batch_{n}" for n in range(1, 6)), "test": ("test_batch",)},
)
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", "meta", {"train": ("train",), "test": ("test",)})


def cifar_path(root: Path, layout: CifarLayout, name: str) -> Path:
    """A file of `layout` under RAW/<folder>/ or RAW/; AnnotationError naming both when neither has it."""
    return resolve_path(None, [root / layout.folder / name, root / name], f"{layout.folder}/{name}")


@dataclass(frozen=True)
class CifarBatch:
    """One CIFAR batch file as unpickled: its `b'data'` rows, one label column per label key, file names."""

    path: Path
    data: Any
    labels: tuple[Any, ...]
    filenames: Any

    @classmethod
    def load(cls, path: Path, label_keys: tuple[bytes, ...]) -> CifarBatch:
        batch = load_pickle(path, "CIFAR batch")
        data = pickled_field(batch, b"data", path)
        labels = tuple(pickled_field(batch, key, path) for key in label_keys)
        if not hasattr(data, "__len__") or not all(hasattr(column, "__len__") for column in labels):
            raise AnnotationError(f"{path}: b'data' and the labels must be sequences")
        return cls(path, data, labels, batch.get(b"filenames", []))

    def __len__(self) -> int:
        """Images or labels, whichever are more: a position with one but not the other is a reject."""
        return max(len(self.data), *(len(column) for column in self.labels))

    def row(
        self,
        position: int,
        row_id: str,
        label_keys: tuple[bytes, ...],
        label_maps: tuple[dict[int, str], ...],
    ) -> Row | Reject:
        """The row of image `position`, or a reject naming `file[position]`; with several label keys
        (CIFAR-100's fine and coarse), each label goes into the json."""
        path, origin = self.path, f"{self.path}[{position}]"
        if position >= len(self.data):
            return Reject(
                row_id, origin, f"a label without an image ({path.name} has {len(self.data)} images)"
            )
        extras: dict[str, Any] = {}
        for key, column, label_map in zip(label_keys, self.labels, label_maps, strict=True):
            name = key.decode().removesuffix("s")  # b'fine_labels' -> fine_label
            if position >= len(column):
                return Reject(row_id, origin, f"no {name} ({path.name} has {len(column)} of {key!r})")
            problem = label_problem(column[position], len(label_map))
            if problem is not None:
                return Reject(row_id, origin, f"{name} {problem.removeprefix('label ')}")
            if len(label_keys) > 1:
                extras[name] = int(column[position])
        image = cifar_image(self.data[position])
        if isinstance(image, str):
            return Reject(row_id, origin, image)
        if position < len(self.filenames):
            file_name = self.filenames[position]
            extras["filename"] = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
        label = int(self.labels[0][position])
        return Row(
            row_id, origin, label, label_maps[0][label], path, extras=extras, content=encode_png(image)
        )


def cifar_rows(
    paths: list[Path], split: str, label_keys: tuple[bytes, ...], label_maps: tuple[dict[int, str], ...]
) -> Iterator[Row | Reject]:
    """One row per image of the split's batch files, in order; the first of `label_keys` labels it. A file
    is read when its turn comes, so one batch at a time is in memory."""
    index = 0
    for path in paths:
        batch = CifarBatch.load(path, label_keys)
        for position in range(len(batch)):
            yield batch.row(position, sample_id(split, index), label_keys, label_maps)
            index += 1


class Cifar10(Reader):
    """`python -m shards cifar10`: the python-version batches of CIFAR-10, split train or test."""

    name = "cifar10"
    modality = "image"

    def list_split(self, root: Path, split: str) -> Listing:
        return list_cifar(root, split, CIFAR10, (b"labels",), (b"label_names",))


class Cifar100(Reader):
    """`python -m shards cifar100`: CIFAR-100's python version, split train or test, 100 classes or (with
    --coarse) the 20 superclasses."""

    name = "cifar100"
    modality = "image"

    @dataclass(frozen=True)
    class Options:
        coarse: bool = option(
            "label the 20 superclasses (coarse_labels) instead of the 100 classes",
            action="store_true",
            default=False,
        )

    def list_split(self, root: Path, split: str) -> Listing:
        keys = [(b"fine_labels", b"fine_label_names"), (b"coarse_labels", b"coarse_label_names")]
        if self.options.coarse:
            keys.reverse()
        label_keys, name_keys = zip(*keys, strict=True)
        return list_cifar(root, split, CIFAR100, label_keys, name_keys)


def list_cifar(
    root: Path, split: str, layout: CifarLayout, label_keys: tuple[bytes, ...], name_keys: tuple[bytes, ...]
) -> Listing:
    """The listing of a CIFAR split: label maps from the meta file, rows from the batches (read lazily)."""
    if split not in layout.split_files:
        raise AnnotationError(f"{layout.dataset}: unknown split {split!r} (expected train or test)")
    paths = [cifar_path(root, layout, name) for name in layout.split_files[split]]
    meta = cifar_path(root, layout, layout.meta)
    label_maps = tuple(label_names(meta, key) for key in name_keys)
    return Listing(label_maps[0], cifar_rows(paths, split, label_keys, label_maps))


SVHN_SPLITS = ("train", "test", "extra")
SVHN_DIGITS = {index: str(index) for index in range(10)}


def load_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (32, 32, 3, N) uint8 and y of an SVHN .mat file, or a one-line AnnotationError naming it."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, zlib.error ... on a damaged file
        raise AnnotationError(
            f"{path}: cannot read SVHN .mat: {type(err).__name__}: {one_line(err)}"
        ) from None
    missing = [name for name in ("X", "y") if name not in mat]
    if missing:
        raise AnnotationError(f"{path}: no variable {missing[0]!r} (an SVHN .mat holds X and y)")
    images, labels = mat["X"], mat["y"]
    if images.ndim != 4 or images.shape[:3] != (SIDE, SIDE, 3) or images.dtype != np.uint8:
        raise AnnotationError(
            f"{path}: X is {images.shape} {images.dtype}, expected ({SIDE}, {SIDE}, 3, N) uint8"
        )
    return images, labels.reshape(-1)


def svhn_rows(path: Path, split: str) -> Iterator[Row | Reject]:
    """One row per image of an SVHN file (label 10 is the digit 0)."""
    images, labels = load_mat(path)
    count = max(images.shape[3], len(labels))
    for position in range(count):
        row_id, origin = sample_id(split, position), f"{path}[{position}]"
        if position >= images.shape[3]:
            yield Reject(
                row_id, origin, f"a label without an image ({path.name} has {images.shape[3]} images)"
            )
            continue
        if position >= len(labels):
            yield Reject(row_id, origin, f"no label ({path.name} has {len(labels)} labels)")
            continue
        raw = labels[position]
        if not np.isfinite(raw) or raw != int(raw) or not 1 <= int(raw) <= 10:
            yield Reject(row_id, origin, f"label {raw!r} out of range 1..10 (10 is the digit 0)")
            continue
        digit = int(raw) % 10
        content = encode_png(images[:, :, :, position])
        yield Row(row_id, origin, digit, SVHN_DIGITS[digit], path, content=content)


class SVHN(Reader):
    """`python -m shards svhn`: the cropped digits (format 2), split train, test or extra."""

    name = "svhn"
    modality = "image"

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in SVHN_SPLITS:
            raise AnnotationError(f"svhn: unknown split {split!r} (expected train, test or extra)")
        name = f"{split}_32x32.mat"
        path = resolve_path(None, [root / name, root / "svhn" / name], f"svhn {name}")
        return Listing(SVHN_DIGITS, svhn_rows(path, split))


def sorted_files(folder: Path, suffix: str) -> list[Path]:
    """The files of `folder` ending in `suffix` (ignoring case), sorted by name; none when it is missing."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as listing:
        names = sorted(e.name for e in listing if e.is_file() and e.name.lower().endswith(suffix))
    return [folder / name for name in names]


def read_wnids(path: Path) -> list[str]:
    """The wnids of wnids.txt, sorted: their position is the class index."""
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_text_lines(path, "Tiny-ImageNet wnids"), start=1):
        wnid = line.strip()
        if not wnid:
            continue
        if not WNID.fullmatch(wnid):
            raise AnnotationError(f"{path}:{number}: {wnid!r} is not a wnid (n + 8 digits)")
        if wnid in first_line:
            raise AnnotationError(
                f"{path}:{number}: wnid {wnid} given twice (first at line {first_line[wnid]})"
            )
        first_line[wnid] = number
    if not first_line:
        raise AnnotationError(f"{path}: no wnids")
    return sorted(first_line)


def read_words(path: Path, wanted: set[str]) -> dict[str, str]:
    """wnid -> names from words.txt (`wnid<TAB>names`; it lists every WordNet synset, of which `wanted`
    are kept)."""
    words: dict[str, str] = {}
    for number, line in enumerate(read_text_lines(path, "Tiny-ImageNet words"), start=1):
        if not line.strip():
            continue
        wnid, tab, names = line.partition("\t")
        if not tab or not WNID.fullmatch(wnid.strip()):
            raise AnnotationError(f"{path}:{number}: expected 'wnid<TAB>names', found {line!r}")
        if wnid.strip() in wanted:
            words[wnid.strip()] = names.strip()
    return words


class TinyImageNet(Reader):
    """`python -m shards tinyimagenet`: Tiny-ImageNet-200, split train, val or test (unlabelled)."""

    name = "tinyimagenet"
    modality = "image"

    def list_split(self, root: Path, split: str) -> Listing:
        if split not in ("train", "val", "test"):
            raise AnnotationError(f"tinyimagenet: unknown split {split!r} (expected train, val or test)")
        base = root / TINY_FOLDER if (root / TINY_FOLDER).is_dir() else root
        wnids = read_wnids(resolve_path(None, [base / "wnids.txt"], "tinyimagenet wnids.txt"))
        words = read_words(resolve_path(None, [base / "words.txt"], "tinyimagenet words.txt"), set(wnids))
        label_map = dict(enumerate(wnids))
        if split == "train":
            rows = self.train_rows(base / "train", wnids, words)
        elif split == "val":
            annotations = resolve_path(
                None, [base / "val" / "val_annotations.txt"], "tinyimagenet val/val_annotations.txt"
            )
            rows = self.val_rows(annotations, base / "val" / "images", wnids, words)
        else:
            rows = (Row(p.stem, str(p), path=p) for p in sorted_files(base / "test" / "images", ".jpeg"))
        return Listing(label_map, rows)

    @staticmethod
    def train_rows(folder: Path, wnids: list[str], words: dict[str, str]) -> Iterator[Row | Reject]:
        """Every `<wnid>/images/*.JPEG`, class folders in name order; one of a wnid not in wnids.txt is a
        reject (each of its images)."""
        index = {wnid: i for i, wnid in enumerate(wnids)}
        classes = (
            sorted(entry.name for entry in os.scandir(folder) if entry.is_dir()) if folder.is_dir() else []
        )
        for wnid in classes:
            for path in sorted_files(folder / wnid / "images", ".jpeg"):
                if wnid not in index:
                    yield Reject(path.stem, str(path), f"unknown wnid {wnid!r} (not in wnids.txt)")
                    continue
                extras = {"wnid": wnid, "words": words.get(wnid, "")}
                yield Row(path.stem, str(path), index[wnid], wnid, path, extras=extras)

    @staticmethod
    def val_rows(
        annotations: Path, images: Path, wnids: list[str], words: dict[str, str]
    ) -> Iterator[Row | Reject]:
        """One row per line `file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h` (the box goes into the json)."""
        index = {wnid: i for i, wnid in enumerate(wnids)}
        found = {path.name: path for path in sorted_files(images, ".jpeg")}
        for number, line in enumerate(read_text_lines(annotations, "Tiny-ImageNet val annotations"), 1):
            if not line.strip():
                continue
            origin = f"{annotations}:{number}"
            fields = line.strip().split("\t")
            file_name = fields[0].strip()
            image_id = Path(file_name).stem or f"line-{number}"
            box = fields[2:]
            if len(fields) != 6 or "/" in file_name or not all(v.strip().lstrip("-").isdigit() for v in box):
                yield Reject(
                    image_id, origin, f"malformed line {line.strip()!r} (expected file, wnid, x, y, w, h)"
                )
                continue
            wnid = fields[1].strip()
            if wnid not in index:
                yield Reject(image_id, origin, f"unknown wnid {wnid!r} (not in wnids.txt)")
                continue
            extras = {"wnid": wnid, "words": words.get(wnid, ""), "box": [int(v) for v in box]}
            yield Row(image_id, origin, index[wnid], wnid, found.get(file_name), extras=extras)


for _reader in (Cifar10, Cifar100, SVHN, TinyImageNet):
    register(_reader)
