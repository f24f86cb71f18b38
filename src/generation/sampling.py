"""Sampling from a policy, shared by the generate stage and the eval stage's answers: its
tokenizer, the prompts through its chat template (over-long ones skipped or truncated), then the
configured backend (HF or vLLM) drawing one sample per seed for every prompt of a shard's chunks:
vLLM as one stream over the shard, HF chunk by chunk (`sample_stream`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from src.config import Backend, GenerationConfig, HardwareConfig, LongPrompts, ModelConfig
from src.core.chunks import ChunkCounts, Progress, Shard, Todo, process_shard
from src.core.devices import device_for, gpu_computes_bf16
from src.core.errors import StageError
from src.core.policy import causal_lm, end_of_turn_ids
from src.core.progress import ProgressLine
from src.core.records import Finished


class GenerationError(StageError):
    """The stage cannot generate; the message says what and where."""


def load_tokenizer(path: str, revision: str | None):
    """(tokenizer, end-of-turn ids) of the policy at `path`: enough to render the prompts before
    any weights load."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    return tokenizer, end_of_turn_ids(path, tokenizer)


def generation_dtype(device: torch.device) -> torch.dtype:
    """The dtype both backends sample in: bf16 on a GPU that has it, else fp32 (vLLM's default
    would turn an fp32 checkpoint into bf16, and its greedy rows then differ from HF's). Asked
    without a CUDA context here: vLLM's engine starts after it."""
    if device.type == "cuda" and gpu_computes_bf16():
        return torch.bfloat16
    return torch.float32


@dataclass
class RenderedPrompt:
    prompt_id: str
    prompt: str  # the raw user text (possibly truncated), as the contract stores it
    # the chat-templated prompt, tokenised once, add_generation_prompt=True; 4 bytes a token
    # (a list of ints takes ~36): a shard's prompts are all rendered before the first chunk
    ids: array


