"""What a dataset reader hands the writer: one `Record` per annotation row, plus the label map.

`shards.datasets.read_split` turns the rows a reader (one module per dataset) finds in a publisher's
raw layout into a `DatasetIndex`; the writer never looks at annotation files. A row whose video file
does not exist is listed in `missing` (it is not a Record). A row that cannot be parsed (malformed
line, unknown label) is a reject with its reason: it is reported, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


class AnnotationError(DataError):
    """An annotation file that cannot be read at all (missing, unreadable, wrong format).

    Its message is one line naming the file; the CLI prints it and exits non-zero.
    """


@dataclass(frozen=True)
class Record:
    """One clip to write.

    id: the dataset's own id (may contain '-' and '_', never '.'); unique within a split.
    label: class index, -1 when unlabelled (test splits).
    source: the raw video file.
    start_s / end_s: the window to cut from `source` in seconds (None: the whole file).
    extras: dataset-specific fields copied into the sample's json (SSv2 template/placeholders,
      FineGym event/stages, Kinetics times).
    content: the media's bytes when `source` holds many samples (CIFAR batches, SVHN .mat); None: read
      `source` itself.
    """

    id: str
    label: int
    label_name: str
    source: Path
    start_s: float | None = None
    end_s: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None

    @property
    def needs_trim(self) -> bool:
        return self.start_s is not None or self.end_s is not None


@dataclass(frozen=True)
class Reject:
    """A row or clip that will not be written, with a one-line reason."""

    id: str
    source: str
    reason: str


@dataclass
class DatasetIndex:
    """Everything `read_split` found for one dataset split."""

    dataset: str
    split: str
    records: list[Record]
    label_map: dict[int, str]
    missing: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    root: Path = Path(".")
