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


@pytest.fixture
def alpaca_eval_offline(tmp_path, monkeypatch):
    """alpaca_eval's glm_winrate module, its one Hub download answered by a local df_gamed.csv
    (AlpacaEval's gamed baselines and instruction difficulties, which the minimal GLM does not
    read: only the columns it indexes, made up here)."""
    import numpy as np
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    from tests.helpers import ALPACA_EVAL_INSTRUCTIONS

    gamed = tmp_path / "df_gamed.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "index": np.arange(ALPACA_EVAL_INSTRUCTIONS),
            "instruction_difficulty": rng.normal(0, 1, ALPACA_EVAL_INSTRUCTIONS),
            "model": "gamed",
        }
    ).to_csv(gamed, index=False)

    def download(repo_id, filename, **_):
        assert (repo_id, filename) == ("tatsu-lab/alpaca_eval", "df_gamed.csv")
        return str(gamed)

    monkeypatch.setattr(glm_winrate, "hf_hub_download", download)
    return glm_winrate
