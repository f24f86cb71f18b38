"""A process of stage `train`: the part of the stage every training process runs.

setup (tokenise the pairs, build the Trainer) -> train (from the Trainer checkpoint the launcher
chose, src/stages/train.py) -> save. Saving is the collectives every rank calls (a barrier, the
check that the weights are finite, the gather of the checkpoint, the last barrier) and, between
them, rank 0's files: the checkpoint renamed into place whole (with `training.peft=lora|qlora`,
the adapter too, merged into a whole checkpoint: src/training/adapters.py), metrics.json, the
model card and done.json. Rank 0 opens the stage's W&B run, where the Trainer logs.

With one process the launcher calls `train` in its own process; with more, `accelerate launch`
starts one of these per process (src/training/launch.py):

    python -m src.stages.train_worker <stage_dir>/config.yaml
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.config import Config, Peft, RefLogprobs, Stage, validate
from src.core import preemption
from src.core.artifacts import atomic_write_json, file_sha256, share
from src.core.errors import StageError
from src.core.fingerprints import fingerprint_form
from src.core.identity import stage_key
from src.core.layout import ADAPTER, CHECKPOINT
from src.core.memory import Peak
from src.core.policy import end_of_turn_ids, seal_checkpoint
from src.core.records import Finished, write_record
from src.plan.stages import memory_terms, peak_line, planned_memory
from src.stages.common import read_pairs_rows
from src.stages.report import tracking
from src.stages.report.cards import write_model_card
from src.training.adapters import merge, outside_zero3
from src.training.arguments import (
    TRAINER_DIR,
    UPDATES,
    TrainingError,
    diverged,
    load_policy,
    optimizer_override,
    precision,
    training_arguments,
    warmup_warning,
    weight_updates,
)
from src.training.launch import (
    RESUME_ENV,
    preemption_stop_file,
    report_failure,
    report_finished,
)


def train(cfg: Config, stage_dir: Path, resume: str | None) -> dict:
    """This process's part of the training, resuming from the Trainer checkpoint `resume`; the
    pair counts and steps."""
    started = time.time()
    ready = setup(cfg, stage_dir)
    if ready.trainer.is_world_process_zero():
        tracking.start(cfg, Stage.train)  # the Trainer's W&B callback logs into this run
        updates = weight_updates(cfg, precision(cfg))
        if updates is not None:
            print(
                f"[train] full weights: {UPDATES[updates]} (training.weight_updates="
                f"{updates.value})",
                file=sys.stderr,
                flush=True,
            )
        if resume:
            print(f"[train] resuming from {resume}", file=sys.stderr, flush=True)
    with saving_to(stage_dir):
        result = ready.trainer.train(resume_from_checkpoint=resume)
    peak = ready.peak.bytes()
    if preemption.stop_requested(preemption_stop_file(stage_dir)):
        raise preemption.Preempted(
            f"stopped on request after saving checkpoint-{ready.trainer.state.global_step}; "
            "re-run the same command to resume"
        )
    with saving_to(stage_dir):
        return save(cfg, stage_dir, ready, result.metrics, time.time() - started, peak)


@contextlib.contextmanager
def saving_to(stage_dir: Path) -> Iterator[None]:
    """torch and safetensors report a full disk in their own words ("unexpected pos",
    "file write failed", "StorageFull", safetensors' "I/O error: No space left on device (os
    error 28)"), not as an OSError: when a write fails with the disk (nearly) full, or says it
    was, say it as the file system would (a failed shard is deleted, so the disk may have room
    again by the time the error is read)."""
    try:
        yield
    except (OSError, StageError):
        raise
    except Exception as err:
        said_full = os.strerror(errno.ENOSPC) in str(err)
        if not said_full and shutil.disk_usage(stage_dir).free >= FULL_DISK_BYTES:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage_dir)) from err


FULL_DISK_BYTES = 64 << 20  # less free space than this after a failed save: the disk is full


# --- setup ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    trainer: object  # PreferenceTrainer
    counts: dict  # what tokenisation kept, dropped and truncated
    peak: Peak  # memory from the policy's loading on
    phases: object | None = None  # MemoryPhases: each step's memory by phase (opt-in)


def setup(cfg: Config, stage_dir: Path) -> Setup:
    """Pairs tokenised, policy loaded (sharded under ZeRO-3), reference arranged, Trainer built."""
    from transformers import AutoTokenizer

    from src.training.data import PairCollator, PairTokenizer
    from src.training.memory_phases import MemoryPhases
    from src.training.trainer import (
        PreferenceTrainer,
        ReferenceLogps,
        SealCheckpoints,
        StopAfterEpochs,
    )

    t, method = cfg.training, cfg.method
    pairs_path, rows = read_pairs_rows(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.run.init_policy, revision=cfg.model.revision)
    eot = end_of_turn_ids(cfg.run.init_policy, tokenizer)
    pairs, report = PairTokenizer(tokenizer, eot, t.max_length, t.max_prompt_length)(
        rows, method.loss.value
    )
    if not pairs:
        raise TrainingError(f"{pairs_path}: no pair left to train on ({report})")
    if (warning := warmup_warning(report.kept, cfg)) is not None:
        print(warning, file=sys.stderr, flush=True)
    dtype = precision(cfg)
    args = training_arguments(cfg, stage_dir, dtype)  # before the model: ZeRO-3 shards at load
    peak = Peak(args.device.type == "cuda")
    phases = MemoryPhases(peak) if t.record_memory_phases else None
    model = load_policy(cfg, dtype)
    reference, ref_model = None, None
    if t.ref_logprobs == RefLogprobs.precompute:
        identity = {
            "pairs_sha256": file_sha256(pairs_path),
            "reference": fingerprint_form(cfg.run.init_policy, cfg.as_tree()),  # a moved root too
            "max_length": t.max_length,
            "max_prompt_length": t.max_prompt_length,
        }
        reference = ReferenceLogps(stage_dir / "reference_logps.json", identity)
    elif t.peft == Peft.none:  # with an adapter, pi_ref is the policy with it switched off
        ref_model = load_policy(cfg, dtype)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        data_collator=PairCollator(pad_id),
        processing_class=tokenizer,
        callbacks=[
            SealCheckpoints(stage_key(cfg.as_tree(), Stage.train)),
            preemption.trainer_callback(preemption_stop_file(stage_dir)),
            *([StopAfterEpochs(t.num_epochs)] if t.schedule_epochs else []),
        ],
        loss_type=method.loss.value,
        beta=method.beta,
        eta=method.eta,
        label_smoothing=method.label_smoothing,
        wpo=method.wpo_weight,
        wpo_clamp=method.wpo_clamp,
        reference=reference,
        ref_model=ref_model,
        memory_phases=phases,
        optimizer_cls_and_kwargs=optimizer_override(cfg, args, model, dtype),
    )
    counts = {
        "pairs_in_file": report.read,
        "pairs_trained": report.kept,
        "dropped_identical": report.dropped_identical,
        "dropped_empty": report.dropped_empty,
        "truncated_prompts": report.truncated_prompts,
        "truncated_responses": report.truncated_responses,
    }
    return Setup(trainer, counts, peak, phases)


# --- save -----------------------------------------------------------------------------------------


def save(
    cfg: Config, stage_dir: Path, ready: Setup, metrics: dict, seconds: float, peak: int | None
) -> dict:
    """The collectives every rank calls, in the same order on each, and rank 0's files between
    them: the checkpoint (and, with an adapter, the adapter) appear whole or not at all. `peak`:
    the training's peak memory above the process's before the policy was loaded (bytes; None:
    not known here)."""
    trainer = ready.trainer
    outputs = [CHECKPOINT] + ([ADAPTER] if cfg.training.peft != Peft.none else [])
    if trainer.is_world_process_zero():
        for name in outputs:
            shutil.rmtree(stage_dir / f"{name}.partial", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    bad = torch.tensor(float(nonfinite_weights(trainer.model)), device=trainer.args.device)
    if trainer.accelerator.reduce(bad, reduction="sum").item():  # none saved, none sealed
        raise diverged(trainer.state.global_step, "its weights are not finite", trainer.args)
    # gathers ZeRO-3 shards (collective: every rank calls it); with an adapter, the adapter only
    trainer.save_model(str(stage_dir / f"{outputs[-1]}.partial"))
    counts = {**ready.counts, "steps": trainer.state.global_step}
    if trainer.is_world_process_zero():
        publish(cfg, stage_dir, ready, outputs, metrics, counts, seconds, peak)
    trainer.accelerator.wait_for_everyone()
    return counts


def publish(
    cfg: Config,
    stage_dir: Path,
    ready: Setup,
    outputs: list[str],
    metrics: dict,
    counts: dict,
    seconds: float,
    peak: int | None,
) -> None:
    """Rank 0's files, once the checkpoint is gathered: with an adapter, the merge; each output
    renamed into place; metrics.json; the model card; done.json last. Then the W&B run closes."""
    trainer = ready.trainer
    if cfg.training.peft != Peft.none:
        with outside_zero3(trainer.args):
            merge(
                cfg,
                stage_dir / f"{ADAPTER}.partial",
                stage_dir / f"{CHECKPOINT}.partial",
                precision(cfg),
                trainer.processing_class,
            )
    for name in outputs:
        share(stage_dir / f"{name}.partial")  # some files are saved 0600 by the libraries
        if (stage_dir / name).exists():
            shutil.rmtree(stage_dir / name)
        (stage_dir / f"{name}.partial").rename(stage_dir / name)
    atomic_write_json(
        stage_dir / "metrics.json",
        {"summary": {**metrics, **counts}, "log_history": trainer.state.log_history},
    )
    write_model_card(cfg, stage_dir / CHECKPOINT, trained_now=True)
    print(
        f"[train] rank 0 on {socket.gethostname()} saved {stage_dir / CHECKPOINT}",
        file=sys.stderr,
        flush=True,
    )
    timings = {"seconds": seconds}
    if peak is not None:
        timings["peak_memory_gib"] = peak / 2**30
    if ready.phases is not None:
        timings["memory_phases"] = memory_phases_record(cfg, ready.phases)
    record_training(cfg, stage_dir, counts, timings, outputs)
    remove_trainer_checkpoints(stage_dir)
    tracking.finish(cfg, Stage.train, {**metrics, **counts})
    if peak is not None:  # after the record: the plan's figure is advice, the work is saved
        print(peak_line(cfg, Stage.train, peak), file=sys.stderr, flush=True)


def record_training(
    cfg: Config, stage_dir: Path, counts: dict, timings: dict, outputs: list[str]
) -> None:
    """The stage's record, done.json, written by rank 0 (its spec's `writes_record`: the
    scheduler, in the launching process, does not) once the checkpoint is saved whole: the
    seals of every file of `outputs`."""
    seals = {k: v for name in outputs for k, v in seal_checkpoint(stage_dir / name).items()}
    fingerprint = stage_key(cfg.as_tree(), Stage.train)
    write_record(stage_dir, Finished(fingerprint, counts, timings, seals))


def nonfinite_weights(model: torch.nn.Module) -> int:
    """How many of the trained parameters hold a value that is not finite (this process's
    partition of each under ZeRO-3)."""
    return sum(
        not bool(torch.isfinite(getattr(p, "ds_tensor", p)).all())
        for p in model.parameters()
        if p.requires_grad
    )


def remove_trainer_checkpoints(stage_dir: Path) -> None:
    """Once done.json is written nothing resumes from the Trainer's checkpoints: they go (the
    optimiser's state: 43 GB each at 7B with Kahan's bf16 updates, 72 GB with fp32 masters)."""
    folders = sorted((stage_dir / TRAINER_DIR).glob("checkpoint-*"))
    size = sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())
    for d in folders:
        shutil.rmtree(d)
    if folders:
        print(
            f"[train] removed the Trainer's {len(folders)} checkpoint(s) to resume from "
            f"({size / 1e9:.1f} GB): the stage is done",
            file=sys.stderr,
            flush=True,
        )


def memory_phases_record(cfg: Config, phases) -> dict:
    """`timings.memory_phases` (training.record_memory_phases): this process's steps by phase
    (src/training/memory_phases.py), and the plan's terms for the same config, when it knows
    the model's shape; `steps` 0 where nothing could be measured (no GPU or no /proc)."""
    record = phases.record() or {"steps": 0}
    memory = planned_memory(cfg, Stage.train)
    if memory is not None:
        record["plan"] = memory_terms(memory)
    return record


if __name__ == "__main__":  # one process of several, started by `accelerate launch` (launch.py)
    worker_cfg = validate(OmegaConf.load(sys.argv[1]))
    try:  # the launching process chose the checkpoint they all resume from
        train(worker_cfg, worker_cfg.stage_dir(Stage.train), os.environ.get(RESUME_ENV) or None)
    except (StageError, OSError) as failure:  # the launching process says it, once
        sys.exit(report_failure(failure))
    import torch.distributed as dist

    if dist.is_initialized():  # its threads stopped here, not torn down by the exit (SIGABRT)
        dist.barrier()
        report_finished()
        dist.destroy_process_group()
