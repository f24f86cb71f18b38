"""vLLM's rows against the HF backend's on one GPU, at a real architecture's widths: the generate
stage's two generators (`open_generator`, generation=hf and generation=vllm) load one checkpoint
of random bf16 weights and decode the same prompts greedily; each also scores the prompts
teacher-forced (each prompt token's log-probability given those before it: HF's forward, vLLM's
`prompt_logprobs`), which compares the engines' numerics position by position where greedy rows,
once they part, say nothing more. Commands and tables: benchmarks/README.md, vLLM's rows against
the HF backend's.

The checkpoint: the model's config class cut to --layers, its sliding window shrunk to --window
so that prompts cross it, weights drawn with std --init (Gemma-2's soft-cap is then reached);
saved once to --checkpoint and reused, so the two peers may run in separate commands (vLLM is
installed for the second). The HF peer leaves its rows and scores beside the weights
(`hf_reference.json`); the vLLM peer compares with them. What the check can see: HF's own scores
with the sliding window switched off, against with it, past the window.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Benchmark, Case, fmt, table

PEERS = ("hf", "vllm")
MODELS = ("gemma-2-9b-it", "mistral-7b-instruct-v0.2")
REFERENCE = "hf_reference.json"  # the HF peer's rows and scores, beside the weights


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default="gemma-2-9b-it")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--layers", type=int, default=4, help="the real widths, N layers")
    parser.add_argument("--window", type=int, default=128, help="the sliding window (Gemma-2)")
    parser.add_argument("--init", type=float, default=0.05, help="the weights' std")
    parser.add_argument("--prompts", type=int, default=12, help="random-id prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="each greedy row's length")
    parser.add_argument("--checkpoint", default="/tmp/agreement-checkpoint")
    parser.add_argument("--engine-logs", help="keep vLLM's whole log in this folder")


def cases(args: argparse.Namespace) -> list[Case]:
    if args.out.name == "agreement.json":  # the default: one results file per model
        args.out = args.out.with_name(f"agreement_gpu_{args.model}.json")
    params = {k: v for k, v in vars(args).items() if k not in ("out", "peers")}
    return [Case(f"{peer}/{args.model}", peer, params) for peer in args.peers]


def prompt_lengths(n: int, window: int) -> list[int]:
    """n lengths, half inside the window and half across it (up to 4 windows long)."""
    rng = random.Random(0)
    return sorted(rng.randint(16, window) if i % 2 else rng.randint(window + 1, 4 * window)
                  for i in range(n))  # fmt: skip


def build_checkpoint(p: dict) -> Path:
    """The cut architecture with random weights, saved once (the `done` file says it is whole)."""
    folder = Path(p["checkpoint"])
    if (folder / "done").is_file():
        return folder
    config = harness.real_config(p["model"], num_hidden_layers=p["layers"],
                                 initializer_range=p["init"])  # fmt: skip
    if getattr(config, "sliding_window", None):
        config.sliding_window = p["window"]
    harness.random_model(config, p["device"]).save_pretrained(folder)
    (folder / "done").write_text("")
    return folder


def measure(case: Case) -> dict:
    harness.as_entry_point(pin_mmap=False)
    import torch

    from src.config import compose

    p = case.params
    started = time.perf_counter()
    folder = build_checkpoint(p)
    built_s = time.perf_counter() - started
    config = json.loads((folder / "config.json").read_text())
    rng = random.Random(1)
    prompts = [[rng.randrange(10, config["vocab_size"]) for _ in range(n)]
               for n in prompt_lengths(p["prompts"], p["window"])]  # fmt: skip
    cfg = compose(
        [f"model={p['model']}", f"generation={case.peer}", "logger=none",
         f"hardware={'gpu-1' if p['device'] == 'cuda' else 'cpu'}",
         f"generation.max_new_tokens={p['max_new_tokens']}",
         f"training.max_prompt_length={max(map(len, prompts))}"]
    )  # fmt: skip
    log = (
        p.get("engine_logs") and Path(p["engine_logs"]) / f"agreement_{case.peer}_{p['model']}.log"
    )
    eos = config["eos_token_id"]
    t0 = time.perf_counter()
    generator = harness.open_stage_generator(
        cfg, str(folder), harness.IDS_ONLY, [eos] if isinstance(eos, int) else eos,
        {"skip_tokenizer_init": True}, log or None,
        dataclasses.replace(cfg.generation, temperature=0.0),  # greedy, as eval decodes
    )  # fmt: skip
    start_s = time.perf_counter() - t0
    ids = [f"p{i:03d}" for i in range(len(prompts))]
    rows = [row[0].text for row in generator(prompts, ids, [0])]
    gaps: list[float] = []
    if case.peer == "vllm":
        scores, tops = vllm_scores(generator, prompts)
    else:
        scores, tops = hf_scores(generator, prompts, gaps=gaps)
    run = {"model": p["model"], "build_s": built_s, "start_s": start_s, "prompts": len(prompts),
           "prompt_tokens": sum(map(len, prompts)), "window": config.get("sliding_window")}  # fmt: skip
    if case.peer == "hf":
        contrast, _ = hf_scores(generator, prompts, window_off=True)
        reference = {"rows": rows, "scores": scores, "tops": tops, "window_off": contrast}
        (folder / REFERENCE).write_text(json.dumps(reference))
        run.update(compare(scores, contrast, None, None, p["window"], prefix="window_off_"))
        for close in CLOSE:  # how often the argmax is a near tie, where any noise may flip it
            run[f"top_two_within_{close}"] = sum(g < close for g in gaps) / len(gaps)
    else:
        reference = json.loads((folder / REFERENCE).read_text())
        run.update(compare(reference["scores"], scores, reference["tops"], tops, p["window"]))
        pairs = list(zip(reference["rows"], rows, strict=True))
        agreed = [common_prefix(a.split(), b.split()) for a, b in pairs]
        run.update(rows_equal=sum(a == b for a, b in pairs),
                   agreed_prefix_mean=sum(agreed) / len(agreed), agreed_prefix_min=min(agreed))  # fmt: skip
    run["row_lengths"] = [len(r.split()) for r in rows]  # a row is its token ids
    generator.close()
    if p["device"] == "cuda":
        torch.cuda.synchronize()
    return run


CLOSE = (0.05, 0.1)  # top-two logit gaps under which bf16's differences may reorder them


def hf_scores(generator, prompts, window_off: bool = False, gaps: list | None = None):
    """Each prompt token's log-probability given those before it, and the argmax there (the
    token the model would have chosen); `window_off`: with the sliding window switched off;
    `gaps`: gets each position's gap between its top two logits."""
    import torch

    model, scores, tops = generator.model, [], []
    window = model.config.sliding_window
    if window_off:
        model.config.sliding_window = 10**9
    try:
        for ids in prompts:
            x = torch.tensor([ids], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            scores.append(logp.gather(1, x[0, 1:, None])[:, 0].tolist())
            tops.append(logits.argmax(-1).tolist())
            if gaps is not None:
                top = logits.topk(2, dim=-1).values
                gaps += (top[:, 0] - top[:, 1]).tolist()
            del logits, logp
    finally:
        model.config.sliding_window = window
    return scores, tops


def vllm_scores(generator, prompts) -> tuple[list, list]:
    """The same through vLLM's engine: `prompt_logprobs=1` (the prompt token's and the top one)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1, detokenize=False)
    prompts_in = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    outs = generator.llm.generate(prompts_in, params, use_tqdm=False)  # 0.32: its bar divides by 0
    scores, tops = [], []
    for ids, out in zip(prompts, outs, strict=True):
        per = out.prompt_logprobs[1:]  # the first token has none
        scores.append([d[t].logprob for t, d in zip(ids[1:], per, strict=True)])
        tops.append([next(t for t, lp in d.items() if lp.rank == 1) for d in per])
    return scores, tops


def compare(a: list, b: list, tops_a, tops_b, window: int, prefix: str = "") -> dict:
    """|a - b| of the scores, inside the window and past it; the share of positions whose argmax
    agrees."""
    inside, past = [], []
    for sa, sb in zip(a, b, strict=True):
        for i, (x, y) in enumerate(zip(sa, sb, strict=True)):
            (past if i + 1 >= window else inside).append(abs(x - y))
    out = {}
    for name, d in (("inside", inside), ("past", past)):
        out[f"{prefix}{name}_positions"] = len(d)
        out[f"{prefix}{name}_mean_abs"] = sum(d) / len(d) if d else None
        out[f"{prefix}{name}_max_abs"] = max(d) if d else None
    if tops_a is not None:
        pairs = [
            (x, y)
            for ta, tb in zip(tops_a, tops_b, strict=True)
            for x, y in zip(ta, tb, strict=True)
        ]
        out["argmax_agree"] = sum(x == y for x, y in pairs) / len(pairs)
    return out


def common_prefix(a: list, b: list) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def tables(result: dict) -> list[dict]:
    s = result["settings"]
    blocks = [harness.setting(
        result,
        f"{s['model']}'s config class cut to {s['layers']} layers, sliding window {s['window']} "
        f"(where the model has one), weights drawn with std {s['init']}, bf16 on a GPU; "
        f"{s['prompts']} prompts of random ids, half inside the window and half across it; "
        f"greedy rows of {s['max_new_tokens']} tokens through the stage's generators; scores: "
        "each prompt token's log-probability given those before it. HF's row: its scores with "
        "the window switched off against with it, past the window (what a window done wrong "
        "would move). vLLM's row: its scores against HF's, the rows that are equal, the tokens "
        "they agree on before they part, the share of positions whose argmax agrees.",
    )]  # fmt: skip
    rows = []
    for r in result["runs"]:
        if r["peer"] == "hf":
            ties = " / ".join(f"{100 * r[f'top_two_within_{c}']:.1f} %" for c in CLOSE
                              if f"top_two_within_{c}" in r)  # fmt: skip
            rows.append([r["case"], fmt(r["start_s"]), "–", "–", "–",
                         f"window off: {fmt(r['window_off_inside_max_abs'], 4)}",
                         f"window off: {fmt(r['window_off_past_mean_abs'], 4)} / "
                         f"{fmt(r['window_off_past_max_abs'], 4)}", ties or "–"])  # fmt: skip
        else:
            rows.append([r["case"], fmt(r["start_s"]), f"{r['rows_equal']} of {r['prompts']}",
                         f"{fmt(r['agreed_prefix_mean'])} (min {r['agreed_prefix_min']})",
                         f"{100 * r['argmax_agree']:.2f} %", fmt(r["inside_max_abs"], 4),
                         f"{fmt(r['past_mean_abs'], 4)} / {fmt(r['past_max_abs'], 4)}", "–"])  # fmt: skip
    blocks.append(table(["peer", "start s", "rows equal", "agreed tokens (mean)", "argmax agrees",
                         "|Δ| inside window (max)", "|Δ| past window (mean / max)",
                         "top two logits within 0.05 / 0.1"], rows))  # fmt: skip
    return blocks


BENCHMARK = Benchmark(
    name="agreement", title="vLLM's rows and scores against the HF backend's, one checkpoint",
    results="agreement", cases=cases, measure=measure, tables=tables,
    add_args=add_args, packages=("torch", "transformers", "vllm"),
    code=("src/generation/hf_backend.py", "src/generation/sampling.py",
          "src/generation/vllm_backend.py", "src/generation/vllm_engine.py",
          "src/generation/vllm_client.py",
          "benchmarks/agreement.py"),
    repeats=1, timeout=900,
)  # fmt: skip
