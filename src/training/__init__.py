"""Stage `train`: pi_t from pi_{t-1} on the iteration's preference pairs.

    python -m src.main stage=train model=tiny-mistral training.pairs=tests/data/pairs_tiny.jsonl

setup (tokenise the pairs, build the Trainer) -> run (train, resuming from the last Trainer
checkpoint) -> cleanup (save the gathered checkpoint atomically, metrics.json, done.json).
With more than one process (`hardware.world_size > 1`) the stage relaunches itself under
`accelerate launch`, one worker per process, each reading the config saved in the stage dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from src import preemption, tracking
from src.artifacts import atomic_write_json, atomic_write_text, write_completion_record
from src.config import Config, Device, Distributed, Dtype, RefLogprobs, Stage
from src.errors import StageError
from src.pipeline import stage_fingerprint
from src.policy import end_of_turn_ids, require_previous_policy
from src.shards import claim

WORKER_ENV = "SELFPLAY_TRAIN_WORKER"  # set in the processes `accelerate launch` starts


class TrainingError(StageError):
    """The stage cannot train; the message says what and where."""


def run(cfg: Config) -> dict:
    stage_dir = cfg.stage_dir(Stage.train)
    if cfg.hardware.world_size > 1 and os.environ.get(WORKER_ENV) != "1":
        return launch_workers(cfg, stage_dir)
    return train(cfg, stage_dir)


# --- distributed launch -------------------------------------------------------------------------


def launch_command(cfg: Config, config_path: Path) -> list[str]:
    """`accelerate launch` for the hardware; DeepSpeed itself is configured by TrainingArguments
    (the one place its config comes from), so the launcher only starts the processes."""
    hw = cfg.hardware
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", str(hw.world_size), "--num_machines", str(hw.num_nodes)]
    if hw.num_nodes > 1:
        node_rank = os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK"))
        master = os.environ.get("MASTER_ADDR")
        if node_rank is None or master is None:
            raise TrainingError(
                f"hardware.num_nodes={hw.num_nodes}: set MASTER_ADDR and NODE_RANK (SLURM sets "
                "SLURM_NODEID), one launcher per node"
            )
        cmd += ["--machine_rank", node_rank, "--main_process_ip", master]
        cmd += [
            "--main_process_port",
            os.environ.get("MASTER_PORT", "29500"),
            "--rdzv_backend",
            "c10d",
        ]
    return [*cmd, "-m", "src.training", str(config_path)]


def launch_workers(cfg: Config, stage_dir: Path) -> dict:
    config_path = stage_dir / "config.yaml"  # saved by src.main before any stage runs
    env = {**os.environ, WORKER_ENV: "1"}
    if cfg.hardware.device == Device.cpu and cfg.hardware.distributed != Distributed.deepspeed:
        env["ACCELERATE_USE_CPU"] = "1"  # `--cpu` alone would start a single process
    print(f"[train] launching {cfg.hardware.world_size} processes", file=sys.stderr, flush=True)
    stop_file = preemption_stop_file(stage_dir)
    stop_file.unlink(missing_ok=True)
    workers = subprocess.Popen(launch_command(cfg, config_path), env=env)
    while workers.poll() is None:
        if preemption.requested() and not stop_file.exists():
            atomic_write_text(stop_file, "stop\n")  # the workers save and stop at a step end
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers.wait(timeout=1)
    if preemption.requested():
        preemption.check("the training workers saved a checkpoint")
    if workers.returncode != 0:
        raise TrainingError(
            f"training workers failed (exit code {workers.returncode}); see their output above"
        )
    return {"workers": cfg.hardware.world_size}


# --- setup --------------------------------------------------------------------------------------


def precision(cfg: Config) -> torch.dtype:
    wanted = cfg.training.precision
    if wanted == Dtype.auto:
        on_gpu = cfg.hardware.device == Device.cuda and torch.cuda.is_available()
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    return {
        Dtype.bfloat16: torch.bfloat16,
        Dtype.float16: torch.float16,
        Dtype.float32: torch.float32,
    }[wanted]


def deepspeed_config(cfg: Config, dtype: torch.dtype) -> dict:
    """ZeRO from `hardware`; batch sizes and clipping left "auto" for the Trainer to fill."""
    return {
        "bf16": {"enabled": dtype == torch.bfloat16},
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


def training_arguments(cfg: Config, stage_dir: Path, dtype: torch.dtype):
    from transformers import TrainingArguments

    t, hw = cfg.training, cfg.hardware
    scheduler = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[
        t.lr_scheduler.value
    ]
    distributed_cpu = hw.device == Device.cpu and hw.world_size > 1
    return TrainingArguments(
        output_dir=str(stage_dir / "trainer"),
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
        save_total_limit=2,
        report_to=["wandb"] if cfg.logger.backend.value == "wandb" else "none",
        project=cfg.logger.project,
        run_name=f"{cfg.run_name}-it{cfg.iter}-train",
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
    training.lm_head_chunk is null — before DDP or DeepSpeed wraps it."""
    from transformers import AutoModelForCausalLM

    from src.training.policy_logps import stream_lm_head

    model = AutoModelForCausalLM.from_pretrained(
        cfg.run.init_policy,
        dtype=dtype,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        revision=cfg.model.revision,
    )
    if cfg.training.lm_head_chunk is not None:
        try:
            stream_lm_head(model, cfg.training.lm_head_chunk)
        except ValueError as error:
            raise TrainingError(f"{cfg.run.init_policy}: {error}") from None
    return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the stage ----------------------------------------------------------------------------------


