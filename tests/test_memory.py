"""src/core/memory.py: where glibc serves a stage's large blocks from."""

from __future__ import annotations

import pytest
import torch

from src.core import memory

BLOCK = 64 * 2**20  # over glibc's largest dynamic mmap threshold (32 MiB): mmapped by default


def mapped_by_a_large_block() -> int:
    """The bytes glibc maps on its own (mallinfo2's hblkhd) while a BLOCK tensor is alive."""
    block = torch.empty(BLOCK, dtype=torch.uint8)
    mapped = memory.mallinfo2().hblkhd
    del block
    return mapped


@pytest.mark.skipif(memory.mallinfo2() is None, reason="glibc 2.33 or later only")
def test_heap_only_serves_large_blocks_from_the_heap_and_then_gives_mmap_back():
    before = memory.mallinfo2().hblkhd
    assert mapped_by_a_large_block() >= before + BLOCK
    with memory.heap_only():
        assert mapped_by_a_large_block() < before + BLOCK  # no fresh pages faulted in per forward
    assert mapped_by_a_large_block() >= before + BLOCK  # glibc's defaults again
