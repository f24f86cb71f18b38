"""The memory of one SPPO training step, phase by phase, beside the plan's figures for it
(src/plan/stages.py's terms), at the real models' shapes on one GPU. Commands and tables:
benchmarks/README.md, Training memory on one GPU.

Each case is `python -m src.main stage=train training.record_memory_phases=true ...` in a fresh
process, read from its done.json (`timings.memory_phases`: each phase's peak and what it holds at
its end, the first step and the later ones, the plan's terms). `model.path`: random bf16 weights
of the real architecture (built once on the GPU into .cache/bench/train_memory/) with the tiny
model's tokenizer of its family (the vocabulary that sizes the LM head is the model's);
hardware=gpu-1, alone or under DeepSpeed ZeRO-3 (one process: D = 1); full weights in bf16
(training.weight_updates kahan or fp32) or training.peft=lora; the streamed head or the model's
own; the recipe otherwise, plan.check=false so that what the plan says does not fit is tried.
Pairs: `--steps` x B/2, both responses longer than T, so that truncation leaves every sequence
exactly T tokens. `--tiny`: the same cases on the tiny models on CPU (T / 16, fp32): a check of
the path, not of the figures.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import REPO_ROOT, Benchmark, Case, by_case, fmt, median, table, text

CACHE = harness.CACHE / "train_memory"
MODELS = {"mistral-7b-instruct-v0.2": "tiny-mistral", "gemma-2-9b-it": "tiny-gemma2"}
# full weights in bf16 (training.weight_updates: kahan, or fp32 master weights; bf16 on CPU too),
# a LoRA adapter, DeepSpeed ZeRO-3: the mode names are src/plan/memory.py's
BF16 = "training.precision=bfloat16"
MODES = {
    "kahan": [BF16],
    "master": [BF16, "training.weight_updates=fp32"],
    "lora": ["training.peft=lora"],
    "zero3": ["hardware.distributed=deepspeed"],
}
HEADS = {"streamed": ["training.lm_head_chunk=256"], "own": ["training.lm_head_chunk=null"]}
SHAPES = ("4x1024", "8x2048")  # B sequences (B/2 pairs) x T tokens
SIZES = {  # T divided by, prompt words, the overrides of the size
    False: (1, (100, 200), ["hardware=gpu-1", "plan.check=false"]),
    True: (16, (6, 12), ["training.max_prompt_length=32"]),
}
RECIPE = ["stage=train", "logger=none", "training.record_memory_phases=true",
          "training.gradient_checkpointing=true", "training.save_steps=1000000"]  # fmt: skip
PHASES = ("forward", "backward", "optimizer_step")


def add_args(parser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (a smoke run)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["kahan", "lora"], choices=MODES)
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="B x T, e.g. 4x1024")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps: the first + later")


def cases(args) -> list[Case]:
    if args.steps < 2:  # the first step allocates the optimiser's state: a later one is needed
        raise SystemExit("--steps must be >= 2")
    folders = {m: str(model_folder(m, args.tiny)) for m in args.models}
    div, words = SIZES[args.tiny][:2]
    out = []
    for m, shape, mode, head in itertools.product(args.models, args.shapes, args.modes, args.heads):
        b, t = (int(x) for x in shape.split("x"))
        pairs = write_pairs(args.steps * b // 2, t // div, words)
        params = {"model": m, "mode": mode, "head": head, "sequences": b, "tokens": t // div,
                  "tiny": args.tiny, "path": folders[m], "pairs": str(pairs)}  # fmt: skip
        out.append(Case(f"{m}/{mode}/{head}/{b}x{t // div}", params=params))
    return out


def model_folder(model: str, tiny: bool) -> Path:
    """The tiny model, or the real one's random weights (built apart: no CUDA context here)."""
    if tiny:
        from src.tiny.models import DEFAULT_CACHE_DIR, ensure

        return ensure(MODELS[model], DEFAULT_CACHE_DIR)
    out = CACHE / model
    if not (out / "built").is_file():
        code = f"from benchmarks.train_memory import build; build({model!r})"
        subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    return out


def build(model: str) -> None:
    from src.tiny.models import DEFAULT_CACHE_DIR, ensure

    harness.random_model(harness.real_config(model)).save_pretrained(out := CACHE / model)
    for f in ensure(MODELS[model], DEFAULT_CACHE_DIR).iterdir():  # tokenizer, template, generation
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "tiny_build.json"):
            shutil.copy(f, out / f.name)
    (out / "built").write_text(
        f"random bf16 weights of {model}, the tokenizer of {MODELS[model]}\n"
    )