@dataclass
class Setup:
    trainer: object  # PreferenceTrainer
    counts: dict  # what tokenisation kept, dropped and truncated


def setup(cfg: Config, stage_dir: Path) -> Setup:
    """Pairs tokenised, policy loaded (sharded under ZeRO-3), reference arranged, Trainer built."""
    from transformers import AutoTokenizer

    from src.training.data import PairCollator, PairTokenizer, read_pairs
    from src.training.trainer import PreferenceTrainer, ReferenceLogps, StopAfterEpochs

    t, method = cfg.training, cfg.method
    pairs_path = Path(t.pairs).resolve()
    require_previous_policy(cfg)
    rows = read_pairs(pairs_path, method.loss.value)
    tokenizer = AutoTokenizer.from_pretrained(cfg.run.init_policy, revision=cfg.model.revision)
    eot = end_of_turn_ids(cfg.run.init_policy, tokenizer)
    pairs, report = PairTokenizer(tokenizer, eot, t.max_length, t.max_prompt_length)(
        rows, method.loss.value
    )
    if not pairs:
        raise TrainingError(f"{pairs_path}: no pair left to train on ({report})")
    dtype = precision(cfg)
    args = training_arguments(cfg, stage_dir, dtype)  # before the model: ZeRO-3 shards at load
    model = load_policy(cfg, dtype)
    reference, ref_model = None, None
    if t.ref_logprobs == RefLogprobs.precompute:
        identity = {
            "pairs_sha256": file_sha256(pairs_path),
            "reference": cfg.run.init_policy,
            "max_length": t.max_length,
            "max_prompt_length": t.max_prompt_length,
        }
        reference = ReferenceLogps(stage_dir / "reference_logps.json", identity)
    else:
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
    )
    counts = {
        "pairs_in_file": len(rows),
        "pairs_trained": report.kept,
        "dropped_identical": report.dropped_identical,
        "dropped_empty": report.dropped_empty,
        "truncated_prompts": report.truncated_prompts,
        "truncated_responses": report.truncated_responses,
    }
    return Setup(trainer, counts)


def cleanup(cfg: Config, stage_dir: Path, setup_: Setup, metrics: dict, seconds: float) -> dict:
    """The checkpoint appears whole or not at all; metrics.json; done.json last."""
    trainer = setup_.trainer
    final, partial = stage_dir / "checkpoint", stage_dir / "checkpoint.partial"
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))  # gathers ZeRO-3 shards (collective: every rank calls it)
    counts = {**setup_.counts, "steps": trainer.state.global_step}
    if trainer.is_world_process_zero():
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        atomic_write_json(
            stage_dir / "metrics.json",
            {"summary": {**metrics, **counts}, "log_history": trainer.state.log_history},
        )
        write_completion_record(
            stage_dir, stage_fingerprint(cfg, Stage.train), counts, {"seconds": seconds}
        )
    if trainer.is_world_process_zero():
        tracking.finish(cfg, {**metrics, **counts})
    trainer.accelerator.wait_for_everyone()
    return counts


def preemption_stop_file(stage_dir: Path) -> Path:
    return stage_dir / "trainer" / "STOP"


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest Trainer checkpoint that was saved whole.

    The Trainer writes trainer_state.json last; a run killed while saving leaves a checkpoint
    without it, which `resume_from_checkpoint` would fail on. The one before it is whole.
    """
    complete = [
        (int(d.name.split("-")[1]), d)
        for d in output_dir.glob("checkpoint-*")
        if d.name.split("-")[1].isdigit() and (d / "trainer_state.json").is_file()
    ]
    return str(max(complete)[1]) if complete else None


def train(cfg: Config, stage_dir: Path) -> dict:
    started = time.time()
    if not os.environ.get(WORKER_ENV):  # a stop request left by an earlier, preempted run
        preemption_stop_file(stage_dir).unlink(missing_ok=True)
    ready = setup(cfg, stage_dir)
    output_dir = ready.trainer.args.output_dir
    claim(
        Path(output_dir),
        stage_fingerprint(cfg, Stage.train),
        TrainingError,
        "Trainer checkpoints of a run with another configuration (add pipeline.redo=[train] "
        "to start over)",
        leftovers="checkpoint-*",
    )
    resume = last_complete_checkpoint(Path(output_dir))
    if ready.trainer.is_world_process_zero():
        tracking.start(cfg, Stage.train)  # the Trainer's W&B callback logs into this run
    if resume:
        print(f"[train] resuming from {resume}", file=sys.stderr, flush=True)
    result = ready.trainer.train(resume_from_checkpoint=resume)
    if preemption.stop_requested(preemption_stop_file(stage_dir)):
        raise preemption.Preempted(
            f"stopped on request after saving checkpoint-{ready.trainer.state.global_step}; "
            "re-run the same command to resume"
        )
    return cleanup(cfg, stage_dir, ready, result.metrics, time.time() - started)
