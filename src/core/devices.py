"""The torch device a stage's models run on, from `hardware.device`."""

from __future__ import annotations

import torch

from src.core.errors import StageError


def device_for(device: str, hardware: str) -> torch.device:
    """CUDA when `device` (`hardware.device` of the hardware named `hardware`) asks for it and a
    GPU is visible (else a clear error), else CPU."""
    if str(device) == "cuda":
        if not torch.cuda.is_available():
            raise StageError(
                f"hardware={hardware} asks for CUDA, but no GPU is visible; use hardware=cpu"
            )
        return torch.device("cuda")
    return torch.device("cpu")
