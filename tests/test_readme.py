"""The README's commands as a user types them after the set-up, so that the README cannot drift.

Every ```bash block of README.md is read at test time. The set-up block (`bash scripts/demo.sh`,
`bash scripts/test.sh`) is not re-run: it is the set-up, and test.sh runs this suite. The block right
after it is the one line that enters the set-up's environment. Every other command runs in a fresh
`bash` whose PATH does not include the virtual environment (nor what scripts/env.sh exports), which
enters it with that line and runs the command from a stand-in for the clone's root.

Commands that need a cluster, GPUs, real datasets or pretrained weights run in the form SAFE_FORMS
gives them (--dry-run, tiny synthetic data, one process, two steps). A command no entry covers runs
as written, so a new README command either works here or fails this test until it gets an entry.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shards.__main__ import main as shards_main
from shards.synth import WRITERS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SETUP_COMMANDS = ("bash scripts/demo.sh", "bash scripts/test.sh")
COMMAND_TIMEOUT_S = 180  # far above any command here: one that gets near it needs a SAFE_FORMS entry
# What scripts/env.sh exports and a venv's activation sets: a new shell has none of them.
SETUP_VARIABLES = ("VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH", "DS_ACCELERATOR", "PYTHONHOME")


@dataclass(frozen=True)
class Command:
    """One README command: its line as written (continuations joined) and its words."""

    line: str
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        """The words joined by spaces: the command without its comment, spacing or continuations."""
        return " ".join(self.words)


def readme_blocks() -> list[list[Command]]:
    """The commands of every ```bash block of the README, in order (comments and blank lines dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)
    return [
        [
            Command(line, tuple(words))
            for line in block.replace("\\\n", " ").splitlines()
            if (words := shlex.split(line, comments=True))
        ]
        for block in blocks
    ]


def split_readme() -> tuple[list[Command], str, list[Command]]:
    """(the set-up commands, the line that enters the environment, every other command)."""
    blocks = readme_blocks()
    setup_at = next(
        (i for i, block in enumerate(blocks) if SETUP_COMMANDS[0] in [c.text for c in block]), None
    )
    assert setup_at is not None, f"README.md: no ```bash block with `{SETUP_COMMANDS[0]}`"
    assert setup_at + 1 < len(blocks), "README.md: no ```bash block after the set-up's (the enter line)"
    enter = blocks[setup_at + 1]
    assert len(enter) == 1, f"README.md: the block after the set-up must be one line, not {len(enter)}"
    others = [c for i, block in enumerate(blocks) if i not in (setup_at, setup_at + 1) for c in block]
    return blocks[setup_at], enter[0].line, others


# Clips of the training shards: the README's Slurm example has 64 ranks, and the config check (of the
# dry run too) wants one global batch, here one sample per rank (2 rows = 2 augmented views of it).
TRAIN_CLIPS = 64
TINY_VIDEO = ("--classes", "2", "--frames", "8", "--height", "32")


def tiny_dataset(clone: Path, dataset: str) -> Path:
    """A tiny raw dataset in `dataset`'s publisher layout under clone/raw (made once)."""
    raw = clone / "raw" / dataset
    if not raw.exists():
        assert shards_main(["synth", dataset, "--out", str(raw), "--num-videos", "2", *TINY_VIDEO]) == 0
    return raw


def tiny_shards(clone: Path) -> tuple[Path, Path]:
    """Train and val shard folders of tiny SSv2-layout clips under clone/tiny (made once)."""
    made = (clone / "tiny" / "train", clone / "tiny" / "val")
    for (split, clips), out in zip((("train", TRAIN_CLIPS), ("val", 4)), made, strict=True):
        if not out.exists():
            raw = out.with_name(f"raw-{split}")
            synth = ["synth", "ssv2", "--out", str(raw), "--num-videos", str(clips), "--splits", split]
            assert shards_main([*synth, *TINY_VIDEO]) == 0
            assert shards_main(["ssv2", "--root", str(raw), "--split", split, "--out", str(out)]) == 0
    return made


def raw_dataset(words: list[str], clone: Path) -> list[str]:
    """RAW -> a tiny raw dataset of the dataset the command names."""
    named = [word for word in words if word in WRITERS]
    assert named, f"`{' '.join(words)}`: RAW, but no dataset this test can synthesize is named"
    raw = str(tiny_dataset(clone, named[0]).relative_to(clone))
    return [raw if word == "RAW" else word for word in words]


