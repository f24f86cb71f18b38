"""Stage `train`: pi_t from pi_{t-1} on the iteration's preference pairs.

    python -m src.main stage=train model=tiny-mistral training.pairs=tests/data/pairs_tiny.jsonl \
        run_name=fixture   # a lineage of its own: the pipeline's iter1/train is not touched

This module is the launcher, run in the scheduler's process: the checks (pi_{t-1} whole, QLoRA's
GPU and library, the pairs file, room on the disk for the checkpoint), the Trainer checkpoint
to resume from, then the training processes. With one process (`hardware.world_size=1`) the
training runs here (src/stages/train_worker.py: `train`); with more, `accelerate launch` starts
one worker per process (src/training/launch.py), each reading the config saved in the stage dir.
The worker's module, with the Trainer and its libraries, is imported only where a worker runs.
The workers save the checkpoint; rank 0 seals it in done.json.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

from src.config import Config, Peft, Stage
from src.core.chunks import claim
from src.core.errors import StageError
from src.core.identity import stage_key
from src.core.machine import node_rank
from src.core.rows import count_rows, require_sealed
from src.plan.stages import policy_shape, trainer_checkpoint_bytes
from src.stages import StageResult
from src.stages.common import read_pairs_rows, remake_pairs, require_previous_policy
from src.training import checkpoints
from src.training.adapters import require_adapter_base, require_qlora_support
from src.training.arguments import KEPT_CHECKPOINTS, TRAINER_DIR, TrainingError, weight_bytes
from src.training.launch import (
    as_one_process_group,
    launch_workers,
    preemption_stop_file,
)

# What the final save writes beside the weights (the tokenizer, the records): a few MB beside a
# model of GBs, at most the weights' own size beside a tiny one
BESIDE_WEIGHTS_BYTES = 64 << 20


def run(cfg: Config) -> StageResult:
    """The training, in this process or its workers; its record is rank 0's to write (the
    spec's `writes_record`), so none is returned."""
    stage_dir = cfg.stage_dir(Stage.train)
    require_inputs(cfg)
    preemption_stop_file(stage_dir).unlink(missing_ok=True)  # left by a preempted run
    resume = resume_from(cfg, stage_dir)
    if resume and cfg.training.peft != Peft.none:
        require_adapter_base(Path(resume), cfg.run.init_policy)
    require_disk_for_checkpoint(cfg, stage_dir)
    if cfg.hardware.world_size == 1:  # this process is the one worker: the Trainer loads here
        from src.stages import train_worker

        as_one_process_group(cfg.hardware)
        return StageResult(train_worker.train(cfg, stage_dir, resume), None)
    _, rows = read_pairs_rows(cfg)
    for _ in rows:  # every row read and checked: bad input ends here, before any worker starts
        pass
    return StageResult(launch_workers(cfg.hardware, stage_dir, resume), None)


def require_inputs(cfg: Config) -> None:
    """pi_{t-1} checked whole, QLoRA's GPU and library present, and the pairs file the one its
    record sealed (when it is the pairs stage's output)."""
    require_previous_policy(cfg)
    if cfg.training.peft == Peft.qlora:
        require_qlora_support()
    pairs_path = Path(cfg.training.pairs).resolve()
    if remake_pairs(cfg) is not None and pairs_path.is_file():
        require_sealed(pairs_path, TrainingError)


def resume_from(cfg: Config, stage_dir: Path) -> str | None:
    """The Trainer checkpoint this run resumes from: the newest one of this configuration saved
    whole and unchanged since (src/training/checkpoints.py), or None. Checkpoints of another
    configuration are refused. Decided once per node, before any worker starts; node 0 removes
    the damaged ones."""
    output_dir = stage_dir / TRAINER_DIR
    identity = stage_key(cfg.as_tree(), Stage.train)
    claim(
        output_dir,
        identity,
        TrainingError,
        "Trainer checkpoints of a run with another configuration",
        leftovers="checkpoint-*",
        seals=f"checkpoint-*/{checkpoints.SEAL}",
    )
    return checkpoints.resume_point(output_dir, identity, node_rank() in (None, "0"))


def require_disk_for_checkpoint(cfg: Config, stage_dir: Path) -> None:
    """Before anything is loaded: the disk under the stage has room for what the stage writes —
    the Trainer's checkpoints (`checkpoints_at_once`, less those of this run already there) and
    the checkpoint it saves at the end (the policy's parameters in the dtype it trains in, as a
    whole model also when an adapter trains: it is merged) — else one line now, not a failed
    save after hours of training. Skipped for a model whose shape is not known here."""
    try:
        shape = policy_shape(cfg)
    except StageError:
        return
    weights = shape.params * weight_bytes(cfg)
    final = weights + min(BESIDE_WEIGHTS_BYTES, weights)
    saved = len(list((stage_dir / TRAINER_DIR).glob("checkpoint-*")))
    trainer = max(0, checkpoints_at_once(cfg) - saved)
    each = trainer_checkpoint_bytes(cfg, shape)
    need = final + trainer * each
    stage_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(stage_dir).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)} for the checkpoint ({shown_bytes(need, up=True)} "
            f"needed: {shown_bytes(final, up=True)} the checkpoint, {trainer} x "
            f"{shown_bytes(each, up=True)} the Trainer's to resume from (training.save_steps); "
            f"{shown_bytes(free, up=False)} free)",
            str(stage_dir),
        )


def shown_bytes(n: float, up: bool) -> str:
    """`n` bytes to three significant figures in the unit that keeps them (1.35 MB, 62.9 MB,
    16.1 GB), rounded `up` (what is needed) or down (what is free): a need refused never reads
    as equal to the space free."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if n >= s),
                       ("B", 1.0))  # fmt: skip
    value = n / scale
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    rounded = (math.ceil if up else math.floor)(value * 10**decimals) / 10**decimals
    return f"{rounded:.{decimals}f} {unit}"


def checkpoints_at_once(cfg: Config) -> int:
    """How many Trainer checkpoints can be on disk at once: the Trainer saves every
    training.save_steps steps and when the training ends, and removes all but KEPT_CHECKPOINTS
    after the newest is written. The steps are counted from the pairs file's rows (an upper
    bound: rows dropped later only shorten the run); all that can be, where it cannot be read
    (the reading that follows names what is wrong with it)."""
    t = cfg.training
    pairs = count_rows(t.pairs)
    if pairs is None:
        return KEPT_CHECKPOINTS + 1
    steps = max(1, math.ceil(pairs * t.num_epochs / t.global_batch_size))
    return min((steps - 1) // t.save_steps + 1, KEPT_CHECKPOINTS + 1)
