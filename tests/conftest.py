"""Shared test set-up: no test may touch the network, so every hub client is offline."""

import os

import pytest

from src.core import threads
from tests.slurm_cluster import slurm_cluster, two_nodes  # noqa: F401  (the session SLURM cluster)

threads.configure()  # as python -m src.main does, before any test loads torch

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-compiles a communication op on first use (~20 s): compile it once, keep it
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    os.path.join(os.path.dirname(__file__), "..", ".cache", "torch_extensions"),
)


@pytest.fixture(scope="session")
def tiny_dir():
    """The folder holding the tiny models, built once into <repo>/.cache/tiny and reused."""
    from src import tiny

    for name in tiny.TINY_NAMES:
        tiny.ensure(name, tiny.DEFAULT_CACHE_DIR)
    return tiny.DEFAULT_CACHE_DIR
