"""Step throughput and peak memory of our PreferenceTrainer against TRL's DPOTrainer, on CPU.

    pip install ".[bench]"          # TRL, the peer tool
    python -m benchmarks.bench_trainer                      # ~10 minutes on 2 cores
    python -m benchmarks.bench_trainer --steps 10 --repeats 1 --models tiny-mistral   # a smoke run
    python -m benchmarks.bench_trainer --models tiny-mistral-32k --tools ours ours-lora \
        --losses sppo_hard --refs precompute      # opt-in: LoRA vs full-weight training of ours

Both tools train the same tiny model (built offline by src/tiny) on the same synthetic pairs
(~90–250 tokens per sequence), with the same batch (4 pairs = 8 sequences, no accumulation),
fp32, one CPU process, the same optimiser, learning rate, schedule, clipping and seed. Only
`trainer.train()` is measured: model loading, tokenisation and trainer construction are not.
The opt-in tool `ours-lora` is our trainer with `training.peft=lora` (a LoRA adapter on the
frozen policy, the project's default adapter settings), to set against `ours` (full weights).

Each (tool, model, loss, reference mode) runs in a fresh subprocess, so peak memory never
mixes between configurations; every configuration runs `--repeats` times (interleaved, so slow
drift of the machine hits all of them alike) and the medians are reported. See
benchmarks/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    add_common_args,
    code_hashes,
    command_line,
    corpus_words,
    group_runs,
    machine_busy_s,
    measure_interleaved,
    median,
    per_repeat_ratios,
    project_prompts,
    report,
    rerender,
    run_fresh,
    status_kb,
    summary_of,
    target_met,
)

MODELS = ("tiny-mistral", "tiny-gemma2")
# Opt-in variants (--models): a tiny model whose embedding and LM head are widened to a real
# vocabulary size (Mistral-7B's 32,000 rows, Gemma-2's 256,000; the tokenizer is unchanged, so
# the extra rows are never targets). The LM head then dominates compute and memory, as in real
# models; the tiny models' 2,048-row head does not show that.
WIDE_MODELS = {
    "tiny-mistral-32k": ("tiny-mistral", 32000),
    "tiny-gemma2-256k": ("tiny-gemma2", 256000),
}
BENCH_CACHE = REPO_ROOT / ".cache" / "bench"


def model_path(name: str) -> Path:
    """The model folder: a tiny model (src/tiny), or a widened copy made under .cache/bench
    from it (seeded, so every build is the same) and remade when the tiny model is rebuilt."""
    from src import tiny

    if name not in WIDE_MODELS:
        return tiny.ensure(name, tiny.DEFAULT_CACHE_DIR)
    base_name, vocab = WIDE_MODELS[name]
    base = tiny.ensure(base_name, tiny.DEFAULT_CACHE_DIR)
    out = BENCH_CACHE / name
    if (out / tiny.RECORD).is_file() and (out / tiny.RECORD).read_bytes() == (
        base / tiny.RECORD
    ).read_bytes():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    shutil.copyfile(base / tiny.RECORD, tmp / tiny.RECORD)  # which build it was widened from
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def base_model(name: str) -> str:
    return WIDE_MODELS[name][0] if name in WIDE_MODELS else name


# ours: the stage's trainer as configured by default (the streamed LM head); ours-logits: the
# same with training.lm_head_chunk=null (the model's own head computes full logits)
TOOLS = ("ours", "ours-logits", "trl")
# Opt-in (--tools): ours with training.peft=lora (the default adapter, src/config.py AdapterConfig: rank 16,
# alpha 32, dropout 0.05, every attention and MLP projection; the streamed head as in `ours`).
# Not in the default run, which compares full-weight training against TRL (whose DPOTrainer here
# trains full weights too): LoRA vs full weights is a question about ours alone.
OPT_IN_TOOLS = ("ours-lora",)
TOOL_LABELS = {
    "ours": "ours",
    "ours-logits": "ours, full logits",
    "ours-lora": "ours, LoRA",
    "trl": "TRL",
}
LOSSES = ("sppo_hard", "wpo")
REFS = ("precompute", "online")

# What both tools are given, per loss. SPPO: TRL's beta is 1/eta (ours: eta = 1000).
# WPO: DPO's sigmoid loss times the pair weight, unclamped on both sides (TRL >= 0.29 has no clamp).
LOSS_SETTINGS = {
    "sppo_hard": {"optimizer": "rmsprop", "beta": 0.001, "eta": 1000.0},
    "wpo": {"optimizer": "adamw", "beta": 0.01},
}
SHARED = {
    "per_device_batch_size": 4,  # pairs per step: 8 sequences (chosen + rejected)
    "learning_rate": 1.0e-4,
    "lr_scheduler": "constant (no warm-up)",
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "seed": 42,
    "logging_steps": 10,
    "precision": "float32",
    "gradient_checkpointing": False,
    "gradient_accumulation_steps": 1,
}


# Sequence lengths (--lengths): the pairs' responses, in corpus words, and the length limits;
# max_prompt_length is ours only (TRL 1.16 truncates the whole sequence; none is cut here).
LENGTHS = {
    "short": {"max_length": 256, "max_prompt_length": 128, "chosen": (40, 95), "rejected": (20, 95)},
    "long": {"max_length": 1024, "max_prompt_length": 128, "chosen": (150, 300), "rejected": (150, 300)},
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    tool: str
    model: str
    loss: str
    ref: str
    lengths: str = "short"

    @property
    def name(self) -> str:
        suffix = "" if self.lengths == "short" else f"/{self.lengths}"
        return f"{self.tool}/{self.model}/{self.loss}/{self.ref}{suffix}"


# --- the pairs --------------------------------------------------------------------------------


def make_pairs(n: int, seed: int, models: list[str], lengths: dict) -> list[dict]:
    """`n` pairs: the project's prompts, responses cut from the tiny corpus (`lengths`' word
    ranges: short, 40–95 and 20–95 words, ~90–250 tokens per sequence), shortened until every
    model's tokenizer fits the whole chat-rendered sequence within `max_length`, so neither tool
    truncates anything."""
    max_length = lengths["max_length"]
    from transformers import AutoTokenizer

    tokenizers = [AutoTokenizer.from_pretrained(model_path(m)) for m in models]
    prompts = project_prompts()
    words = corpus_words()
    rng = random.Random(seed)

    def fits(prompt: str, response: str) -> bool:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        for tok in tokenizers:
            text = tok.apply_chat_template(chat, tokenize=False)
            if len(tok(text, add_special_tokens=False)["input_ids"]) > max_length - 4:
                return False
        return True

    def response(prompt: str, low: int, high: int) -> str:
        k = rng.randint(low, high)
        start = rng.randrange(len(words) - k)
        picked = words[start : start + k]
        while not fits(prompt, " ".join(picked)):
            picked = picked[:-5]
        return " ".join(picked)

    rows = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        p_win = round(rng.uniform(0.55, 0.95), 3)
        rows.append(
            {
                "prompt_id": f"bench{i:04d}",
                "prompt": prompt,
                "chosen": response(prompt, *lengths["chosen"]),
                "rejected": response(prompt, *lengths["rejected"]),
                "chosen_probs": p_win,
                "chosen_probs_win": p_win,
                "chosen_probs_lose": round(1 - p_win, 3),
            }
        )
    return rows


# --- measurement ------------------------------------------------------------------------------


class PeakRss:
    """Peak resident memory of this process while `trainer.train()` runs, above what it held
    just before; and, separately, the peak of the last warm-up step and the measured steps above
    the RSS before them: what one steady step needs on top of what training keeps.

    Linux resets the kernel's own high-water mark (VmHWM) on `clear_refs` = 5, which catches
    every peak exactly; where that is not allowed, a 1 ms sampler of VmRSS stands in.
    """

    def start(self) -> None:
        gc.collect()
        # hand freed heap back to the OS, so that neither tool's setup garbage hides its peak
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.setup_hwm_kb = status_kb("VmHWM")
        self.baseline_kb = status_kb("VmRSS")
        self.warm_peak_kb = self.warm_rss_kb = None
        try:
            self._reset()
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "VmRSS sampled every 1 ms"
            self._peak, self._stop = self.baseline_kb, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def _reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, status_kb("VmRSS"))

    def _current_peak(self) -> int:
        return status_kb("VmHWM") if self.method.startswith("VmHWM") else self._peak

    def mark_warm(self) -> None:
        """Near the end of the warm-up: keep the peak so far, start a fresh one for the steady
        steps (after handing freed heap back, so that a step's transient memory shows as a rise)."""
        self.warm_peak_kb = self._current_peak()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.warm_rss_kb = status_kb("VmRSS")
        if self.method.startswith("VmHWM"):
            self._reset()
        else:
            self._peak = self.warm_rss_kb

    def stop(self) -> dict:
        steady = self._current_peak()
        if not self.method.startswith("VmHWM"):
            self._stop.set()
            self._thread.join()
        peak = max(steady, self.warm_peak_kb or 0)
        return {
            "rss_before_train_mb": self.baseline_kb / 1024,
            "peak_rss_delta_mb": (peak - self.baseline_kb) / 1024,
            "steady_peak_delta_mb": (steady - self.warm_rss_kb) / 1024,
            "rss_after_warmup_mb": self.warm_rss_kb / 1024,
            "peak_rss_process_mb": max(peak, self.setup_hwm_kb) / 1024,
            "memory_method": self.method,
        }


def step_clock(warmup: int, stop_at: int):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time at the end of every optimiser step; stops training after `stop_at` steps.

        Also notes, over the measured window, the CPU time of this process and of the whole
        machine: the difference is what other processes took, which spoils a timing on 2 cores.
        """

        def __init__(self):
            self.ends: list[float] = []
            self.tokens: list[int] = []  # non-pad tokens of each step's batch (chosen + rejected)
            self.padded: list[int] = []  # the same batch's padded size
            self.cpu: dict[str, float] = {}
            self.on_warm = None  # called at the end of the last warm-up step but one

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            # the memory mark (which trims the heap) comes one step before the timed window,
            # so that re-faulting the trimmed pages is not timed
            if len(self.ends) == warmup - 1 and self.on_warm is not None:
                self.on_warm()
            if len(self.ends) in (warmup, stop_at):
                tag = "start" if len(self.ends) == warmup else "end"
                self.cpu[f"machine_{tag}"] = machine_busy_s()
                self.cpu[f"process_{tag}"] = time.process_time()
            if state.global_step >= stop_at:
                control.should_training_stop = True

        def other_cpu_share(self) -> float:
            window = self.ends[stop_at - 1] - self.ends[warmup - 1]
            machine = self.cpu["machine_end"] - self.cpu["machine_start"]
            own = self.cpu["process_end"] - self.cpu["process_start"]
            return max(machine - own, 0.0) / (window * len(os.sched_getaffinity(0)))

    return StepClock()


def count_tokens(trainer, clock) -> None:
    """Record every training batch's token count on its way into `training_step` (both tools
    are `transformers.Trainer`s, so one wrapper serves both)."""
    inner = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        clock.tokens.append(int(inputs["attention_mask"].sum()))
        clock.padded.append(int(inputs["attention_mask"].numel()))
        return inner(model, inputs, *args, **kwargs)

    trainer.training_step = training_step


def timed(fn, into: dict, key: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[key] = into.get(key, 0.0) + time.perf_counter() - started

    return wrapper


# --- the two trainers -------------------------------------------------------------------------


def build_ours(spec: Spec, pairs_path: Path, workdir: Path, total_steps: int, clock, extra: dict):
    """The PreferenceTrainer of `python -m src.main stage=train ...`: the project's own config
    (Hydra compose + validation) given to `src.stages.train.setup`, the stage's own setup step; the
    stage's cleanup (checkpoint save, metrics.json) is left out."""
    import math

    from hydra import compose, initialize_config_dir

    from src.config import Stage, validate
    from src.stages.train import setup

    os.environ["SELFPLAY_RUNS"] = str(workdir / "runs")
    settings = LOSS_SETTINGS[spec.loss]
    method = (
        ["method=sppo", "method.loss=sppo_hard", f"method.eta={settings['eta']}"]
        if spec.loss == "sppo_hard"
        else ["method=wpo", f"method.beta={settings['beta']}", "method.wpo_clamp=null"]
    )
    wide = (
        [f"model.name={spec.model}", f"model.path={model_path(spec.model)}"]
        if spec.model in WIDE_MODELS
        else []
    )
    lengths = LENGTHS[spec.lengths]
    batch = SHARED["per_device_batch_size"]
    n_pairs = sum(1 for line in pairs_path.read_text().splitlines() if line.strip())
    overrides = [
        "stage=train",
        f"model={base_model(spec.model)}",
        *wide,
        "logger=none",
        f"training.pairs={pairs_path}",
        *method,
        f"training.optimizer={settings['optimizer']}",
        f"training.learning_rate={SHARED['learning_rate']}",
        "training.lr_scheduler=constant",
        "training.warmup_ratio=0",
        f"training.per_device_batch_size={batch}",
        f"training.global_batch_size={batch}",
        f"training.num_epochs={math.ceil(total_steps / (n_pairs // batch))}",
        f"training.max_length={lengths['max_length']}",
        f"training.max_prompt_length={lengths['max_prompt_length']}",
        *(["training.lm_head_chunk=null"] if spec.tool == "ours-logits" else []),
        *(["training.peft=lora"] if spec.tool == "ours-lora" else []),
        "training.gradient_checkpointing=false",
        "training.precision=float32",
        f"training.ref_logprobs={spec.ref}",
        f"training.max_grad_norm={SHARED['max_grad_norm']}",
        f"training.weight_decay={SHARED['weight_decay']}",
        f"training.seed={SHARED['seed']}",
        f"training.logging_steps={SHARED['logging_steps']}",
        "training.save_steps=1000000",  # no checkpoint inside the measured steps
    ]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=overrides))
    extra["overrides"] = overrides
    if spec.tool == "ours-lora":  # the adapter's settings, the config's defaults
        lora = cfg.training.lora
        extra["lora"] = {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": list(lora.target_modules),
        }
    ready = setup(cfg, cfg.stage_dir(Stage.train))
    extra["tokenisation"] = ready.counts
    trainer = ready.trainer
    trainer.add_callback(clock)
    if trainer.reference is not None:  # runs inside train(), before step 1: not in the step times
        trainer.precompute_reference = timed(trainer.precompute_reference, extra, "precompute_s")
    return trainer


