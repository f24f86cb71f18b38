"""One iteration through `python -m src.main`, stage by stage, at a real model's shapes on one GPU:
generate (vLLM; --generation hf: the HF backend), rank (PairRM at DeBERTa-v3-large's shape),
pairs, train (full weights), each a fresh `python -m src.main ... stage=<stage>` process as a user
runs it, each figure read from the stage's own record (done.json) beside `src.plan`'s.
--one-command: the iteration and its eval as the one command a user runs (`stage=all
eval.enabled=true`), each stage's figures read from its record all the same. Commands and
tables: benchmarks/README.md, One iteration on a GPU (`--scale cpu --device cpu`: the same code
on CPU, ~90 s).

What is built (--root; nothing is downloaded): the policy, the model's config class at its real
shapes (--scale cpu: 2 layers of width 128) with random bf16 weights and a tokenizer of the real
vocabulary size (src/tiny's byte-level BPE with the real chat template, then plain added tokens:
every id the random policy samples decodes to text); --prompts prompts cut from the tiny corpus
to benchmarks/generation.py's PROMPT_LENGTHS; the PairRM of benchmarks/ranking.py --backbone
large (--scale cpu: the tiny PairRM); --eval-prompts instructions drawn alike. Random weights
rarely end a row early, so each response and eval answer runs to --max-new-tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Case, fmt, table, text
from src.core import registry
from src.core.layout import RECORD

# the iteration's stages but the optional eval, in pipeline order (src/core/registry.py)
STAGES = tuple(s.value for s, spec in registry.STAGES.items() if not spec.optional)
EVAL = registry.Stage.eval.value
ALL = "all"  # the case of --one-command: `stage=all eval.enabled=true`
STOP_S = 60  # a command still running this long before the case's --timeout is stopped
MODELS = {"mistral-7b-instruct-v0.2": "mistral", "gemma-2-9b-it": "gemma2"}  # conf/model/
HARDWARE = {"cuda": "gpu-1", "cpu": "cpu"}


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
    parser.add_argument(
        "--one-command",
        action="store_true",
        help="the iteration and its eval as one `stage=all eval.enabled=true`",
    )
    parser.add_argument("--eval-prompts", type=int, default=64,
                        help="instructions the eval answers (--one-command)")  # fmt: skip


def cases(args: argparse.Namespace) -> list[Case]:
    root = Path(args.root)
    build(root, args.model, args.scale, args.prompts, args.eval_prompts)  # before anything is timed
    if args.build_only:
        return []
    params = {k: v for k, v in vars(args).items()
              if k not in ("out", "stages", "build_only", "one_command")}  # fmt: skip
    stages = [ALL] if args.one_command else args.stages
    return [Case(stage, "ours", {**params, "stage": stage}) for stage in stages]


# --- the inputs -------------------------------------------------------------------------------


def build(root: Path, model: str, scale: str, prompts: int, eval_prompts: int) -> None:
    from benchmarks import ranking

    policy = root / "policy"
    if not (policy / "done").is_file():
        tokenizer = build_policy(policy, model, scale)
        write_prompts(root / "prompts.jsonl", tokenizer, prompts, "prompt", seed=0)
        write_prompts(root / "eval_prompts.jsonl", tokenizer, eval_prompts, "instruction", seed=1)
        (policy / "done").write_text("")
    if scale == "real":
        ranking.build_pairrm("large")


def build_policy(folder: Path, model: str, scale: str):
    """The policy's folder: config, random bf16 weights, tokenizer and generation config;
    returns the tokenizer."""
    import transformers

    from src.tiny import architectures as arch
    from src.tiny import models as tiny

    family = MODELS[model]
    specials, template, bos, eos, pad = {
        "mistral": (arch.MISTRAL_SPECIALS, arch.MISTRAL_CHAT_TEMPLATE, "<s>", "</s>", None),
        "gemma2": (arch.GEMMA2_SPECIALS, arch.GEMMA2_CHAT_TEMPLATE, "<bos>", "<eos>", "<pad>"),
    }[family]
    tok = arch.lm_tokenizer(tiny.training_texts(), specials, template, bos, eos, "<unk>", pad)
    vocab = harness.real_config(model).vocab_size
    tok.add_tokens([f"<w{i}>" for i in range(vocab - len(tok))])
    ends = [tok.eos_token_id]
    if family == "gemma2":  # a turn ends at <eos> or <end_of_turn>, as gemma-2-9b-it's
        ends.append(tok.convert_tokens_to_ids("<end_of_turn>"))
    ids = {"bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}
    config = harness.real_config(model, **(harness.CPU_SCALE if scale == "cpu" else {}), **ids,
                                 eos_token_id=tok.eos_token_id)  # fmt: skip
    policy = harness.random_model(config)
    policy.generation_config = transformers.GenerationConfig(**ids, eos_token_id=ends)
    policy.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def write_prompts(path: Path, tokenizer, n: int, column: str, seed: int) -> None:
    """n prompts of corpus text (in `column`), each as long (chat template included) as a length
    drawn from PROMPT_LENGTHS, or as near as whole words allow."""
    from benchmarks.generation import PROMPT_LENGTHS

    words, rng = harness.corpus_words(), random.Random(seed)

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
            fits = length(" ".join(words[start : start + mid])) <= target
            lo, hi = (mid, hi) if fits else (lo, mid - 1)
        rows.append({"prompt_id": f"q{i:05d}", column: " ".join(words[start : start + lo])})
    harness.write_jsonl(path, rows)


# --- one stage --------------------------------------------------------------------------------


def overrides(p: dict) -> list[str]:
    from benchmarks import ranking

    root = Path(p["root"])
    ranker = (f"ranker.model={ranking.pairrm_dir('large')}" if p["scale"] == "real"
              else "ranker=tiny-pairrm")  # fmt: skip
    evals = [
        "eval.enabled=true", f"data.eval_prompts={root / 'eval_prompts.jsonl'}",
        f"eval.max_new_tokens={p['max_new_tokens']}",
    ] if p["stage"] == ALL else []  # fmt: skip
    return [
        f"model={p['model']}", f"model.path={root / 'policy'}", f"generation={p['generation']}", ranker,
        f"data.prompts={root / 'prompts.jsonl'}",
        "data.id_column=prompt_id", "logger=none", f"hardware={HARDWARE[p['device']]}", "iter=1",
        f"paths.root={root / 'runs'}", f"generation.max_new_tokens={p['max_new_tokens']}",
        "training.record_memory_phases=true", *evals, *p["set"],
    ]  # fmt: skip


def measure(case: Case) -> dict:
    from src.config import compose

    p, stage = case.params, case.params["stage"]
    given = overrides(p)
    cfg = compose(given)
    log = Path(p["logs"] or Path(p["root"]) / "logs") / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    limit = p["timeout"] - STOP_S  # stopped by us, not killed by the harness: what finished stays
    started = time.perf_counter()
    code, lines = harness.run_stage([*given, f"stage={stage}"], timeout=limit, log=log, check=False)
    wall = time.perf_counter() - started
    ended = f"stage={stage} ended ({code}): {' '.join(lines[-1:])} (its log: {log})"
    if stage != ALL:
        if code != 0:
            raise RuntimeError(ended)
        return {"wall_s": wall, **figures(cfg, stage, lines, p["logs"])}
    # one command: every stage that finished, in order; a failure keeps what came before it
    done = [s for s in (*STAGES, EVAL) if (cfg.stage_dir(registry.Stage(s)) / RECORD).is_file()]
    own = by_stage(lines)
    run = {"wall_s": wall,
           "stages": [{"case": s, **figures(cfg, s, own.get(s, []), p["logs"])} for s in done]}  # fmt: skip
    return run if code == 0 else {**run, "error": ended}


def by_stage(lines: list[str]) -> dict[str, list[str]]:
    """stage=all's log cut at each `[main] stage <name> -> <folder>` line: each stage's own."""
    parts: dict[str, list[str]] = {}
    current = ""
    for line in lines:
        if line.startswith("[main] stage ") and " -> " in line:
            current = line.split()[2]
        parts.setdefault(current, []).append(line)
    return parts


def figures(cfg, stage: str, lines: list[str], logs: str | None) -> dict:
    """One finished stage's figures from its record (done.json), its own log lines and the plan."""
    from src.plan.stages import planned_memory, policy_shape

    stage_dir = cfg.stage_dir(registry.Stage(stage))
    if logs:  # the engine's own log: vllm.log beside the chunks it made (generate's, eval's)
        for engine_log in sorted(stage_dir.rglob("vllm.log")):
            name = "_".join(engine_log.relative_to(stage_dir).parts[:-1])
            (Path(logs) / f"vllm_{stage}_{name}.log").write_bytes(engine_log.read_bytes())
    record = harness.record(stage_dir)
    planned = planned_memory(cfg, registry.Stage(stage))
    run = {"counts": record["counts"], "timings": record["timings"],
           "machine": record["machine"], "versions": record["versions"],
           "plan_peak_gib": None if planned is None else planned.peak / 2**30}  # fmt: skip
    said = [line for line in lines if line.startswith(f"[{stage}] peak memory ")]
    if "peak_memory_gib" not in run["timings"] and said:  # HF generation says it on the console
        run["timings"]["peak_memory_gib"] = float(said[-1].split()[3])
    if stage in ("generate", EVAL):
        backend = cfg.eval.backend if stage == EVAL and cfg.eval.backend else cfg.generation.backend
        run["engine"] = backend.value
        run["engine_start_s"] = [float(line.split(" in ")[1].split()[0]) for line in lines
                                 if "[vllm] engine started in" in line] or None  # fmt: skip
    if stage == "train":
        history = json.loads((stage_dir / "metrics.json").read_text())["log_history"]
        rates = [h["tokens_per_second"] for h in history if "tokens_per_second" in h]
        run["tokens_per_s_after_first"] = sum(rates[1:]) / len(rates[1:]) if rates[1:] else None
        run["params"] = policy_shape(cfg).params
    return run


