"""The main process finishes batches into memory freed by earlier batches, not into fresh mappings."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.data.memory import empty_batch, keep_large_blocks

# Page faults per page of a 64 MiB batch in a steady loop that keeps the newest three alive (as a
# training step holds its batch while the loader finishes the next), in a fresh process.
FAULTS_PER_PAGE = """
import resource, sys, torch
from pipeline.data.memory import empty_batch
torch.set_num_threads(1)  # as the loader finishes batches
allocate = empty_batch if sys.argv[1] == "empty_batch" else torch.empty
held = []
for step in range(30):
    if step == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = held[-2:] + [allocate((16, 1 << 20)).fill_(1.0)]
    small = [bytes(100) for _ in range(50)]  # small allocations between batches, as in a real loop
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults / 20 / ((64 << 20) // 4096))
"""


def faults_per_page(allocate: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_PAGE, allocate], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(not keep_large_blocks(), reason="needs glibc's malloc")
def test_batches_reuse_freed_memory_instead_of_faulting_it_in() -> None:
    assert faults_per_page("torch.empty") > 0.9  # glibc maps each batch afresh: every page faults again
    assert faults_per_page("empty_batch") < 0.01


def test_empty_batch_is_a_float_tensor_of_the_shape() -> None:
    batch = empty_batch((2, 3, 4, 5))
    assert batch.dtype == torch.float32 and batch.shape == (2, 3, 4, 5) and batch.is_contiguous()
