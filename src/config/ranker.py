"""`ranker`: the judge that scores the K responses (conf/ranker/); the eval's judge
(`eval.judge`) is one too."""

from __future__ import annotations

from dataclasses import dataclass

from src.config.checks import _check, _check_shard, _positive
from src.config.choices import (
    Attention,
    Backend,
    EmptyResponses,
    JudgeKind,
    PromptFormat,
    TiePolicy,
    WinProb,
)


@dataclass
class RankerConfig:
    """The judge that scores the K responses (conf/ranker/)."""

    name: str  # the judge's name, as records and model cards show it
    kind: JudgeKind  # pairrm: llm-blender's pairwise PairRM; reward_model: one score per response
    model: str  # hub id or local directory
    # what runs a reward model: hf, transformers' forward, `batch_size` sequences at a time; vllm,
    # vLLM's pooling engine (make install-vllm), one per shard, handed every (prompt, response) of
    # a chunk at once, a prompt's tokens shared by its K responses (prefix caching), its memory
    # and eagerness set as the generate stage's engine's (generation.kv_cache_gb,
    # gpu_memory_utilization, enforce_eager, max_num_seqs). Its scores differ from hf's by float
    # rounding (docs/stages.md, rank: the tolerance); PairRM has no vLLM engine
    backend: Backend = Backend.hf
    # vllm only: the GPUs one engine spans; the eval's judge shares the eval stage's task, which
    # SLURM gives generation.tensor_parallel_size GPUs
    tensor_parallel_size: int = 1
    # comparisons (PairRM) or sequences (reward model) per forward, at most: on a CPU PairRM's
    # forwards also stop at CPU_SCORES_BYTES of attention scores (src/ranking/pairrm.py); its
    # packed forwards (attention=fused on a GPU) at the tokens of as many at the length limits;
    # with backend=vllm, unused (vLLM's scheduler batches: generation.max_num_seqs)
    batch_size: int = 32
    source_max_length: int = 1224  # the prompt cut to this many of the judge's tokens (PairRM's)
    candidate_max_length: int = 412  # each response cut likewise (PairRM's)
    prompt_format: PromptFormat = PromptFormat.chat_template  # the prompt as PairRM reads it
    attention: Attention = (
        Attention.eager
    )  # PairRM's DeBERTa attention (the same scores either way, to float rounding)
    win_prob: WinProb = WinProb.bt  # how the probability P_ij that i beats j is computed
    self_term: bool = True  # win rate includes P_ii = 1/2, so the K win rates sum to K/2
    ties: TiePolicy = TiePolicy.drop  # a prompt whose K responses all score the same
    empty_responses: EmptyResponses = EmptyResponses.drop  # empty or whitespace-only responses
    trust_remote_code: bool = False  # ArmoRM needs it: opt in explicitly
    chunk_size: int = 64  # prompts per file written: the unit of resume
    shard: int | None = None  # null: SLURM_ARRAY_TASK_ID when set, else 0
    num_shards: int | None = None  # null: SLURM_ARRAY_TASK_COUNT when set, else 1

    def check(self, section: str) -> None:
        """Range checks, naming the keys under `section` (`ranker` or `eval.judge`): called by
        Config, which knows where each ranker config sits."""
        _positive(f"{section}.batch_size", self.batch_size)
        _positive(f"{section}.source_max_length", self.source_max_length)
        _positive(f"{section}.candidate_max_length", self.candidate_max_length)
        _positive(f"{section}.chunk_size", self.chunk_size)
        _positive(f"{section}.tensor_parallel_size", self.tensor_parallel_size)
        _check(
            self.backend == Backend.hf or self.kind == JudgeKind.reward_model,
            f"{section}.backend",
            self.backend.value,
            "vLLM serves reward models (kind=reward_model); PairRM has no vLLM engine (use hf)",
        )
        _check(
            self.tensor_parallel_size == 1 or self.backend == Backend.vllm,
            f"{section}.tensor_parallel_size",
            self.tensor_parallel_size,
            f"splits vLLM's engine across GPUs; {section}.backend=hf runs on one (use 1, or "
            f"{section}.backend=vllm)",
        )
        _check(
            self.attention == Attention.eager or self.kind == JudgeKind.pairrm,
            f"{section}.attention",
            self.attention.value,
            "'fused' is PairRM's DeBERTa attention; a reward model has its own (use eager)",
        )
        _check(
            self.win_prob == WinProb.bt or self.kind == JudgeKind.pairrm,
            f"{section}.win_prob",
            self.win_prob.value,
            "'direct' needs PairRM's pairwise logits; a reward model gives only scores (use bt)",
        )
        _check_shard(section, self.shard, self.num_shards)
