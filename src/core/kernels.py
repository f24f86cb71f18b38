"""The CPU kernels torch, MKL and oneDNN run, pinned to AVX2 wherever the CPU has it.

torch chooses its vectorised kernels (softmax, norms, activations, reductions) by the widest
vector set the CPU has, and oneDNN (float32 exact GELU) and MKL (matrix products, on Intel CPUs)
likewise: an AVX-512 machine sums floats in another order than an AVX2 one, its samples drift
from the first differing digit on, and the tiny models' builds, the demo's win rates and the
tests' thresholds come out different (one AVX-512 machine trained a tiny-chat-judge agreeing with
its rule on 0.786 of verdicts where AVX2 machines reach 0.8; pinned, 0.863). Pinned, an AVX-512
machine makes an AVX2 machine's digits in four of the demo's five figures (docs/results.md: the
fifth, iteration 3, still differs by 0.013). The cost falls on the CPU alone, a GPU's kernels are
untouched: the wider vectors, and oneDNN's bfloat16 kernels, which at AVX2 are its reference ones
(the bf16 training test on CPU 30 -> 41 s).

`pin()` runs when the package `src` is imported, so before any of its commands, workers or
tests loads torch (each library reads its setting once, when it loads). A user's own setting is
kept: `ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=AUTO ONEDNN_MAX_CPU_ISA=ALL` runs the CPU's own widest
kernels.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from src.core.machine import cpu_info

# torch's own kernels (ATen), MKL's matrix products (its conditional numerical reproducibility)
# and oneDNN's (exact GELU in float32 runs there), each at AVX2
PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NEEDS = {"avx2", "fma"}


def pin(env: MutableMapping[str, str] = os.environ, flags: set[str] | None = None) -> dict:
    """Set PINS in `env` where the CPU has AVX2 and FMA and the user has not set them; returns
    what it set."""
    chosen = {key: value for key, value in PINS.items() if not env.get(key)}
    if not chosen:  # a child process: its parent pinned them (or the user chose), no CPU to read
        return {}
    if not NEEDS.issubset(cpu_info()[1] if flags is None else flags):
        return {}
    env.update(chosen)
    return chosen
