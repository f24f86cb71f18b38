"""The torch device a stage's models run on, from `hardware.device`; why CUDA is not usable where
it is not; and what the stages need to know of the GPU before they use it, read without a CUDA
context in this process."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import torch

from src.core.errors import EnvironmentFailure, StageError

# The oldest Linux driver each CUDA major version's builds run on (CUDA's minor-version
# compatibility): torch 2.11 and vLLM 0.26, the `cuda` set, are CUDA 13 builds
MIN_DRIVER = {13: (580,), 12: (525, 60, 13), 11: (450, 80, 2)}


def device_for(device: str, hardware: str) -> torch.device:
    """CUDA when `device` (`hardware.device` of the hardware named `hardware`) asks for it and a
    GPU is usable (else one line saying why: exit 3, the environment), else CPU."""
    if str(device) == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentFailure(f"hardware={hardware} asks for CUDA, but {cuda_unusable()}")
        return torch.device("cuda")
    return torch.device("cpu")


def cuda_unusable() -> str:
    """Why torch cannot use CUDA here, and what to do: a CPU build of torch, no NVIDIA driver, a
    driver older than torch's CUDA needs, or no GPU given to this process."""
    built_for = torch.version.cuda
    if built_for is None:
        return (
            f"torch {torch.__version__} is a CPU build: on a GPU node `make install` installs its "
            "CUDA build (where nvidia-smi runs); or use hardware=cpu"
        )
    driver = driver_version()
    if driver is None:
        return "no GPU is visible (no NVIDIA driver: nvidia-smi is not on PATH); use hardware=cpu"
    needed = MIN_DRIVER.get(int(built_for.split(".")[0]))
    if needed is not None and version_tuple(driver) < needed:
        return (
            f"the NVIDIA driver here is {driver}, older than the "
            f"{'.'.join(map(str, needed))} that torch {torch.__version__} (CUDA {built_for}) "
            "needs: update the driver, or install a torch built for the CUDA this driver runs "
            "(docs/installation.md)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    given = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
    return (
        f"torch sees no GPU (NVIDIA driver {driver}{given}): check the GPUs this job was given, "
        "or use hardware=cpu"
    )


def driver_version() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it (None: no nvidia-smi, or it fails)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.split()
    return lines[0] if result.returncode == 0 and lines else None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


# What a throw-away process reads of the first visible GPU (the one a stage uses)
PROBE = (
    "import json, torch; free, total = torch.cuda.mem_get_info(); "
    "print(json.dumps({'free': free, 'total': total, 'bf16': torch.cuda.is_bf16_supported()}))"
)


def gpu_state() -> dict:
    """The first visible GPU's free and total memory (bytes) and whether it computes in bf16,
    read now by a throw-away process: a CUDA context opened in this one stays for its life
    (~0.5 GB of the GPU that a vLLM engine started later counts as taken, and vLLM then spawns
    its workers instead of forking). Call only where torch.cuda.is_available()."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        raise StageError("reading the GPU's memory took more than 5 minutes") from None
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise StageError(f"reading the GPU's memory failed: {why}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@functools.cache
def gpu_computes_bf16() -> bool:
    return bool(gpu_state()["bf16"])
