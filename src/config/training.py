"""`training`: the optimisation recipe (conf/training/) and its adapter (`training.lora`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import SI

from src.config.checks import _check, _positive, check_numbers
from src.config.choices import (
    Device,
    Distributed,
    Dtype,
    Optimizer,
    Peft,
    RefLogprobs,
    Scheduler,
    WeightUpdates,
)

# training.pairs as the config writes it when the pairs are the pairs stage's own
PAIRS_STAGE_FILE = "${run.iter_dir}/pairs/pairs.parquet"
# what training.pairs names when it is a file of the user's own, as messages say it
PAIRS_FILE = "a .parquet or .jsonl file of pairs"


def pairs_lineage(pairs: str) -> str:
    """`pairs-<name>`: the run name's part that says a lineage trains on the pairs file `pairs`."""
    return "pairs-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(pairs.rstrip("/")).stem or "file")


@dataclass
class AdapterConfig:
    """The adapter of training.peft=lora|qlora (`training.lora`)."""

    rank: int = 16  # r, the rank of each adapted layer's update
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the adapter's input
    # every linear layer of the attention and MLP blocks of Mistral and Gemma-2 (module names)
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        ]
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_numbers(self, "training.lora.")
        _positive("training.lora.rank", self.rank)
        _positive("training.lora.alpha", self.alpha)
        _check(0 <= self.dropout < 1, "training.lora.dropout", self.dropout, "must be in [0, 1)")
        _check(
            bool(self.target_modules),
            "training.lora.target_modules",
            self.target_modules,
            "names at least one module, e.g. [q_proj,v_proj]",
        )


@dataclass
class TrainingConfig:
    """The optimisation recipe (conf/training/)."""

    # the pairs stage's file, or one of your own (.parquet / .jsonl, e.g. tests/data/pairs_tiny.jsonl)
    pairs: str = SI(PAIRS_STAGE_FILE)
    optimizer: Optimizer = Optimizer.rmsprop  # rmsprop: the SPPO recipes' optimizer
    learning_rate: float = 5e-7  # the peak, reached after the warm-up
    lr_scheduler: Scheduler = Scheduler.linear  # the learning rate's schedule after the warm-up
    warmup_ratio: float = 0.1  # the share of the schedule's steps that warm up linearly from 0
    num_epochs: float = 1.0  # passes over the pairs (a fraction stops part-way)
    # The SPPO model cards: the schedule spans 18 epochs and training stops after 1.
    # null: the schedule spans num_epochs.
    schedule_epochs: float | None = None
    # pairs per optimizer step over all processes: per_device_batch_size x world size x the
    # gradient accumulation steps this implies
    global_batch_size: int = 64
    per_device_batch_size: int = 8  # pairs per forward pass of one process (GPU)
    max_length: int = 1024  # prompt + response tokens kept; a longer pair is cut
    max_prompt_length: int = 512  # of a pair too long for max_length: the prompt's last tokens
    gradient_checkpointing: bool = True  # recompute activations in the backward: less memory
    # Response tokens per chunk of the streamed LM head (src/training/policy_logps.py): the
    # [B, T, V] logits never exist; a chunk holds about two chunk x vocabulary fp32 buffers at
    # a time (256 x 256k: 0.26 GB each). null: the model's own head computes full logits.
    lm_head_chunk: int | None = 256
    precision: Dtype = Dtype.auto  # the dtype training computes in
    # Full weights in bf16 without DeepSpeed (training.precision=auto on a GPU): how the weights
    # keep an update smaller than their spacing (at lr 5e-7 nearly every update: a bf16 weight of
    # 0.02 has a spacing of 1.2e-4, an RMSprop step is ~5e-6, and written into it as is it rounds
    # away). kahan: each update added with Kahan summation, the optimizer state in bf16 (8 bytes a
    # parameter with RMSprop: a 7-9B model trains on one 80 GB GPU); fp32: fp32 master weights and
    # optimizer state, as DeepSpeed's bf16 mode keeps them (12 bytes a parameter with RMSprop).
    # src/training/optimizers.py. ZeRO-3 keeps fp32 partitions itself and an adapter trains in
    # fp32: neither reads this.
    weight_updates: WeightUpdates = WeightUpdates.kahan
    ref_logprobs: RefLogprobs = RefLogprobs.precompute  # where the reference's log-probs come from
    weight_decay: float = 0.0  # the optimizer's weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this global norm
    seed: int = 42  # the Trainer's seed: the order of the pairs, dropout, a fresh adapter
    logging_steps: int = 1  # optimizer steps between logged losses and metrics
    save_steps: int = 200  # Trainer checkpoints, what an interrupted run resumes from
    # none: full weights; lora / qlora: an adapter, merged into the checkpoint at the end
    peft: Peft = Peft.none
    lora: AdapterConfig = field(default_factory=AdapterConfig)
    # true: done.json keeps each step's memory by phase (forward, backward, optimizer step: its
    # peak and what it holds at its end) beside the plan's terms, `timings.memory_phases`
    # (src/training/memory_phases.py); a few reads of the allocator a step. Not in the fingerprint.
    record_memory_phases: bool = False

    def __post_init__(self) -> None:
        check_numbers(self, "training.")
        # an empty name would be read as the working folder (and name a lineage `pairs-file`)
        _check(
            self.pairs.strip() != "",
            "training.pairs",
            self.pairs,
            f"names no file; point it at {PAIRS_FILE}, or leave it unset to train on the pairs "
            "stage's",
        )
        _positive("training.learning_rate", self.learning_rate)
        _check(
            0 <= self.warmup_ratio < 1,
            "training.warmup_ratio",
            self.warmup_ratio,
            "must be in [0, 1)",
        )
        _positive("training.num_epochs", self.num_epochs)
        if self.schedule_epochs is not None:
            _check(
                self.schedule_epochs >= self.num_epochs,
                "training.schedule_epochs",
                self.schedule_epochs,
                f"must be >= training.num_epochs={self.num_epochs:g}",
            )
        _positive("training.global_batch_size", self.global_batch_size)
        _positive("training.per_device_batch_size", self.per_device_batch_size)
        _positive("training.max_prompt_length", self.max_prompt_length)
        if self.lm_head_chunk is not None:
            _positive("training.lm_head_chunk", self.lm_head_chunk)
        _check(
            self.max_length > self.max_prompt_length,
            "training.max_length",
            self.max_length,
            f"must be > training.max_prompt_length={self.max_prompt_length}",
        )
        _check(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "must be >= 0")
        _positive("training.max_grad_norm", self.max_grad_norm)
        _positive("training.logging_steps", self.logging_steps)
        _positive("training.save_steps", self.save_steps)


