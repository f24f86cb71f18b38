"""Stage `train`: pi_t from pi_{t-1} on the iteration's preference pairs.

    python -m src.main stage=train model=tiny-mistral training.pairs=tests/data/pairs_tiny.jsonl \
        run_name=fixture   # a lineage of its own: the pipeline's iter1/train is not touched

setup (tokenise the pairs, build the Trainer) -> run (train, resuming from the last Trainer
checkpoint) -> cleanup (save the gathered checkpoint atomically, metrics.json, done.json).
With `training.peft=lora|qlora` the policy trains a LoRA adapter (src/training/adapters.py),
saved as `adapter/` and merged into a whole `checkpoint/`.
With more than one process (`hardware.world_size > 1`) the stage relaunches itself under
`accelerate launch`, one worker per process, each reading the config saved in the stage dir.
"""

from __future__ import annotations

import contextlib
import errno
import math
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
from src.core.chunks import claim
from src.core.errors import Redo, StageError
from src.core.memory import Peak
from src.core.policy import end_of_turn_ids, seal_checkpoint
from src.core.records import Finished, fingerprint_form, stage_fingerprint, write_record
from src.core.rows import count_rows, require_sealed
from src.plan.stages import (
    memory_terms,
    peak_line,
    planned_memory,
    policy_shape,
    trainer_checkpoint_bytes,
)
from src.stages import tracking
from src.stages.cards import write_model_card
from src.stages.common import read_upstream, require_previous_policy
from src.training import checkpoints
from src.training.adapters import (
    merge,
    outside_zero3,
    require_adapter_base,
    require_qlora_support,
)
from src.training.arguments import (
    KEPT_CHECKPOINTS,
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
    WORKER_ENV,
    as_one_process_group,
    launch_workers,
    node_rank,
    preemption_stop_file,
    report_failure,
    report_finished,
)


def run(cfg: Config) -> dict:
    stage_dir = cfg.stage_dir(Stage.train)
    if cfg.hardware.world_size > 1 and os.environ.get(WORKER_ENV) != "1":
        _, rows = read_inputs(cfg)
        for _ in rows:  # every row read and checked: bad input ends here, before any worker starts
            pass
        return launch_workers(cfg.hardware, stage_dir, resume_from(cfg, stage_dir))
    as_one_process_group(cfg.hardware)
    return train(cfg, stage_dir)


def train(cfg: Config, stage_dir: Path) -> dict:
    started = time.time()
    if os.environ.get(WORKER_ENV):  # the launching process chose the checkpoint for all workers
        resume = os.environ.get(RESUME_ENV) or None
    else:
        preemption_stop_file(stage_dir).unlink(missing_ok=True)  # left by a preempted run
        resume = resume_from(cfg, stage_dir)
    require_disk_for_checkpoint(cfg, stage_dir)
    ready = setup(cfg, stage_dir)
    if resume and cfg.training.peft != Peft.none:
        require_adapter_base(Path(resume), cfg.run.init_policy)
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
    if resume and ready.trainer.is_world_process_zero():
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
        return cleanup(cfg, stage_dir, ready, result.metrics, time.time() - started, peak)


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
    weights = shape.params * precision(cfg).itemsize
    # + the tokenizer and the records: a few MB beside a model of GBs, less than a tiny one
    final = weights + min(FULL_DISK_BYTES, weights)
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
    from src.training.trainer import PreferenceTrainer, ReferenceLogps, StopAfterEpochs

    t, method = cfg.training, cfg.method
    pairs_path, rows = read_inputs(cfg)
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
            checkpoints.SealCheckpoints(stage_fingerprint(cfg.as_tree(), Stage.train)),
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


def read_inputs(cfg: Config) -> tuple[Path, Iterator[dict]]:
    """pi_{t-1} checked whole, QLoRA's GPU and library present, and the pairs: the file its
    record sealed (when it is the pairs stage's output), its rows read and each one checked as
    they are used."""
    from src.training.data import read_pairs

    require_previous_policy(cfg)
    if cfg.training.peft == Peft.qlora:
        require_qlora_support()
    pairs_path = Path(cfg.training.pairs).resolve()
    remake = remake_pairs(cfg)
    if remake is not None and pairs_path.is_file():
        require_sealed(pairs_path, TrainingError)
    return pairs_path, read_pairs(pairs_path, cfg.method.loss.value, remake)


