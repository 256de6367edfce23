"""`python -m shards`: pack a raw dataset into WebDataset shards, verify or merge them, or make synth data.

    python -m shards ssv2 --root RAW --split train --out OUT [--reencode --short-side 256] [--workers 8]
    python -m shards ssv2 ... --part 3/16        # one task of a job array; then: python -m shards merge OUT
    python -m shards verify OUT                  # re-read every shard against manifest.json
    python -m shards synth ssv2 --out RAW        # a tiny raw dataset in the publisher's layout
    python -m shards ssv2 ... --out s3://bucket/ssv2/train   # OUT may be an object-store URL

A bad option, an annotation file that cannot be read, or an output folder that cannot be written or
holds another dataset's, split's or options' shards (unless --overwrite) is one line on stderr and exit
status 2; so is a URL that cannot be served (an unknown protocol, s3fs not installed) or a store that
refuses it (no such bucket, bad credentials, access denied), before any clip is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.console import OneLineParser
from pipeline.errors import RunError, report
from shards import synth
from shards.datasets import READERS, Reader, read_split
from shards.folder import ShardFolder, open_folder
from shards.image import JPEG_QUALITY
from shards.merge import MergeError, merge_parts
from shards.records import DatasetIndex
from shards.verify import verify_shards
from shards.video import EncodeOptions
from shards.writer import OutputError, SampleContext, WriteOptions, write_dataset

# Options that do not change what is written (or are recorded elsewhere): kept out of the manifest.
UNRECORDED_OPTIONS = ("command", "handler", "out", "work_dir", "workers", "part", "overwrite")
SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def byte_size(text: str) -> int:
    """argparse type: a size in bytes, with an optional K/M/G/T suffix (powers of 1024)."""
    number, suffix = text.rstrip("KMGTkmgt"), text[len(text.rstrip("KMGTkmgt")) :].upper()
    if suffix not in SIZE_SUFFIXES or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 1000000, 500M or 1G, got {text!r}")
    return int(number) * SIZE_SUFFIXES[suffix]


def jpeg_quality(text: str) -> int:
    """argparse type: a JPEG quality, 1..100."""
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"expected a JPEG quality 1..100, got {text!r}")
    return int(text)


def part_spec(text: str) -> tuple[int, int]:
    """argparse type: `i/n`, part i (from 0) of n."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n, got {text!r}")
    return int(index), int(count)


def add_write_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every dataset subcommand: inputs, output, shard sizes, parallelism."""
    parser.add_argument("--root", type=Path, required=True, help="raw dataset root (publisher layout)")
    parser.add_argument("--split", required=True, help="split to shard, e.g. train / val / test")
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the shards and manifest.json, or an object-store URL (s3://bucket/prefix, gs://...)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="with a URL --out: the local folder each shard is written in before its upload "
        "(default: a temporary folder; room for one shard is enough)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the shards, manifests and progress of another dataset, split or options found in --out",
    )
    layout = parser.add_argument_group("shards")
    layout.add_argument("--max-samples", type=positive_int, default=1000, help="samples per shard at most")
    layout.add_argument("--max-bytes", type=byte_size, default=1 << 30, help="bytes per shard at most (1G)")
    layout.add_argument("--shuffle-seed", type=int, default=0, help="seed of the sample order across shards")
    layout.add_argument("--workers", type=positive_int, default=1, help="worker processes (default 1)")
    layout.add_argument("--part", type=part_spec, default=None, help="write only part i of n (i/n, from 0)")


def add_encode_arguments(parser: argparse.ArgumentParser, reencode_by_default: bool = False) -> None:
    """The re-encoding flags of clip datasets (videos and frame folders): --reencode and its x264 settings.

    `reencode_by_default`: the dataset's sources cannot be stored as-is, so --reencode is always on.
    """
    encode = parser.add_argument_group("re-encoding (H.264 yuv420p, constant frame rate, no audio)")
    if reencode_by_default:
        parser.set_defaults(reencode=True)
        reencode_help = "re-encode every clip (always on: no decoder reads these sources frame-exactly)"
    else:
        reencode_help = "re-encode every clip (default: store as-is)"
    encode.add_argument("--reencode", action="store_true", help=reencode_help)
    encode.add_argument("--short-side", type=positive_int, default=None, help="scale the short side to N px")
    encode.add_argument("--gop", type=positive_int, default=16, help="frames per GOP (default 16)")
    encode.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (default 23)")
    encode.add_argument("--preset", default="medium", help="x264 preset (default medium)")


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The one encoding flag of image datasets: images are stored as they are unless shrunk or converted."""
    images = parser.add_argument_group("images")
    images.add_argument(
        "--short-side",
        type=positive_int,
        default=None,
        help=f"shrink images whose short side is above N px (stored as JPEG quality {JPEG_QUALITY})",
    )


