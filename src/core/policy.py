"""The policy every stage of iteration t starts from: pi_{t-1}, and the tokens that end its turn."""

from __future__ import annotations

from pathlib import Path

from src.config import Config
from src.core.errors import StageError


def require_previous_policy(cfg: Config) -> str:
    """pi_{t-1}'s path; for t > 1 it must be iteration t-1's checkpoint, already trained."""
    path = cfg.run.init_policy
    if cfg.iter > 1 and not Path(path).is_dir():
        raise StageError(
            f"iteration {cfg.iter} starts from iteration {cfg.iter - 1}'s checkpoint, which does "
            f"not exist: {path} (run: python -m src.main iter={cfg.iter - 1})"
        )
    return path


def end_of_turn_ids(path: str, tokenizer) -> list[int]:
    """The ids that end the assistant's turn: the generation config's EOS list (Gemma: <eos> and
    <end_of_turn>), else the tokenizer's EOS."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # a checkpoint saved without generation_config.json
        eos = None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
