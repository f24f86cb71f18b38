"""PairRM ranking throughput: comparisons batched across prompts (ours) against llm-blender's own
`Blender.rank(inputs, candidates, return_scores=True, batch_size=1)` (the SPPO reference's call).

    python -m benchmarks.bench_ranking                                   # ~45 minutes on 2 cores
    python -m benchmarks.bench_ranking --datasets short --batch-sizes 32 --repeats 1   # ~1 min
    python -m benchmarks.bench_ranking --render benchmarks/results/ranking_cpu.json   # tables only
    python -m benchmarks.bench_ranking --backbone large --device cuda \\
        --out benchmarks/results/ranking_cuda_large.json                 # a GPU machine (opt-in)

Both sides load the same PairRM (the tiny one of src/tiny, or with --backbone large a PairRM
whose backbone has DeBERTa-v3-large's shape, random weights, built once under .cache/bench/) and
score the same K=5 responses of the same prompts with the same limits (source 1224, candidate 412
PairRM tokens, llm-blender's collator on both sides):

- `ours`: `src.ranking.pairrm.PairRMJudge(...).compare(prompts, responses)` at B comparisons per
  forward, then `scores_from_comparisons` per prompt (what the rank stage does);
- `reference`: `blender.rank(prompts, responses, return_scores=True, batch_size=1)`: for each
  prompt, K(K-1) forwards of one comparison each.

Only the ranking call is timed (tokenisation included on both sides, model loading not), after a
warm-up call on the first prompt. Each (approach, data set, B) runs in a fresh subprocess,
`--repeats` times, interleaved; medians are reported, and every run's scores are checked against
the reference's (max abs difference). A profile pass (fresh processes too) splits the call into
tokenisation, batching, the DeBERTa backbone (its relative-position attention terms apart) and
llm-blender's glue around it. See benchmarks/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    OtherCpu,
    add_common_args,
    code_hashes,
    command_line,
    corpus_words,
    group_runs,
    measure_interleaved,
    per_repeat_ratios,
    profile_pass,
    project_prompts,
    report,
    rerender,
    reset_peak,
    run_fresh,
    run_under_load,
    status_kb,
    summary_of,
    target_met,
    trim_heap,
    warn_if_code_changed,
)

APPROACHES = ("ours", "reference")
# ours: comparisons per forward. 32 is the PairRM ranker's default (ranker.batch_size), 64 was tiny-pairrm's until
# 1ba330a and 4 is its value since (the fastest measured here on 2 CPU cores)
BATCH_SIZES = (4, 32, 64)
K = 5
SEED = 0
TARGET = ">= 5.0"  # ours / reference, comparisons per second
SCORE_ATOL = {"float32": 1e-5, "float16": 1e-2}  # max abs score difference allowed, per dtype
LIMITS = {"source_max_length": 1224, "candidate_max_length": 412}  # PairRM's defaults

# The responses: K per prompt, each a run of words cut from data/tiny/corpus.txt at a random
# place, its length drawn uniformly from `words`. Raw prompt text (the SPPO reference renders
# the policy's chat template around it first: a few tokens more, the same work on both sides).
# llm-blender lets a candidate use 412 + (1224 - the source's length) // 2 PairRM tokens, ~1,000
# for these prompts, not 412: only "long" has responses that are cut.
DATASETS = {
    "short": {"prompts": 48, "words": (20, 60)},  # 31-223 tokens: per-forward overhead matters
    "medium": {"prompts": 48, "words": (60, 200)},  # 97-610: 29 of 240 over 412, none cut
    # fewer prompts: a comparison costs ~50x a short one on CPU
    "long": {"prompts": 8, "words": (350, 700)},  # 752-1,819: 26 of 40 cut at ~1,000 tokens
}

# --malloc-no-mmap, for both approaches: glibc serves every allocation from its heap and never
# hands memory back, so that a freed [B*heads, L, L] attention temporary is reused. By default
# glibc gives each allocation over 32 MB (its largest mmap threshold) fresh pages from mmap,
# which the kernel zeroes on first touch: at B >= 32 that page-faulting is most of ours' time
# on CPU (see benchmarks/README.md). Memory: the process keeps its peak.
NO_MMAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}

BENCH_CACHE = REPO_ROOT / ".cache" / "bench"
# --backbone large: DeBERTa-v3-large's shape (PairRM's backbone); random weights, the tiny
# PairRM's tokenizer (so a smaller vocabulary than the real 128k: only the embedding lookup,
# not the compute, depends on it)
LARGE_BACKBONE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "position_buckets": 256,
}


@dataclass(frozen=True)
class Spec:
    approach: str
    data: str
    batch: int  # comparisons per forward; the reference's batch_size=1 is one comparison
    load: int = 0  # busy processes beside the run (benchmarks/common.py: Load)

    @property
    def name(self) -> str:
        load = f"/load{self.load}" if self.load else ""
        return f"{self.approach}/{self.data}/B{self.batch}{load}"


# --- the data and the model -------------------------------------------------------------------


def make_data(
    name: str, max_prompts: int | None = None, seed: int = SEED
) -> tuple[list[str], list[list[str]]]:
    """The data set `name`: its prompts (the first n of data/prompts/iter*.jsonl, at most
    `max_prompts`) and K responses per prompt cut from the tiny corpus; the same for a name and
    seed, always (a smaller `max_prompts` gives the first prompts of the full set)."""
    spec = DATASETS[name]
    n = min(spec["prompts"], max_prompts or spec["prompts"])
    prompts = project_prompts()[:n]
    words = corpus_words()
    rng = random.Random(f"bench_ranking/{name}/{seed}")  # a str seed is hashed stably (sha512)

    def response() -> str:
        n = rng.randint(*spec["words"])
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    return prompts, [[response() for _ in range(K)] for _ in prompts]


def data_sha256(name: str, max_prompts: int | None) -> str:
    return hashlib.sha256(json.dumps(make_data(name, max_prompts)).encode()).hexdigest()[:16]


def pairrm_path(backbone: str) -> Path:
    """The ranker folder: the tiny PairRM, or the large-backbone one (built once)."""
    from src import tiny

    if backbone == "tiny":
        return tiny.ensure("tiny-pairrm", tiny.DEFAULT_CACHE_DIR)
    out = BENCH_CACHE / "pairrm-large"
    if not (out / "config.json").is_file():
        build_large_pairrm(out)
    return out


def build_large_pairrm(final: Path) -> None:
    """A PairRM in llm-blender's format whose backbone has DeBERTa-v3-large's shape: src/tiny's
    builder of the tiny one with LARGE_BACKBONE's sizes; staged, then renamed into place. About
    1.7 GB on disk."""
    import torch

    from src import tiny
    from src.tiny import architectures

    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.manual_seed(SEED)
    blender = architectures.pairrm(
        staging,
        final,
        tiny.training_texts(),
        **LARGE_BACKBONE,
        # random weights, larger than the usual 0.02 so that scores differ between responses
        # (at 0.02 they are all ~1e-5, and a score check against 1e-5 would say nothing)
        initializer_range=0.1,
    )
    architectures.save_pairrm(blender, staging)
    staging.rename(final)


def load_blender(options: dict):
    import transformers

    from src.ranking.blender_compat import load_pairrm

    transformers.logging.set_verbosity_error()
    path = pairrm_path(options["backbone"])
    blender = load_pairrm(str(path), device=options["device"])
    return blender


def make_ranker(spec: Spec, blender):
    """`rank(prompts, responses) -> scores [n, K]`: the approach's whole call."""
    import numpy as np

    if spec.approach == "reference":

        def rank(prompts, responses):
            return blender.rank(
                prompts,
                responses,
                return_scores=True,
                batch_size=1,
                disable_tqdm=True,
                **LIMITS,
            )

        return rank

    from src.ranking.pairrm import PairRMJudge
    from src.ranking.preferences import scores_from_comparisons

    judge = PairRMJudge(blender, batch_size=spec.batch, **LIMITS)

    def rank(prompts, responses):
        return np.stack([scores_from_comparisons(c) for c in judge.compare(prompts, responses)])

    return rank


