"""`ranker`: the judge that scores the K responses (conf/ranker/); the eval's judge
(`eval.judge`) is one too."""

from __future__ import annotations

from dataclasses import dataclass

from src.config.checks import _check, _check_shard, _positive
from src.config.choices import (
    Attention,
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
    # comparisons (PairRM) or sequences (reward model) per forward, at most: on a CPU PairRM's
    # forwards also stop at CPU_SCORES_BYTES of attention scores (src/ranking/pairrm.py); its
    # packed forwards (attention=fused on a GPU) at the tokens of as many at the length limits
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