def write_pairs(n: int, tokens: int, prompt_words: tuple[int, int]) -> Path:
    """`n` SPPO pairs: prompts and responses cut from the tiny corpus, each response of `tokens`
    words (a word is a token at least: truncation fills every sequence to exactly `tokens`)."""
    rng, words = random.Random(42), harness.corpus_words()
    rows = [{"prompt_id": f"m{i:04d}", "prompt": harness.cut(rng, words, rng.randint(*prompt_words)),
             "chosen": harness.cut(rng, words, tokens), "rejected": harness.cut(rng, words, tokens),
             "chosen_probs": 0.7, "chosen_probs_win": 0.7, "chosen_probs_lose": 0.3}
            for i in range(n)]  # fmt: skip
    return harness.write_jsonl(CACHE / f"pairs-{n}x{tokens}-{prompt_words[0]}.jsonl", rows)


def measure(case: Case) -> dict:
    p, pairs = case.params, case.params["sequences"] // 2
    model = [f"model={MODELS[p['model']]}"] if p["tiny"] else [f"model={p['model']}",
             f"model.path={p['path']}"]  # fmt: skip
    overrides = [*RECIPE, *model, *SIZES[p["tiny"]][2], *MODES[p["mode"]], *HEADS[p["head"]],
                 f"training.max_length={p['tokens']}", f"training.per_device_batch_size={pairs}",
                 f"training.global_batch_size={pairs}", f"training.pairs={p['pairs']}"]  # fmt: skip
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=CACHE))  # a checkpoint of 15-18 GB each
    try:
        harness.run_stage(overrides, env={"SELFPLAY_RUNS": str(runs)}, timeout=1800)
        done = harness.record(next(runs.glob("**/train/done.json")).parent)
    except RuntimeError as error:
        if "out of memory" not in str(error).lower():
            raise
        return {"error": "out of memory"}
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    counts = done["counts"]  # every pair kept, every sequence cut to exactly T tokens
    if not counts["pairs_trained"] == counts["truncated_responses"] == counts["pairs_in_file"]:
        raise RuntimeError(f"not every sequence has {p['tokens']} tokens: {counts}")
    t = done["timings"]
    return {"phases": t["memory_phases"], "counts": counts, "peak_memory_gib": t["peak_memory_gib"]}


def peak_of(step: dict) -> tuple[float, str]:
    return max((step[ph]["peak"], ph) for ph in PHASES)


def summarise(runs: list[dict], args) -> dict:
    done = {name: [r["phases"] for r in g if "phases" in r] for name, g in by_case(runs).items()}
    return {"summary": {name: {"peak_gib": median(peak_of(p["later_steps"])[0] for p in ph),
                               "plan_peak_gib": ph and (ph[0].get("plan") or {}).get("peak")}
                        for name, ph in done.items()}}  # fmt: skip


def figures(s: dict, plan: dict) -> list[tuple[str, float, float | None]]:
    """(figure, measured, the plan's figure beside it or None) of a step's record. What is held,
    on CPU: glibc's bytes in use (the resident set hides a tensor that reuses freed memory)."""
    held = {b: s[b].get("allocated", s[b]["held"]) for b in ("start", *PHASES, "end")}
    start, kept, ph = held["start"], sum(plan["kept"].values()), plan["phases"]
    peak = {phase: s[phase]["peak"] - s["start"]["held"] for phase in PHASES}

    def term(phase: str, *names: str) -> float | None:
        return next((v for k, v in ph.get(phase, {}).items() if k.startswith(names)), None)

    return [
        ("held at the step's start", start, kept),
        ("forward: held at its end (what the backward keeps)", held["forward"] - start,
         term("backward", "layer inputs kept", "every layer's saved")),
        ("forward: peak", peak["forward"], None),
        ("backward: held at its end (the gradients)", held["backward"] - start,
         term("optimiser step", "gradients")),
        ("backward: peak", peak["backward"], sum(ph.get("backward", {}).values())),
        ("optimizer step: peak", peak["optimizer_step"],
         sum(ph.get("optimiser step", {}).values())),
        ("held at the step's end", held["end"], kept),
        ("the step's peak", peak_of(s)[0], plan["peak"]),
    ]  # fmt: skip


