"""What the stages share that reads the config: where a stage's shard and rows are, the policy it
starts from, its judge, the command that redoes a stage. The storage beneath (chunks, records, checkpoints)
is in src/core and takes plain values."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config import Config, RankerConfig, Stage
from src.core.chunks import Shard, finished_rows, resolve_shard
from src.core.errors import StageError
from src.core.policy import checkpoint_damage, model_folder_damage, require_loadable
from src.core.records import read_record, redo_overrides
from src.core.registry import STAGES

if TYPE_CHECKING:
    from src.ranking.judge import Judge


def redo(cfg: Config, stage: str, iteration: int | None = None) -> str:
    """The overrides that make `stage` of `iteration` (the config's by default) again, with the
    stages after it that `cfg`'s command runs."""
    return redo_overrides(stage, cfg.iter if iteration is None else iteration, str(cfg.stage))


def stage_shard(cfg: Config, stage: Stage, env: Mapping[str, str] = os.environ) -> Shard:
    """This process's shard of a sharded stage, from its config section (or a SLURM array)."""
    spec = STAGES[stage]
    section = cfg.shard_section(stage)
    index, count = resolve_shard(section.shard, section.num_shards, env, section=spec.sharded_by)
    return Shard(cfg.stage_dir(stage), spec.rows, index, count)


def stage_rows(
    cfg: Config, stage: Stage, error: type[StageError]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of this iteration's finished `stage`, shard after shard, read
    as they are used."""
    finish = f"stage={stage.value} iter={cfg.iter}"
    return finished_rows(
        cfg.stage_dir(stage), STAGES[stage].rows, error, finish, redo(cfg, stage.value)
    )


def require_previous_policy(cfg: Config) -> str:
    """pi_{t-1}'s path. For t > 1 it is iteration t-1's checkpoint, trained and whole; for t = 1
    the base model, a local folder (whole) or a hub id this machine can load."""
    path = cfg.run.init_policy
    if cfg.iter == 1:
        require_loadable(path, cfg.model.revision)
        return path
    previous = cfg.iter - 1
    record = read_record(Path(path).parent, fix=redo(cfg, "train", previous))
    if record is None or not Path(path).is_dir():
        raise StageError(
            f"iteration {cfg.iter} starts from iteration {previous}'s checkpoint, which is not "
            f"trained: {path}; finish iteration {previous} first",
            fix=f"stage=all iter={previous}",
        )
    damage = checkpoint_damage(Path(path), record.get("outputs", {})) or model_folder_damage(
        Path(path)
    )
    if damage:
        raise StageError(
            f"iteration {cfg.iter} starts from iteration {previous}'s checkpoint {path}, which is "
            f"damaged ({damage}); train iteration {previous} again",
            fix=redo(cfg, "train", previous),
        )
    return path


def load_judge(cfg: Config, r: RankerConfig) -> Judge:
    """The judge `r` (the ranker, or the eval's judge) on this hardware; a chat-template PairRM
    reads the prompts as pi_{t-1} saw them."""
    from src.core.devices import device_for  # torch: loaded once a stage runs
    from src.ranking.judge import Judge, uses_chat_template

    policy = require_previous_policy(cfg) if uses_chat_template(r) else None
    return Judge(r, device_for(cfg.hardware.device, cfg.hardware.name), policy, cfg.model.revision)
