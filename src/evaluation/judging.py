"""What the benchmarks judged by a chat model (MT-Bench, Arena-Hard) share: what they send to
their judge, and how they read their JSON-lines files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import read_jsonl
from src.evaluation.errors import EvalError


@dataclass(frozen=True)
class JudgeRequest:
    """One call to a chat judge: what it is sent and what identifies its answer in the cache."""

    key: str  # e.g. "mt_bench/81/turn1/single-v1"
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: "system" / "user"
    temperature: float = 0.0
    max_tokens: int = 2048


def json_rows(path: Path, example: str) -> Iterator[tuple[str, dict]]:
    """(where, row) for each non-blank line of a benchmark's JSON-lines file, `where` its
    "file.jsonl:7" for messages (src.core.artifacts.read_jsonl). Lines end at newlines only,
    never at U+2028 and the like, which a JSON string may hold and str.splitlines would split
    at. A missing file, text that is not UTF-8, a line that is not JSON or not an object (shown
    `example`, the row expected) is an EvalError of one line naming the file (and line)."""
    try:
        yield from read_jsonl(path, EvalError, example)
    except FileNotFoundError:
        raise EvalError(f"{path} does not exist") from None
