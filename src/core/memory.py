"""A stage's memory: glibc's heap kept from creeping (a fixed mmap threshold), and the peak a
stage reaches above where it began (`Peak`), which the stages report beside the plan's figure.

glibc serves an allocation over its mmap threshold (128 KiB) with pages of its own and returns
them when it is freed, but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB). After the first batch of a stage frees its activations, every later
activation, tokenizer buffer and chunk of rows of that size comes from the heap instead, whose
holes do not go back to the system: a stage's resident memory then grows with the prompts it has
processed. Measured on the rank stage (tiny reward model, 4 kB responses, K = 5): peak 482 MB at
200 prompts, 505 MB at 2,000; with the threshold fixed, 458 and 460 MB (tests/stages/test_scale.py).

`pin_mmap_threshold()` runs in `python -m src.main` before any work: it fixes the threshold for
this process (mallopt, which also stops the adjustment) and, through MALLOC_MMAP_THRESHOLD_, for
the processes it starts (training workers, vLLM's engine) — unless the user set that variable,
which glibc then applied itself.

`heap_only()` is the opposite trade for a stretch that frees and allocates the same large blocks
over and over (PairRM's attention temporaries on a CPU, src/ranking/pairrm.py): above the fixed
threshold each such block is an mmap of fresh pages that the kernel faults in and zeroes at every
forward. Inside it glibc serves everything from its heap and keeps what it freed; leaving it gives
the heap back (malloc_trim), so what the stretch held does not stay with the process.

`OPTIMIZER_SLICE` bounds a training step's fp32 temporaries: the optimizers for bf16 weights
(src/training/optimizers.py) step a parameter that many elements at a time, and the planner's
memory model (src/plan/memory.py), which runs without torch, reads the same figure.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameters (malloc.h)
THRESHOLD = 128 * 1024  # glibc's own starting value (of both thresholds)
MMAP_MAX = 65536  # glibc's default number of mmapped blocks
MMAP_THRESHOLD_VAR = "MALLOC_MMAP_THRESHOLD_"  # what glibc reads at a process's start
OPTIMIZER_SLICE = 1 << 24  # elements a step's slice holds: 64 MiB each in fp32


def glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at THRESHOLD; False where this is not glibc."""
    if MMAP_THRESHOLD_VAR in os.environ:
        return True
    if (libc := glibc()) is None:
        return False
    os.environ[MMAP_THRESHOLD_VAR] = str(THRESHOLD)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))


@contextmanager
def heap_only() -> Iterator[None]:
    """glibc serves every allocation from its heap and trims nothing until the block ends; then
    its settings are glibc's defaults again (trim threshold THRESHOLD, mmap allowed) and the
    heap's free memory goes back to the system. Nothing changes where this is not glibc."""
    libc = glibc()
    if libc is None or not libc.mallopt(M_MMAP_MAX, 0):
        yield
        return
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # an int: 2 GB of free heap top, kept
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
        libc.malloc_trim(0)


class Peak:
    """The peak memory of a stretch of a stage above what the process held when it began: on a
    GPU torch's peak allocation (the plan's "peak allocated"), on CPU the resident set's
    high-water mark (VmHWM, which Linux resets on `clear_refs` = 5). `bytes()` is None where it
    cannot be known (another kernel, or the reset refused).

    `lap()` splits the stretch into parts (a training step's phases, src/training/memory_phases.py):
    the peak and what is held since the last lap, then the high-water mark reset; `bytes()` stays
    the peak of the whole stretch. On CPU a lap also says what glibc has `allocated` (its bytes in
    use): the tensors themselves, as torch's allocation counts them on a GPU, where the resident
    set does not grow when they reuse memory the process freed earlier."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.earlier = 0  # the largest peak of the laps before the current one, above `start`
        if cuda:
            import torch

            if not torch.cuda.is_available():  # the stage itself says there is no GPU
                self.start = None
                return
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return
        self.start = status_bytes("VmRSS")
        self.start_allocated = malloc_in_use()
        if not reset_high_water_mark():
            self.start = None

    def bytes(self) -> int | None:
        if self.start is None:
            return None
        peak = self._now()[0]
        return None if peak is None else max(self.earlier, peak)

    def lap(self) -> dict[str, int] | None:
        """Since the last lap (or the start): `peak`, and what is `held` now, above `start`
        (bytes; on a GPU also torch's `reserved_peak`, on CPU glibc's `allocated`); the
        high-water mark then starts again from what is held. None where the peak cannot be
        known."""
        if self.start is None:
            return None
        peak, held, reserved = self._now()
        if peak is None or held is None:
            return None
        self.earlier = max(self.earlier, peak)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif not reset_high_water_mark():
            self.start = None  # the mark can no longer be reset: from here on, not known
        out = {"peak": peak, "held": held}
        if reserved is not None:
            out["reserved_peak"] = reserved
        allocated = None if self.cuda else malloc_in_use()
        if allocated is not None and self.start_allocated is not None:
            out["allocated"] = allocated - self.start_allocated
        return out

    def _now(self) -> tuple[int | None, int | None, int | None]:
        """(peak, held, peak reserved) above `start`, read together: the peak is never below
        what is held."""
        if self.cuda:
            import torch

            held = torch.cuda.memory_allocated()
            return (
                torch.cuda.max_memory_allocated() - self.start,
                held - self.start,
                torch.cuda.max_memory_reserved() - self.start,
            )
        fields = status_fields("VmHWM", "VmRSS")
        peak, held = fields.get("VmHWM"), fields.get("VmRSS")
        return (
            None if peak is None else peak - self.start,
            None if held is None else held - self.start,
            None,
        )


def malloc_in_use() -> int | None:
    """glibc's bytes in use: its heaps' allocated chunks and the blocks it mapped on its own
    (mallinfo2); None where this is not glibc 2.33 or later."""
    info = mallinfo2()
    return None if info is None else info.uordblks + info.hblkhd


def mallinfo2() -> Mallinfo2 | None:
    """glibc's allocation statistics; None where this is not glibc 2.33 or later."""
    global _MALLINFO2
    if _MALLINFO2 is None:
        libc = glibc()
        _MALLINFO2 = getattr(libc, "mallinfo2", False) if libc is not None else False
        if _MALLINFO2:
            _MALLINFO2.restype = Mallinfo2
    return _MALLINFO2() if _MALLINFO2 else None


class Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_MALLINFO2 = None  # glibc's mallinfo2, looked up once (False: not there)


def reset_high_water_mark() -> bool:
    """VmHWM set back to the resident set now; False where Linux refuses it (or is not here)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def status_bytes(field: str) -> int | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is none."""
    return status_fields(field).get(field)


def status_fields(*names: str) -> dict[str, int]:
    """Fields of /proc/self/status (VmRSS, VmHWM) in bytes, read at once; those missing are
    left out."""
    found = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name in names:
                found[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found
