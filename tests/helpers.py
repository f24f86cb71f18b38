"""Helpers shared by the tests: compose the project's config exactly as `python -m src.main` does."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from src.config import REPO_ROOT, Config, validate

CONF = REPO_ROOT / "conf"


def compose_raw(*overrides: str, hydra_node: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def compose_cfg(*overrides: str) -> Config:
    return validate(compose_raw(*overrides))
