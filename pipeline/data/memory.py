"""Finished batches from memory that the last batches freed, not from fresh mappings.

glibc's malloc serves a block above its mmap threshold (which adapts, but never beyond 32 MiB) with a
fresh mapping and unmaps it when it is freed. A finished batch is larger than that (4 float clips of
16x224 are 38 MiB), so every batch was mapped afresh and page-faulted in, page by page: normalising a
batch was mostly page faults, little arithmetic. With the thresholds raised, freed batches stay in the
heap and the next batch reuses them; the process keeps at most its peak. The batch is allocated by NumPy
(plain malloc) rather than torch, whose 64-byte-aligned requests do not always fit the block the last
batch freed and then grow the heap instead: no page faults (tests/data/test_memory.py; the times are in
the README, from bench/loader.py --profile, "main process").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np
import torch

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGE_BLOCK = 1 << 30  # blocks up to 1 GiB come from the heap and stay there once freed


@functools.cache
def keep_large_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds to LARGE_BLOCK in this process, once; False where the C
    library is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)) and bool(mallopt(M_TRIM_THRESHOLD, LARGE_BLOCK))


def empty_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 CPU tensor of `shape` for a finished batch, reusing freed batches' memory."""
    keep_large_blocks()
    return torch.from_numpy(np.empty(shape, dtype=np.float32))