def add_store_arguments(parser: argparse.ArgumentParser, modality: str) -> None:
    """`--store video|frames` for clip datasets (default: the dataset's own form) and the JPEG settings of
    frame samples."""
    store = parser.add_argument_group("storage of clips")
    store.add_argument(
        "--store",
        choices=("video", "frames"),
        default="frames" if modality == "frames" else "video",
        help="video: one video member (frame folders encoded as --reencode does); frames: one JPEG per frame "
        f"(default: {'frames' if modality == 'frames' else 'video'}, as the dataset is distributed)",
    )
    store.add_argument(
        "--frame-quality",
        type=jpeg_quality,
        default=JPEG_QUALITY,
        help="JPEG quality 1..100 of the frames --store frames encodes: all frames of a video, the frames of "
        f"a frame folder only where converted or shrunk by --short-side (default {JPEG_QUALITY})",
    )


def check_store_arguments(reader: type[Reader], args: argparse.Namespace) -> None:
    """A bad combination of storage flags is one error line (argparse cannot say it per flag). A dataset
    that re-encodes by default (UCF-101's AVIs) has --reencode on without asking: that is no conflict."""
    if args.store == "frames" and args.reencode and not reader.reencode_by_default:
        raise OutputError(
            "--reencode re-encodes videos; with --store frames every frame is a JPEG "
            "(--frame-quality, --short-side set it)"
        )


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subcommand per registered dataset, plus synth, verify and merge."""
    parser = OneLineParser(prog="python -m shards", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, reader in sorted(READERS.items()):
        sub = commands.add_parser(name, help=f"shard {name}")
        add_write_arguments(sub)
        if reader.modality == "image":
            add_image_arguments(sub)
        else:
            add_encode_arguments(sub, reader.reencode_by_default)
            add_store_arguments(sub, reader.modality)
        reader.add_arguments(sub)
        sub.set_defaults(handler=partial(run_dataset, reader))
    sub = commands.add_parser("synth", help="write a tiny raw dataset in a publisher's layout")
    synth.add_arguments(sub)
    sub.set_defaults(handler=synth.run)
    sub = commands.add_parser("verify", help="re-read every shard against manifest.json")
    sub.add_argument("out", help="folder (or object-store URL) with manifest.json and the shards")
    sub.set_defaults(handler=run_verify)
    sub = commands.add_parser("merge", help="combine the partial manifests of --part runs")
    sub.add_argument("out", help="folder (or object-store URL) with the parts' shards and manifests")
    sub.set_defaults(handler=run_merge)
    return parser


def recorded_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the output, as JSON values, for the manifest and the resume check."""
    recorded = {}
    for key, value in sorted(vars(args).items()):
        if key not in UNRECORDED_OPTIONS:
            recorded[key] = str(value) if isinstance(value, Path) else value
    return recorded


def sample_context(reader: type[Reader], index: DatasetIndex, args: argparse.Namespace) -> SampleContext:
    """How the workers build the samples of `index`: the encoding and storage flags of its modality."""
    if reader.modality == "image":
        # Images have no --reencode: a JPEG that decodes as RGB or grey is stored byte for byte.
        encode = EncodeOptions(short_side=args.short_side)
        return SampleContext(index.dataset, index.split, index.root, False, encode, reader.modality)
    encode = EncodeOptions(short_side=args.short_side, gop=args.gop, crf=args.crf, preset=args.preset)
    return SampleContext(
        index.dataset,
        index.split,
        index.root,
        args.reencode,
        encode,
        reader.modality,
        store=args.store,
        frame_quality=args.frame_quality,
    )


def run_dataset(reader: type[Reader], args: argparse.Namespace) -> int:
    """Read the raw split, write its shards and manifest, print the summary line."""
    if reader.modality != "image":
        check_store_arguments(reader, args)
    out = open_folder(args.out, args.work_dir)
    try:
        if out.remote:  # a store that refuses the URL says so before the annotations are read
            out.check_writable()
        return write_split(reader, args, out)
    finally:
        out.close()


def write_split(reader: type[Reader], args: argparse.Namespace, out: ShardFolder) -> int:
    """run_dataset with its output folder open."""
    index = read_split(reader.from_args(args), args.root, args.split)
    context = sample_context(reader, index, args)
    options = WriteOptions(
        context=context,
        max_samples=args.max_samples,
        max_bytes=args.max_bytes,
        shuffle_seed=args.shuffle_seed,
        workers=args.workers,
        part=args.part,
        overwrite=args.overwrite,
    )
    summary = write_dataset(index, out, options, recorded_options(args))
    print(
        f"{index.dataset}/{index.split}: written {summary.written} samples in {summary.num_shards} shards, "
        f"rejected {summary.rejected}, missing {summary.missing}, {summary.bytes} bytes, "
        f"{summary.seconds:.1f} s -> {summary.manifest}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Print every mismatch between the shards and their manifest; non-zero if there is any."""
    problems, checked = verify_shards(args.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"verify {args.out}: FAILED, {len(problems)} problems", file=sys.stderr)
        return 1
    print(f"verify {args.out}: OK, {checked} samples")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Combine the partial manifests under OUT into manifest.json."""
    try:
        manifest = merge_parts(args.out)
    except MergeError as err:
        print(f"merge: error: {err}", file=sys.stderr)
        return 1
    print(f"merge {args.out}: {manifest.total} samples in {len(manifest.shards)} shards")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m shards`; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except SystemExit as exit_:  # argparse: --help (0) or a bad option (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    except RunError as err:  # AnnotationError, OutputError, StorageError
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
