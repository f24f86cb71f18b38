"""Sampling from a policy, shared by the generate stage and the eval stage's answers: load the
policy, render prompts through its chat template (over-long ones skipped or truncated), and
draw one sample per seed for a chunk of prompts with the configured backend (HF or vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.config import Backend, Config, GenerationConfig, LongPrompts
from src.core.devices import device_for
from src.core.errors import StageError
from src.core.policy import causal_lm, end_of_turn_ids


class GenerationError(StageError):
    """The stage cannot generate; the message says what and where."""


def load_model(cfg: Config, path: str):
    """(model, tokenizer, end-of-turn ids) of the policy at `path`; with vLLM, no model: it
    loads the weights itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision)
    if cfg.generation.backend == Backend.vllm:
        model = None  # vLLM loads the weights itself
    else:
        device = device_for(cfg)
        dtype = (
            torch.bfloat16
            if device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float32
        )
        model = causal_lm(cfg, path, dtype)
        model.to(device).eval()
    return model, tokenizer, end_of_turn_ids(path, tokenizer)


@dataclass
class RenderedPrompt:
    prompt_id: str
    prompt: str  # the raw user text (possibly truncated), as the contract stores it
    ids: list[int]  # the chat-templated prompt, tokenised once, add_generation_prompt=True


def render(g: GenerationConfig, tokenizer, prompts, counts) -> list[RenderedPrompt]:
    """The prompts through the chat template, over-long ones skipped or truncated as `g` says
    (`counts.skipped_too_long` / `counts.truncated` count them)."""
    limit = g.max_prompt_length

    def ids_of(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(rendered, add_special_tokens=False)[
            "input_ids"
        ]  # the template has the BOS

    out = []
    for p in prompts:
        ids = ids_of(p.prompt)
        text = p.prompt
        if len(ids) > limit:
            if g.long_prompts == LongPrompts.skip:
                counts.skipped_too_long += 1
                continue
            # keep the end of the user's text (the question), re-rendered inside the template
            room = limit - len(ids_of(""))
            if room <= 0:
                raise GenerationError(
                    f"generation.max_prompt_length={limit} leaves no room for any text after the chat template"
                )
            body = tokenizer(text, add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(body[-room:], skip_special_tokens=True)
            ids = ids_of(text)
            while len(ids) > limit and text:  # re-tokenisation can merge differently: trim again
                text = text[1:]
                ids = ids_of(text)
            counts.truncated += 1
        out.append(RenderedPrompt(p.prompt_id, text, ids))
    return out


def make_generator(
    cfg: Config, g: GenerationConfig, path: str, model, tokenizer, eos_ids: list[int]
):
    """The sampler of `g`'s backend for the policy at `path` (`model` from `load_model`)."""
    if g.backend == Backend.vllm:
        from src.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(g, path, cfg.model.trust_remote_code, eos_ids)
    from src.generation.hf_backend import HFGenerator

    return HFGenerator(
        model,
        tokenizer,
        eos_ids=eos_ids,
        temperature=g.temperature,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens,
    )


def sample_chunk(generator, chunk: list[RenderedPrompt], seeds: list[int], batch_size: int):
    """One sample per seed for every prompt: length-sorted batches (little padding), the
    samples back in the chunk's order."""
    order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].ids))
    results: dict[int, list] = {}
    for start in range(0, len(order), batch_size):
        batch = [chunk[i] for i in order[start : start + batch_size]]
        samples = generator([p.ids for p in batch], [p.prompt_id for p in batch], seeds)
        for i, s in zip(order[start : start + batch_size], samples, strict=True):
            results[i] = s
    return [results[i] for i in range(len(chunk))]
