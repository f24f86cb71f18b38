"""The candidates each prompt's responses are ranked among: the generation stage's K samples,
checked, plus (hybrid pool, WPO-HB) one external response per prompt, minus empty responses
when the config drops them.

Every per-response list of a row (`responses`, `sources`, `finish_reasons`, `num_tokens`,
`seeds`) stays aligned: an external response has source "external", finish reason
"external" and no token count or seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.core.artifacts import read_jsonl, require_encodable
from src.core.errors import StageError

POLICY, EXTERNAL = "policy", "external"
ALIGNED = ("responses", "sources", "finish_reasons", "num_tokens", "seeds")


class RankInputError(StageError):
    """The responses (or the external responses) cannot be ranked; the message says where."""


@dataclass
class Candidates:
    prompt_id: str
    prompt: str
    where: str  # file:line of the generation row, for messages
    lists: dict[str, list[Any]] = field(default_factory=dict)  # the ALIGNED lists

    @property
    def responses(self) -> list[str]:
        return self.lists["responses"]

    def keep(self, indices: list[int]) -> None:
        self.lists = {k: [v[i] for i in indices] for k, v in self.lists.items()}


def from_generation_row(where: str, row: dict[str, Any], K: int) -> Candidates:
    """Check one `responses*.jsonl` row (docs/design.md §5) and return its candidates."""
    pid = row.get("prompt_id")
    if not isinstance(pid, str) or not pid:
        raise RankInputError(f"{where}: the row has no prompt_id (a non-empty string)")
    if not isinstance(row.get("prompt"), str):
        raise RankInputError(f"{where}: prompt_id {pid!r} has no prompt text")
    responses = row.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RankInputError(f"{where}: prompt_id {pid!r}: `responses` must be a list of strings")
    if len(responses) < 2:
        raise RankInputError(
            f"{where}: prompt_id {pid!r} has {len(responses)} response(s): ranking needs at "
            "least 2 per prompt"
        )
    if len(responses) != K:
        raise RankInputError(
            f"{where}: prompt_id {pid!r} has {len(responses)} responses but method.K={K}: "
            "these responses were generated with another K (re-generate, or set method.K)"
        )
    n = len(responses)
    lists: dict[str, list[Any]] = {"responses": list(responses), "sources": [POLICY] * n}
    for key in ("finish_reasons", "num_tokens", "seeds"):
        value = row.get(key)
        lists[key] = list(value) if isinstance(value, list) and len(value) == n else [None] * n
    return Candidates(pid, row["prompt"], where, lists)


def load_external(path: str | Path) -> tuple[dict[str, str], dict[str, str], str]:
    """External responses by prompt_id and by prompt text, and the file's sha256.

    Rows: {"prompt_id": ..., "response": ...} or {"prompt": ..., "response": ...} (either key;
    `output`, AlpacaEval's name, is accepted for `response`).
    """
    path = Path(path)
    if not path.is_file():
        raise RankInputError(f"external responses file not found: {path} (data.external_responses)")
    by_id: dict[str, str] = {}
    by_prompt: dict[str, str] = {}
    example = '{"prompt_id": ..., "response": ...}'
    for where, row in read_jsonl(path, RankInputError, example):
        response = row.get("response", row.get("output"))
        if not isinstance(response, str):
            raise RankInputError(f"{where}: no `response` string (rows look like {example})")
        keys = [(by_id, row.get("prompt_id")), (by_prompt, row.get("prompt"))]
        for key, text in row.items():  # the judge tokenises them, the rows file holds them
            if isinstance(text, str):
                require_encodable(where, repr(key), text, RankInputError)
        if not any(isinstance(k, str) for _, k in keys):
            raise RankInputError(f"{where}: a row needs a `prompt_id` or a `prompt` to match on")
        for index, key in keys:
            if isinstance(key, str):
                if key in index:
                    raise RankInputError(f"{where}: a second external response for {key[:60]!r}")
                index[key] = response
    return by_id, by_prompt, hashlib.sha256(path.read_bytes()).hexdigest()


def external_response(c: Candidates, by_id: dict[str, str], by_prompt: dict[str, str]):
    """The prompt's external response, matched by prompt_id, else by prompt text; or None."""
    return by_id.get(c.prompt_id, by_prompt.get(c.prompt))


def no_external(path: str, missing: list[str], prompts: int) -> RankInputError:
    return RankInputError(
        f"{path} has no external response for {len(missing)} of {prompts} prompts "
        f"(e.g. prompt_id {', '.join(map(repr, missing[:3]))}); the hybrid pool needs one "
        "per prompt, matched by prompt_id or by the exact prompt text"
    )


def add_external(c: Candidates, response: str) -> None:
    """Append the prompt's external response to its candidates."""
    for key, value in zip(ALIGNED, (response, EXTERNAL, EXTERNAL, None, None), strict=True):
        c.lists[key].append(value)


def drop_empty(c: Candidates) -> tuple[Candidates | None, int]:
    """Leave out blank responses: (the candidates kept, or None when fewer than 2 are left;
    the responses dropped)."""
    indices = [i for i, r in enumerate(c.responses) if r.strip()]
    dropped = len(c.responses) - len(indices)
    if len(indices) < 2:
        return None, dropped
    c.keep(indices)
    return c, dropped


def check_unique(c: Candidates, seen: dict[str, str]) -> None:
    """`c`'s prompt_id is new among `seen` ({prompt_id: where}, which it joins)."""
    if c.prompt_id in seen:
        raise RankInputError(
            f"{c.where}: prompt_id {c.prompt_id!r} appears again (first at {seen[c.prompt_id]})"
        )
    seen[c.prompt_id] = c.where
