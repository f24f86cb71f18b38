"""Generation throughput on one GPU at the real models' size: the HF backend's shared prefill
against the reference code's approach (one pass over the prompts per seed) and plain
`generate(num_return_sequences=K)`, for Mistral-7B-Instruct-v0.2 and Gemma-2-9B-It.

    python -m benchmarks.bench_generation_gpu --out benchmarks/results/generation_gpu.json
    python -m benchmarks.bench_generation_gpu --render benchmarks/results/generation_gpu.json

No weights are downloaded: each architecture is built from its config class (the real models'
shapes, vocabularies and attention: `src.plan.shapes.REAL_MODELS`) with random bf16 weights on the
GPU, and the prompts are random token ids of the lengths in `PROMPT_LENGTHS`. What is measured is
the work per token, which random weights do not change: every sample generates exactly
`--max-new-tokens` tokens (the end-of-turn id is one outside the vocabulary), K = 5, temperature
0.7, top-p 0.9, no top-k. Each (model, approach, B) is timed after a warm-up call of every approach
on the same batch; peak memory is torch's peak allocation during the timed split. Needs only torch
and transformers (the GPU machine's own), not the project's other dependencies.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from src.plan.shapes import REAL_MODELS  # noqa: E402  (pure Python: no hydra needed)

K, SEEDS, TEMPERATURE, TOP_P = 5, [0, 50, 100, 150, 200], 0.7, 0.9
# Prompt lengths (tokens, chat template included), drawn from these: most chat prompts are
# short, a few reach the recipe's 512-token limit (an assumption; the real split's lengths
# under the real tokenizers need the Hub).
PROMPT_LENGTHS = (40, 60, 80, 100, 120, 150, 150, 180, 220, 260, 320, 400, 512)

# The benchmark's names of the real models (the hub id's name, lower-cased) and their configs:
# (config class, model class, config keyword arguments, attention kernel)
HUB_IDS = {hub_id.split("/")[-1].lower(): hub_id for hub_id in REAL_MODELS}
ARCHITECTURES = {name: REAL_MODELS[hub_id] for name, hub_id in HUB_IDS.items()}
APPROACHES = ("ours", "hf-nrs", "reference")


def build(name: str):
    import torch
    import transformers

    config_class, model_class, kwargs, attention = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(**kwargs, attn_implementation=attention)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):  # initialised on the GPU: seconds, where the CPU takes minutes
            model = getattr(transformers, model_class)(config)
    finally:
        torch.set_default_dtype(torch.float32)
    assert next(model.parameters()).is_cuda
    return model.eval()


class IdsOnly:
    """The tokenizer stand-in: the benchmark's prompts are ids, and decoding is not timed work."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = sorted(rng.choice(PROMPT_LENGTHS) for _ in range(n))  # the stage sorts by length
    return [[rng.randrange(10, vocab) for _ in range(length)] for length in lengths]


def runner(approach: str, model, new_tokens: int):
    """`split(batches)`: every sample of every prompt; returns the number of tokens generated."""
    import torch
    from transformers import GenerationConfig, set_seed

    never = model.config.vocab_size + 1
    if approach == "ours":
        from src.generation.hf_backend import HFGenerator

        generator = HFGenerator(
            model,
            IdsOnly(),
            eos_ids=[never],
            temperature=TEMPERATURE,
            top_p=TOP_P,
            max_new_tokens=new_tokens,
        )

        def split(batches):
            out = [generator(b, [str(i) for i in range(len(b))], SEEDS) for b in batches]
            return sum(s.num_tokens for batch in out for row in batch for s in row)

        return split

    def generate(batch, n):
        width = max(map(len, batch))
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        config = GenerationConfig(
            do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
            max_new_tokens=new_tokens, num_return_sequences=n, eos_token_id=[never],
            pad_token_id=0,
        )  # fmt: skip
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.cuda(), attention_mask=mask.cuda(), generation_config=config
            )
        return (out.shape[1] - width) * out.shape[0]

    if approach == "hf-nrs":

        def split(batches):
            set_seed(SEEDS[0])
            return sum(generate(b, K) for b in batches)

        return split

    def split(batches):  # reference: for p in pairs: set_seed(50 p); generate every prompt once
        total = 0
        for seed in SEEDS:
            set_seed(seed)
            total += sum(generate(b, 1) for b in batches)
        return total

    return split