def one_process(words: list[str], clone: Path) -> list[str]:
    """--nproc N -> --nproc 1."""
    at = words.index("--nproc") + 1
    return [*words[:at], "1", *words[at + 1 :]]


def tiny_training(words: list[str], clone: Path) -> list[str]:
    """The recipe on tiny shards, a tiny model, no pretrained weights, two steps (overrides go last)."""
    train, val = tiny_shards(clone)
    overrides = [f"data.train=[{train}]", f"data.val=[{val}]", "init.pretrained=null", "max_steps=2"]
    overrides += ["model.name=structvit_tiny_4_1", "data.num_frames=8", "data.crop_size=32"]
    return [*words, *overrides, "data.frame_stride=1", "data.batch_size=2", "data.workers=0"]


def tiny_image_training(words: list[str], clone: Path) -> list[str]:
    """An ImageNet recipe on tiny synthetic ImageNet shards (32 px), a tiny model, two steps."""
    raw, shards = clone / "tiny-imagenet" / "raw", clone / "tiny-imagenet"
    if not raw.exists():
        synth = ["synth", "imagenet", "--out", str(raw), "--num-videos", str(TRAIN_CLIPS), "--classes", "2"]
        assert shards_main([*synth, "--height", "40"]) == 0
        for split in ("train", "val"):
            assert (
                shards_main(["imagenet", "--root", str(raw), "--split", split, "--out", str(shards / split)])
                == 0
            )
    overrides = [f"data.train=[{shards / 'train'}]", f"data.val=[{shards / 'val'}]", "max_steps=2"]
    overrides += ["model.name=structvit_tiny_4_1", "data.crop_size=32", "data.short_side=36"]
    return [*words, *overrides, "data.batch_size=2", "data.workers=0"]


SMALL_IMAGE_RECIPE = re.compile(r"configs/(cifar10|cifar100|svhn|tinyimagenet)_vit_tiny")


def tiny_small_image_training(words: list[str], clone: Path) -> list[str]:
    """A CIFAR / SVHN / Tiny-ImageNet recipe on tiny synthetic shards of its dataset, two steps of one image
    (the recipe's 3 repeated views)."""
    match = SMALL_IMAGE_RECIPE.search(" ".join(words))
    assert match is not None
    dataset = match[1]
    raw, shards = clone / "tiny-small" / dataset / "raw", clone / "tiny-small" / dataset
    splits = ("train", "val" if dataset == "tinyimagenet" else "test")
    if not raw.exists():
        synth = ["synth", dataset, "--out", str(raw), "--num-videos", "6", "--classes", "3"]
        assert shards_main(synth) == 0
        for split in splits:
            assert (
                shards_main([dataset, "--root", str(raw), "--split", split, "--out", str(shards / split)])
                == 0
            )
    overrides = [f"data.train=[{shards / splits[0]}]", f"data.val=[{shards / splits[1]}]", "max_steps=2"]
    return [*words, *overrides, "data.batch_size=3", "data.workers=0"]


def dry_run(words: list[str], clone: Path) -> list[str]:
    """--dry-run added: the sbatch script is printed, nothing is submitted."""
    return [*words, "--dry-run"]


def trained_run(words: list[str], clone: Path) -> list[str]:
    """runs/NAME of a run no command made here -> the run the local training made."""
    made = sorted(path.parent.parent.name for path in (clone / "runs").glob("*/checkpoints/latest"))
    assert made, f"`{' '.join(words)}`: no earlier README command trained a run here"

    def swap(word: str) -> str:
        folder = re.match(r"runs/[^/]+", word)
        if folder is None or (clone / folder[0]).exists():
            return word
        return f"runs/{made[0]}{word[folder.end() :]}"

    return [swap(word) for word in words]


@dataclass(frozen=True)
class SafeForm:
    """Commands (a regex searched in the command's words) that run here in another form, and why."""

    pattern: str
    why: str
    rewrite: Callable[[list[str], Path], list[str]]