def prompt_ids(tokenizer, text: str, history: tuple[tuple[str, str], ...] = ()) -> list[int]:
    """`text` as the policy sees it: a user turn in the chat template, after the (user,
    assistant) turns of `history`, ready for the answer."""
    turns = [
        {"role": role, "content": content}
        for pair in history
        for role, content in zip(("user", "assistant"), pair, strict=True)
    ]
    rendered = tokenizer.apply_chat_template(
        [*turns, {"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]  # the template has the BOS


@dataclass
class SampleCounts(ChunkCounts):
    """What every stage that samples from a policy counts: the prompts `render` left out or
    cut, and the tokens drawn (the progress line's unit)."""

    skipped_too_long: int = 0
    truncated: int = 0
    tokens: int = 0

    unit = "tokens"

    @property
    def work(self) -> float:
        return self.tokens

    def sampled(self, load) -> None:
        """The sampler's load once every chunk is drawn (its decoding steps), for the record of
        a stage that keeps it."""


def render(g: GenerationConfig, tokenizer, prompts, counts: SampleCounts) -> list[RenderedPrompt]:
    """The prompts through the chat template, over-long ones skipped or truncated as `g` says
    (`counts.skipped_too_long` / `counts.truncated` count them)."""
    limit = g.max_prompt_length
    out = []
    for p in prompts:
        ids = prompt_ids(tokenizer, p.prompt, p.history)
        text = p.prompt
        if len(ids) > limit:
            if g.long_prompts == LongPrompts.skip or p.history:  # a conversation is not cut
                counts.skipped_too_long += 1
                continue
            # keep the end of the user's text (the question), re-rendered inside the template
            room = limit - len(prompt_ids(tokenizer, ""))
            if room <= 0:
                raise GenerationError(
                    f"generation.max_prompt_length={limit} leaves no room for any text after the chat template"
                )
            body = tokenizer(text, add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(body[-room:], skip_special_tokens=True)
            ids = prompt_ids(tokenizer, text)
            while len(ids) > limit and text:  # re-tokenisation can merge differently: trim again
                text = text[1:]
                ids = prompt_ids(tokenizer, text)
            counts.truncated += 1
        out.append(RenderedPrompt(p.prompt_id, text, array("i", ids)))
    return out


def rendered_prompts(
    g: GenerationConfig,
    path: str,
    revision: str | None,
    prompts,
    counts: SampleCounts,
    whole,
    source: str,
    section: str = "generation",
):
    """(tokenizer, end-of-turn ids, `prompts` rendered by `render`) for the policy at `path`;
    where `render` kept none, `whole` (the split the prompts are a shard of, read from `source`)
    is checked to hold one that fits."""
    tokenizer, eos_ids = load_tokenizer(path, revision)
    rendered = render(g, tokenizer, prompts, counts)
    if not rendered:  # over the whole split: a shard may be empty while others have prompts
        require_one_fits(g, tokenizer, whole, source, section)
    return tokenizer, eos_ids, rendered


def require_one_fits(
    g: GenerationConfig, tokenizer, prompts, source: str, section: str = "generation"
) -> None:
    """Refuse `prompts` of which `render` keeps none: a stage that went on would finish with
    no rows, and the stage after it blame something else (tied scores). Called for the whole
    split when a shard's `render` kept nothing, it stops at the first prompt that fits: a shard
    left empty while others have prompts (more shards than prompts) goes on. `section`: where
    `g`'s lengths are set, for the message."""
    limit = g.max_prompt_length
    if g.long_prompts == LongPrompts.truncate:
        return  # truncation keeps every prompt, or `render` has refused the limit already
    lengths = []
    for p in prompts:
        lengths.append(len(prompt_ids(tokenizer, p.prompt, p.history)))
        if lengths[-1] <= limit:
            return
    # eval answers an instruction whole or not at all; truncation needs room beside the template
    truncate = section == "generation" and limit > len(prompt_ids(tokenizer, ""))
    shortest = min(lengths)
    raise GenerationError(
        f"all {len(lengths)} prompts read from {source} are longer than "
        f"{section}.max_prompt_length={limit} tokens in the chat template (the shortest takes "
        f"{shortest}), so all are skipped and none is left to answer; raise "
        f"{section}.max_prompt_length to {shortest} or more"
        + (f", or set {section}.long_prompts=truncate to keep their end" if truncate else ""),
        f"{section}.long_prompts=truncate" if truncate else None,
    )


VLLM_LOG = "vllm.log"  # vLLM's own output, in the folder of the chunks it makes


def open_generator(
    g: GenerationConfig,
    path: str,
    tokenizer,
    eos_ids: list[int],
    model: ModelConfig,
    hardware: HardwareConfig,
    log: Path | None = None,
    section: str = "generation",
):
    """The sampler of `g`'s backend for the policy at `path` (loaded with `model`'s settings, on
    `hardware`'s device); `close()` it when done (vLLM's engine runs in processes of its own,
    whose output goes to `log`). `section`: where `g`'s lengths are set, for messages."""
    device = device_for(hardware.device, hardware.name)
    dtype = generation_dtype(device)
    if g.backend == Backend.vllm:
        from src.generation.vllm_backend import VLLMGenerator
        from src.generation.vllm_engine import engine_args, engine_env, refuse_unworkable

        refuse_unworkable(g, path, device, dtype, section)
        return VLLMGenerator(
            engine_args(g, path, device, dtype, model.revision, model.trust_remote_code),
            tokenizer,
            env=engine_env(device),
            eos_ids=eos_ids,
            temperature=g.temperature,
            top_p=g.top_p,
            max_new_tokens=g.max_new_tokens,
            in_flight=g.in_flight,
            log=log,
        )
    from src.generation.hf_backend import HFGenerator

    policy = causal_lm(path, dtype, **model.loading)
    policy.to(device).eval()
    return HFGenerator(
        policy,
        tokenizer,
        eos_ids=eos_ids,
        temperature=g.temperature,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens,
        batch_size=g.batch_size,
    )


def sample_shard(
    open_sampler: Callable[[], object],
    shard: Shard,
    rendered: list[RenderedPrompt],
    seeds: list[int],
    row: Callable[[RenderedPrompt, list], dict],
    counts: SampleCounts,
    chunk_size: int,
    fingerprint: str,
    identity: str,
    label: str,
    items: str = "prompts",
    shared_keys: Sequence[str] = (),
) -> Finished | None:
    """One sample per seed for every rendered prompt of `shard`, each prompt's row made by
    `row(prompt, its samples)`, written chunk by chunk and the shard finished
    (`src.core.chunks.process_shard`: the stage's record once every shard is complete, else
    None), under a progress line that counts `items`. The sampler
    (`open_sampler()`: vLLM's engine processes, or HF's model) is opened here and closed after,
    whatever happens."""
    progress = ProgressLine(f"[{label}] {shard.name}", len(rendered), counts.unit, items)
    with closing(open_sampler()) as generator:

        def rows(todo: Todo[RenderedPrompt], progress: Progress):
            for c, chunk, samples in sample_stream(generator, todo, seeds, progress):
                yield c, [row(p, drawn) for p, drawn in zip(chunk, samples, strict=True)]
            counts.sampled(generator.load)

        return process_shard(
            shard, rendered, chunk_size, rows, counts, fingerprint, identity,
            label=label, progress=progress, shared_keys=shared_keys,
        )  # fmt: skip


def sample_stream(
    generator, todo: Todo[RenderedPrompt], seeds: list[int], progress: Progress
) -> Iterator[tuple[int, list[RenderedPrompt], list[list]]]:
    """(chunk index, its prompts, their samples: one per seed) for every chunk of `todo`, each
    as soon as the last of its samples is drawn.

    vLLM: one stream over the whole todo, the engine kept full across chunks (a chunk's file is
    the unit of resume, not of batching), chunks ending in any order. HF: chunk after chunk
    (`sample_chunk`): `generate` cannot take a new prompt into a running batch."""
    load, streams = generator.load, hasattr(generator, "stream")

    def show() -> None:  # HF has nothing in flight between its calls
        in_flight = load.in_flight if streams else None
        progress.update(done=load.prompts, work=load.tokens, in_flight=in_flight)

    if not streams:
        for c, chunk in todo:
            yield c, chunk, sample_chunk(generator, chunk, seeds, show)
        return
    open_chunks: dict[int, tuple[list[RenderedPrompt], list[list | None]]] = {}

    def requests():
        for c, chunk in todo:
            open_chunks[c] = (chunk, [None] * len(chunk))
            for i, p in enumerate(chunk):
                yield (c, i), (p.ids, p.prompt_id)

    for (c, i), samples in generator.stream(requests(), seeds, on_step=show):
        chunk, drawn = open_chunks[c]
        drawn[i] = samples
        if all(d is not None for d in drawn):
            del open_chunks[c]
            yield c, chunk, drawn


def sample_chunk(generator, chunk: list[RenderedPrompt], seeds: list[int], after_batch=None):
    """One sample per seed for every prompt: length-sorted batches of the generator's
    `batch_size` (little padding; None: the whole chunk at once), the samples back in the
    chunk's order. `after_batch()` runs after each batch (progress)."""
    order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].ids))
    batch_size = generator.batch_size or len(chunk)
    results: dict[int, list] = {}
    for start in range(0, len(order), batch_size):
        batch = [chunk[i] for i in order[start : start + batch_size]]
        samples = generator([list(p.ids) for p in batch], [p.prompt_id for p in batch], seeds)
        for i, s in zip(order[start : start + batch_size], samples, strict=True):
            results[i] = s
        if after_batch is not None:
            after_batch()
    return [results[i] for i in range(len(chunk))]