def measure(
    name: str, batch_sizes: list[int], n_prompts: int, new_tokens: int, progress=None
) -> list[dict]:
    import torch

    started = time.perf_counter()
    model = build(name)
    build_s = time.perf_counter() - started
    print(f"{name}: built in {build_s:.0f} s", flush=True)
    weights_gb = torch.cuda.memory_allocated() / 2**30
    ids = prompts(n_prompts, model.config.vocab_size)
    rows = []
    for b in batch_sizes:
        batches = [ids[i : i + b] for i in range(0, len(ids), b)]
        splits = {approach: runner(approach, model, new_tokens) for approach in APPROACHES}
        for split in splits.values():  # warm-up, every approach before any is timed
            split(batches[:1])
        for approach, split in splits.items():
            try:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                tokens = split(batches)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - t
            except torch.OutOfMemoryError:
                rows.append({"model": name, "approach": approach, "batch": b, "oom": True})
                torch.cuda.empty_cache()
                continue
            row = {
                "model": name,
                "approach": approach,
                "batch": b,
                "prompts": len(ids),
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                "weights_gb": weights_gb,
                "build_s": build_s,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            if progress is not None:
                progress(row)
            torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()
    return rows


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# Generation throughput on one GPU: shared prefill vs one pass per seed",
        "",
        f"{m['gpu']} · torch {m['torch']} · transformers {m['transformers']} · {m['date_utc']}",
        "",
        f"{s['prompts']} prompts of {min(PROMPT_LENGTHS)}–{max(PROMPT_LENGTHS)} tokens (random ids), "
        f"K = {K}, T = {TEMPERATURE}, top-p {TOP_P}, exactly {s['max_new_tokens']} new tokens "
        "per sample, bf16, random weights of the real shapes; one timed split after a warm-up call of every approach.",
        "",
        "| model | approach | B | tokens/s | split s | peak GB (weights) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("oom"):
            lines.append(f"| {r['model']} | {r['approach']} | {r['batch']} | out of memory | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['approach']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
            f"{r['seconds']:.1f} | {r['peak_gb']:.1f} ({r['weights_gb']:.1f}) |"
        )
    lines += ["", "| model | B | ours / reference | ours / hf-nrs |", "|---|---:|---:|---:|"]
    by = {
        (r["model"], r["batch"], r["approach"]): r["tokens_per_s"]
        for r in result["rows"]
        if not r.get("oom")
    }
    for model, b in sorted({(r["model"], r["batch"]) for r in result["rows"]}):
        ours = by.get((model, b, "ours"))
        ref, nrs = by.get((model, b, "reference")), by.get((model, b, "hf-nrs"))
        cells = [f"{ours / x:.2f}" if ours and x else "–" for x in (ref, nrs)]
        lines.append(f"| {model} | {b} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_generation_gpu")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks/results/generation_gpu.json"
    )
    parser.add_argument("--render", type=Path, help="rewrite the Markdown of a results file")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(result))
        return
    import datetime as dt

    import torch
    import transformers

    rows: list[dict] = []
    partial = args.out.with_suffix(".partial.jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w") as log:  # each row as it comes: a run cut short keeps what it measured

        def progress(row: dict) -> None:
            log.write(json.dumps(row) + "\n")
            log.flush()

        for name in args.models:
            rows += measure(name, args.batch_sizes, args.prompts, args.max_new_tokens, progress)
    result = {
        "benchmark": "HF generation on one GPU, real model shapes: shared prefill vs K passes",
        "command": "python -m benchmarks.bench_generation_gpu " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "settings": {
            "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens,
            "batch_sizes": args.batch_sizes,
        },  # fmt: skip
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    partial.unlink()
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
