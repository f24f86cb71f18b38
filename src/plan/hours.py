"""How long each stage of an iteration takes, and its GPU-hours: the stage's work (tokens from
the prompts, K and the lengths: measured from the previous iteration's generation when it exists,
else the config's limits) over a per-GPU rate (`plan.*`). Which figures are measured and which
are assumptions is said in every row.

- generation: tokens per second per GPU. HF: measured for the real models on an H100 by
  `python -m benchmarks generation --device cuda` (32 prompts x 5 samples a call); other models: the
  Mistral-7B rate scaled by parameters (an assumption: decoding reads every weight per step).
  vLLM (one stream over the shard, its engine kept full): `plan.vllm_bound_share` of the decode
  bound, measured per model (MEASURED_BOUND_SHARES: Mistral-7B on an H200, Gemma-2-9B on an
  H100), Mistral-7B's assumed for other models;
- ranking: PairRM's comparisons per second at the comparisons' length (the prompt and two
  responses, cut to PairRM's limits), interpolated between lengths measured on a GPU
  (MEASURED_RANK_RATES); another judge: FLOPs over `plan.mfu` x `plan.gpu_tflops`, a forward of
  2 Psi_judge per token (the MFU an assumption);
- training: FLOPs over `plan.mfu` x `plan.gpu_tflops` (the MFU is an assumption): a token 6 Psi
  (forward 2, backward 4) plus 2 Psi when gradient checkpointing recomputes the forward, and the
  reference's forward 2 Psi once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from src.config import Backend, Config, JudgeKind, RefLogprobs, Stage
from src.core.errors import StageError
from src.core.records import read_record
from src.core.shapes import JUDGE_PARAMS, MISTRAL_7B, Shape, judge_weights
from src.plan.counts import source_rows

# HF generation tokens/s per GPU by prompts a call (benchmarks/results/generation_gpu.md: H100,
# "ours", 5 samples a prompt)
MEASURED_GENERATE = {
    "mistralai/Mistral-7B-Instruct-v0.2": {8: 680.0, 32: 1722.0},
    "google/gemma-2-9b-it": {8: 694.0, 32: 984.0},
}
RECIPE_PROMPTS = (
    20_000  # prompts of an SPPO iteration (UCLA-AGI/data-mistral-7b-instruct-sppo-iter*)
)
ALPACA_EVAL_INSTRUCTIONS = 805  # AlpacaEval 2's, where data.eval_prompts is not counted


@dataclass
class StageHours:
    stage: str
    tokens: float  # the stage's tokens (generated, judged or trained)
    gpus: int
    hours: float  # wall-clock, the GPUs working together
    basis: str  # where the rate comes from

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus


def previous_generation(cfg: Config) -> dict | None:
    """The counts of the previous iteration's generate stage (this iteration's, at iter 1)."""
    iteration = max(cfg.iter - 1, 1)
    try:
        record = read_record(cfg.layout.stage_dir_in(iteration, Stage.generate)) or {}
    except (OSError, StageError):  # unreadable or damaged: the plan takes its figure elsewhere
        return None
    counts = record.get("counts", {})
    return counts if counts.get("generated") and counts.get("tokens") else None


def prompt_count(cfg: Config, measured: dict | None) -> tuple[int, str]:
    """The iteration's prompts and where the figure comes from: plan.prompts, else
    data.max_prompts where the split has more, else the previous iteration's, else the split's
    rows (`source_rows`: a local file, the Hub cache, a dataset card), else the recipe's."""
    if cfg.plan.prompts is not None:
        return cfg.plan.prompts, "plan.prompts"
    counted = source_rows(cfg.data.prompts, cfg.data.split, cfg.paths.hub_cache)
    rows = None if counted is None else counted[0]
    if cfg.data.max_prompts is not None and (rows is None or rows > cfg.data.max_prompts):
        return cfg.data.max_prompts, "data.max_prompts"
    if measured is not None:
        return int(measured["generated"]), "the previous iteration's"
    if counted is not None:
        return rows, f"the rows of data.prompts, {counted[1]}"
    return RECIPE_PROMPTS, f"assumed: the SPPO recipe's {RECIPE_PROMPTS:,}"


