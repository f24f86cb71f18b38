"""One model's answers to the evaluation instructions: generated once, cached, resumable.

The base model's answers are the reference of every iteration of every lineage of that model,
and iteration s's answers are the reference when a later iteration is compared with it; so
answers live outside the iteration directories, in a cache keyed by what they depend on:

    <paths.root>/eval_answers/<model.name>/<identity[:16]>/
        shard000-of-001/{identity.txt, chunkCCCCC.jsonl}   chunks, each written atomically
        answers-shard000-of-001.jsonl                      every answer, once all are made
        done.json                                          written last

The identity covers the model (a local model's files by content, wherever its folder lies; a hub
model's id and revision: `weights_signature`), the instructions and the decoding settings, so a
retrained checkpoint or another eval set never reuses stale answers, two runs needing the same
answers share them (chunk writes are atomic: two writers of one chunk write the same thing), and
a clone renamed, or a runs root copied to another clone, reuses its answers.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from src.config import Config, LongPrompts
from src.core import locks
from src.core.chunks import Shard, claim
from src.core.contracts import AnswerRow
from src.core.errors import StageError
from src.core.layout import RECORD
from src.core.records import read_record, write_record
from src.core.rows import finished_rows
from src.evaluation.errors import EvalError
from src.generation.prompts import Prompt
from src.generation.sampling import (
    VLLM_LOG,
    RenderedPrompt,
    SampleCounts,
    open_generator,
    rendered_prompts,
    sample_shard,
)


@dataclass(frozen=True)
class Answerer:
    """A model that answers: where its weights are and what identifies them."""

    label: str  # the `generator` name in AlpacaEval exports
    path: str
    weights: str  # what identifies its model: `weights_signature`


@dataclass
class AnswerCounts(SampleCounts):
    answered: int = 0

    def add(self, rows: list[AnswerRow]) -> None:
        self.answered += len(rows)
        self.tokens += sum(r["num_tokens"] for r in rows)


def eval_generation(cfg: Config):
    """The generation settings of the eval stage: the configured backend, eval's decoding."""
    e = cfg.eval
    return replace(
        cfg.generation,
        backend=cfg.eval_backend,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=e.max_new_tokens,
        max_prompt_length=e.max_prompt_length,
        long_prompts=LongPrompts.skip,  # an evaluation prompt is answered whole or not at all
        batch_size=e.batch_size,
        chunk_size=e.chunk_size,
    )


def identity(cfg: Config, who: Answerer, instructions: list[Prompt]) -> str:
    g = eval_generation(cfg)
    payload = {
        "weights": who.weights,
        "instructions": hashlib.sha256(
            json.dumps(
                [[p.prompt, p.history] if p.history else p.prompt for p in instructions]
            ).encode()
        ).hexdigest(),
        "decoding": [g.backend.value, g.temperature, g.top_p, g.max_new_tokens, cfg.eval.seed],
        "prompt_limit": g.max_prompt_length,
        "chunk_size": g.chunk_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_dir(cfg: Config, key: str) -> Path:
    return Path(cfg.paths.root) / "eval_answers" / cfg.model.name / key[:16]


def answers(cfg: Config, who: Answerer, instructions: list[Prompt]) -> dict[str, AnswerRow]:
    """prompt_id -> its answer for every instruction the model answered (an over-long one is left out, and said so)."""
    key = identity(cfg, who, instructions)
    where = cache_dir(cfg, key)
    shard = Shard(where, "answers", 0, 1)
    # runs share the cache (a sweep's runs all answer with the base model): one makes the
    # answers, the others wait for it and reuse them
    with locks.writing(where, wait=True):
        if cached_record(where, key):
            print(f"[eval] answers of {who.label}: reused from {where}", file=sys.stderr)
        else:
            generate(cfg, who, instructions, shard, key)
    rows = finished_rows(where, "answers", EvalError, finish=None)
    return {row["prompt_id"]: row for _, row in rows}


def cached_record(where: Path, key: str) -> bool:
    """Whether the cache at `where` holds a finished record of answers made under `key`; a
    record that is damaged is said, and the answers made again."""
    try:
        record = read_record(where)
    except StageError:
        print(f"[eval] {where / RECORD} is damaged: making the answers again", file=sys.stderr)
        (where / RECORD).unlink()
        return False
    return record is not None and record.get("key") == key


def generate(cfg: Config, who: Answerer, instructions: list[Prompt], shard: Shard, key: str):
    g = eval_generation(cfg)
    counts = AnswerCounts()
    claim(shard.work, key, EvalError, "answers of another model or decoding")
    print(f"[eval] answers of {who.label} ({who.path}) -> {shard.stage_dir}", file=sys.stderr)
    tokenizer, eos_ids, rendered = rendered_prompts(
        g, who.path, cfg.model.revision, instructions, counts,
        instructions, cfg.data.eval_prompts, section="eval",
    )  # fmt: skip
    if counts.skipped_too_long:
        print(
            f"[eval] {counts.skipped_too_long} instruction(s) longer than "
            f"eval.max_prompt_length={g.max_prompt_length} tokens are left out for {who.label}",
            file=sys.stderr,
        )
    log = shard.work / VLLM_LOG

    def row(p: RenderedPrompt, drawn: list) -> AnswerRow:
        (sample,) = drawn
        return AnswerRow(
            prompt_id=p.prompt_id,
            instruction=p.prompt,
            output=sample.text,
            finish_reason=sample.finish_reason,
            num_tokens=sample.num_tokens,
        )

    def sampler():
        return open_generator(
            g, who.path, tokenizer, eos_ids, cfg.model, cfg.hardware, log=log, section="eval"
        )

    finished = sample_shard(
        sampler, shard, rendered, [cfg.eval.seed], row, counts, g.chunk_size, key, key,
        label=f"eval {who.label}", items="instructions",
    )  # fmt: skip
    locks.require_held()
    write_record(shard.stage_dir, finished)  # its one shard complete: the record, last