def data_stats(blender, prompts: list[str], responses: list[list[str]], batch: int) -> dict:
    """Lengths in PairRM tokens (untimed): each response whole and as llm-blender's collator
    keeps it, each comparison (prompt + 2 responses), and ours' padding at `batch`."""
    from src.ranking.pairrm import PairRMJudge

    judge = PairRMJudge(blender, batch_size=batch, **LIMITS)
    tokenizer = judge.collator.tokenizer
    whole, kept, lengths = [], [], []
    for prompt, cands in zip(prompts, responses, strict=True):
        encoded = judge.encode(prompt, cands)
        whole += [len(tokenizer(c)["input_ids"]) for c in cands]
        kept += [len(c) for c in encoded.candidates]
        lengths += [
            len(encoded.source) + len(encoded.candidates[i]) + len(encoded.candidates[j])
            for i in range(len(cands))
            for j in range(len(cands))
            if i != j
        ]
    lengths.sort()  # as ours batches them: each batch padded to its longest
    padded = sum(
        len(lengths[i : i + batch]) * max(lengths[i : i + batch])
        for i in range(0, len(lengths), batch)
    )
    return {
        "response_tokens_min": min(whole),
        "response_tokens_median": statistics.median(whole),
        "response_tokens_max": max(whole),
        "responses_over_candidate_max_length": sum(
            n > LIMITS["candidate_max_length"] for n in whole
        ),
        "responses_cut": sum(w > k for w, k in zip(whole, kept, strict=True)),
        "kept_tokens_max": max(kept),
        "comparison_tokens_min": lengths[0],
        "comparison_tokens_median": statistics.median(lengths),
        "comparison_tokens_max": lengths[-1],
        "comparison_tokens": sum(lengths),
        "padded_tokens_at_batch": padded,
    }


