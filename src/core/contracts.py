"""The rows the stages hand each other (docs/design.md §5), as types the writers build and the
readers check against: `responses-*.jsonl` (generate), `ranked-*.jsonl` (rank), `pairs.parquet`
(pairs) and the eval stage's cached answers.

Every per-response list of a row is aligned: item k of each belongs to response k.

A row read from another stage (or from the user) is checked by its type's one check below, which
says what is wrong in words; the reader that calls it adds the file, row and prompt_id, and the
command that fixes the file where one does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict

from src.core.errors import shown


def derive_prompt_id(prompt: str) -> str:
    """A stable id from the text alone: same text -> same id, on every machine and run.

    64 bits of SHA-256: a collision among even millions of prompts is vanishingly unlikely, and
    if one happened it would be caught as "same id, different text" rather than merge prompts.
    """
    return "p" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


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


# --- the checks ---------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is no 1


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def is_probability(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1  # false for NaN; infinities are out of range


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_index(value: Any) -> bool:
    return is_integer(value) and value >= 0


def text_problem(key: str, value: Any) -> str | None:
    """What is wrong with `value` as a row's text: a blank prompt or response is nothing a
    judge or a loss can learn from, and a non-string fails deep inside the chat template."""
    if not isinstance(value, str):
        return f"{key!r} is {shown(value)}, expected a string"
    if not value.strip():
        return f"{key!r} is {'empty' if not value else 'only whitespace'}, expected text"
    try:  # a lone surrogate (JSON may escape one) fails every tokenizer and file write after
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"{key!r} holds {value[err.start]!r} at character {err.start}, a lone surrogate "
                "that UTF-8 cannot encode; replace it or remove the row")  # fmt: skip
    return None


# what a pair is made from; the rest of RankedRow is checked where a row has it
RANKED_KEYS = ("prompt_id", "prompt", "responses", "sources", "scores", "win_matrix", "win_rate")
FINITE_SCORE = "a finite score (a NaN or infinite score would make a pair of any two responses)"
# RankedRow's per-response lists: what each item must be
RANKED_ITEMS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    # blank ones too: ranker.empty_responses=keep ranks them (a pair of one is refused)
    "responses": ("a string", lambda v: isinstance(v, str)),
    "sources": ("a string", lambda v: isinstance(v, str)),
    "finish_reasons": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "num_tokens": ("a token count or null", lambda v: v is None or is_index(v)),
    "seeds": ("an integer or null", lambda v: v is None or is_integer(v)),
    "scores": (FINITE_SCORE, is_finite),
    "win_rate": ("a probability in [0, 1]", is_probability),
}
RANKED_MATRICES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "win_matrix": ("a probability in [0, 1]", is_probability),
    "comparisons": ("a finite logit", is_finite),
}


def ranked_row_problem(row: Mapping[str, Any]) -> str | None:
    """What makes `row` no `RankedRow` (stage rank's row, as stage pairs reads it), or None."""
    missing = [k for k in RANKED_KEYS if k not in row]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key in ("prompt_id", "prompt"):
        if problem := text_problem(key, row[key]):
            return problem
    responses = row["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        return f"'responses' is {shown(responses)}, expected a list of at least 2 strings"
    K = len(responses)
    for key, (expected, ok) in RANKED_ITEMS.items():
        if key not in row:
            continue
        values = row[key]
        if not isinstance(values, list) or len(values) != K:
            return f"{key!r} is {aligned(values)}, expected one item per response ({K})"
        for k, value in enumerate(values):
            if not ok(value):
                return f"{key!r}[{k}] is {shown(value)}, expected {expected}"
    for key, (expected, ok) in RANKED_MATRICES.items():
        if key not in row:
            continue
        matrix = row[key]
        if not isinstance(matrix, list) or len(matrix) != K:
            return f"{key!r} is {aligned(matrix)}, expected {K} rows of {K}, one per response"
        for i, values in enumerate(matrix):
            if not isinstance(values, list) or len(values) != K:
                return f"{key!r}[{i}] is {aligned(values)}, expected {K} items, one per response"
            for j, value in enumerate(values):
                if not ok(value):
                    return f"{key!r}[{i}][{j}] is {shown(value)}, expected {expected}"
    if "judge" in row and not isinstance(row["judge"], str):
        return f"'judge' is {shown(row['judge'])}, expected a string"
    return None


def aligned(values: Any) -> str:
    """A per-response list as a message about its length shows it."""
    return f"a list of {len(values)}" if isinstance(values, list) else shown(values)


# PairRow's columns by what each holds; text is required of every pair, the others where the
# reader needs them (a DPO file may have text alone), and checked wherever a row has them
PAIR_TEXT = ("prompt_id", "prompt", "chosen", "rejected")
PAIR_COLUMNS = tuple(PairRow.__annotations__)
PAIR_VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "chosen_probs": ("a probability in [0, 1]", is_probability),
    "chosen_probs_win": ("a probability in [0, 1]", is_probability),
    "chosen_probs_lose": ("a probability in [0, 1]", is_probability),
    "chosen_score": ("a finite number", is_finite),
    "rejected_score": ("a finite number", is_finite),
    "chosen_index": ("a response index (an integer from 0)", is_index),
    "rejected_index": ("a response index (an integer from 0)", is_index),
    "chosen_source": ("a string", lambda v: isinstance(v, str)),
    "rejected_source": ("a string", lambda v: isinstance(v, str)),
}


def pair_row_problem(
    row: Mapping[str, Any], required: Sequence[str] = PAIR_COLUMNS, needed_by: str = "a pair"
) -> str | None:
    """What makes `row` no `PairRow` a loss can train on, or None. `required`: the columns the
    reader needs besides the text (`needed_by` says who, in the message); any other column of the
    contract is checked where the row has it, a null there read as absent (a parquet file's
    column that some rows lack)."""
    missing = [c for c in dict.fromkeys((*PAIR_TEXT, *required)) if c not in row]
    if missing:
        return f"lacks column(s) {', '.join(missing)} needed by {needed_by}"
    for column in PAIR_TEXT:
        if problem := text_problem(column, row[column]):
            return problem
    for column, (expected, ok) in PAIR_VALUES.items():
        value = row.get(column)
        if column not in row or (value is None and column not in required):
            continue
        if not ok(value):
            return f"{column!r} is {shown(value)}, expected {expected}"
    return None
