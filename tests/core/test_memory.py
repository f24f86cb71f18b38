"""src/core/memory.py: where glibc serves a stage's large blocks from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from src.config import REPO_ROOT
from src.core import memory

# In a fresh interpreter (this one's heap may hold a free block that large, which glibc would
# reuse whatever its settings): the bytes glibc maps on its own (mallinfo2's hblkhd) while a block
# over its largest dynamic mmap threshold (32 MiB) is allocated, outside heap_only, inside, after.
MAPPED = """
import ctypes, json
from src.core import memory
libc = memory.glibc()
libc.malloc.restype = ctypes.c_void_p
def mapped():
    block = libc.malloc(64 * 2**20)
    held = memory.mallinfo2().hblkhd
    libc.free(ctypes.c_void_p(block))
    return held
outside = mapped()
with memory.heap_only():
    inside = mapped()
print(json.dumps([outside, inside, mapped()]))
"""


@pytest.mark.skipif(memory.mallinfo2() is None, reason="glibc 2.33 or later only")
def test_heap_only_serves_large_blocks_from_the_heap_and_then_gives_mmap_back():
    out = subprocess.run([sys.executable, "-c", MAPPED], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    outside, inside, after = json.loads(out.stdout)
    assert outside >= 64 * 2**20
    assert inside < 64 * 2**20  # from the heap: no fresh pages faulted in per forward
    assert after >= 64 * 2**20  # glibc's defaults again
