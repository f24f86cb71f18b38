"""The stages of an iteration, one module each: generate, rank, pairs, train, eval. What each one
is to the rest of the project (its inputs, order, sharding, GPUs, whether it launches processes
of its own) is declared in src/core/registry.py; what it does is its module's `run(cfg)`, which
reads setup -> run -> cleanup and returns a `StageResult`: the figures its W&B run keeps and what
its record holds. What reports on the stages (their W&B runs, curves, tables and artifacts, the
model card that train and eval write beside the checkpoint, the figures `src.compare` reads) is
in report/.

The scheduler (src/schedule/run.py) owns what surrounds every stage: its lock, its saved config,
its W&B run and its record, `done.json`, written once `run` returns, after every output. For
generate and rank, each shard's process has a W&B run of its own, and the record comes from the
shard that completes the stage (the others return none: the stage is not finished yet). Train
runs in processes of its own (`StageSpec.launches_processes`, `writes_record`): its rank-0
worker opens its W&B run, where the Trainer logs, and writes its record after the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from src.core.records import Finished
from src.core.registry import Stage

if TYPE_CHECKING:
    from src.config import Config


@dataclass(frozen=True)
class StageResult:
    """What a stage's run returns to the scheduler."""

    summary: dict  # this process's figures: its W&B run's summary (a shard's, for a shard)
    record: Finished | None  # what done.json holds; None: another shard completes the stage


class StageRun(Protocol):
    """A stage's `run(cfg)`."""

    def __call__(self, cfg: Config, /) -> StageResult: ...


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