# --- the results file -------------------------------------------------------------------------


def stage_runs(runs: list[dict]) -> list[dict]:
    """Each stage's figures: a run per stage, or --one-command's one run holding them all."""
    return [stage for r in runs for stage in r.get("stages", [r])]


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    by = {r["case"]: r for r in stage_runs(runs)}
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
    if EVAL in by:
        summary["eval_win_rate"] = by[EVAL]["counts"]["win_rate"]
    return {"summary": summary}


def did(r: dict) -> str:
    """What one stage did, from its record."""
    c, t = r["counts"], r["timings"]
    starts = ", ".join(f"{s:.0f}" for s in r.get("engine_start_s") or []) or "–"
    if r["case"] == "generate":
        return (f"{c['tokens']:,} tokens in {c['seconds']:.0f} s: {c['tokens'] / c['seconds']:,.0f} "
                f"tokens/s on {r.get('engine', '–')}; engine start {starts} s")  # fmt: skip
    if r["case"] == "rank":
        return (f"{c['comparisons']:,} comparisons in {c['seconds']:.0f} s: "
                f"{c['comparisons'] / c['seconds']:,.1f} /s")  # fmt: skip
    if r["case"] == "pairs":
        return f"{c['pairs']:,} pairs"
    if r["case"] == EVAL:
        return (f"{c['compared']:,} instructions answered on {r['engine']} by {c['policy']} and "
                f"{c['reference']} (engine starts {starts} s), judged by {c['judge']}: win rate "
                f"{c['win_rate']:.3f} [{c['win_rate_low']:.3f}, {c['win_rate_high']:.3f}]")  # fmt: skip
    return (f"{c['pairs_trained']:,} pairs, {c['steps']} steps in {t['seconds']:.0f} s; "
            f"{fmt(r.get('tokens_per_s_after_first'), 0)} tokens/s after the first step")  # fmt: skip


