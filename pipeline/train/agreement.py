"""Decisions every rank must share: rank 0 decides (or fails) once, every rank follows with the same
result or the same one-line error."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

from pipeline.config import ConfigError

T = TypeVar("T")


class RankAgreedError(ConfigError):
    """A one-line error every rank raised together; the entry points print it on rank 0 only."""

    agreed_by_all_ranks = True


def on_rank0(action: Callable[[], T], errors: tuple[type[Exception], ...] = (ConfigError,)) -> T:
    """Run `action()` on rank 0 and hand its result to every rank; an exception of `errors` is raised on
    every rank as a RankAgreedError with the same line."""
    box: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", action())]
        except errors as err:
            box = [("error", str(err))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        raise RankAgreedError(value)
    return value
