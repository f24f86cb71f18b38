"""The choices of the config: enums whose member *names* are what a config file or an override
writes (`src.core.choice.Choice`)."""

from __future__ import annotations

from src.core.choice import Choice

# ---------------------------------------------------------------------------------------------
# Choices. Enum *names* are what a config file or an override writes; OmegaConf lists them in its
# error message when a value is not one of them.


class MethodName(Choice):
    sppo = "sppo"
    wpo = "wpo"
    dpo = "dpo"


class Loss(Choice):
    sppo = "sppo"  # soft SPPO, docs/design.md §6.2 (the reference trainer's)
    sppo_single = "sppo_single"  # uses the pairwise P_wl instead of the two win rates
    sppo_hard = "sppo_hard"  # TRL's hard-label variant
    sigmoid = "sigmoid"  # DPO, with label smoothing
    ipo = "ipo"


class PairSelection(Choice):
    argmax_argmin = "argmax_argmin"  # SPPO: chosen = argmax score, rejected = argmin
    wpo_tiebreak = "wpo_tiebreak"  # WPO v2: ties -> shortest chosen, rejected closest in length


class Dtype(Choice):
    auto = "auto"  # bf16 on a GPU that supports it, fp32 on CPU
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class WeightUpdates(Choice):
    kahan = "kahan"  # a bf16 compensation buffer per weight (Kahan summation), bf16 state
    fp32 = "fp32"  # fp32 master weights and optimizer state (DeepSpeed's bf16 mode, one process)


class Backend(Choice):
    hf = "hf"
    vllm = "vllm"


class LongPrompts(Choice):
    skip = "skip"  # leave the prompt out and count it in the completion record
    truncate = "truncate"  # keep the end of the prompt


class JudgeKind(Choice):
    pairrm = "pairrm"
    reward_model = "reward_model"


class WinProb(Choice):
    bt = "bt"  # P_ij = sigmoid(s_i - s_j), Bradley-Terry on aggregated scores (reference)
    direct = "direct"  # P_ij = sigmoid(C_ij), PairRM's own pairwise logit


class TiePolicy(Choice):
    drop = "drop"  # all K scores equal: no pair, counted
    keep = "keep"  # the reference's behaviour: a pair whose chosen equals rejected


class EmptyResponses(Choice):
    drop = "drop"  # leave empty responses out of the candidates, counted
    keep = "keep"  # rank them like any other response (the reference's behaviour)


class Attention(Choice):
    # transformers' own DeBERTa-v2 attention: the [B, heads, L, L] scores built and then gathered,
    # added to and masked in full (what an H200 spends most of a PairRM forward on)
    eager = "eager"
    # disentangled-flash's exact kernels (Triton): the same attention without the [B, heads, L, L]
    # tensors, on a CUDA GPU, each forward's comparisons packed without padding (its varlen
    # forward); elsewhere transformers' own, said in one line
    fused = "fused"


class PromptFormat(Choice):
    chat_template = "chat_template"  # what the reference passes to PairRM
    raw = "raw"


class Outcome(Choice):
    discrete = "discrete"  # 1 if the judge prefers the policy's answer, 0 if not, 1/2 on a tie
    probability = "probability"  # the judge's probability that it does (AlpacaEval 2's weighting)


class Benchmark(Choice):
    """What the eval stage measures beside its judge's win rate (eval.benchmarks)."""

    mt_bench = "mt_bench"  # FastChat's MT-Bench, single-answer grading by eval.llm_judge
    arena_hard = "arena_hard"  # Arena-Hard-Auto against a baseline's answers, by eval.llm_judge
    # the Open LLM Leaderboard (eval.leaderboard_tasks) through lm-evaluation-harness, in-process
    leaderboard = "leaderboard"


class Optimizer(Choice):
    rmsprop = "rmsprop"
    adamw = "adamw"


class Scheduler(Choice):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class RefLogprobs(Choice):
    precompute = "precompute"  # one forward-only pass of the frozen reference before training
    online = "online"  # reference forward every step, as the original code does


class Peft(Choice):
    none = "none"  # every weight trained (the recipes' setting)
    lora = "lora"  # a LoRA adapter on the frozen policy (peft)
    qlora = "qlora"  # a LoRA adapter on the policy loaded in 4 bits (bitsandbytes, CUDA only)


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


class Distributed(Choice):
    none = "none"
    ddp = "ddp"
    deepspeed = "deepspeed"


class LoggerBackend(Choice):
    wandb = "wandb"
    none = "none"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"
