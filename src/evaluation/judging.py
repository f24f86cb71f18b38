"""What the benchmarks judged by a chat model (MT-Bench, Arena-Hard) send to their judge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeRequest:
    """One call to a chat judge: what it is sent and what identifies its answer in the cache."""

    key: str  # e.g. "mt_bench/81/turn1/single-v1"
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: "system" / "user"
    temperature: float = 0.0
    max_tokens: int = 2048