def cross_checks(cfg: Any) -> None:  # cfg: the composed Config (root.py)
    """The rules of `training` keys that read other sections (hardware)."""
    if cfg.training.peft == Peft.qlora:
        _check(
            cfg.hardware.device == Device.cuda,
            "training.peft",
            "qlora",
            f"a 4-bit base needs a CUDA GPU (bitsandbytes), and hardware={cfg.hardware.name} "
            "trains on the CPU; train a LoRA adapter on full weights there: training.peft=lora",
        )
        _check(
            cfg.hardware.distributed != Distributed.deepspeed,
            "training.peft",
            "qlora",
            "DeepSpeed cannot shard a 4-bit base; QLoRA trains on one GPU or under DDP "
            "(hardware.distributed=ddp), or use training.peft=lora with ZeRO-3",
        )
    if cfg.hardware.device == Device.cpu and cfg.hardware.distributed == Distributed.deepspeed:
        _check(
            cfg.training.precision in (Dtype.auto, Dtype.float32),
            "training.precision",
            cfg.training.precision.value,
            "DeepSpeed on CPU trains in fp32 only (the HF Trainer takes 16 bits under "
            "DeepSpeed on a GPU alone): use training.precision=float32, or "
            "hardware.distributed=ddp or none",
        )
    if cfg.training.precision == Dtype.float16 and cfg.training.peft == Peft.none:
        _check(
            cfg.hardware.distributed == Distributed.deepspeed,
            "training.precision",
            "float16",
            "full weights in fp16 need loss scaling over fp32 master weights, which DeepSpeed "
            "keeps: add hardware.distributed=deepspeed, or train in bf16 "
            "(training.precision=bfloat16)",
        )
    per_step = cfg.training.per_device_batch_size * cfg.hardware.world_size
    _check(
        cfg.training.global_batch_size % per_step == 0,
        "training.global_batch_size",
        cfg.training.global_batch_size,
        f"must be a multiple of per_device_batch_size x world size "
        f"= {cfg.training.per_device_batch_size} x {cfg.hardware.world_size} = {per_step}",
    )