# --- one configuration (a fresh process) ------------------------------------------------------


def measured_code() -> dict:
    """The code measured (every run records what it imported)."""
    return code_hashes(
        [
            REPO_ROOT / "src" / "ranking" / "pairrm.py",
            REPO_ROOT / "src" / "ranking" / "blender_compat.py",
        ]
        + [Path(__file__).resolve()]
    )


class Clock:
    """Wall time of a call, synchronised with the GPU when there is one."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __enter__(self):
        self.sync()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.started


def run_worker(spec: Spec, options: dict) -> dict:
    import torch

    code = measured_code()
    prompts, responses = make_data(spec.data, options["max_prompts"])
    started = time.perf_counter()
    blender = load_blender(options)
    rank = make_ranker(spec, blender)
    setup_s = time.perf_counter() - started

    with Clock(options["device"]) as warm:  # the first prompt, not timed
        rank(prompts[:1], responses[:1])

    trim_heap()
    rss_before_kb = status_kb("VmRSS")
    memory_method = reset_peak()
    if options["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    window = OtherCpu()
    window.start()
    with Clock(options["device"]) as clock:
        scores = rank(prompts, responses)
    seconds = clock.seconds
    other_cpu_share = window.share(seconds)
    peak_kb = status_kb("VmHWM")

    comparisons = sum(len(c) * (len(c) - 1) for c in responses)
    return {
        "spec": asdict(spec),
        "prompts": len(prompts),
        "comparisons": comparisons,
        "forwards": comparisons if spec.approach == "reference" else -(-comparisons // spec.batch),
        "seconds": seconds,
        "comparisons_per_s": comparisons / seconds,
        "prompts_per_s": len(prompts) / seconds,
        "ms_per_comparison": 1000 * seconds / comparisons,
        "warmup_s": warm.seconds,
        "setup_s": setup_s,
        "peak_rss_delta_mb": (peak_kb - rss_before_kb) / 1024,
        "rss_before_mb": rss_before_kb / 1024,
        "peak_rss_process_mb": peak_kb / 1024,
        "memory_method": memory_method,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if options["device"].startswith("cuda")
        else None,
        "dtype": str(next(blender.ranker.parameters()).dtype).removeprefix("torch."),
        "other_cpu_share": other_cpu_share,
        "torch_threads": torch.get_num_threads(),
        "code_sha256": code,
        # checked against the reference's by the parent, then replaced by their difference
        "scores": [[float(x) for x in row] for row in scores],
        "data": data_stats(blender, prompts, responses, spec.batch),
    }


# --- the profile (a fresh process per approach and data set) ----------------------------------

PARTS = [
    ("tokenise", "tokenise (llm-blender's collator)"),
    ("batch", "pad + batch"),
    ("relative_positions", "backbone: relative-position ids"),
    ("disentangled_bias", "backbone: c2p + p2c attention terms"),
    ("backbone_other", "backbone: the rest"),
    ("glue", "llm-blender `_forward` around the backbone"),
    ("rest", "the rest"),
]


def profile_worker(spec: Spec, options: dict) -> dict:
    """The ranking call under timers (perf_counter around the calls, summed): llm-blender's
    collator (tokenisation, both sides), ours' padding into batches, the DeBERTa backbone's
    forward, and inside it the relative-position ids (`build_relative_position`, once per
    forward) and the disentangled c2p + p2c attention terms (`disentangled_attention_bias`,
    once per layer); the glue is `ranker._forward` minus the backbone (prefix-token swap,
    `cat_ids`, the comparison head); the rest is the approach's own Python around them
    (sorting, scattering results; llm-blender's DataLoader, `_full_predict` loop and score
    aggregation). On a GPU the timers would need synchronising: CPU only."""
    import transformers.models.deberta_v2.modeling_deberta_v2 as deberta

    prompts, responses = make_data(spec.data, options["max_prompts"])
    blender = load_blender(options)
    rank = make_ranker(spec, blender)
    timers: dict[str, float] = {}

    def timed(owner, attr: str, key: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                timers[key] = timers.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, attr, wrapper)

    ranker = blender.ranker
    timed(type(blender.ranker_collator), "__call__", "tokenise")  # rank() copies the collator
    if spec.approach == "ours":
        from src.ranking.pairrm import PairRMJudge

        timed(PairRMJudge, "pad", "batch")
    timed(ranker, "_forward", "forward")
    timed(ranker.pretrained_model, "forward", "backbone")
    timed(deberta, "build_relative_position", "relative_positions")
    timed(deberta.DisentangledSelfAttention, "disentangled_attention_bias", "disentangled_bias")

    rank(prompts[:1], responses[:1])  # warm-up
    timers.clear()
    t0 = time.perf_counter()
    rank(prompts, responses)
    seconds = time.perf_counter() - t0
    parts = {
        "tokenise": timers.get("tokenise", 0.0),
        "batch": timers.get("batch", 0.0),
        "relative_positions": timers.get("relative_positions", 0.0),
        "disentangled_bias": timers.get("disentangled_bias", 0.0),
    }
    parts["backbone_other"] = (
        timers["backbone"] - parts["relative_positions"] - parts["disentangled_bias"]
    )
    parts["glue"] = timers["forward"] - timers["backbone"]
    parts["rest"] = seconds - sum(parts.values())
    comparisons = sum(len(c) * (len(c) - 1) for c in responses)
    return {
        "spec": asdict(spec),
        "seconds": seconds,
        "comparisons": comparisons,
        "ms_per_comparison": {k: 1000 * v / comparisons for k, v in parts.items()},
        "share": {k: v / seconds for k, v in parts.items()},
    }


def worker_main(argv: list[str]) -> None:
    out, mode = Path(argv[0]), argv[1]
    spec, options = Spec(**json.loads(argv[2])), json.loads(argv[3])
    from src.core import threads

    threads.configure()  # the threads the rank stage runs with, set before torch loads
    fn = run_worker if mode == "run" else profile_worker
    out.write_text(json.dumps(fn(spec, options), indent=1))


# --- the whole benchmark ----------------------------------------------------------------------


def run_config(mode: str, spec: Spec, options: dict, timeout: int):
    worker_args = [mode, json.dumps(asdict(spec)), json.dumps(options)]
    env = NO_MMAP_ENV if options["malloc_no_mmap"] else None
    return run_under_load(
        spec.load, lambda: run_fresh("benchmarks.bench_ranking", worker_args, timeout, env)
    )


def run_name(run: dict) -> str:
    return Spec(**run["spec"]).name


def check_scores(runs: list[dict]) -> dict:
    """Every run's scores against those of the first reference run on the same data (repeat 0
    unless it failed): their max abs difference goes into the run, the scores themselves
    leave it (a hash stays). Returns the reference scores kept, per data set."""
    import numpy as np

    kept = {}
    for run in runs:
        if run["spec"]["approach"] == "reference":
            kept.setdefault(run["spec"]["data"], run["scores"])
    for run in runs:
        scores = run.pop("scores")
        run["scores_sha256"] = hashlib.sha256(json.dumps(scores).encode()).hexdigest()[:16]
        ref = kept.get(run["spec"]["data"])
        run["max_abs_score_diff"] = (
            float(np.abs(np.array(scores) - np.array(ref)).max()) if ref is not None else None
        )
    return kept


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name, group in group_runs(runs, run_name).items():
        diffs = [r["max_abs_score_diff"] for r in group if r["max_abs_score_diff"] is not None]
        out[name] = {
            **summary_of(
                group,
                "comparisons_per_s",
                first=("prompts", "comparisons", "forwards"),
                medians=(
                    "seconds",
                    "ms_per_comparison",
                    "peak_rss_delta_mb",
                    "load_cpu_share",
                    "cuda_peak_mb",
                ),
            ),  # fmt: skip
            # ours pads each batch to its longest comparison; the reference never pads
            "padding_share": 1
            - group[0]["data"]["comparison_tokens"] / group[0]["data"]["padded_tokens_at_batch"],
            "max_abs_score_diff": max(diffs) if diffs else None,
            "dtype": group[0]["dtype"],
            "scores_sha256": sorted({r["scores_sha256"] for r in group}),
            "data": group[0]["data"],
        }
    return out


def ratios(summary: dict, runs: list[dict]) -> list[dict]:
    """Ours at each B over the reference on the same data (comparisons/s, ratio of the medians,
    with the range of the same ratio repeat by repeat), and whether its scores stayed within
    the tolerance of the reference's in every run."""
    rows = []
    for name, s in summary.items():
        sp = s["spec"]
        ref = summary.get(Spec("reference", sp["data"], 1, sp.get("load", 0)).name)
        if sp["approach"] != "ours" or ref is None:
            continue
        ref_name = Spec(**ref["spec"]).name
        per_repeat = per_repeat_ratios(runs, run_name, name, ref_name, "comparisons_per_s")
        value = s["comparisons_per_s"] / ref["comparisons_per_s"]
        atol = SCORE_ATOL.get(s["dtype"], SCORE_ATOL["float32"])
        diff = s["max_abs_score_diff"]
        rows.append(
            {
                "data": sp["data"],
                "batch": sp["batch"],
                "load": sp.get("load", 0),
                "value": value,
                "per_repeat_min": min(per_repeat) if per_repeat else None,
                "per_repeat_max": max(per_repeat) if per_repeat else None,
                "target": TARGET,
                "met": target_met(value, TARGET),
                "max_abs_score_diff": diff,
                "score_atol": atol,
                "scores_equal": diff is not None and diff <= atol,
            }
        )
    return rows


