"""Training tokens/s and memory: the train stage's PreferenceTrainer (`src.stages.train_worker.setup`
on the composed, validated config of `python -m src.main stage=train`) against TRL's DPOTrainer
(`pip install ".[bench]"`), on CPU, same tiny model, pairs, batch, optimiser, schedule and seed;
`train()`'s steady steps timed in-process, memory by the stage's meter (`Peak`). What is compared
and how it is measured: docs/performance.md, Trainer; commands and tables: benchmarks/README.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import CACHE, REPO_ROOT, Benchmark, Case, by_case, fmt, median, ratio, table
from src.core.memory import Peak, status_bytes

MODELS = {  # name: (tiny model, vocabulary rows it is widened to; None: as built)
    "tiny-mistral": ("tiny-mistral", None),
    "tiny-gemma2": ("tiny-gemma2", None),
    "tiny-mistral-32k": ("tiny-mistral", 32000),
    "tiny-gemma2-256k": ("tiny-gemma2", 256000),
}
TOOLS = {  # tool: (label, the train stage's overrides beyond the shared ones; None: TRL)
    "ours": ("ours", []),
    "ours-logits": ("ours, full logits", ["training.lm_head_chunk=null"]),
    "ours-lora": ("ours, LoRA", ["training.peft=lora"]),
    "trl": ("TRL", None),
}
LOSSES = {  # (optimiser, ours, TRL). SPPO: TRL's beta is 1/eta. WPO: unclamped in both.
    "sppo_hard": ("rmsprop", ["method=sppo", "method.loss=sppo_hard", "method.eta=1000.0"],
                  {"loss_type": ["sppo_hard"], "beta": 0.001}),
    "wpo": ("adamw", ["method=wpo", "method.beta=0.01", "method.wpo_clamp=null"],
            {"loss_type": ["sigmoid"], "beta": 0.01, "use_weighting": True}),
}  # fmt: skip
REFS = ("precompute", "online")
SHARED = {"batch": 4, "learning_rate": 1e-4, "max_grad_norm": 1.0, "seed": 42, "logging_steps": 10}
OURS = [  # the train stage's overrides for SHARED, and no checkpoint among the measured steps
    "stage=train", "logger=none", "training.lr_scheduler=constant", "training.warmup_ratio=0",
    f"training.per_device_batch_size={SHARED['batch']}", f"training.global_batch_size={SHARED['batch']}",
    f"training.learning_rate={SHARED['learning_rate']}", f"training.max_grad_norm={SHARED['max_grad_norm']}",
    f"training.seed={SHARED['seed']}", f"training.logging_steps={SHARED['logging_steps']}",
    "training.weight_decay=0", "training.gradient_checkpointing=false", "training.precision=float32",
    "training.save_steps=1000000",
]  # fmt: skip
# responses in corpus words, cut until every tiny tokenizer fits a pair in max_length: neither
# tool truncates (max_prompt_length is ours only: TRL 1.16 has none)
LENGTHS = {
    "short": {"max_length": 256, "max_prompt_length": 128, "chosen": (40, 95), "rejected": (20, 95)},
    "long": {"max_length": 1024, "max_prompt_length": 128, "chosen": (150, 300), "rejected": (150, 300)},
}  # fmt: skip
# (ratio, tool a, tool b, measure, target: one, or {model: target, "*": the others' target}), in
# either reference mode; then ratios across modes
SAME_MODE = [
    ("ours/TRL throughput", "ours", "trl", "tokens_per_s", {"tiny-gemma2-256k": ">= 2.0", "*": ">= 1.0"}),
    ("ours/TRL peak memory", "ours", "trl", "peak_delta_mb", {"tiny-gemma2-256k": "<= 0.5", "*": "<= 1.0"}),
    ("ours/TRL steady-step memory", "ours", "trl", "steady_delta_mb", None),
    ("streamed/full-logits throughput", "ours", "ours-logits", "tokens_per_s", None),
    ("streamed/full-logits peak memory", "ours", "ours-logits", "peak_delta_mb",
     {"tiny-gemma2-256k": "<= 0.35", "*": None}),
    *[(f"LoRA/full-weight {what}", "ours-lora", "ours", key, None) for what, key in [
        ("throughput", "tokens_per_s"), ("peak memory", "peak_delta_mb"),
        ("steady-step memory", "steady_delta_mb"), ("process peak memory", "process_peak_mb")]],
]  # fmt: skip
VERSUS = [(what, a, r, b, r, key, target) for what, a, b, key, target in SAME_MODE for r in REFS] + [
    ("ours/TRL throughput (defaults)", "ours", "precompute", "trl", "online", "tokens_per_s", ">= 1.0"),
    *[(f"{label} precompute/online throughput", t, "precompute", t, "online", "tokens_per_s",
       ">= 1.25" if t == "ours" else None) for t, (label, _) in TOOLS.items()],
]  # fmt: skip


def case_name(tool: str, model: str, loss: str, ref: str, lengths: str) -> str:
    return f"{tool}/{model}/{loss}/{ref}" + ("" if lengths == "short" else f"/{lengths}")


def add_args(parser) -> None:
    parser.add_argument("--models", nargs="+", default=list(MODELS)[:2], choices=MODELS)
    parser.add_argument("--tools", nargs="+", default=["ours", "ours-logits", "trl"], choices=TOOLS)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--refs", nargs="+", default=list(REFS), choices=REFS)
    parser.add_argument("--lengths", default="short", choices=LENGTHS)
    parser.add_argument("--pairs", type=int, default=128, help="synthetic pairs")
    parser.add_argument("--warmup", type=int, default=3, help="optimiser steps not measured")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps measured")


def cases(args) -> list[Case]:
    if args.warmup < 2 or args.steps < 2 or args.pairs < 2 * SHARED["batch"]:
        raise SystemExit("--warmup and --steps must be >= 2, --pairs >= 8")
    paths = {m: str(model_path(m)) for m in args.models}  # built once, before the workers
    common = {"pairs": str(write_pairs(args.pairs, args.lengths)), "lengths": args.lengths,
              "warmup": args.warmup, "steps": args.steps}  # fmt: skip
    return [
        Case(case_name(tool, model, loss, ref, args.lengths), "trl" if tool == "trl" else "ours",
             {**common, "tool": tool, "model": model, "path": paths[model], "loss": loss, "ref": ref})
        for model in args.models for loss in args.losses for tool in args.tools for ref in args.refs
    ]  # fmt: skip


def model_path(name: str) -> Path:
    from src.tiny.models import DEFAULT_CACHE_DIR, ensure
    from src.tiny.widen import widened

    base, vocab = MODELS[name]
    return widened(base, vocab, CACHE / name) if vocab else ensure(base, DEFAULT_CACHE_DIR)


def write_pairs(n: int, lengths: str) -> Path:
    """`n` pairs, deterministic: the project's hand-written prompts, responses cut from the
    tiny corpus (~90–250 tokens a sequence when short)."""
    from transformers import AutoTokenizer

    spec, rng = LENGTHS[lengths], random.Random(SHARED["seed"])
    toks = [AutoTokenizer.from_pretrained(model_path(m)) for m in list(MODELS)[:2]]
    prompts, words = harness.written_prompts(), harness.corpus_words()

    def response(prompt: str, low: int, high: int) -> str:
        picked = harness.cut(rng, words, rng.randint(low, high)).split()
        while True:
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " ".join(picked)}]  # fmt: skip
            texts = [(t, t.apply_chat_template(chat, tokenize=False)) for t in toks]
            if all(len(t(x, add_special_tokens=False).input_ids) <= spec["max_length"] - 4 for t, x in texts):  # fmt: skip
                return " ".join(picked)
            picked = picked[:-5]

    def row(i: int) -> dict:
        prompt, p = prompts[i % len(prompts)], round(rng.uniform(0.55, 0.95), 3)
        return {"prompt_id": f"bench{i:04d}", "prompt": prompt,
                "chosen": response(prompt, *spec["chosen"]), "rejected": response(prompt, *spec["rejected"]),
                "chosen_probs": p, "chosen_probs_win": p, "chosen_probs_lose": round(1 - p, 3)}  # fmt: skip

    path = CACHE / f"pairs_{n}{'_long' * (lengths == 'long')}.jsonl"
    return harness.write_jsonl(path, [row(i) for i in range(n)])


# --- one case, in a fresh process -------------------------------------------------------------


def timed(fn, into: dict):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        into["precompute_s"] = into.get("precompute_s", 0.0) + time.perf_counter() - started
        return out

    return wrapper


def build_ours(p: dict, tmp: str, total: int, extra: dict):
    from src.config import Stage, compose
    from src.stages.train_worker import setup

    harness.as_entry_point()
    (base, vocab), spec, (optimizer, method, _) = MODELS[p["model"]], LENGTHS[p["lengths"]], LOSSES[p["loss"]]  # fmt: skip
    epochs = math.ceil(total / (len(Path(p["pairs"]).read_text().splitlines()) // SHARED["batch"]))
    overrides = [
        *OURS, f"model={base}", f"paths.root={tmp}/runs", f"training.pairs={p['pairs']}", *method,
        *([f"model.name={p['model']}", f"model.path={p['path']}"] if vocab else []),
        f"training.optimizer={optimizer}", f"training.num_epochs={epochs}",
        f"training.max_length={spec['max_length']}", f"training.max_prompt_length={spec['max_prompt_length']}",
        f"training.ref_logprobs={p['ref']}", *TOOLS[p["tool"]][1],
    ]  # fmt: skip
    cfg = compose(overrides)
    ready = setup(cfg, cfg.stage_dir(Stage.train))
    extra.update(overrides=overrides, tokenisation=ready.counts)
    if ready.trainer.reference is not None:  # runs inside train(), before step 1
        ready.trainer.precompute_reference = timed(ready.trainer.precompute_reference, extra)
    return ready.trainer


def build_trl(p: dict, tmp: str, total: int, extra: dict):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(p["pairs"]).read_text().splitlines()]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows
    ])  # fmt: skip
    optimizer, _, loss = LOSSES[p["loss"]]
    limit = LENGTHS[p["lengths"]]["max_length"]
    args = DPOConfig(
        output_dir=f"{tmp}/trl", per_device_train_batch_size=SHARED["batch"],
        learning_rate=SHARED["learning_rate"], lr_scheduler_type="constant_with_warmup",
        warmup_steps=0, optim={"rmsprop": "rmsprop", "adamw": "adamw_torch"}[optimizer],
        weight_decay=0.0, max_grad_norm=SHARED["max_grad_norm"], seed=SHARED["seed"],
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        logging_steps=SHARED["logging_steps"], save_strategy="no", report_to="none",
        dataloader_num_workers=0, max_steps=total, max_length=limit,
        precompute_ref_log_probs=p["ref"] == "precompute", **loss,
    )  # fmt: skip
    kept = (*loss, "precompute_ref_log_probs", "max_length", "optim", "disable_dropout")
    extra["dpo_config"] = {k: v for k, v in args.to_dict().items() if k in kept}
    attn = "eager" if MODELS[p["model"]][0] == "tiny-gemma2" else None  # as conf/model gives ours
    model = AutoModelForCausalLM.from_pretrained(p["path"], dtype=torch.float32, attn_implementation=attn)  # fmt: skip
    # its precompute runs in the constructor; ref_model=None: TRL's default reference
    DPOTrainer._precompute_ref_logps = timed(DPOTrainer._precompute_ref_logps, extra)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(p["path"]))  # fmt: skip
    extra["sequences_over_max_length"] = sum(
        len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > limit
        for r in trainer.train_dataset
    )
    return trainer


def measure(case: Case) -> dict:
    p, extra, ends, tokens, meters, other = case.params, {}, [], [], {}, harness.OtherCpu()
    warmup, total = p["warmup"], p["warmup"] + p["steps"]
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        os.environ["HF_DATASETS_CACHE"] = f"{tmp}/datasets"  # before datasets is imported
        import transformers

        transformers.logging.set_verbosity_error()
        trainer = (build_trl if case.peer == "trl" else build_ours)(p, tmp, total, extra)

        class Clock(transformers.TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(time.perf_counter())
                if len(ends) == warmup - 1:  # a step early: re-faulting trimmed pages is untimed
                    meters["warm"] = meters["train"].bytes()
                    harness.trim()  # a step's peak shows, setup's garbage hides none
                    meters["steady"] = Peak(cuda=False)
                elif len(ends) == warmup:
                    other.start()
                elif len(ends) == total:
                    meters["other"] = other.share(ends[-1] - ends[warmup - 1])
                    control.should_training_stop = True

        trainer.add_callback(Clock())
        inner = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):  # both tools are HF Trainers
            tokens.append(int(inputs["attention_mask"].sum()))
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = training_step
        params = [(x.numel(), x.requires_grad) for x in trainer.model.parameters()]  # tied: once
        process_hwm = status_bytes("VmHWM")
        harness.trim()
        meters["train"] = Peak(cuda=False)
        if meters["train"].start is None:
            raise RuntimeError("the kernel refused to reset VmHWM (clear_refs): no peak to read")
        trainer.train()
    if len(ends) != total or len(tokens) != total:
        raise RuntimeError(f"{case.name}: {len(ends)} steps ran, {total} expected")
    start, steady = meters["train"].start, meters["steady"].bytes()
    peak = max(meters["warm"], meters["steady"].start + steady - start)  # above `start`
    window, mb = ends[warmup - 1 :], 2**20
    return {
        "tokens_per_s": sum(tokens[warmup:]) / (window[-1] - window[0]),
        "step_s_median": median(b - a for a, b in zip(window, window[1:], strict=False)),
        "tokens_per_step": sum(tokens[warmup:]) / p["steps"],
        "peak_delta_mb": peak / mb,
        "steady_delta_mb": steady / mb,
        "process_peak_mb": max(start + peak, process_hwm) / mb,
        "precompute_s": extra.pop("precompute_s", None),
        "params": [sum(n for n, grad in params if grad), sum(n for n, _ in params)],
        "losses_logged": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "other_cpu_share": meters["other"],  # over the measured steps only
        **extra,
    }


# --- summary and tables -----------------------------------------------------------------------

MEDIANS = ("tokens_per_s", "step_s_median", "tokens_per_step", "peak_delta_mb", "steady_delta_mb",
           "process_peak_mb", "precompute_s")  # fmt: skip
HEADER = ["tool", "model", "loss", "reference", "tokens/s (min–max)", "step ms", "tokens/step",
          "peak Δ MB", "steady Δ MB", "process peak MB", "ref precompute s", "trainable params"]  # fmt: skip


def summarise(runs: list[dict], args) -> dict:
    summary = {name: {**harness.medians(group, MEDIANS), "params": group[0]["params"]}
               for name, group in by_case(runs).items()}  # fmt: skip
    ratios = []
    for model in args.models:
        for loss in args.losses:
            for what, a, ref_a, b, ref_b, key, target in VERSUS:
                names = [case_name(t, model, loss, r, args.lengths) for t, r in [(a, ref_a), (b, ref_b)]]  # fmt: skip
                if isinstance(target, dict):
                    target = target.get(model, target["*"])
                if all(n in summary for n in names):
                    modes = "" if a == b else f"{ref_a} vs {ref_b}"
                    ratios.append({"model": model, "loss": loss, "ratio": what, "modes": modes,
                                   **ratio(runs, *names, key, target)})  # fmt: skip
    return {"summary": summary, "ratios": ratios}


def tables(result: dict) -> list[dict]:
    s = result["settings"]
    setting = harness.setting(
        result,
        f"{s['pairs']} pairs, batch {SHARED['batch']} pairs ({2 * SHARED['batch']} sequences), "
        f"max_length {LENGTHS[s['lengths']]['max_length']}, fp32, 1 process; {s['warmup']} "
        f"warm-up + {s['steps']} measured steps; median of {s['repeats']} fresh-process repeats. "
        "Tokens = non-pad tokens of chosen + rejected. Peak Δ = peak RSS during `train()` above "
        "the RSS just before it; steady Δ = peak RSS of the steady steps above the RSS before "
        "them (heap trimmed); both read by the stage's meter (`src.core.memory.Peak`).",
    )
    rows = [
        [TOOLS[name.split("/")[0]][0], *name.split("/")[1:4],
         "{} ({}–{})".format(*(fmt(x, 0) for x in (r["tokens_per_s"], *r["tokens_per_s_range"]))),
         fmt(1000 * r["step_s_median"]), fmt(r["tokens_per_step"], 0), fmt(r["peak_delta_mb"]),
         fmt(r["steady_delta_mb"]), fmt(r["process_peak_mb"], 0), fmt(r["precompute_s"], 2),
         "{:,} of {:,}".format(*r["params"])]
        for name, r in result["summary"].items()
    ]  # fmt: skip
    labels = {k: lambda r, k=k: r[k] for k in ("model", "loss", "ratio")}
    return [
        setting,
        table(HEADER, rows),
        harness.ratio_table(result["ratios"], {**labels, "reference modes": lambda r: r["modes"] or "–"}),
        harness.verdict(
            result["ratios"], "{0[model]} {0[loss]} {0[ratio]}".format,
            "Tiny models on few CPU cores: per-step overheads weigh far more than at scale, and "
            "TRL runs its CPU fallback, not its Triton kernel.",
        ),
    ]  # fmt: skip


BENCHMARK = Benchmark(
    name="trainer", title="Trainer throughput and memory on CPU: ours vs TRL DPOTrainer",
    results="trainer_cpu", cases=cases, measure=measure, summarise=summarise, tables=tables,
    add_args=add_args, packages=("torch", "transformers", "accelerate", "trl", "datasets", "peft"),
    code=(*sorted(str(f.relative_to(REPO_ROOT)) for f in (REPO_ROOT / "src/training").glob("*.py")),
          "src/stages/train_worker.py", "benchmarks/trainer.py"),
    timeout=600,
)  # fmt: skip
