"""A tiny ILSVRC-2012 tree for `python -m shards synth imagenet`: real JPEGs whose shape is the class.

Layout as published (see `shards.imagenet`): `train/<wnid>/<wnid>_<n>.JPEG`, flat
`val/ILSVRC2012_val_<8 digits>.JPEG`, and both sets of validation labels: the devkit's ground truth
with `meta.mat` (its ILSVRC2012_IDs in another order than the sorted wnids, plus a non-leaf synset, as
in the real file) and Kaggle's `LOC_val_solution.csv` (rows unsorted, boxes after each wnid) with
`LOC_synset_mapping.txt`. Each image shows one shape (disc, square, triangle, ...) in the class's hue,
of random size and place (inside the central square) on a noisy, nearly grey background; like the real
set, one train image is greyscale and one is a CMYK JPEG. Same seed and options give the same bytes.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from pipeline.io import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from shards.synth import RawTree

DEVKIT = "ILSVRC2012_devkit_t12/data"
# savemat writes the creation time into the header's text: a fixed text keeps the bytes reproducible.
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by shards synth imagenet".ljust(116, b" ")


def _disc(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    draw.ellipse(box, fill=colour)


def _square(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    draw.rectangle(box, fill=colour)


def _triangle(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _plus(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) / 3, (y1 - y0) / 3
    draw.rectangle([x0 + w, y0, x1 - w, y1], fill=colour)
    draw.rectangle([x0, y0 + h, x1, y1 - h], fill=colour)


def _ring(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    draw.ellipse(box, outline=colour, width=max(2, round((box[2] - box[0]) / 6)))


def _diamond(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    draw.polygon(
        [((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=colour
    )


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, list[float], tuple[int, ...]], None]] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "plus sign": _plus,
    "ring": _ring,
    "diamond": _diamond,
}


def shape_image(label: int, classes: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image of `height` px (aspect 3:4 to 3:2) showing the shape of class `label` in its hue.

    The class decides both the shape and its hue (classes spread evenly around the colour wheel,
    +-6% jitter), so a tiny model learns it in a few hundred steps from what survives a random resized
    crop, a flip and RandAugment; size, place, saturation, brightness and the background are random.
    """
    width = int(height * rng.uniform(0.75, 1.5))
    # A noisy background of low saturation: the only strong hue in the image is the shape's.
    background = rng.integers(0, 256) + rng.integers(-24, 25, 3)
    noise = rng.normal(0, 12, (height, width, 1))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    # Inside the central square, as ImageNet's objects mostly are: a centre crop always shows it.
    side = min(height, width)
    size = side * rng.uniform(0.45, 0.8)
    left = (width - side) / 2 + rng.uniform(0, side - size)
    top = (height - side) / 2 + rng.uniform(0, side - size)
    hue = (label / classes + rng.uniform(-0.06, 0.06)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    colour = tuple(round(255 * c) for c in rgb)
    list(SHAPES.values())[label](ImageDraw.Draw(image), [left, top, left + size, top + size], colour)
    return image


def save_jpeg(tree: RawTree, relative: str, image: Image.Image) -> None:
    """Write `image` as a JPEG under the tree (mode RGB, L or CMYK as given)."""
    with atomic_open(tree.out / relative) as file:
        image.save(file, format="JPEG", quality=90)
    tree.videos_written += 1


def write_meta_mat(tree: RawTree, rows: list[tuple[int, str, str, int]]) -> None:
    """The devkit's meta.mat: a `synsets` struct array (ILSVRC2012_ID, WNID, words, num_children, ...)."""
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    synsets = np.zeros((len(rows), 1), dtype=fields)
    for i, (ilsvrc_id, wnid, words, children) in enumerate(rows):
        synsets[i, 0] = (ilsvrc_id, wnid, words, f"a synthetic {words}", children)
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})
    with atomic_open(tree.out / DEVKIT / "meta.mat") as file:
        file.write(MAT_HEADER + buffer.getvalue()[len(MAT_HEADER) :])


def write_imagenet(tree: RawTree, splits: tuple[str, ...], count: int, missing: int) -> None:
    """Synset lists, train class folders, flat val images with devkit and Kaggle labels (see module doc)."""
    if tree.classes > len(SHAPES):
        raise ValueError(f"imagenet synth supports at most {len(SHAPES)} classes (shapes)")
    rng = tree.rng("synsets")
    wnids = sorted({f"n{int(n):08d}" for n in rng.choice(10**8, size=tree.classes, replace=False)})
    names = list(SHAPES)[: tree.classes]
    # The devkit numbers classes in its own order (not the sorted wnids); the last row is a non-leaf.
    order = rng.permutation(tree.classes)
    order = np.roll(order, 1) if (order == np.arange(tree.classes)).all() else order  # never wnid order
    ilsvrc_ids = [int(i) + 1 for i in order]
    rows = [(ilsvrc_ids[k], wnids[k], names[k], 0) for k in range(tree.classes)]
    write_meta_mat(tree, [*rows, (tree.classes + 1, "n00001740", "entity", tree.classes)])
    mapping = "".join(f"{wnid} {name}\n" for wnid, name in zip(wnids, names, strict=True))
    atomic_write_text(tree.out / "LOC_synset_mapping.txt", mapping)
    for split in splits:
        rng = tree.rng(split)
        labels = tree.labels(rng, count + missing)
        if split == "train":
            for position, label in enumerate(labels[:count]):
                image = shape_image(label, tree.classes, tree.height, rng)
                # Like the real train set: one greyscale JPEG, one CMYK JPEG among the RGB ones.
                image = image.convert({0: "L", 1: "CMYK"}.get(position, "RGB"))
                number = int(rng.integers(1, 10**5))
                save_jpeg(tree, f"train/{wnids[label]}/{wnids[label]}_{number}.JPEG", image)
            continue
        truth, solution = [], []
        for number, label in enumerate(labels, start=1):
            image_id = f"ILSVRC2012_val_{number:08d}"
            truth.append(f"{ilsvrc_ids[label]}\n")
            boxes = " ".join(
                f"{wnids[label]} {' '.join(str(int(v)) for v in rng.integers(0, 40, 4))}" for _ in range(2)
            )
            solution.append(f"{image_id},{boxes} \n")
            if number <= count:  # the last `missing` images are annotated but absent
                save_jpeg(tree, f"val/{image_id}.JPEG", shape_image(label, tree.classes, tree.height, rng))
        atomic_write_text(tree.out / DEVKIT / "ILSVRC2012_validation_ground_truth.txt", "".join(truth))
        order = rng.permutation(len(solution))
        csv_rows = "".join(solution[i] for i in order)
        atomic_write_text(tree.out / "LOC_val_solution.csv", "ImageId,PredictionString\n" + csv_rows)
