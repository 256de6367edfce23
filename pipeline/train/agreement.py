"""Decisions every rank must share: rank 0 decides (or fails) once, every rank follows with the same
result or the same one-line error."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

from pipeline.errors import RunError

T = TypeVar("T")


def on_rank0(action: Callable[[], T]) -> T:
    """Run `action()` on rank 0 and hand its result to every rank; a RunError it raises is raised on
    every rank, of the same kind and line, marked `every_rank`."""
    box: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", action())]
        except RunError as err:
            box = [("error", err)]  # pickled without its traceback
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        value.every_rank = True  # type: ignore[union-attr]
        raise value  # type: ignore[misc]
    return value