def score_scale(result: dict, data: str) -> str:
    """The size of the reference's scores on `data`: a score difference reads against it."""
    scores = result.get("reference_scores", {}).get(data)
    return f"{max(abs(x) for row in scores for x in row):.2g}" if scores else "–"


def malloc_label(env) -> str:
    return env if isinstance(env, str) else " ".join(f"{k}={v}" for k, v in env.items())


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    v = m["versions"]
    lines = [
        "# PairRM ranking throughput: batched across prompts vs llm-blender's rank(batch_size=1)",
        "",
        f"{m['date_utc']} · {m['cpu_model']} · {m['cpu_affinity']} cores · {s['device']} · "
        f"malloc: {malloc_label(s.get('malloc_env', 'glibc defaults'))} · "
        f"torch {v['torch']} · transformers {v['transformers']} · llm-blender {v['llm-blender']} · "
        f"commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''}",
        "",
        f"PairRM backbone: {s['backbone']} ({s['backbone_shape']}); K={s['K']} responses per "
        f"prompt, K(K-1) comparisons each; source/candidate limits {s['limits']['source_max_length']}"
        f"/{s['limits']['candidate_max_length']} PairRM tokens, llm-blender's collator on both sides; "
        "raw prompt text. The ranking call timed (tokenisation included, model loading not) after a "
        f"warm-up call on the first prompt; median of {s['repeats']} fresh-process repeats. "
        "Peak Δ = peak RSS during the call above the RSS before it.",
        "",
        "| data | prompts | response tokens (min–median–max) | > 412 | cut | comparison tokens "
        "(median, max) | reference scores, max abs |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    seen = set()
    for r in result["summary"].values():
        d, name = r["data"], r["spec"]["data"]
        if name in seen:
            continue
        seen.add(name)
        lines.append(
            f"| {name} | {r['prompts']} | {d['response_tokens_min']}–"
            f"{d['response_tokens_median']:.0f}–{d['response_tokens_max']} | "
            f"{d['responses_over_candidate_max_length']} of {r['prompts'] * s['K']} | "
            f"{d['responses_cut']} | {d['comparison_tokens_median']:.0f}, "
            f"{d['comparison_tokens_max']} | {score_scale(result, name)} |"
        )
    lines += [
        "",
        "| approach | data | B | load | comparisons/s (min–max) | ms/comparison | call s "
        "| forwards | padding | peak Δ MB | max abs score diff |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["summary"].values():
        sp = r["spec"]
        diff = "–" if r["max_abs_score_diff"] is None else f"{r['max_abs_score_diff']:.1e}"
        share = r.get("load_cpu_share")
        load = f"{sp.get('load', 0)}" + (f" ({share:.0%})" if share is not None else "")
        lines.append(
            f"| {sp['approach']} | {sp['data']} | {sp['batch']} | {load} | "
            f"{r['comparisons_per_s']:,.1f} ({r['comparisons_per_s_min']:,.1f}–"
            f"{r['comparisons_per_s_max']:,.1f}) | {r['ms_per_comparison']:.2f} | "
            f"{r['seconds']:.2f} | {r['forwards']} | {r['padding_share']:.0%} | "
            f"{r['peak_rss_delta_mb']:.1f} | {diff} |"
        )
    lines += [
        "",
        "| data | B | load | ours / reference (comparisons/s) | per-repeat range | target | met "
        "| max abs score diff | within |",
        "|---|---:|---:|---:|---|---|---|---:|---|",
    ]
    for r in result["ratios"]:
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        rng = (
            f"{r['per_repeat_min']:.2f}–{r['per_repeat_max']:.2f}"
            if r["per_repeat_min"] is not None
            else "–"
        )
        diff = "–" if r["max_abs_score_diff"] is None else f"{r['max_abs_score_diff']:.1e}"
        within = f"{'yes' if r['scores_equal'] else '**no**'} (≤ {r['score_atol']:.0e})"
        lines.append(
            f"| {r['data']} | {r['batch']} | {r.get('load', 0)} | {r['value']:.2f} | {rng} "
            f"| {r['target']} | {met} "
            f"| {diff} | {within} |"
        )
    if result.get("profile"):
        parts = [(k, label) for k, label in PARTS]
        lines += [
            "",
            "Where the call's time goes (profile pass, one call under timers; ms per comparison, "
            "share of the call in brackets):",
            "",
            "| approach | data | B | ms/comparison | " + " | ".join(lb for _, lb in parts) + " |",
            "|---|---|---:|---:|" + "---:|" * len(parts),
        ]
        for p in result["profile"]:
            sp = p["spec"]
            cells = [f"{p['ms_per_comparison'][k]:.2f} ({p['share'][k]:.0%})" for k, _ in parts]
            total = 1000 * p["seconds"] / p["comparisons"]
            lines.append(
                f"| {sp['approach']} | {sp['data']} | {sp['batch']} | {total:.2f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def describe(run: dict) -> str:
    return (
        f"{run['comparisons_per_s']:,.1f} comparisons/s, call {run['seconds']:.2f} s, "
        f"peak Δ {run['peak_rss_delta_mb']:.1f} MB"
    )


def describe_profile(profile: dict) -> str:
    return ", ".join(f"{k} {profile['share'][k]:.0%}" for k, _ in PARTS)


def main(argv: list[str] | None = None) -> None:
    started = command_line(argv, worker_main, "benchmarks.bench_ranking", __doc__)
    if started is None:
        return
    argv, parser = started
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=APPROACHES)
    parser.add_argument(
        "--loads", nargs="+", type=int, default=[0], help="busy processes beside a run"
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=list(BATCH_SIZES),
        help="ours: comparisons per forward",
    )
    parser.add_argument(
        "--max-prompts", type=int, help="at most this many prompts per data set (smoke tests)"
    )
    parser.add_argument("--backbone", choices=("tiny", "large"), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--malloc-no-mmap",
        action="store_true",
        help=f"run both approaches with {' '.join(f'{k}={v}' for k, v in NO_MMAP_ENV.items())}",
    )
    parser.add_argument(
        "--profile-batches",
        nargs="*",
        type=int,
        default=[4, 32],
        help="ours' B in the profile pass (none: no profile; default 4 32)",
    )
    add_common_args(parser, out=REPO_ROOT / "benchmarks/results/ranking_cpu.json", timeout=900)
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render, ratios, markdown)
        return
    options = {
        "backbone": args.backbone,
        "device": args.device,
        "max_prompts": args.max_prompts,
        "malloc_no_mmap": args.malloc_no_mmap,
    }

    started = time.time()
    pairrm_path(args.backbone)  # built once, before anything is timed
    specs = [
        Spec(approach, data, batch, load)
        for load in args.loads
        for data in args.datasets
        for approach in args.approaches
        for batch in (args.batch_sizes if approach == "ours" else [1])
    ]
    runs, failures, waited = measure_interleaved(
        specs, args, lambda spec: run_config("run", spec, options, args.timeout), describe
    )
    reference_scores = check_scores(runs)

    # the profile's timers do not synchronise with a GPU: CPU only
    profile_specs = [
        Spec(approach, data, batch)
        for data in args.datasets
        for approach in args.approaches
        for batch in (args.profile_batches if approach == "ours" else [1])
        if args.profile_batches and not args.device.startswith("cuda")
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
        "benchmarks.bench_ranking",
        started,
        markdown,
        (runs, failures + profile_failures, waited + profile_waited),
        benchmark="PairRM ranking throughput: comparisons batched across prompts (ours) vs "
        "llm-blender's Blender.rank(batch_size=1) (the SPPO reference's call)",
        packages=("torch", "transformers", "llm-blender", "tokenizers"),
        code=measured_code(),
        settings={
            "backbone": args.backbone,
            "backbone_shape": "hidden 32, 2 layers, 2 heads, intermediate 64"
            if args.backbone == "tiny"
            else "hidden 1024, 24 layers, 16 heads, intermediate 4096",
            "device": args.device,
            "malloc_env": NO_MMAP_ENV if args.malloc_no_mmap else "glibc defaults",
            "K": K,
            "limits": LIMITS,
            "datasets": {
                d: {**DATASETS[d], "sha256": data_sha256(d, args.max_prompts)}
                for d in args.datasets
            },
            "max_prompts": args.max_prompts,
            "prompts": "the first n of data/prompts/iter*.jsonl, raw text (no chat template)",
            "responses": "runs of words cut from data/tiny/corpus.txt, lengths uniform in `words`",
            "batch_sizes": args.batch_sizes,
            "warmup": "one call on the first prompt, not timed",
            "timed": "the whole ranking call: tokenisation, batching, forwards, scores",
        },
        summary=summary,
        ratios=ratios(summary, runs),
        code_versions=warn_if_code_changed(
            runs, "src/ranking/pairrm.py, src/ranking/blender_compat.py or this script"
        ),
        profile=profile,
        reference_scores=reference_scores,
    )


if __name__ == "__main__":
    main()
