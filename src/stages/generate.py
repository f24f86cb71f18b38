"""Stage `generate`: K responses to every prompt of the iteration's split, sampled from pi_{t-1}.

    python -m src.main stage=generate model=tiny-gemma2 iter=1
    python -m src.main stage=generate generation.shard=3 generation.num_shards=8

setup (this shard's prompts, rendered with the chat template and length-checked; the policy's
sampler, HF or vLLM) -> run (vLLM: one stream over the shard; HF: chunk after chunk; each chunk
of prompts written atomically the moment its last sample is drawn; a re-run skips finished
chunks, so a run killed at any point and re-run ends with every prompt exactly once) -> cleanup
(the sampler closed, vLLM's engine with it; the shard's `responses-shardSSS-of-NNN.jsonl`; once
every shard is there, the stage's record, which the scheduler writes last as `done.json`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from src.config import Backend, Config, Device, Stage
from src.core.chunks import claim, take_shard
from src.core.contracts import ResponseRow
from src.core.identity import chunk_identity, stage_key
from src.core.memory import Peak
from src.generation.prompts import load_prompts
from src.generation.sampling import (
    VLLM_LOG,
    GenerationError,
    RenderedPrompt,
    SampleCounts,
    open_generator,
    rendered_prompts,
    sample_shard,
)
from src.plan.stages import peak_line
from src.stages import StageResult
from src.stages.common import require_previous_policy, stage_shard


@dataclass
class Counts(SampleCounts):
    prompts_in_split: int = 0
    prompts_in_shard: int = 0
    duplicates_dropped: int = 0
    generated: int = 0
    # the sampler's decoding steps in this run, and the sequences they held summed over them:
    # their ratio is how full the batch ran (vLLM's engine, or HF's batches of prompts x K)
    decoding_steps: int = 0
    step_sequences: int = 0

    def add(self, rows: list[ResponseRow]) -> None:
        self.generated += len(rows)
        self.tokens += sum(sum(r["num_tokens"]) for r in rows)

    def sampled(self, load) -> None:
        self.decoding_steps, self.step_sequences = load.steps, load.sequences


def run(cfg: Config) -> StageResult:
    g, d = cfg.generation, cfg.data
    shard = stage_shard(cfg, Stage.generate)
    counts = Counts()

    # setup
    prompt_set = load_prompts(
        d.prompts,
        split=d.split,
        prompt_column=d.prompt_column,
        id_column=d.id_column,
        max_prompts=d.max_prompts,
    )
    mine = take_shard(prompt_set.prompts, shard.index, shard.count)
    counts.prompts_in_split, counts.prompts_in_shard = len(prompt_set.prompts), len(mine)
    counts.duplicates_dropped = prompt_set.duplicates_dropped
    read = {"data.prompts": prompt_set.bytes_read} if prompt_set.bytes_read is not None else None
    identity = chunk_identity(cfg.as_tree(), Stage.generate, read)
    claim(
        shard.work,
        identity,
        GenerationError,
        "responses generated with a different configuration (policy, prompts, sampling or K)",
    )
    path = require_previous_policy(cfg)
    tokenizer, eos_ids, rendered = rendered_prompts(
        g, path, cfg.model.revision, mine, counts, prompt_set, d.prompts
    )
    say_left_out(cfg, counts)
    # HF's model is in this process (vLLM's engine is another: its memory is not measured here)
    peak = Peak(cfg.hardware.device == Device.cuda) if g.backend == Backend.hf else None
    seeds = cfg.sample_seeds

    def row(p: RenderedPrompt, drawn: list) -> ResponseRow:
        return ResponseRow(
            prompt_id=p.prompt_id,
            prompt=p.prompt,
            responses=[s.text for s in drawn],
            finish_reasons=[s.finish_reason for s in drawn],
            num_tokens=[s.num_tokens for s in drawn],
            seeds=seeds,
        )

    # run, then cleanup: the sampler (vLLM's engine processes), the shard's file, the stage's
    # record once all shards are there
    finished = sample_shard(
        lambda: open_generator(
            g, path, tokenizer, eos_ids, cfg.model, cfg.hardware, log=shard.work / VLLM_LOG
        ),
        shard,
        rendered,
        seeds,
        row,
        counts,
        g.chunk_size,
        stage_key(cfg.as_tree(), Stage.generate, read=read),
        identity,
        label="generate",
        shared_keys=("prompts_in_split", "duplicates_dropped"),
    )
    measured = peak.bytes() if peak is not None else None
    if measured is not None:
        print(peak_line(cfg, Stage.generate, measured), file=sys.stderr, flush=True)
    return StageResult(asdict(counts), finished)


def say_left_out(cfg: Config, counts: Counts) -> None:
    """What of the prompt file this shard does not answer as written, on the console (done.json
    keeps the counts)."""
    limit = f"generation.max_prompt_length={cfg.generation.max_prompt_length} tokens"
    for count, what in (
        (counts.duplicates_dropped, f"rows of {cfg.data.prompts} repeat an earlier row: dropped"),
        (
            counts.skipped_too_long,
            f"prompts are longer than {limit}: skipped (generation.long_prompts=truncate keeps "
            "their end)",
        ),
        (counts.truncated, f"prompts are longer than {limit}: their beginning cut"),
    ):
        if count:
            print(f"[generate] {count} {what}", file=sys.stderr)