def remake_pairs(cfg: Config) -> Redo | None:
    """What remakes a bad pairs file when it is the pairs stage's output; None for a
    file of the user's own (training.pairs), which only its author can correct."""
    upstream = read_upstream(cfg, Stage.train)
    return None if upstream is None else Redo(upstream, cfg.iter)


# --- cleanup --------------------------------------------------------------------------------------


def cleanup(
    cfg: Config, stage_dir: Path, setup_: Setup, metrics: dict, seconds: float, peak: int | None
) -> dict:
    """The checkpoint (and, with an adapter, the adapter) appear whole or not at all;
    metrics.json; done.json last. `peak`: the training's peak memory above the process's before
    the policy was loaded (bytes; None: not known here)."""
    trainer = setup_.trainer
    timings = {"seconds": seconds}
    if peak is not None:
        timings["peak_memory_gib"] = peak / 2**30
    if setup_.phases is not None:
        timings["memory_phases"] = memory_phases_record(cfg, setup_.phases)
    outputs = ["checkpoint"] + (["adapter"] if cfg.training.peft != Peft.none else [])
    if trainer.is_world_process_zero():
        for name in outputs:
            shutil.rmtree(stage_dir / f"{name}.partial", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    bad = torch.tensor(float(nonfinite_weights(trainer.model)), device=trainer.args.device)
    if trainer.accelerator.reduce(bad, reduction="sum").item():  # none saved, none sealed
        raise diverged(trainer.state.global_step, "its weights are not finite", trainer.args)
    # gathers ZeRO-3 shards (collective: every rank calls it); with an adapter, the adapter only
    trainer.save_model(str(stage_dir / f"{outputs[-1]}.partial"))
    counts = {**setup_.counts, "steps": trainer.state.global_step}
    if trainer.is_world_process_zero():
        if cfg.training.peft != Peft.none:
            with outside_zero3(trainer.args):
                merge(
                    cfg,
                    stage_dir / "adapter.partial",
                    stage_dir / "checkpoint.partial",
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
        write_model_card(cfg, stage_dir / "checkpoint", trained_now=True)
        print(
            f"[train] rank 0 on {socket.gethostname()} saved {stage_dir / 'checkpoint'}",
            file=sys.stderr,
            flush=True,
        )
        record_training(cfg, stage_dir, counts, timings, outputs)
        remove_trainer_checkpoints(stage_dir)
    if trainer.is_world_process_zero():
        tracking.finish(cfg, Stage.train, {**metrics, **counts})
        if peak is not None:  # after the record: the plan's figure is advice, the work is saved
            print(peak_line(cfg, Stage.train, peak), file=sys.stderr, flush=True)
    trainer.accelerator.wait_for_everyone()
    return counts


def record_training(
    cfg: Config, stage_dir: Path, counts: dict, timings: dict, outputs: list[str]
) -> None:
    """The stage's record, done.json, written by rank 0 (its spec's `writes_record`: the
    scheduler, in the launching process, does not) once the checkpoint is saved whole: the
    seals of every file of `outputs`."""
    seals = {k: v for name in outputs for k, v in seal_checkpoint(stage_dir / name).items()}
    fingerprint = stage_fingerprint(cfg.as_tree(), Stage.train)
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


# --- resume ---------------------------------------------------------------------------------------


def resume_from(cfg: Config, stage_dir: Path) -> str | None:
    """The Trainer checkpoint this run resumes from: the newest one of this configuration saved
    whole and unchanged since (src/training/checkpoints.py), or None. Checkpoints of another
    configuration are refused. Decided once per node, before any worker starts; node 0 removes
    the damaged ones."""
    output_dir = stage_dir / TRAINER_DIR
    identity = stage_fingerprint(cfg.as_tree(), Stage.train)
    claim(
        output_dir,
        identity,
        TrainingError,
        "Trainer checkpoints of a run with another configuration",
        leftovers="checkpoint-*",
        seals=f"checkpoint-*/{checkpoints.SEAL}",
    )
    return checkpoints.resume_point(output_dir, identity, node_rank() in (None, "0"))


if __name__ == "__main__":  # one training worker, started by `accelerate launch` (launch.py)
    worker_cfg = validate(OmegaConf.load(sys.argv[1]))
    try:
        train(worker_cfg, worker_cfg.stage_dir(Stage.train))
    except (StageError, OSError) as failure:  # the launching process says it, once
        sys.exit(report_failure(failure))
    import torch.distributed as dist

    if dist.is_initialized():  # its threads stopped here, not torn down by the exit (SIGABRT)
        dist.barrier()
        report_finished()
        dist.destroy_process_group()