def tables(result: dict) -> list[dict]:
    from src.training.memory_phases import PHASES

    settings, runs = result["settings"], result["runs"]
    one = bool(settings.get("one_command")) or any("stages" in r for r in runs)
    rows = [[r["case"], fmt(r["timings"]["seconds"] if one else r["wall_s"], 0), did(r),
             fmt(r["timings"].get("peak_memory_gib"), 2), fmt(r["plan_peak_gib"], 2)]
            for r in stage_runs(runs)]  # fmt: skip
    how = (f"as one command (`stage=all eval.enabled=true`: {fmt(runs[0]['wall_s'], 0)} s in all; "
           "a stage's seconds are its record's)" if one and runs else "one process per stage")  # fmt: skip
    blocks = [
        text(
            f"`python -m src.main` at {settings['model']}'s shapes (--scale {settings['scale']}), "
            f"{how}, on {result['machine']['gpu'] or result['machine']['cpu_model']}; "
            f"{settings['prompts']} prompts, K = 5, {settings['max_new_tokens']} new tokens a "
            f"response, generated with {settings.get('generation', 'vllm')}"
            + (f"; the eval: {settings['eval_prompts']} instructions" if one else "")
            + ". Peak: torch's allocation on the GPU (RSS above the stage's start on CPU); the "
            "plan: `src.plan`'s peak for the same config."
        ),
        table(["stage", "s", "what it did", "peak GiB", "plan GiB"], rows),
    ]
    mfu = result.get("summary", {}).get("train_mfu")
    if mfu:
        blocks.append(text(f"Training's model FLOPs utilisation after its first step: {mfu:.1%} "
                           "(6 x parameters x tokens/s over the GPU's dense bf16 peak)."))  # fmt: skip
    for r in stage_runs(runs):
        phases = r["timings"].get("memory_phases") or {}
        if phases.get("seconds_per_step"):
            s = phases["seconds_per_step"]
            blocks.append(text("Training's step by phase (the stage's record, mean over the later "
                               "steps): " + ", ".join(f"{k} {s[k]:.2f} s" for k in PHASES) +
                               f"; the optimizer step's share {phases['optimizer_step_share']:.1%}."))  # fmt: skip
    for f in [*result.get("failures", []), *(r for r in runs if "error" in r)]:
        blocks.append(text(f"**{f['case']} failed**: {f['error']}"))
    return blocks


BENCHMARK = harness.Benchmark(
    name="iteration", title="One iteration through python -m src.main at a real model's shapes",
    results="iteration_gpu", cases=cases, measure=measure, summarise=summarise, tables=tables,
    add_args=add_args, packages=("torch", "transformers", "vllm", "llm-blender", "accelerate", "peft"),
    code=("src/stages/generate.py", "src/stages/rank.py", "src/stages/train.py",
          "src/stages/train_worker.py", "src/stages/eval.py"),
    repeats=1, timeout=1800,
)  # fmt: skip
