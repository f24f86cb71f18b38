"""The optimizer step alone, at a real model's parameter shapes: the train stage's RMSprop on bf16
weights (src/training/optimizers.py: Kahan-compensated, or with fp32 masters; each eager, and
fused: compiled into one kernel, what a GPU runs by default) against torch's own RMSprop
(foreach) on fp32 weights, the step the target compares with (within 1.3x). Commands and
tables: benchmarks/README.md, The optimizer step alone.

The parameters: the model's config class at its real shapes on the meta device (the first
--layers decoder layers, the embedding and the head), each with random weights and a random
gradient. A case times --steps steps after two warm-up steps (the first makes the state and
compiles a fused step: its seconds apart). Bytes a step: what the update must read and write at
the least (Kahan: weight, compensation and state read and written, the gradient read, bf16: 14
bytes a parameter; fp32 masters: 26; torch on fp32: 20), over the step's seconds.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import harness
from benchmarks.harness import Case, fmt, table, text

# ours (training.weight_updates, eager or fused: compiled into one kernel), then torch's RMSprop
PEERS = ("kahan", "kahan-fused", "fp32", "fp32-fused", "torch")
BYTES_PER_PARAM = {"kahan": 14, "fp32": 26, "torch": 20}  # by the update, eager or fused
MODELS = ("mistral-7b-instruct-v0.2", "gemma-2-9b-it")  # conf/model/


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default="mistral-7b-instruct-v0.2")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))


COLUMNS = ["update", "parameters", "s a step", "first step s", "GB/s", "bytes a parameter",
           "x torch"]  # fmt: skip


def update_of(peer: str) -> str:
    return peer.partition("-")[0]


def cases(args: argparse.Namespace) -> list[Case]:
    params = {"model": args.model, "device": args.device, "layers": args.layers,
              "steps": args.steps}  # fmt: skip
    return [Case(peer, peer, params) for peer in PEERS if peer in args.peers]


def shapes(model: str, layers: int | None) -> list[tuple[int, ...]]:
    """Every parameter's shape of the model at its real size, its first `layers` layers."""
    config = harness.real_config(model, **({} if layers is None else {"num_hidden_layers": layers}))
    return [tuple(p.shape) for p in harness.random_model(config, "meta").parameters()]


def measure(case: Case) -> dict:
    import torch

    from src.config import WeightUpdates
    from src.training.optimizers import Bf16RMSprop

    p = case.params
    device = torch.device(p["device"])
    torch.manual_seed(0)
    dtype = torch.float32 if case.peer == "torch" else torch.bfloat16
    weights = []
    for shape in shapes(p["model"], p["layers"]):
        w = torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.02)
        w.grad = torch.randn_like(w) * 1e-3
        weights.append(w)
    settings = {"lr": 5e-7, "alpha": 0.99, "eps": 1e-8}
    if case.peer == "torch":
        optimizer = torch.optim.RMSprop(weights, foreach=True, **settings)
    else:
        keep, fused = WeightUpdates(update_of(case.peer)), case.peer.endswith("-fused")
        optimizer = Bf16RMSprop(weights, keep=keep, fused=fused, **settings)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    optimizer.step()  # the state made, the fused step compiled
    sync()
    first = time.perf_counter() - started
    optimizer.step()
    sync()
    started = time.perf_counter()
    for _ in range(p["steps"]):
        optimizer.step()
    sync()
    seconds = (time.perf_counter() - started) / p["steps"]
    params = sum(w.numel() for w in weights)
    run = {"params": params, "step_s": seconds, "first_step_s": first,
           "gb_per_s": BYTES_PER_PARAM[update_of(case.peer)] * params / seconds / 1e9}  # fmt: skip
    if device.type == "cuda":
        run["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return run


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    groups = harness.by_case(runs)
    step = {peer: harness.median(r["step_s"] for r in groups.get(peer, [])) for peer in PEERS}
    ratios = {peer: step[peer] / step["torch"] for peer in PEERS[:-1]
              if step[peer] and step["torch"]}  # fmt: skip
    return {"summary": {"step_s": step, "vs_torch": ratios}}


def tables(result: dict) -> list[dict]:
    groups, s = harness.by_case(result["runs"]), result["settings"]
    vs = result.get("summary", {}).get("vs_torch", {})
    rows = []
    for peer, runs in ((p, groups[p]) for p in PEERS if p in groups):
        m = harness.medians(runs, ("step_s", "gb_per_s", "first_step_s"))
        rows.append([peer, f"{runs[0]['params']:,}", fmt(m["step_s"], 3), fmt(m["first_step_s"], 1),
                     fmt(m["gb_per_s"], 0), BYTES_PER_PARAM[update_of(peer)],
                     fmt(vs.get(peer), 2) if peer in vs else "1"])  # fmt: skip
    layers = "every layer" if s.get("layers") is None else f"{s['layers']} decoder layer(s)"
    return [
        text(
            f"{s['model']}'s parameter shapes ({layers}, the embedding and the head), on "
            f"{result['machine']['gpu'] or result['machine']['cpu_model']}: seconds a step (median "
            f"of the fresh-process repeats, {s['steps']} timed steps each; the first step: the "
            "state made and a fused step compiled), the bytes the update "
            "must move at the least over those seconds, and the step against torch's RMSprop "
            "(foreach) on fp32 weights; target: Kahan within 1.3x."
        ),  # fmt: skip
        table(COLUMNS, rows),
    ]


BENCHMARK = harness.Benchmark(
    name="optimizer_step", title="The optimizer step alone at a real model's parameter shapes",
    results="optimizer_step_gpu", cases=cases, measure=measure, summarise=summarise, tables=tables,
    add_args=add_args, code=("src/training/optimizers.py",), repeats=2, timeout=600,
)  # fmt: skip