def eval_count(cfg: Config) -> tuple[int, str]:
    """The instructions the eval stage answers and where the figure comes from: the rows of
    data.eval_prompts (`source_rows`), else AlpacaEval's, assumed."""
    source = cfg.data.eval_prompts
    if not source:
        return ALPACA_EVAL_INSTRUCTIONS, "assumed: AlpacaEval's; data.eval_prompts is not set"
    counted = source_rows(source, cfg.data.eval_split, cfg.paths.hub_cache)
    if counted is None:
        return ALPACA_EVAL_INSTRUCTIONS, f"assumed: AlpacaEval's; {source} is not counted here"
    return counted[0], f"the rows of data.eval_prompts, {counted[1]}"


def measured_rate(rates: dict[int, float], batch: int) -> tuple[float, str]:
    """The rate at `batch` prompts a call: measured at two batches, linear between them; below
    the smaller one proportional to the batch, above the larger one flat (assumptions)."""
    (small, r_small), (large, r_large) = sorted(rates.items())
    if batch < small:
        return r_small * batch / small, f"measured at {small} prompts a call, scaled down"
    if batch > large:
        return r_large, f"measured at {large} prompts a call"
    rate = r_small + (r_large - r_small) * (batch - small) / (large - small)
    return rate, f"measured at {small} and {large} prompts a call"


# vLLM's share of the decode bound, measured per model (plan.vllm_bound_share null): vLLM 0.26,
# one GPU, 128 prompts x K = 5 of the recipe-like spread, random bf16 weights at the real shapes
MEASURED_BOUND_SHARES = {
    "mistralai/Mistral-7B-Instruct-v0.2": (
        0.22, "Mistral-7B on an H200: benchmarks/results/generation_gpu_vllm.md"),
    "google/gemma-2-9b-it": (
        0.32, "Gemma-2-9B on an H100: benchmarks/results/generation_gpu_gemma_vllm.md"),
}  # fmt: skip
ASSUMED_BOUND_SHARE = MEASURED_BOUND_SHARES["mistralai/Mistral-7B-Instruct-v0.2"][0]

# PairRM's comparisons per second per GPU by a comparison's length (PairRM tokens: the prompt and
# both responses, the median of a measured set): the rank stage's judge at DeBERTa-v3-large's
# shape on an H200, fp16 as llm-blender loads it there, ranker.batch_size=32. A comparison's time
# grows faster than its length (the disentangled attention's [L, L] work): between two measured
# lengths the rate is interpolated on a log-log line, outside them the nearest one's is taken.
# Their FLOPs at the assumed MFU would have said 14x faster: 2 Psi a token reached 4 % of the peak.
MEASURED_RANK_RATES = {
    "llm-blender/PairRM": (
        ((609, 89.0), (2024, 20.3)),
        "PairRM on an H200 at ranker.batch_size=32: benchmarks/results/ranking_gpu_large.md"),
}  # fmt: skip


def rank_rate(points: tuple[tuple[int, float], ...], length: float) -> float:
    """Comparisons/s at `length` tokens a comparison from the measured (length, rate) points."""
    if length <= points[0][0]:
        return points[0][1]
    for (l0, r0), (l1, r1) in itertools.pairwise(points):
        if length <= l1:
            share = math.log(length / l0) / math.log(l1 / l0)
            return math.exp(math.log(r0) + share * math.log(r1 / r0))
    return points[-1][1]


# vLLM's max_num_seqs on a GPU of 70 GB or more (vLLM 0.26-0.33), when generation.max_num_seqs
# is null
VLLM_MAX_NUM_SEQS = 1024


