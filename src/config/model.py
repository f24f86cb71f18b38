"""`model`: the policy model (conf/model/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from src.config.checks import check_path_component


@dataclass
class ModelConfig:
    """A policy model (conf/model/)."""

    name: str  # short name, used in run directories
    path: str  # hub id or local directory (tiny models: built into paths.tiny_dir on demand)
    # Gemma-2 trains best with eager attention (logit soft-capping); null: transformers' default
    attn_implementation: str | None = None
    trust_remote_code: bool = False  # run the model repository's own code (transformers)
    revision: str | None = None  # the hub branch, tag or commit to load; null: the default

    def __post_init__(self) -> None:
        check_path_component("model.name", self.name)

    @property
    def loading(self) -> dict[str, Any]:
        """The `from_pretrained` arguments every load of this model's policies takes."""
        return {
            "attn_implementation": self.attn_implementation,
            "trust_remote_code": self.trust_remote_code,
            "revision": self.revision,
        }
