"""src/core/kernels.py: torch's and MKL's CPU kernels pinned to AVX2 before torch loads, so a
machine with AVX-512 makes the bytes an AVX2 machine makes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from src.config import REPO_ROOT
from src.core import kernels
from src.core.machine import cpu_info

HAS_AVX2 = kernels.NEEDS.issubset(cpu_info()[1])


def test_the_pin_fills_in_only_what_the_user_left_unset_on_a_cpu_with_avx2():
    env: dict[str, str] = {}
    assert kernels.pin(env, {"avx2", "fma", "avx512f"}) == kernels.PINS == env
    mine = {"ATEN_CPU_CAPABILITY": "avx512"}
    others = {k: v for k, v in kernels.PINS.items() if k != "ATEN_CPU_CAPABILITY"}
    assert kernels.pin(mine, {"avx2", "fma", "avx512f"}) == others
    assert mine["ATEN_CPU_CAPABILITY"] == "avx512"
    nothing: dict[str, str] = {}
    assert kernels.pin(nothing, {"sse4_2"}) == {} == nothing  # no AVX2: the CPU's own
    assert kernels.pin(nothing, set()) == {}  # not x86 Linux


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 and FMA: nothing is pinned")
def test_every_process_of_the_project_runs_avx2_kernels():
    """Importing `src` pins the kernels before torch loads: a fresh interpreter runs AVX2 whatever
    its CPU's widest set, and so does this test session (its figures are the pinned ones)."""
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    env = {k: v for k, v in os.environ.items() if k not in kernels.PINS}
    code = "import src, torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["AVX2"]
