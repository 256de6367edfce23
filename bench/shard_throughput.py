"""Shard-writing throughput next to the standard tools, measured side by side on the same files.

    python bench/shard_throughput.py [--num-videos 16 --seconds 4 --height 240 --repeats 3]

Makes a synthetic Kinetics-400 raw tree (real H.264 clips), then times, on a warm page cache:
- stream copy: `python -m shards kinetics400` (validate every clip, store as-is) vs `tar cf` of the
  same video folder (no validation: the floor for copying bytes into a tar);
- re-encode: `--reencode` with one worker vs the ffmpeg command line doing the same re-encode
  (libx264, same preset/crf/GOP/size, yuv420p, no audio), one file after another, one thread each:
  the per-core comparison.
Prints the machine, the versions, the resolved settings, and a table of wall and CPU seconds,
videos/s and MB/s (of input, wall) and the ratios to the reference tool by wall time and by CPU
time (medians of --repeats runs). The CPU ratio is the per-core one, robust to a busy machine.
Targets: stream copy >= 0.8x tar; re-encode >= 0.9x ffmpeg per core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shards import __version__  # noqa: E402
from shards.__main__ import main as shards_main  # noqa: E402
from shards.synth import synth_dataset  # noqa: E402
from shards.video import EncodeOptions, output_size  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Benchmark settings: input size, encoder settings shared by both re-encoders, repeats."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-videos", type=int, default=16, help="clips in the raw tree")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip (s)")
    parser.add_argument("--height", type=int, default=240, help="clip height (px), 4:3")
    parser.add_argument("--fps", type=float, default=25.0, help="clip frame rate")
    parser.add_argument("--short-side", type=int, default=160, help="re-encode: short side (px)")
    parser.add_argument("--preset", default="medium", help="re-encode: x264 preset for both tools")
    parser.add_argument("--crf", type=int, default=23, help="re-encode: x264 crf for both tools")
    parser.add_argument("--gop", type=int, default=16, help="re-encode: GOP for both tools")
    parser.add_argument("--workers", type=int, default=1, help="stream copy: sharder worker processes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (the median is reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return parser.parse_args()


def environment() -> dict[str, str]:
    """Hardware and versions that the numbers depend on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def first_line(command: list[str]) -> str:
        return subprocess.run(command, capture_output=True, text=True).stdout.split("\n")[0]

    return {
        "cpu": cpu,
        "cores_usable": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "shards": __version__,
        "pyav": av.__version__,
        "pyav_ffmpeg": ".".join(str(v) for v in av.library_versions["libavcodec"]),
        "ffmpeg_cli": first_line(["ffmpeg", "-version"]),
        "tar": first_line(["tar", "--version"]),
    }


def cpu_seconds() -> float:
    """User + system time of this process and its waited-for children (ffmpeg, tar, pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run: Callable[[], None], repeats: int, clean: Callable[[], None]) -> tuple[float, float]:
    """Median wall time and median CPU time of `repeats` calls of `run`, calling `clean` before each.

    CPU time is the per-core figure: it does not change when other jobs share the machine.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        clean()
        cpu_start, wall_start = cpu_seconds(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - wall_start)
        cpus.append(cpu_seconds() - cpu_start)
    return statistics.median(walls), statistics.median(cpus)


def run_sharder(args: list[str]) -> None:
    """The sharder in-process (no interpreter start-up), its progress bar and summary discarded."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = shards_main(args)
    if status != 0:
        raise RuntimeError(f"python -m shards {' '.join(args)} exited with {status}")


def run_ffmpeg(videos: list[Path], out: Path, settings: argparse.Namespace, size: tuple[int, int]) -> None:
    """The ffmpeg CLI re-encoding each clip like `--reencode` does: one thread, same x264 settings."""
    x264_params = EncodeOptions(gop=settings.gop).x264_options()["x264-params"]
    for number, video in enumerate(videos):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(video), "-an",
             "-filter_threads", "1", "-vf", f"scale={size[0]}:{size[1]}:flags=bicubic",
             "-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf),
             "-g", str(settings.gop), "-x264-params", x264_params, "-threads", "1",
             "-pix_fmt", "yuv420p", "-y", str(out / f"{number:05d}.mp4")],
            check=True,
        )  # fmt: skip


def main() -> int:
    """Make the inputs, time the four modes, print the table."""
    settings = parse_args()
    with contextlib.ExitStack() as stack:
        work = settings.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="shard-bench-"))
        )
        raw = work / "raw"
        if raw.exists():
            shutil.rmtree(raw)
        frames = round(settings.seconds * settings.fps)
        print(f"making {settings.num_videos} clips of {frames} frames at {settings.height}p ...", flush=True)
        synth_dataset("kinetics400", raw, num_videos=settings.num_videos, classes=4, frames=frames,
                      height=settings.height, fps=settings.fps, missing=0, splits=("train",))  # fmt: skip
        videos = sorted((raw / "videos" / "train").rglob("*.mp4"))
        input_mb = sum(v.stat().st_size for v in videos) / 1e6
        for video in videos:  # warm the page cache so that no mode pays for the first read
            video.read_bytes()
        out = work / "out"

        def clean() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)

        base = ["kinetics400", "--root", str(raw), "--split", "train", "--out", str(out)]
        encode = ["--preset", settings.preset, "--crf", str(settings.crf), "--gop", str(settings.gop)]
        with av.open(str(videos[0])) as container:
            stream = container.streams.video[0]
            size = output_size(stream.width, stream.height, settings.short_side)
        assert EncodeOptions().threads == 1, "the per-core comparison assumes one encoder thread"

        repeats = settings.repeats
        timings = {
            "tar cf (no validation)": measure(
                lambda: subprocess.run(
                    ["tar", "cf", str(out / "videos.tar"), "-C", str(raw / "videos"), "train"], check=True
                ),
                repeats,
                clean,
            ),
            f"shards stream copy ({settings.workers} worker)": measure(
                lambda: run_sharder([*base, "--workers", str(settings.workers)]), repeats, clean
            ),
            "ffmpeg CLI re-encode (1 thread)": measure(
                lambda: run_ffmpeg(videos, out, settings, size), repeats, clean
            ),
            "shards --reencode (1 worker)": measure(
                lambda: run_sharder([*base, "--reencode", "--short-side", str(settings.short_side), *encode]),
                repeats,
                clean,
            ),
        }

    report = {
        "environment": environment(),
        "settings": {key: str(value) for key, value in vars(settings).items()},
        "input": {"videos": len(videos), "frames_each": frames, "megabytes": round(input_mb, 3)},
        "reencode_size": list(size),
    }
    print(json.dumps(report, indent=2))
    names = list(timings)
    references = {names[1]: names[0], names[3]: names[2]}
    header = f"{'mode':<34} {'wall s':>7} {'cpu s':>7} {'videos/s':>9} {'MB/s':>7} {'x wall':>7} {'x cpu':>7}"
    print(f"\n{header}")
    for name, (wall, cpu) in timings.items():
        reference = timings[references.get(name, name)]
        print(
            f"{name:<34} {wall:7.3f} {cpu:7.3f} {len(videos) / wall:9.1f} {input_mb / wall:7.1f} "
            f"{reference[0] / wall:6.2f}x {reference[1] / cpu:6.2f}x"
        )
    copy = timings[names[0]][0] / timings[names[1]][0]
    encode = timings[names[2]][1] / timings[names[3]][1]
    print(f"\nstream copy vs tar (videos/s, wall): {copy:.2f}x (target >= 0.8x)")
    print(f"re-encode vs ffmpeg per core (videos per CPU-second): {encode:.2f}x (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