# Applied in this order, every entry that matches (--dry-run goes after the overrides, which argparse
# wants together).
SAFE_FORMS = (
    SafeForm(r"(^| )RAW( |$)", "RAW is a downloaded dataset", raw_dataset),
    SafeForm(r"^python launch/local\.py .*--nproc ", "a process per GPU; here 2 CPU cores", one_process),
    SafeForm(
        r"^python launch/(local|slurm)\.py .*--config (?!configs/((demo_)?imagenet|cifar|svhn|tinyimagenet))",
        "the recipes need real shards, pretrained weights and GPU-days",
        tiny_training,
    ),
    SafeForm(
        r"^python launch/(local|slurm)\.py .*--config configs/(demo_)?imagenet",
        "the ImageNet recipes need ImageNet and GPU-days",
        tiny_image_training,
    ),
    SafeForm(
        r"^python launch/local\.py .*--config configs/(cifar|svhn|tinyimagenet)",
        "the small-image recipes need the published sets and a GPU (100 epochs)",
        tiny_small_image_training,
    ),
    SafeForm(r"^python launch/slurm\.py ", "no Slurm here (tests/slurm submits to a real one)", dry_run),
    SafeForm(
        r"^python -m pipeline\.(export|train\.evaluate) ",
        "the README's run is the Slurm job's, which only dry-runs here",
        trained_run,
    ),
)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A stand-in for the clone's root after the set-up: the repository's files (linked), the set-up's
    virtual environment as .venv, and data/ and runs/ of its own (the real ones are left alone)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("not run inside the set-up's virtual environment (bash scripts/test.sh)")
    for entry in REPO.iterdir():
        if entry.name not in ("data", "runs", ".venv"):
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / ".venv").symlink_to(sys.prefix)
    return tmp_path


def new_shell_environment() -> dict[str, str]:
    """This process's environment as a new shell has it: no virtual environment on PATH, no set-up
    variables."""
    venv = Path(sys.prefix).resolve()
    env = {name: value for name, value in os.environ.items() if name not in SETUP_VARIABLES}
    paths = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(path for path in paths if not Path(path).resolve().is_relative_to(venv))
    return env


def run_entered(enter: str, command: str, clone: Path) -> subprocess.CompletedProcess:
    """`command` in a fresh bash that first enters the environment with the README's line."""
    try:
        return subprocess.run(
            ["bash", "-c", f"set -e\n{enter}\n{command}"],
            cwd=clone,
            env=new_shell_environment(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` ran over {COMMAND_TIMEOUT_S} s: give it a smaller form in SAFE_FORMS")


def test_setup_block_names_the_scripts_that_print_the_enter_line() -> None:
    setup, enter, _ = split_readme()
    assert sorted(c.text for c in setup) == sorted(SETUP_COMMANDS)
    for command in SETUP_COMMANDS:
        script = REPO / command.split()[-1]
        assert script.is_file(), f"README's set-up runs {script.name}, which does not exist"
        assert enter in script.read_text(encoding="utf-8"), f"{script.name} does not print `{enter}`"


@pytest.mark.slow
def test_readme_commands_run_after_the_setup(clone: Path) -> None:
    _, enter, commands = split_readme()
    used: set[str] = set()
    for command in commands:
        words, forms = list(command.words), []
        for form in SAFE_FORMS:
            if re.search(form.pattern, " ".join(words)):
                words = form.rewrite(words, clone)
                forms.append(form)
                used.add(form.pattern)
        typed = shlex.join(words) if forms else command.line
        result = run_entered(enter, typed, clone)
        why = "; ".join(form.why for form in forms) or "as written"
        assert result.returncode == 0, (
            f"README command `{command.line}` failed (exit {result.returncode}), run as `{typed}` ({why}); "
            f"a command that cannot run here needs an entry in SAFE_FORMS:\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )
    unused = [form.pattern for form in SAFE_FORMS if form.pattern not in used]
    assert not unused, f"SAFE_FORMS entries no README command needs any more: {unused}"


@pytest.mark.slow
def test_entry_points_answer_help_in_the_entered_environment(clone: Path) -> None:
    _, enter, _ = split_readme()
    helps = [
        "python -m shards --help",
        "python launch/local.py --help",
        "python -m pipeline.export --help",
        "python -m pipeline.train.evaluate --help",
    ]
    result = run_entered(enter, "\n".join(helps), clone)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("usage:") == len(helps), result.stdout
