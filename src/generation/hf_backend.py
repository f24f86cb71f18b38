"""Hugging Face generation: K samples per prompt from one shared prefill, each sample seeded.

Two things `generate(num_return_sequences=K)` does not give:

- **Shared prefill.** It repeats every prompt K times *before* the prefill, so the prompt is
  encoded K times. Here a batch of prompts is prefilled once and its KV cache repeated K times;
  `generate` then only decodes.
- **Per-sample seeds.** It samples every row from one global RNG, so a response depends on which
  other prompts shared its batch. Here row (prompt, k) draws from its own noise stream, keyed by
  the recipe's seed for sample k (50·k in the SPPO reference) and the prompt_id: the same config
  gives the same responses whatever the batch size, shard or resume point.

`SeededSampler` does temperature and top-p itself (transformers applies its own warpers after
custom processors) and leaves only the drawn token with a finite score, so `generate`, run in
greedy mode, just takes the token chosen by the Gumbel-max draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor


def sample_seed(base_seed: int, prompt_id: str) -> int:
    """The generator seed of one (prompt, sample): stable across runs, machines and batches."""
    digest = hashlib.sha256(f"{base_seed}|{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x >> n) & ((1 << (64 - n)) - 1)  # logical shift on int64


def counter_uniform(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """U(0, 1) noise [rows, vocab], a pure function of (row key, step, token): SplitMix64.

    A counter-based generator: one vectorised kernel for every row, where a torch.Generator per
    row would cost one launch per row per decoding step, and still a stream of its own per row.
    int64 products wrap modulo 2^64, which is what SplitMix64 needs.
    """
    counter = step * vocab + torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = keys[:, None] + (counter[None, :] + 1) * _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    x = x ^ _shift_right(x, 31)
    # the top 23 bits: (bits + 1/2) / 2^23 lies in [2^-24, 1 - 2^-24], all exact in float32, so
    # never 0 or 1 (with 24 bits the largest value would round to 1.0 and its Gumbel to +inf)
    bits = _shift_right(x, 41)
    return (bits.float() + 0.5) / float(1 << 23)


class SeededSampler(LogitsProcessor):
    """Temperature, nucleus (top-p) filtering, then a Gumbel-max draw with a noise stream per row."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.keys = torch.tensor(seeds, dtype=torch.int64, device=device)
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z = scores.float()
        if self.temperature == 0:  # greedy
            choice = z.argmax(dim=-1)
        else:
            z = z / self.temperature
            if self.top_p < 1.0:
                z = self._nucleus(z)
            # Gumbel-max: argmax(z + G) is a sample of softmax(z); each row uses its own stream
            noise = counter_uniform(self.keys, self.step, z.shape[-1])
            choice = (z - torch.log(-torch.log(noise))).argmax(dim=-1)
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out

    def _nucleus(self, z: torch.Tensor) -> torch.Tensor:
        """Keep the smallest set of tokens whose probability reaches top_p (at least one)."""
        sorted_z, order = z.sort(dim=-1, descending=True)
        cumulative = sorted_z.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_z.softmax(dim=-1) >= self.top_p  # mass before the token
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        return z.masked_fill(drop, float("-inf"))


class ForcedLength(LogitsProcessor):
    """Row i ends at exactly lengths[i] tokens: its end-of-turn ids barred before, forced then
    (the benchmarks' fixed work per sample; runs before the sampler draws)."""

    def __init__(self, lengths: list[int], eos_ids: list[int], device: torch.device):
        self.last = torch.tensor(lengths, device=device)[:, None] - 1
        self.eos = torch.tensor(eos_ids, device=device)
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ending = self.last == self.step  # [rows, 1]
        barred = torch.zeros_like(scores, dtype=torch.bool)
        barred[:, self.eos] = True  # before its end a row may not stop; at it, only stop
        self.step += 1
        return scores.masked_fill(torch.where(ending, ~barred, barred), float("-inf"))


