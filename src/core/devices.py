"""The torch device a stage's models run on, from `hardware.device`."""

from __future__ import annotations

import torch

from src.config import Config, Device
from src.core.errors import StageError


def device_for(cfg: Config) -> torch.device:
    """CUDA when the config asks for it and a GPU is visible (else a clear error), else CPU."""
    if cfg.hardware.device == Device.cuda:
        if not torch.cuda.is_available():
            raise StageError(
                f"hardware={cfg.hardware.name} asks for CUDA, but no GPU is visible; use hardware=cpu"
            )
        return torch.device("cuda")
    return torch.device("cpu")
