"""A stage's memory: glibc's heap kept from creeping (a fixed mmap threshold), and the peak a
stage reaches above where it began (`Peak`), which the stages report beside the plan's figure.

glibc serves an allocation over its mmap threshold (128 KiB) with pages of its own and returns
them when it is freed, but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB). After the first batch of a stage frees its activations, every later
activation, tokenizer buffer and chunk of rows of that size comes from the heap instead, whose
holes do not go back to the system: a stage's resident memory then grows with the prompts it has
processed. Measured on the rank stage (tiny reward model, 4 kB responses, K = 5): peak 482 MB at
200 prompts, 505 MB at 2,000; with the threshold fixed, 458 and 460 MB (tests/test_scale.py).

`pin_mmap_threshold()` runs in `python -m src.main` before any work: it fixes the threshold for
this process (mallopt, which also stops the adjustment) and, through MALLOC_MMAP_THRESHOLD_, for
the processes it starts (training workers, vLLM's engine) — unless the user set that variable,
which glibc then applied itself.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
THRESHOLD = 128 * 1024  # glibc's own starting value


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at THRESHOLD; False where this is not glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(THRESHOLD)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))


class Peak:
    """The peak memory of a stretch of a stage above what the process held when it began: on a
    GPU torch's peak allocation (the plan's "peak allocated"), on CPU the resident set's
    high-water mark (VmHWM, which Linux resets on `clear_refs` = 5). `bytes()` is None where it
    cannot be known (another kernel, or the reset refused)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            import torch

            if not torch.cuda.is_available():  # the stage itself says there is no GPU
                self.start = None
                return
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return
        self.start = status_bytes("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.start = None

    def bytes(self) -> int | None:
        if self.start is None:
            return None
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() - self.start
        peak = status_bytes("VmHWM")
        return None if peak is None else peak - self.start


def status_bytes(field: str) -> int | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