@dataclass
class EngineLoad:
    """What a sampler's decoding loop has done, summed over its calls: how full its batches ran.

    A step is one token for every sequence in the batch; a sequence counts in a step while it
    is still being generated. HF's `generate` steps a batch until its longest sample ends, its
    finished rows idle meanwhile; vLLM refills a finished sequence's slot."""

    steps: int = 0  # decoding steps that made a token
    sequences: int = 0  # over those steps, the sequences that made one: mean fill = this / steps
    tokens: int = 0  # tokens made
    prompts: int = 0  # prompts whose every sample has ended
    in_flight: int = 0  # samples handed to vLLM's engine and not ended (HF: 0 between calls)
    most_in_flight: int = 0  # the most samples at once: vLLM's handed over, HF's rows a call
    # the sequences of every step, in order, where a list is given (the benchmarks' fill over
    # time; vLLM only)
    trace: list[int] | None = None


@dataclass
class Sample:
    text: str
    finish_reason: str  # "stop": an end-of-turn token was generated; "length": max_new_tokens
    num_tokens: int  # generated tokens, the end-of-turn token included


def decode_sample(tokens: list[int], eos_ids: list[int], tokenizer) -> Sample:
    """A sample from its generated token ids, as both backends report it: the text up to the
    first end-of-turn token, special tokens dropped."""
    end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    body = tokens if end is None else tokens[:end]
    text = tokenizer.decode(body, skip_special_tokens=True)
    if end is None:
        return Sample(text, "length", len(tokens))
    return Sample(text, "stop", end + 1)


class HFGenerator:
    """K seeded samples for a batch of rendered prompts, on one model; `batch_size`: the prompts
    per call that `sampling.sample_chunk` gives it."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        eos_ids: list[int],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        batch_size: int | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_ids
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.batch_size = batch_size
        # each sample's length forced, from its prompt_id and base seed (the benchmarks: both
        # backends do the same work); None: samples end where the policy ends them
        self.forced_length: Callable[[str, int], int] | None = None
        self.load = EngineLoad()
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else eos_ids[0]

    @torch.no_grad()
    def __call__(
        self, prompt_ids: list[list[int]], prompt_keys: list[str], base_seeds: list[int]
    ) -> list[list[Sample]]:
        """prompt_ids: tokenised rendered prompts; prompt_keys: their prompt_ids (seed material)."""
        k = len(base_seeds)
        device = self.model.device
        width = max(map(len, prompt_ids))
        ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):  # left padding: every prompt ends where decoding starts
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)

        # Prefill all but the last prompt token once; generate() feeds the last one and decodes.
        # Only the cache is wanted: one logit row per prompt, not [prompts, width, vocabulary].
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
        cache.batch_repeat_interleave(k)

        seeds = [
            sample_seed(s, key) for key in prompt_keys for s in base_seeds
        ]  # row = (prompt, k)
        processors = [SeededSampler(seeds, self.temperature, self.top_p, device)]
        max_new_tokens = self.max_new_tokens
        if self.forced_length is not None:
            lengths = [self.forced_length(key, s) for key in prompt_keys for s in base_seeds]
            processors.insert(0, ForcedLength(lengths, self.eos_ids, device))
            max_new_tokens = max(lengths)
        config = GenerationConfig(
            # Our processor has already drawn the token and left it the only finite score, so
            # generate's greedy pick is that draw, without a softmax and multinomial over the
            # vocabulary (and without its own temperature / top-p warpers).
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        out = self.model.generate(
            input_ids=ids.repeat_interleave(k, 0),
            attention_mask=mask.repeat_interleave(k, 0),
            past_key_values=cache,
            generation_config=config,
            logits_processor=processors,
        )
        new = out[:, width:].tolist()
        samples = [self._sample(tokens) for tokens in new]
        made = [s.num_tokens for s in samples]
        self.load.steps += max(made)
        self.load.sequences += sum(made)
        self.load.tokens += sum(made)
        self.load.prompts += len(prompt_ids)
        self.load.most_in_flight = max(self.load.most_in_flight, len(samples))
        return [samples[i * k : (i + 1) * k] for i in range(len(prompt_ids))]

    def _sample(self, tokens: list[int]) -> Sample:
        return decode_sample(tokens, self.eos_ids, self.tokenizer)

    def close(self) -> None:
        """Let the model go (the stage's memory returns with it)."""
        self.model = None
