"""One iteration through `python -m src.main`, stage by stage, at a real model's shapes on one GPU:
generate (vLLM; --generation hf: the HF backend), rank (PairRM at DeBERTa-v3-large's shape),
pairs, train (full weights) — each a fresh `python -m src.main ... stage=<stage>` process as a
user runs it, each figure read from the stage's own record (done.json) beside `src.plan`'s.

    python -m benchmarks iteration --build-only       # the checkpoint, prompts and PairRM (a GPU)
    python -m benchmarks iteration --logs OUT/logs    # then the four stages, each one's log kept
    python -m benchmarks iteration --scale cpu --device cpu --prompts 8 --max-new-tokens 24 \\
        --root /tmp/iteration-cpu --out /tmp/iteration.json   # the same code on CPU: ~90 s

What is built (--root; nothing is downloaded): the policy, the model's config class at its real
shapes (--scale cpu: 2 layers of width 128) with random bf16 weights, and a tokenizer of the real
vocabulary size: src/tiny's byte-level BPE with the real chat template, then plain added tokens
up to the real model's vocabulary (the real tokenizers need the Hub), so that every id the random
policy samples decodes to text; --prompts prompts cut from data/tiny/corpus.txt to the lengths of
benchmarks/generation.py's PROMPT_LENGTHS (most short, a few near the recipe's 512 tokens); the
PairRM of benchmarks/ranking.py --backbone large (--scale cpu: the tiny PairRM). Random weights rarely end a row early, so each
response runs to --max-new-tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Case, fmt, table, text
from src.core import registry

# the iteration's stages but the optional eval, in pipeline order (src/core/registry.py)
STAGES = tuple(s.value for s, spec in registry.STAGES.items() if not spec.optional)
MODELS = {"mistral-7b-instruct-v0.2": "mistral", "gemma-2-9b-it": "gemma2"}  # conf/model/
HARDWARE = {"cuda": "gpu-1", "cpu": "cpu"}
CPU_SCALE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}  # fmt: skip


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default="mistral-7b-instruct-v0.2")
    parser.add_argument("--device", choices=HARDWARE, default="cuda")
    parser.add_argument("--scale", choices=("real", "cpu"), default="real")
    parser.add_argument("--root", default="/tmp/iteration", help="the built inputs and the runs")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--generation", choices=("vllm", "hf"), default="vllm",
                        help="the generate stage's engine (conf/generation/)")  # fmt: skip
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--build-only", action="store_true", help="build the inputs, run nothing")
    parser.add_argument("--logs", help="keep each stage's whole output (and vLLM's) here")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every stage")


def cases(args: argparse.Namespace) -> list[Case]:
    root = Path(args.root)
    build(root, args.model, args.scale, args.prompts)  # once, before anything is timed
    if args.build_only:
        return []
    params = {k: v for k, v in vars(args).items() if k not in ("out", "stages", "build_only")}
    return [Case(stage, "ours", {**params, "stage": stage}) for stage in args.stages]


# --- the inputs -------------------------------------------------------------------------------


def build(root: Path, model: str, scale: str, prompts: int) -> None:
    from benchmarks import ranking

    policy = root / "policy"
    if not (policy / "done").is_file():
        tokenizer = build_policy(policy, model, scale)
        write_prompts(root / "prompts.jsonl", tokenizer, prompts)
        (policy / "done").write_text("")
    if scale == "real" and not (ranking.LARGE_DIR / "config.json").is_file():
        ranking.build_large_pairrm(ranking.LARGE_DIR)


def build_policy(folder: Path, model: str, scale: str):
    """The policy's folder: config, random bf16 weights (made on the GPU where there is one),
    tokenizer and generation config; returns the tokenizer."""
    import torch
    import transformers

    from src.config import compose
    from src.core.shapes import REAL_MODELS
    from src.tiny import architectures as arch
    from src.tiny import models as tiny

    family = MODELS[model]
    specials, template, bos, eos, pad = {
        "mistral": (arch.MISTRAL_SPECIALS, arch.MISTRAL_CHAT_TEMPLATE, "<s>", "</s>", None),
        "gemma2": (arch.GEMMA2_SPECIALS, arch.GEMMA2_CHAT_TEMPLATE, "<bos>", "<eos>", "<pad>"),
    }[family]
    tok = arch.lm_tokenizer(tiny.training_texts(), specials, template, bos, eos, "<unk>", pad)
    config_class, _, kwargs, attention = REAL_MODELS[compose([f"model={model}"]).model.path]
    tok.add_tokens([f"<w{i}>" for i in range(kwargs["vocab_size"] - len(tok))])
    kwargs = {**kwargs, **(CPU_SCALE if scale == "cpu" else {})}
    ends = [tok.eos_token_id]
    if family == "gemma2":  # a turn ends at <eos> or <end_of_turn>, as gemma-2-9b-it's
        ends.append(tok.convert_tokens_to_ids("<end_of_turn>"))
    config = getattr(transformers, config_class)(
        **kwargs, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, attn_implementation=attention,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        policy = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    policy.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=ends, pad_token_id=tok.pad_token_id
    )
    policy.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def write_prompts(path: Path, tokenizer, n: int) -> None:
    """n prompts of corpus text, each as long (chat template included) as a length drawn from
    PROMPT_LENGTHS, or as near as whole words allow."""
    from benchmarks.generation import PROMPT_LENGTHS

    words = (harness.REPO_ROOT / "data" / "tiny" / "corpus.txt").read_text().split()
    rng = random.Random(0)

    def length(prompt: str) -> int:
        chat = [{"role": "user", "content": prompt}]  # rendered, then encoded as the stage does
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(rendered, add_special_tokens=False).input_ids)

    rows = []
    for i in range(n):
        target, start = rng.choice(PROMPT_LENGTHS), rng.randrange(len(words) // 2)
        lo, hi = 1, 2 * target  # the most words whose prompt fits the target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (
                (mid, hi)
                if length(" ".join(words[start : start + mid])) <= target
                else (lo, mid - 1)
            )
        rows.append({"prompt_id": f"q{i:05d}", "prompt": " ".join(words[start : start + lo])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- one stage --------------------------------------------------------------------------------


def overrides(p: dict) -> list[str]:
    from benchmarks import ranking

    root = Path(p["root"])
    ranker = f"ranker.model={ranking.LARGE_DIR}" if p["scale"] == "real" else "ranker=tiny-pairrm"
    return [
        f"model={p['model']}", f"model.path={root / 'policy'}", f"generation={p['generation']}", ranker,
        f"data.prompts={root / 'prompts.jsonl'}",
        "data.id_column=prompt_id", "logger=none", f"hardware={HARDWARE[p['device']]}", "iter=1",
        f"paths.root={root / 'runs'}", f"generation.max_new_tokens={p['max_new_tokens']}",
        "training.record_memory_phases=true", *p["set"],
    ]  # fmt: skip


def measure(case: Case) -> dict:
    from src.config import compose
    from src.plan.stages import planned_memory, policy_shape

    p, stage = case.params, case.params["stage"]
    given = overrides(p)
    cfg = compose(given)
    stage_dir = Path(cfg.run.iter_dir) / stage
    log = Path(p["logs"] or Path(p["root"]) / "logs") / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "src.main", *given, f"stage={stage}"]
    started = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        code = subprocess.run(
            command, cwd=harness.REPO_ROOT, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - started
    engine_log = stage_dir / "shard000-of-001" / "vllm.log"
    if p["logs"] and engine_log.is_file():
        (log.parent / "vllm.log").write_bytes(engine_log.read_bytes())
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"stage={stage} ended {code}: {' '.join(tail)} (its log: {log})")
    record = harness.record(stage_dir)
    planned = planned_memory(cfg, registry.Stage(stage))
    run = {"wall_s": wall, "counts": record["counts"], "timings": record["timings"],
           "machine": record["machine"], "versions": record["versions"],
           "plan_peak_gib": None if planned is None else planned.peak / 2**30}  # fmt: skip
    lines = log.read_text(errors="replace").splitlines()
    if "peak_memory_gib" not in run["timings"]:  # generate's HF backend says it on the console
        said = [line for line in lines if line.startswith(f"[{stage}] peak memory ")]
        if said:
            run["timings"]["peak_memory_gib"] = float(said[-1].split()[3])
    if stage == "generate":
        started = [line for line in lines if "[vllm] engine started in" in line]
        run["engine_start_s"] = float(started[0].split(" in ")[1].split()[0]) if started else None
    if stage == "train":
        history = json.loads((stage_dir / "metrics.json").read_text())["log_history"]
        rates = [h["tokens_per_second"] for h in history if "tokens_per_second" in h]
        run["tokens_per_s_after_first"] = sum(rates[1:]) / len(rates[1:]) if rates[1:] else None
        run["params"] = policy_shape(cfg).params
    return run


# --- the results file -------------------------------------------------------------------------


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    by = {r["case"]: r for r in runs}
    summary: dict = {}
    if "generate" in by:
        c = by["generate"]["counts"]
        summary["generate_tokens_per_s"] = c["tokens"] / c["seconds"] if c["seconds"] else None
    if "rank" in by:
        c = by["rank"]["counts"]
        summary["rank_comparisons_per_s"] = (
            c["comparisons"] / c["seconds"] if c["seconds"] else None
        )
    if "train" in by and by["train"].get("tokens_per_s_after_first") and args.device == "cuda":
        from src.config import PlanConfig

        t = by["train"]
        flops = 6 * t["params"] * t["tokens_per_s_after_first"]  # forward + backward, per token
        summary["train_mfu"] = flops / (PlanConfig().gpu_tflops * 1e12)  # the plan's bf16 peak
    return {"summary": summary}


def tables(result: dict) -> list[dict]:
    from src.training.memory_phases import PHASES

    rows = []
    for r in result["runs"]:
        c, t = r["counts"], r["timings"]
        peak = t.get("peak_memory_gib")
        if r["case"] == "generate":
            what = f"{c['tokens']:,} tokens in {c['seconds']:.0f} s: {c['tokens'] / c['seconds']:,.0f} tokens/s; engine start {fmt(r.get('engine_start_s'), 0)} s"
        elif r["case"] == "rank":
            what = f"{c['comparisons']:,} comparisons in {c['seconds']:.0f} s: {c['comparisons'] / c['seconds']:,.1f} /s"
        elif r["case"] == "pairs":
            what = f"{c['pairs']:,} pairs"
        else:
            what = (f"{c['pairs_trained']:,} pairs, {c['steps']} steps in {t['seconds']:.0f} s; "
                    f"{fmt(r.get('tokens_per_s_after_first'), 0)} tokens/s after the first step")  # fmt: skip
        rows.append(
            [r["case"], fmt(r["wall_s"], 0), what, fmt(peak, 2), fmt(r["plan_peak_gib"], 2)]
        )
    blocks = [
        text(
            f"`python -m src.main` at {result['settings']['model']}'s shapes "
            f"(--scale {result['settings']['scale']}), one process per stage, on "
            f"{result['machine']['gpu'] or result['machine']['cpu_model']}; "
            f"{result['settings']['prompts']} prompts, K = 5, {result['settings']['max_new_tokens']} "
            f"new tokens a response, generated with {result['settings'].get('generation', 'vllm')}. Peak: torch's allocation on the GPU (RSS above the stage's "
            "start on CPU); the plan: `src.plan`'s peak for the same config."
        ),  # fmt: skip
        table(["stage", "process s", "what it did", "peak GiB", "plan GiB"], rows),
    ]
    mfu = result.get("summary", {}).get("train_mfu")
    if mfu:
        blocks.append(text(f"Training's model FLOPs utilisation after its first step: {mfu:.1%} "
                           "(6 x parameters x tokens/s over the GPU's dense bf16 peak)."))  # fmt: skip
    for r in result["runs"]:
        phases = r["timings"].get("memory_phases") or {}
        if phases.get("seconds_per_step"):
            s = phases["seconds_per_step"]
            blocks.append(text("Training's step by phase (the stage's record, mean over the later "
                               "steps): " + ", ".join(f"{k} {s[k]:.2f} s" for k in PHASES) +
                               f"; the optimizer step's share {phases['optimizer_step_share']:.1%}."))  # fmt: skip
    for f in result.get("failures", []):
        blocks.append(text(f"**{f['case']} failed**: {f['error']}"))
    return blocks


BENCHMARK = harness.Benchmark(
    name="iteration",
    title="One iteration through python -m src.main at a real model's shapes",
    results="iteration_gpu",
    cases=cases,
    measure=measure,
    summarise=summarise,
    tables=tables,
    add_args=add_args,
    packages=("torch", "transformers", "vllm", "llm-blender", "accelerate", "peft"),
    code=("src/stages/generate.py", "src/stages/rank.py", "src/stages/train.py"),
    repeats=1,
    timeout=1800,
)
