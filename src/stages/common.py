"""What the stages share that reads the config: where a stage's shard and rows are, what it reads,
the policy it starts from, its judge. The storage beneath (chunks, records, checkpoints)
is in src/core and takes plain values."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config import Config, RankerConfig, Stage
from src.core.chunks import Shard
from src.core.errors import Redo, StageError
from src.core.fingerprints import read_upstream
from src.core.policy import checkpoint_damage, model_folder_damage, require_loadable
from src.core.records import read_record
from src.core.registry import STAGES
from src.core.rows import finished_rows

if TYPE_CHECKING:
    from src.ranking.judge import Judge


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
    return finished_rows(cfg.stage_dir(stage), STAGES[stage].rows, error, finish)


def require_previous_policy(cfg: Config) -> str:
    """pi_{t-1}'s path. For t > 1 it is iteration t-1's checkpoint, trained and whole; for t = 1
    the base model, a local folder (whole) or a hub id this machine can load."""
    path = cfg.run.init_policy
    if cfg.iter == 1:
        require_loadable(path, cfg.model.revision)
        return path
    previous = cfg.iter - 1
    record = read_record(Path(path).parent)
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
            fix=Redo(Stage.train, previous),
        )
    return path


def load_judge(
    cfg: Config,
    r: RankerConfig,
    section: str = "ranker",
    log: Path | None = None,
    after_death: str | None = None,
) -> Judge:
    """The judge `r` (the ranker, or the eval's judge: its keys under `section`) on this
    hardware; a chat-template PairRM reads the prompts as pi_{t-1} saw them. A reward model
    served by vLLM writes its engine's output to `log`, and a line that says its engine died says
    `after_death` of the work kept (None: the chunks made so far are kept, to resume)."""
    from src.core.devices import device_for  # torch: loaded once a stage runs
    from src.generation.vllm_client import RESUMED
    from src.ranking.judge import Judge, Served, uses_chat_template

    policy = require_previous_policy(cfg) if uses_chat_template(r) else None
    served = Served(section, cfg.generation, log, after_death or RESUMED)
    device = device_for(cfg.hardware.device, cfg.hardware.name)
    return Judge(r, device, policy, cfg.model.revision, served)


# --- SLURM array tasks as shards ---------------------------------------------------------


def resolve_shard(
    shard: int | None,
    num_shards: int | None,
    env: Mapping[str, str] = os.environ,
    section: str = "generation",
) -> tuple[int, int]:
    """(shard, num_shards) for this process: explicit values win, then a SLURM array, else (0, 1).

    In a SLURM job array task, shard = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / step and
    num_shards = SLURM_ARRAY_TASK_COUNT, so `--array=1-8` and `--array=0-14:2` both give shards
    0..7 of 8. The result is checked: a shard outside [0, num_shards) would silently leave
    prompts out of the run, so it is an error. `section` names the config keys in messages
    (`generation.shard`, `ranker.shard`).
    """
    from_slurm = []
    if "SLURM_ARRAY_TASK_ID" in env and (shard is None or num_shards is None):
        task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
        if num_shards is None:
            if "SLURM_ARRAY_TASK_COUNT" not in env:
                raise StageError(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: "
                    f"set {section}.num_shards"
                )
            num_shards = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
            from_slurm.append(f"SLURM_ARRAY_TASK_COUNT={num_shards}")
        if shard is None:
            low = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
            step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
            offset = task_id - low
            # an index that is not on the step grid gives a non-integer shard: make it fail below
            shard = offset // step if step > 0 and offset % step == 0 else -1
            from_slurm.append(f"SLURM_ARRAY_TASK_ID={task_id}, SLURM_ARRAY_TASK_MIN={low}")
    shard = 0 if shard is None else shard
    num_shards = 1 if num_shards is None else num_shards
    if num_shards < 1:
        raise StageError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        origin = f" (from {'; '.join(from_slurm)})" if from_slurm else ""
        hint = (
            f"; the array's task ids must be consecutive, or set {section}.shard"
            if from_slurm
            else ""
        )
        raise StageError(
            f"shard {shard} is out of range for num_shards={num_shards}{origin}: "
            f"need 0 <= shard < num_shards{hint}"
        )
    return shard, num_shards


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise StageError(f"{name}={env[name]!r} is not an integer") from None


def read_pairs_rows(cfg: Config) -> tuple[Path, Iterator[dict]]:
    """The pairs file and its rows, each one checked as it is used; a bad row names what remakes
    the file."""
    from src.training.data import read_pairs

    pairs_path = Path(cfg.training.pairs).resolve()
    return pairs_path, read_pairs(pairs_path, cfg.method.loss.value, remake_pairs(cfg))


def remake_pairs(cfg: Config) -> Redo | None:
    """What remakes a bad pairs file when it is the pairs stage's output; None for a
    file of the user's own (training.pairs), which only its author can correct."""
    upstream = read_upstream(cfg.as_tree(), Stage.train)
    return None if upstream is None else Redo(upstream, cfg.iter)
