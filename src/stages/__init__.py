"""The stages of an iteration, one module each: generate, rank, pairs, train, eval. What each one
is to the rest of the project (its inputs, order, sharding, GPUs, whether it launches processes
of its own) is declared in src/core/registry.py; what it does is its module's `run(cfg)`, which
reads setup -> run -> cleanup and returns the figures its W&B run and record keep (cards.py: the
model card that train and eval write beside the checkpoint). The scheduler (src/schedule.py)
owns what surrounds every stage: its lock, its saved config, its W&B run, its record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from src.core.registry import Stage

if TYPE_CHECKING:
    from src.config import Config


class StageRun(Protocol):
    def __call__(self, cfg: Config, /) -> dict: ...


def stage_run(stage: Stage) -> StageRun:
    """`stage`'s run, its module imported here, when it is about to run: a command that runs
    pairs alone does not wait ~6 s for torch, the Trainer and alpaca_eval."""
    if stage == Stage.generate:
        from src.stages import generate as module
    elif stage == Stage.rank:
        from src.stages import rank as module
    elif stage == Stage.pairs:
        from src.stages import pairs as module
    elif stage == Stage.train:
        from src.stages import train as module
    elif stage == Stage.eval:
        from src.stages import eval as module
    else:
        raise ValueError(f"stage={stage.value} is not one stage")
    return module.run
