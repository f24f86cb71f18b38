"""How the policy is trained: the dtype, the HF TrainingArguments (and through them the DeepSpeed
config, the one place it comes from), and the policy loaded for training with its streamed LM head.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from src.config import Config, Device, Distributed, Dtype, Peft, Stage, WeightUpdates
from src.core.errors import StageError

if TYPE_CHECKING:  # torch loads where a worker runs, not in the launcher that imports these
    import torch

TRAINER_DIR = "trainer"  # the Trainer's output_dir in the stage dir: its checkpoints, STOP
# Trainer checkpoints kept: the newest, and the one before in case the newest was cut off
KEPT_CHECKPOINTS = 2


class TrainingError(StageError):
    """The stage cannot train; the message says what and where."""


def diverged(step: int, what: str, args) -> TrainingError:
    """The one line for a training whose loss, gradients or weights stopped being numbers."""
    return TrainingError(
        f"the training diverged at step {step}: {what} (training.learning_rate="
        f"{args.learning_rate:g}); no checkpoint is saved: lower training.learning_rate and "
        "train again"
    )


def weight_bytes(cfg: Config) -> int:
    """The bytes of a weight in `precision(cfg)`, asking torch only where `auto` meets a GPU
    (whether it does bf16): the launcher's disk check loads no torch on a CPU."""
    wanted = cfg.training.precision
    if wanted == Dtype.auto and cfg.hardware.device == Device.cuda:
        return precision(cfg).itemsize
    return 2 if wanted in (Dtype.bfloat16, Dtype.float16) else 4


def precision(cfg: Config) -> torch.dtype:
    import torch

    wanted = cfg.training.precision
    if wanted == Dtype.auto:
        on_gpu = cfg.hardware.device == Device.cuda and torch.cuda.is_available()
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    return {
        Dtype.bfloat16: torch.bfloat16,
        Dtype.float16: torch.float16,
        Dtype.float32: torch.float32,
    }[wanted]


def weight_updates(cfg: Config, dtype: torch.dtype) -> WeightUpdates | None:
    """How the Trainer's optimizer keeps updates smaller than a 16-bit weight's spacing when it
    updates 16-bit weights itself (`training.weight_updates`); None where it does not: training
    in fp32, an adapter (fp32), DeepSpeed (fp32 partitions)."""
    import torch

    if (
        dtype == torch.float32
        or cfg.training.peft != Peft.none
        or cfg.hardware.distributed == Distributed.deepspeed
    ):
        return None
    return cfg.training.weight_updates


# what the train stage says of each as it starts
UPDATES = {
    WeightUpdates.kahan: "bf16 weights, each update added with Kahan summation",
    WeightUpdates.fp32: "bf16 weights rewritten from fp32 master weights after each step",
}


def optimizer_override(cfg: Config, args, model, dtype: torch.dtype) -> tuple | None:
    """`Trainer(optimizer_cls_and_kwargs=...)`: where the Trainer's optimizer updates bf16
    weights itself, its update for them (src/training/optimizers.py); None: the Trainer's
    optimizer as it is."""
    keep = weight_updates(cfg, dtype)
    if keep is None:
        return None
    from src.training.optimizers import for_trainer

    return for_trainer(args, model, keep)


def deepspeed_config(cfg: Config, dtype: torch.dtype) -> dict:
    """ZeRO from `hardware`; batch sizes and clipping left "auto" for the Trainer to fill."""
    import torch

    return {
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},  # dynamic loss scaling by default
        "zero_optimization": {
            "stage": cfg.hardware.zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,  # save_model writes a whole model
        },
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def deepspeed_on_cpu_state(cfg: Config) -> dict | None:
    """DeepSpeed across CPU processes: a gloo process state made before the Trainer's.

    On a host without CUDA, accelerate's DeepSpeed path picks no backend and then counts one
    process (DeepSpeed asserts `train_batch_size ... 8 != 4 * 1 * 1`). A PartialState created
    first with gloo, in DeepSpeed mode, is kept by TrainingArguments when told to use it.
    """
    hw = cfg.hardware
    if not (
        hw.device == Device.cpu and hw.distributed == Distributed.deepspeed and hw.world_size > 1
    ):
        return None
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"use_configured_state": True}


def warmup_warning(pairs: int, cfg: Config) -> str | None:
    """The line that says a run's warm-up takes half its optimizer steps or more (a smoke run of
    a few prompts: its first step at learning rate 0, so that eta, the learning rate or K barely
    change what it learns); None otherwise. Steps as the schedule counts them: ceil(pairs /
    global batch) a pass, over its epochs; warm-up ceil(steps x warmup_ratio), as transformers."""
    t = cfg.training
    steps = math.ceil(math.ceil(pairs / t.global_batch_size) * (t.schedule_epochs or t.num_epochs))
    warm = math.ceil(steps * t.warmup_ratio)
    if not steps or 2 * warm < steps:
        return None
    return (
        f"[train] warning: {warm} of the schedule's {steps} optimizer steps warm up from learning "
        f"rate 0 (training.warmup_ratio={t.warmup_ratio:g}): this run barely trains; more pairs, "
        "a smaller training.global_batch_size or training.warmup_ratio=0 give it steps that learn"
    )


def training_arguments(cfg: Config, stage_dir: Path, dtype: torch.dtype):
    import torch
    from transformers import TrainingArguments

    t, hw = cfg.training, cfg.hardware
    scheduler = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[
        t.lr_scheduler.value
    ]
    distributed_cpu = hw.device == Device.cpu and hw.world_size > 1
    return TrainingArguments(
        output_dir=str(stage_dir / TRAINER_DIR),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=t.schedule_epochs or t.num_epochs,
        optim={"rmsprop": "rmsprop", "adamw": "adamw_torch"}[t.optimizer.value],
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if t.gradient_checkpointing
        else None,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=KEPT_CHECKPOINTS,
        report_to=["wandb"] if cfg.logger.backend.value == "wandb" else "none",
        project=cfg.logger.project,
        run_name=cfg.stage_run_name(Stage.train),
        remove_unused_columns=False,
        # use_cpu makes accelerate drop the DeepSpeed plugin; DeepSpeed finds the CPU itself
        use_cpu=hw.device == Device.cpu and hw.distributed != Distributed.deepspeed,
        # accelerate leaves the backend unset on a CPU-only host and then sees one process
        ddp_backend="gloo" if distributed_cpu else None,
        deepspeed=deepspeed_config(cfg, dtype) if hw.distributed == Distributed.deepspeed else None,
        dataloader_num_workers=0,
        accelerator_config=deepspeed_on_cpu_state(cfg),
    )


def load_policy(cfg: Config, dtype: torch.dtype):
    """The generating policy (sharded at load under ZeRO-3), its LM head streamed unless
    training.lm_head_chunk is null — before DDP or DeepSpeed wraps it. With training.peft set,
    frozen (QLoRA: in 4 bits) under a fresh LoRA adapter."""
    from src.core.policy import causal_lm
    from src.training.adapters import add_adapter, quantization
    from src.training.policy_logps import stream_lm_head

    with_adapter = cfg.training.peft != Peft.none
    quantized = quantization(cfg, dtype) if with_adapter else {}
    model = causal_lm(cfg.run.init_policy, dtype, **cfg.model.loading, **quantized)
    if cfg.training.lm_head_chunk is not None:
        try:
            stream_lm_head(model, cfg.training.lm_head_chunk)
        except ValueError as error:
            raise TrainingError(f"{cfg.run.init_policy}: {error}") from None
    return add_adapter(model, cfg) if with_adapter else model