def decode_bound(cfg: Config, shape: Shape, context: float) -> tuple[float, int]:
    """(tokens/s per GPU, sequences) at the decode bound: a step makes one token for each of the
    sequences the engine holds and reads, at the GPU's bandwidth, the bf16 weights once and the
    KV cache of every sequence (`context` tokens each, on average). The sequences: max_num_seqs,
    or fewer where the KV cache (what gpu_memory_utilization leaves beside the weights) holds
    fewer. Per GPU: tensor parallelism splits both reads and the tokens alike."""
    g, weights = cfg.generation, 2 * shape.params
    per_sequence = context * shape.kv_bytes_per_token()
    gpus = g.tensor_parallel_size
    room = gpus * (cfg.hardware.gpu_memory_gb or 80.0) * 2**30 * g.gpu_memory_utilization - weights
    if g.kv_cache_gb is not None:
        room = gpus * g.kv_cache_gb * 2**30
    sequences = max(1, min(g.max_num_seqs or VLLM_MAX_NUM_SEQS, int(room // per_sequence)))
    step_s = (weights + sequences * per_sequence) / (gpus * cfg.plan.gpu_memory_tbs * 1e12)
    return sequences / step_s / gpus, sequences


def generate_rate(cfg: Config, shape: Shape, batch: int, context: float) -> tuple[float, str]:
    """Tokens/s per GPU of the configured backend: HF at `batch` prompts a call, vLLM at
    sequences of `context` tokens on average in its KV cache."""
    if cfg.plan.generate_tokens_per_s is not None:
        return cfg.plan.generate_tokens_per_s, "plan.generate_tokens_per_s"
    if cfg.generation.backend == Backend.vllm:
        bound, sequences = decode_bound(cfg, shape, context)
        share, source = cfg.plan.vllm_bound_share, None
        if share is None:
            share, source = MEASURED_BOUND_SHARES.get(cfg.model.path, (ASSUMED_BOUND_SHARE, None))
        said = "measured" if source else "set" if cfg.plan.vllm_bound_share else "assumed"
        return share * bound, (
            f"{said}: plan.vllm_bound_share={share:g} of the decode bound, {bound:,.0f} tokens/s "
            f"at {sequences} sequences of {context:,.0f} tokens on {cfg.plan.gpu_memory_tbs:g} TB/s"
            + (f" ({source})" if source else "")
        )
    if cfg.model.path in MEASURED_GENERATE:
        rate, basis = measured_rate(MEASURED_GENERATE[cfg.model.path], batch)
        return rate, f"H100, HF, {basis}"
    rate, basis = measured_rate(MEASURED_GENERATE["mistralai/Mistral-7B-Instruct-v0.2"], batch)
    scaled = rate * MISTRAL_7B.params / shape.params
    return scaled, f"assumed: Mistral-7B's H100 rate ({basis}) scaled by parameters"


def iteration_hours(cfg: Config, shape: Shape) -> list[StageHours]:
    measured = previous_generation(cfg)
    prompts, _ = prompt_count(cfg, measured)
    k, g, t = cfg.method.K, cfg.generation, cfg.training
    world = cfg.hardware.world_size
    if measured is not None:  # tokens per sample as the previous iteration generated them
        response = measured["tokens"] / (measured["generated"] * k)
    else:
        response = g.max_new_tokens  # the limit: an upper bound
    prompt = g.max_prompt_length  # the limit: an upper bound
    flops_per_s = cfg.plan.mfu * cfg.plan.gpu_tflops * 1e12
    mfu = f"assumed MFU {cfg.plan.mfu:g} of {cfg.plan.gpu_tflops:g} TFLOP/s"

    # a sequence holds its prompt and, on average, half its response in the KV cache
    rate, basis = generate_rate(cfg, shape, g.batch_size, context=prompt + response / 2)
    generated = prompts * k * response
    stages = [StageHours("generate", generated, world, generated / (rate * world) / 3600, basis)]

    judge_bytes = judge_weights(cfg.ranker.model)
    judge_params = JUDGE_PARAMS.get(cfg.ranker.model) or (judge_bytes or 0) / 2
    if cfg.ranker.kind == JudgeKind.pairrm:  # every ordered pair of responses, with the prompt
        judged = prompts * k * (k - 1) * (prompt + 2 * response)
    else:  # one score per response
        judged = prompts * k * (prompt + response)
    rank_hours = judged * 2 * judge_params / (flops_per_s * world) / 3600
    if judge_params:
        counted = "src/core/shapes.py" if cfg.ranker.model in JUDGE_PARAMS else "its files"
        rank_basis = (
            f"{mfu}, 2 FLOPs a token per judge parameter ({judge_params / 1e9:.2f}e9: {counted})"
        )
    else:
        rank_basis = f"not counted: the size of {cfg.ranker.model} is not known here"
    if cfg.ranker.kind == JudgeKind.pairrm and cfg.ranker.model in MEASURED_RANK_RATES:
        points, source = MEASURED_RANK_RATES[cfg.ranker.model]
        r = cfg.ranker  # llm-blender cuts a comparison to its limits
        length = min(prompt + 2 * response, r.source_max_length + 2 * r.candidate_max_length)
        rate = rank_rate(points, length)
        rank_hours = prompts * k * (k - 1) / (rate * world) / 3600
        rank_basis = (f"measured: {rate:.1f} comparisons/s at {length:,.0f} tokens a comparison, "
                      f"from {', '.join(f'{r:g}/s at {n:,}' for n, r in points)} ({source})")  # fmt: skip
    stages.append(StageHours("rank", judged, world, rank_hours, rank_basis))

    trained = prompts * t.num_epochs * 2 * (prompt + response)  # a pair per prompt at most
    per_token = (8 if t.gradient_checkpointing else 6) * shape.params
    if t.ref_logprobs == RefLogprobs.precompute:
        per_token += 2 * shape.params / t.num_epochs  # the reference's one forward pass
    else:
        per_token += 2 * shape.params  # its forward every step
    train_hours = trained * per_token / (flops_per_s * world) / 3600
    stages.append(StageHours("train", trained, world, train_hours, mfu))

    if cfg.eval.enabled:
        e = cfg.eval
        instructions, source = eval_count(cfg)
        answered = instructions * e.max_new_tokens  # the policy's answers
        context = e.max_prompt_length + e.max_new_tokens / 2
        answering = replace(cfg, generation=replace(g, backend=cfg.eval_backend))
        rate, basis = generate_rate(answering, shape, e.batch_size, context)
        basis += f"; {instructions:,} instructions ({source})"
        stages.append(StageHours("eval", answered, 1, answered / rate / 3600, basis))
    return stages


# Hours up to this are written in fixed point; more, in three significant digits (4.21e+300), as
# the tokens are: a rate set near 0 (plan.vllm_bound_share=1e-300, a share the key allows) would
# write hundreds of digits, none of them meaningful
FIXED_POINT_HOURS = 1e6


def hours_shown(hours: float, decimals: int) -> str:
    return f"{hours:.{decimals}f}" if hours < FIXED_POINT_HOURS else f"{hours:.3g}"


def hours_text(cfg: Config, shape: Shape, through: int | None = None) -> list[str]:
    """The hours table `python -m src.plan` prints; its total over iterations 1..cfg.iter, or
    cfg.iter..`through` (a chain that `python -m src.slurm` submits)."""
    stages = iteration_hours(cfg, shape)
    measured = previous_generation(cfg)
    prompts, source = prompt_count(cfg, measured)
    lengths = (
        "measured in the previous iteration" if measured else "the config's limits: an upper bound"
    )
    total = sum(s.gpu_hours for s in stages)
    first, last = (1, cfg.iter) if through is None else (cfg.iter, through)
    return [
        f"Time of one iteration: {prompts:,} prompts ({source}), K = {cfg.method.K}, lengths "
        f"{lengths}:",
        "",
        "| stage | tokens | GPUs | hours | GPU-hours | rate |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s.stage} | {s.tokens:.3g} | {s.gpus} | {hours_shown(s.hours, 1)} | "
            f"{hours_shown(s.gpu_hours, 0)} | {s.basis} |"
            for s in stages
        ),
        f"| iteration | | | {hours_shown(sum(s.hours for s in stages), 1)} | "
        f"{hours_shown(total, 0)} | |",
        "",
        f"Iterations {first}..{last}: {hours_shown((last - first + 1) * total, 0)} GPU-hours.",
    ]
