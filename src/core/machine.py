"""The machine a stage ran on, as its record names it: what makes the last digits of a figure
differ between two machines running the same config (docs/results.md); and which node of a
training on several nodes it is."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

# the vector instruction sets BLAS and torch choose their kernels by: a float sum's order, and so
# its last digits, can differ between machines that differ in them
VECTOR_SETS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from its first processor's lines (the platform's
    processor name and no flags where /proc/cpuinfo does not say: not Linux on x86)."""
    cpu, flags = platform.processor(), set()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return cpu, flags


def machine() -> dict:
    """What makes a stage's float sums, and so its last digits, differ from another machine's:
    the CPU, its vector instruction sets and the ones torch's kernels run (src/core/kernels.py
    pins them to AVX2), torch's thread count (None: torch not loaded), and the GPU where this
    process uses one."""
    cpu, flags = cpu_info()
    torch = sys.modules.get("torch")
    gpu = None
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.get_device_name()
    return {
        "cpu": cpu,
        "vector_sets": [s for s in VECTOR_SETS if s in flags],
        "cpu_kernels": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "gpu": gpu,
    }


def node_rank() -> str | None:
    """This node's rank among the training's nodes: SLURM's (one srun task per node), else
    NODE_RANK as set by hand."""
    return os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK"))
