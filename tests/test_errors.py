"""The error kinds: their table, the README's copy of it, the one line an entry point prints, and the
kind an error keeps when rank 0 raises it for every rank."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch.distributed as dist

from pipeline import storage
from pipeline.config import ConfigError, read_yaml
from pipeline.data.loader import BadDataError
from pipeline.errors import (
    OUTCOMES,
    DataError,
    DivergenceError,
    Interrupted,
    RunError,
    StorageError,
    outcome,
    report,
)
from pipeline.train.agreement import on_rank0
from pipeline.train.run_lock import RunBusyError
from shards.folder import OutputError
from shards.records import AnnotationError

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_HEADER = "| error | exit status | Slurm requeues | for example |"


def readme_error_rows() -> dict[str, tuple[int, bool]]:
    """The README's table of errors: class name -> (exit status, requeued)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE_HEADER) + 2  # after the header and its |---| line
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, status, requeued = (cell.strip() for cell in line.strip("|").split("|")[:3])
        assert requeued in ("yes", "no"), line
        rows[re.fullmatch(r"`(\w+)`", name).group(1)] = (int(status), requeued == "yes")
    return rows


def test_the_readme_table_of_errors_is_the_code_table() -> None:
    code = {cls.__name__: (row.exit_status, row.requeued) for cls, row in OUTCOMES.items()}
    assert readme_error_rows() == code


def test_a_divergence_is_not_a_configuration_error() -> None:
    assert not issubclass(DivergenceError, ConfigError)
    assert outcome(DivergenceError("diverged")).exit_status not in (0, outcome(ConfigError("x")).exit_status)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BadDataError("too many bad samples"), DataError),
        (AnnotationError("labels.csv:3: no label"), DataError),
        (OutputError("--out x is a file"), StorageError),
        (storage.StorageError("s3://bucket/train", "no such bucket", "missing bucket"), StorageError),
        (RunBusyError("held by pid 1"), ConfigError),
    ],
)
def test_an_error_takes_the_row_of_its_kind(error: RunError, kind: type[RunError]) -> None:
    assert outcome(error) == OUTCOMES[kind]


def test_only_an_interruption_is_requeued() -> None:
    assert [cls for cls, row in OUTCOMES.items() if row.requeued] == [Interrupted]


def test_report_prints_one_line_and_returns_the_kinds_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        read_yaml(tmp_path / "missing.yaml")
    assert report(caught.value, prog="tool") == 2
    assert capsys.readouterr().err == f"tool: error: config file not found: {tmp_path / 'missing.yaml'}\n"
    assert report(StorageError("no room\n  in /x")) == 2
    assert capsys.readouterr().err == "error: no room in /x\n"


def test_an_error_every_rank_raised_is_printed_by_rank_0_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    diverged = DivergenceError("training diverged at step 3", every_rank=True)
    monkeypatch.setenv("RANK", "1")
    assert report(diverged) == 3 and capsys.readouterr().err == ""
    assert report(DataError("rank 1's data")) == 2 and capsys.readouterr().err == "error: rank 1's data\n"
    monkeypatch.setenv("RANK", "0")
    assert report(diverged) == 3 and capsys.readouterr().err == "error: training diverged at step 3\n"


@pytest.fixture
def process_group() -> object:
    """A one-rank gloo process group (what `on_rank0` broadcasts over)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_rank_0s_error_reaches_every_rank_as_its_kind_marked_every_rank(process_group: object) -> None:
    def refuse() -> None:
        raise StorageError("cannot save checkpoint step_00000004: disk full")

    with pytest.raises(StorageError, match=r"^cannot save checkpoint step_00000004: disk full$") as caught:
        on_rank0(refuse)
    assert caught.value.every_rank and not StorageError("x").every_rank

    def unreachable() -> None:  # an error with its own arguments crosses as itself
        raise storage.StorageError("s3://bucket/train", "the store did not answer", "timeout")

    with pytest.raises(storage.StorageError) as caught:
        on_rank0(unreachable)
    crossed = caught.value
    assert (crossed.url, crossed.cause, crossed.every_rank) == ("s3://bucket/train", "timeout", True)
    assert on_rank0(lambda: 7) == 7