def build_trl(spec: Spec, pairs_path: Path, workdir: Path, total_steps: int, clock, extra: dict):
    """TRL's DPOTrainer with its defaults except where they would make the comparison unequal
    (bf16 and gradient checkpointing are on by default in DPOConfig: both off here)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    settings = LOSS_SETTINGS[spec.loss]
    path = model_path(spec.model)
    rows = [json.loads(line) for line in pairs_path.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    args = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=SHARED["per_device_batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=SHARED["learning_rate"],
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0,
        optim={"rmsprop": "rmsprop", "adamw": "adamw_torch"}[settings["optimizer"]],
        weight_decay=SHARED["weight_decay"],
        max_grad_norm=SHARED["max_grad_norm"],
        seed=SHARED["seed"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=SHARED["logging_steps"],
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        max_steps=total_steps,
        max_length=LENGTHS[spec.lengths]["max_length"],
        loss_type=["sigmoid" if spec.loss == "wpo" else "sppo_hard"],
        beta=settings["beta"],
        use_weighting=spec.loss == "wpo",
        precompute_ref_log_probs=spec.ref == "precompute",
    )
    extra["dpo_config"] = {
        k: v
        for k, v in args.to_dict().items()
        if k
        in (
            "loss_type",
            "beta",
            "use_weighting",
            "precompute_ref_log_probs",
            "max_length",
            "optim",
            "learning_rate",
            "bf16",
            "gradient_checkpointing",
            "disable_dropout",
        )
    }
    # the attention implementation conf/model/<model>.yaml gives ours
    attn = "eager" if base_model(spec.model) == "tiny-gemma2" else None
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    # the precompute pass runs inside the constructor (not in the step timings)
    DPOTrainer._precompute_ref_logps = timed(
        DPOTrainer._precompute_ref_logps, extra, "precompute_s"
    )
    # ref_model=None: TRL loads its own reference copy (online) or none (precompute), its default
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    lengths = [
        len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
        for r in trainer.train_dataset
    ]
    limit = LENGTHS[spec.lengths]["max_length"]
    extra["sequences_over_max_length"] = sum(n > limit for n in lengths)
    return trainer


# --- one configuration (a fresh process) ------------------------------------------------------


def run_worker(spec: Spec, pairs_path: Path, workdir: Path, warmup: int, steps: int) -> dict:
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "datasets")  # before `datasets` is imported
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    total = warmup + steps
    clock = step_clock(warmup, total)
    extra: dict = {}
    started = time.perf_counter()
    build = build_trl if spec.tool == "trl" else build_ours
    trainer = build(spec, pairs_path, workdir, total, clock, extra)
    count_tokens(trainer, clock)
    setup_s = time.perf_counter() - started
    # what the optimiser updates (full weights: all; LoRA: the adapter), of all the policy's
    # parameters (LoRA: the frozen base and the adapter; tied weights counted once)
    params = list(trainer.model.parameters())
    extra["trainable_params"] = sum(p.numel() for p in params if p.requires_grad)
    extra["total_params"] = sum(p.numel() for p in params)

    memory = PeakRss()
    clock.on_warm = memory.mark_warm
    memory.start()
    train_started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_started
    mem = memory.stop()

    if len(clock.ends) != total or len(clock.tokens) != total:
        raise RuntimeError(f"{spec.name}: {len(clock.ends)} steps ran, {total} expected")
    window = clock.ends[warmup - 1 : total]  # end of the last warm-up step .. end of the last step
    intervals = [b - a for a, b in zip(window, window[1:], strict=False)]
    seconds = window[-1] - window[0]
    tokens = sum(clock.tokens[warmup:total])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "spec": asdict(spec),
        "tokens_per_s": tokens / seconds,
        "step_s_median": statistics.median(intervals),
        "step_s_mean": seconds / steps,
        "tokens_per_step_mean": tokens / steps,
        "padded_tokens_per_step_mean": sum(clock.padded[warmup:total]) / steps,
        "warmup_steps": warmup,
        "measured_steps": steps,
        "train_call_s": train_s,
        "setup_s": setup_s,
        "precompute_s": extra.pop("precompute_s", None),
        "losses_logged": losses,
        "torch_threads": torch.get_num_threads(),
        "other_cpu_share": clock.other_cpu_share(),
        **mem,
        **extra,
    }


def worker_main(argv: list[str]) -> None:
    out, spec = Path(argv[0]), Spec(**json.loads(argv[1]))
    pairs_path, warmup, steps = Path(argv[2]), int(argv[3]), int(argv[4])
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as workdir:
        result = run_worker(spec, pairs_path, Path(workdir), warmup, steps)
    out.write_text(json.dumps(result, indent=1))


# --- the whole benchmark ----------------------------------------------------------------------


def run_name(run: dict) -> str:
    return Spec(**run["spec"]).name


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name, group in group_runs(runs, run_name).items():
        out[name] = {
            **summary_of(
                group,
                "tokens_per_s",
                medians=(
                    "peak_rss_delta_mb",
                    "steady_peak_delta_mb",
                    "peak_rss_process_mb",
                    "precompute_s",
                ),
            ),  # fmt: skip
            "step_ms": 1000 * median([r["step_s_median"] for r in group]),
            "tokens_per_step": median([r["tokens_per_step_mean"] for r in group]),
            # None in results recorded before the counts were
            "trainable_params": group[0].get("trainable_params"),
            "total_params": group[0].get("total_params"),
        }
    return out


# (what, tool a, tool b, a's reference mode, b's reference mode, metric, target); ours' default
# reference mode is precompute (training.ref_logprobs), TRL's is online
# (precompute_ref_log_probs=False). A target may differ by model: the 256k-vocabulary model's
# are what the streamed LM head is for.
VERSUS = [
    ("ours/TRL throughput", "ours", "trl", "precompute", "precompute", "tokens_per_s",
     {"tiny-gemma2-256k": ">= 2.0", "*": ">= 1.0"}),
    ("ours/TRL throughput", "ours", "trl", "online", "online", "tokens_per_s", ">= 1.0"),
    ("ours/TRL throughput (defaults)", "ours", "trl", "precompute", "online", "tokens_per_s",
     ">= 1.0"),
    ("ours/TRL peak memory", "ours", "trl", "precompute", "precompute", "peak_rss_delta_mb",
     {"tiny-gemma2-256k": "<= 0.5", "*": "<= 1.0"}),
    ("ours/TRL peak memory", "ours", "trl", "online", "online", "peak_rss_delta_mb", "<= 1.0"),
    ("ours/TRL steady-step memory", "ours", "trl", "precompute", "precompute",
     "steady_peak_delta_mb", None),
    ("ours/TRL steady-step memory", "ours", "trl", "online", "online", "steady_peak_delta_mb",
     None),
    ("streamed/full-logits throughput", "ours", "ours-logits", "precompute", "precompute",
     "tokens_per_s", None),
    ("streamed/full-logits throughput", "ours", "ours-logits", "online", "online",
     "tokens_per_s", None),
    ("streamed/full-logits peak memory", "ours", "ours-logits", "precompute", "precompute",
     "peak_rss_delta_mb", {"tiny-gemma2-256k": "<= 0.35", "*": None}),
    ("streamed/full-logits peak memory", "ours", "ours-logits", "online", "online",
     "peak_rss_delta_mb", None),
    # opt-in (--tools ours-lora): LoRA against full-weight training, both ours, same batch
    ("LoRA/full-weight throughput", "ours-lora", "ours", "precompute", "precompute",
     "tokens_per_s", None),
    ("LoRA/full-weight throughput", "ours-lora", "ours", "online", "online", "tokens_per_s",
     None),
    ("LoRA/full-weight peak memory", "ours-lora", "ours", "precompute", "precompute",
     "peak_rss_delta_mb", None),
    ("LoRA/full-weight peak memory", "ours-lora", "ours", "online", "online",
     "peak_rss_delta_mb", None),
    ("LoRA/full-weight steady-step memory", "ours-lora", "ours", "precompute", "precompute",
     "steady_peak_delta_mb", None),
    ("LoRA/full-weight steady-step memory", "ours-lora", "ours", "online", "online",
     "steady_peak_delta_mb", None),
    ("LoRA/full-weight process peak memory", "ours-lora", "ours", "precompute", "precompute",
     "peak_rss_process_mb", None),
    ("LoRA/full-weight process peak memory", "ours-lora", "ours", "online", "online",
     "peak_rss_process_mb", None),
]  # fmt: skip
PRECOMPUTE_GAIN = [("ours", ">= 1.25"), ("ours-logits", None), ("ours-lora", None), ("trl", None)]


def ratios(summary: dict, runs: list[dict]) -> list[dict]:
    """The ratios of the medians, each with its targets, and the range of the same ratio taken
    repeat by repeat (repeat i of one configuration against repeat i of the other)."""

    def ratio(model, loss, what, modes, a: Spec, b: Spec, key, target):
        sa, sb = summary.get(a.name), summary.get(b.name)
        if not (sa and sb and sb[key]):
            return None
        per_repeat = per_repeat_ratios(runs, run_name, a.name, b.name, key)
        value = sa[key] / sb[key]
        return {
            "model": model,
            "loss": loss,
            "ratio": what,
            "modes": modes,
            "value": value,
            "per_repeat_min": min(per_repeat),
            "per_repeat_max": max(per_repeat),
            "target": target,
            "met": target_met(value, target),
        }

    rows = []
    cases = sorted(
        {(s["spec"]["model"], s["spec"].get("lengths", "short")) for s in summary.values()}
    )
    losses = sorted({s["spec"]["loss"] for s in summary.values()})
    for model, lengths in cases:
        label = model if lengths == "short" else f"{model} ({lengths})"
        for loss in losses:
            for what, tool_a, tool_b, ref_a, ref_b, key, target in VERSUS:
                a = Spec(tool_a, model, loss, ref_a, lengths)
                b = Spec(tool_b, model, loss, ref_b, lengths)
                if isinstance(target, dict):
                    target = target.get(model, target["*"])
                modes = f"{ref_a} vs {ref_b}"
                rows.append(ratio(label, loss, what, modes, a, b, key, target))
            for tool, target in PRECOMPUTE_GAIN:
                a = Spec(tool, model, loss, "precompute", lengths)
                b = Spec(tool, model, loss, "online", lengths)
                what = f"{TOOL_LABELS[tool]} precompute/online throughput"
                rows.append(ratio(label, loss, what, "", a, b, "tokens_per_s", target))
    return [r for r in rows if r is not None]


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    v = m["versions"]
    tools = {r["spec"]["tool"] for r in result["summary"].values()}
    title = (
        "ours with a LoRA adapter vs full weights"
        if "ours-lora" in tools and "trl" not in tools
        else "ours vs TRL DPOTrainer"
    )
    peft = f" · peft {v['peft']}" if "peft" in v else ""
    lines = [
        f"# Trainer throughput on CPU: {title}",
        "",
        f"{m['date_utc']} · {m['cpu_model']} · {m['cpu_affinity']} cores · torch {v['torch']} · "
        f"transformers {v['transformers']} · accelerate {v['accelerate']} · trl {v['trl']}{peft} · "
        f"commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''}",
        "",
        f"{s['pairs']} pairs, batch {s['per_device_batch_size']} pairs ({2 * s['per_device_batch_size']} "
        f"sequences), max_length {s.get('max_length', 256)}, "
        f"fp32, 1 process; {s['warmup_steps']} warm-up + {s['measured_steps']} measured "
        f"steps; median of {s['repeats']} fresh-process repeats. Tokens = non-pad tokens of chosen + "
        "rejected. Peak Δ = peak RSS during `train()` above the RSS just before it; steady Δ = "
        "peak RSS of the steady steps above the RSS before them (heap trimmed).",
        "",
        "| tool | model | loss | reference | tokens/s (min–max) | step ms | tokens/step "
        "| peak Δ MB | steady Δ MB | process peak MB | ref precompute s | trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"].values():
        sp = r["spec"]
        pre = f"{r['precompute_s']:.2f}" if r["precompute_s"] is not None else "–"
        trainable = r.get("trainable_params")
        params = "–" if trainable is None else f"{trainable:,} of {r['total_params']:,}"
        lines.append(
            f"| {TOOL_LABELS[sp['tool']]} | {sp['model']} | {sp['loss']} | {sp['ref']} | "
            f"{r['tokens_per_s']:,.0f} ({r['tokens_per_s_min']:,.0f}–{r['tokens_per_s_max']:,.0f}) | "
            f"{r['step_ms']:.1f} | {r['tokens_per_step']:.0f} | {r['peak_rss_delta_mb']:.1f} | "
            f"{r['steady_peak_delta_mb']:.1f} | "
            f"{r['peak_rss_process_mb']:.0f} | {pre} | {params} |"
        )
    lines += [
        "",
        "| model | loss | ratio | reference modes | ratio of medians | per-repeat range "
        "| target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["ratios"]:
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(
            f"| {r['model']} | {r['loss']} | {r['ratio']} | {r['modes'] or '–'} | {r['value']:.3f} | "
            f"{r['per_repeat_min']:.2f}–{r['per_repeat_max']:.2f} | {r['target'] or '–'} | {met} |"
        )
    return "\n".join(lines) + "\n"


def specs_for(args) -> list[Spec]:
    return [
        Spec(tool, model, loss, ref, args.lengths)
        for model in args.models
        for loss in args.losses
        for tool in args.tools
        for ref in args.refs
    ]


def describe(run: dict) -> str:
    return (
        f"{run['tokens_per_s']:,.0f} tok/s, step {1000 * run['step_s_median']:.1f} ms, "
        f"peak Δ {run['peak_rss_delta_mb']:.1f} MB (steady {run['steady_peak_delta_mb']:.1f})"
    )


def main(argv: list[str] | None = None) -> None:
    started = command_line(argv, worker_main, "benchmarks.bench_trainer", __doc__)
    if started is None:
        return
    argv, parser = started
    parser.add_argument(
        "--steps", type=int, default=20, help="measured optimiser steps (default 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="steps before the measurement (default 3)"
    )
    parser.add_argument("--pairs", type=int, default=128, help="synthetic pairs (default 128)")
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=[*MODELS, *WIDE_MODELS]
    )
    parser.add_argument(
        "--tools",
        nargs="+",
        default=list(TOOLS),
        choices=[*TOOLS, *OPT_IN_TOOLS],
        help=f"default: {' '.join(TOOLS)}; opt-in: {' '.join(OPT_IN_TOOLS)} (ours, training.peft=lora)",
    )
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--refs", nargs="+", default=list(REFS), choices=REFS)
    parser.add_argument(
        "--lengths", default="short", choices=LENGTHS, help="pair lengths (default short)"
    )
    add_common_args(parser, out=REPO_ROOT / "benchmarks/results/trainer_cpu.json", timeout=600)
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render, ratios, markdown)
        return
    if args.warmup < 2 or args.steps < 2:
        parser.error("--warmup and --steps must be >= 2")
    batch = SHARED["per_device_batch_size"]
    if args.pairs < batch * 2:
        parser.error(f"--pairs must be at least {2 * batch}")

    started = time.time()

    for model in args.models:
        model_path(model)
    # checked against every tiny tokenizer, whatever --models says: the pairs never change
    lengths = LENGTHS[args.lengths]
    rows = make_pairs(args.pairs, SHARED["seed"], list(MODELS), lengths)
    bench_dir = BENCH_CACHE
    bench_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.lengths == "short" else f"_{args.lengths}"
    pairs_path = bench_dir / f"pairs_{args.pairs}{suffix}.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def run_one(spec: Spec):
        worker_args = [json.dumps(asdict(spec)), str(pairs_path), str(args.warmup), str(args.steps)]
        return run_fresh("benchmarks.bench_trainer", worker_args, args.timeout)

    runs, failures, waited = measure_interleaved(specs_for(args), args, run_one, describe)

    summary = summarise(runs)
    # no code_versions: the trainer's runs do not record the code they imported
    report(
        args,
        argv,
        "benchmarks.bench_trainer",
        started,
        markdown,
        (runs, failures, waited),
        benchmark="trainer step throughput and peak memory, "
        + (
            "ours with a LoRA adapter vs full weights, CPU"
            if "ours-lora" in args.tools and "trl" not in args.tools
            else "ours vs TRL DPOTrainer, CPU"
        ),
        packages=("torch", "transformers", "accelerate", "trl", "datasets", "peft"),
        code=code_hashes(
            [*sorted((REPO_ROOT / "src" / "training").glob("*.py")), Path(__file__).resolve()]
        ),
        settings={
            **SHARED,
            "lengths": args.lengths,
            "max_length": lengths["max_length"],
            "max_prompt_length": lengths["max_prompt_length"],
            "response_words": {"chosen": lengths["chosen"], "rejected": lengths["rejected"]},
            "loss_settings": LOSS_SETTINGS,
            "pairs": len(rows),
            "pairs_file_sha256": hashlib.sha256(pairs_path.read_bytes()).hexdigest(),
            "warmup_steps": args.warmup,
            "measured_steps": args.steps,
        },
        summary=summary,
        ratios=ratios(summary, runs),
    )


if __name__ == "__main__":
    main()
