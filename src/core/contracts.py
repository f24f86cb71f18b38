"""The rows the stages hand each other (docs/design.md §5), as types the writers build and the
readers check against: `responses-*.jsonl` (generate), `ranked-*.jsonl` (rank), `pairs.parquet`
(pairs) and the eval stage's cached answers.

Every per-response list of a row is aligned: item k of each belongs to response k.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class ResponseRow(TypedDict):
    """K samples of pi_{t-1} for one prompt (stage `generate`)."""

    prompt_id: str
    prompt: str  # the user's text (possibly truncated), without the chat template
    responses: list[str]
    finish_reasons: list[str]  # "stop" (end of turn) or "length" (max_new_tokens)
    num_tokens: list[int]
    seeds: list[int]  # sample k's seed, for the K-th response re-drawn alone


class RankedRow(TypedDict):
    """A prompt's candidates as the judge scored them (stage `rank`); external responses of the
    hybrid pool have source "external", finish reason "external", no token count or seed."""

    prompt_id: str
    prompt: str
    responses: list[str]
    sources: list[str]  # "policy" | "external"
    finish_reasons: list[str | None]
    num_tokens: list[int | None]
    seeds: list[int | None]
    scores: list[float]  # s_k: mean PairRM logit against the others, or the reward
    win_matrix: list[list[float]]  # P[i][j] = P(y_i beats y_j)
    win_rate: list[float]  # p_k, the row mean of P (docs/design.md §6.1)
    judge: str  # ranker.name
    comparisons: NotRequired[list[list[float]]]  # PairRM's raw logits C[i][j]


class PairRow(TypedDict):
    """One (chosen, rejected) pair of a prompt (stage `pairs`), the training set's row."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_probs: float  # P(chosen beats rejected)
    chosen_probs_win: float  # p_w, the SPPO target of the chosen response
    chosen_probs_lose: float  # p_l
    chosen_score: float
    rejected_score: float
    chosen_index: int
    rejected_index: int
    chosen_source: str
    rejected_source: str


class AnswerRow(TypedDict):
    """One model's answer to one evaluation instruction (the eval stage's answer cache)."""

    prompt_id: str
    instruction: str
    output: str
    finish_reason: str
    num_tokens: int
