"""The tiny offline models and the toy task they learn (see src/tiny/models.py)."""

from src.tiny.models import (
    DEFAULT_CACHE_DIR,
    PIPELINE_NAMES,
    RECORD,
    TINY_NAMES,
    build,
    ensure,
    is_built,
    main,
    training_texts,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "PIPELINE_NAMES",
    "RECORD",
    "TINY_NAMES",
    "build",
    "ensure",
    "is_built",
    "main",
    "training_texts",
]