def tables(result: dict) -> list[dict]:
    settings, runs = result["settings"], by_case(result["runs"])
    unit, scale = ("MiB", 1024) if settings["tiny"] else ("GiB", 1)

    def g(x: float | None) -> str:
        return fmt(None if x is None else x * scale, 2)

    def over(a: float | None, b: float | None) -> str:
        return fmt(a / b, 2) if a is not None and b else "–"

    done = {name: [r for r in group if "phases" in r] for name, group in runs.items()}
    measured_as = next((rs[0]["phases"]["measure"] for rs in done.values() if rs), "–")
    blocks = [text(
        f"{result['machine']['gpu'] or result['machine']['cpu_model']}; {settings['steps']} "
        f"optimizer steps a case; the train stage's record (`training.record_memory_phases`: "
        f"{measured_as}), {unit} above the process's memory before the policy was loaded, the "
        f"median of {settings['repeats']} run(s). " + ("Tiny models on CPU: a check of the path, "
        "not of the figures; what is held is glibc's bytes in use." if settings["tiny"] else
        "Random bf16 weights of the real shapes."))]  # fmt: skip
    rows, details = [], []
    for name, ok in done.items():
        if not ok:
            rows.append([*name.split("/"), runs[name][0].get("error", "failed"), *[""] * 7])
            continue
        ph = ok[0]["phases"]
        plan = ph.get("plan") or {"kept": {}, "phases": {}, "peak": None, "footprint": None}
        figs = [[figures(r["phases"][p], plan) for r in ok] for p in ("first_step", "later_steps")]
        first, later = ([median(f[i][1] for f in fs) for i in range(len(fs[0]))] for fs in figs)
        reserved = median(max(r["phases"]["later_steps"][p].get("reserved_peak", 0)
                              for p in PHASES) for r in ok)  # fmt: skip
        rows.append([*name.split("/"), g(first[0]), g(later[0]),
                     f"{g(later[-1])} ({peak_of(ph['later_steps'])[1]})",
                     f"{g(plan['peak'])} ({plan.get('peak_phase')})", over(later[-1], plan["peak"]),
                     g(reserved or None), g(plan["footprint"]),
                     g(median(r["peak_memory_gib"] for r in ok))])  # fmt: skip
        terms = "; ".join(f"{p}: " + ", ".join(f"{k} {g(v)}" for k, v in t.items())
                          for p, t in {"kept": plan["kept"], **plan["phases"]}.items())  # fmt: skip
        cells = [[label, g(x), g(y), g(planned), over(y, planned)] for (label, _, planned), x, y
                 in zip(figures(ph["later_steps"], plan), first, later, strict=True)]  # fmt: skip
        details += [text(f"**{name}** (the plan's terms, {unit}: {terms})"),
                    table(["figure", "first step", "later steps", "plan", "later / plan"], cells,
                          ["---", "---:", "---:", "---:", "---:"])]  # fmt: skip
    return [*blocks, table(
        ["model", "mode", "head", "B x T", "weights", "weights + states", "peak (phase)",
         "plan peak (phase)", "measured / plan", "peak reserved", "plan footprint", "stage peak"],
        rows, ["---"] * 4 + ["---:"] * 8), text(
        "weights: held at the first step's start (an adapter's weights too); + states: at a later "
        "step's start; peak: the largest phase peak of the later steps; peak reserved: torch's "
        "pool, without the CUDA context the plan's footprint counts; stage peak: the stage's own "
        "(`peak_memory_gib`: the reference's log-probs and the saving too)."), *details, text(
        "Each figure is the stage's record: a phase's peak or what it holds at its end, less what "
        "the step held at its start; the plan's figure is the sum of its terms for that phase "
        "(the backward: the activations kept, a layer's recompute and backward, the LM head's; "
        "the optimizer step: the gradients and RMSprop's temporary). The first step allocates "
        "the optimiser's state.")]  # fmt: skip


BENCHMARK = Benchmark(
    name="train_memory", title="Memory of one SPPO training step, phase by phase, beside the plan",
    results="train_memory_phases_gpu", cases=cases, measure=measure, summarise=summarise,
    tables=tables, add_args=add_args, repeats=1, timeout=2400,
    packages=("torch", "transformers", "peft", "accelerate", "deepspeed"),
    code=("src/training/memory_phases.py", "src/training/trainer.py", "src/plan/memory.py"),
)  # fmt: skip
