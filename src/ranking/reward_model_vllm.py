"""A reward-model judge served by vLLM (`ranker.backend=vllm`): the hf judge's conversations
(src/ranking/reward_model.py: the model's chat template, the same truncation) scored by vLLM's
pooling engine, one engine per shard, every (prompt, response) of a chunk handed to it at once;
the K responses of a prompt share its tokens' prefill (prefix caching). The engine is started,
stepped, watched and shut down as the generate stage's is (src/generation/vllm_client.py): a
start that fails, or an engine that dies or stops answering, is one line naming its log (the
`vllm.log` beside the shard's chunks), and no chunk is half-written.

The scores are transformers' own, to float rounding, by construction:

- the token scored: transformers' *ForSequenceClassification reads the last token of a row that
  is not the pad token (`pooled_pad_id`), vLLM's pooler the last token it is given. So each
  conversation goes to vLLM cut after the token transformers reads (`scored_tokens`): where the
  model's pad token is its own (real reward models ship one, as tiny-rm32 does), nothing is cut,
  and both read the end of turn the chat template closes the response with; where it is the EOS
  (a model that names none, padded with its EOS), a conversation's closing EOS is cut, and both
  read the token before it. Attention is causal, so the token read sees the same tokens either way.
- the head's activation: vLLM's classify applies the head's (a sigmoid for one label) unless
  asked not to; `PoolingParams(use_activation=False)` gives the raw reward, transformers' logit.
- the dtype: the hf judge's (bf16 on a GPU, fp32 elsewhere).

vLLM serves a model whose architecture is a *ForSequenceClassification with one label; remote
code that returns its own `score` (ArmoRM) runs with ranker.backend=hf only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from src.config import ConfigError, GenerationConfig, RankerConfig
from src.generation.vllm_client import EngineClient
from src.generation.vllm_engine import Extent, engine_args, engine_env, refuse_unworkable
from src.ranking.reward_model import (
    RewardModelError,
    conversation_ids,
    flattened,
    judge_dtype,
    load_reward_tokenizer,
    loading,
    pooled_pad_id,
)


def scored_tokens(ids: list[int], pad_id: int) -> list[int]:
    """`ids` up to the token transformers' classifier scores: its last that is not `pad_id`
    (the first token where every one is)."""
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


class VLLMRewardJudge(EngineClient):
    """Scores r_k for each response of each prompt (higher is better), as RewardModelJudge does,
    from vLLM's engine for the reward model `engine_args` loads."""

    def __init__(
        self,
        engine_args: dict,
        tokenizer,
        limits: tuple[int, int],
        pad_id: int,
        *,
        env: dict[str, str],
        log: Path | None,
        backend: tuple[str, str],
        after_death: str,
    ):
        self.tokenizer, self.limits, self.pad_id = tokenizer, limits, pad_id
        self.requests = itertools.count()
        super().__init__(
            engine_args,
            env=env,
            log=log,
            backend=backend,
            doing="scoring",
            after_death=after_death,
        )

    def start(self) -> None:
        super().start()
        from vllm.pooling_params import PoolingParams

        self.pooling_params = PoolingParams

    def encode(self, prompt: str, response: str) -> list[int]:
        ids = conversation_ids(self.tokenizer, prompt, response, *self.limits)
        return scored_tokens(ids, self.pad_id)

    def score(self, prompts: list[str], candidates: list[list[str]]) -> list[np.ndarray]:
        sequences = flattened(prompts, candidates, self.encode)
        longest = self.engine_args["max_model_len"]
        if sequences and len(sequences[-1][1]) > longest:
            (p, _), ids = sequences[-1]
            raise RewardModelError(
                f"a conversation of the prompt {prompts[p][:60]!r} takes {len(ids)} tokens of "
                f"{self.path}, more than its engine's max_model_len {longest}"
            )
        engine = self.llm.llm_engine
        # the engine's input from token ids: its renderer's where it has one (vLLM >= 0.30)
        render = getattr(getattr(engine, "renderer", None), "render_cmpl", None)
        waiting: dict[str, tuple[int, int]] = {}
        scores = [np.zeros(len(c), dtype=np.float64) for c in candidates]
        try:
            for where, ids in sequences:
                request, prompt = str(next(self.requests)), {"prompt_token_ids": ids}
                if render is not None:
                    (prompt,) = render([prompt])
                params = self.pooling_params(task="classify", use_activation=False)
                engine.add_request(request, prompt, params)
                waiting[request] = where
            while waiting:
                for out in self.step():
                    p, k = waiting.pop(out.request_id)
                    scores[p][k] = float(out.outputs.data.reshape(-1)[0])
        finally:
            self.abort(list(waiting))
        return scores


def load_vllm_reward_judge(
    r: RankerConfig,
    section: str,
    generation: GenerationConfig,
    device: torch.device,
    log: Path | None,
    after_death: str,
) -> VLLMRewardJudge:
    """The reward model of `r` (the config at `section`: ranker or eval.judge) served by vLLM on
    `device`, with the memory and eagerness of the generate stage's engine (`generation`); its
    output into `log`. What vLLM cannot serve is refused before it starts (exit 2)."""
    from transformers import AutoConfig

    tokenizer = load_reward_tokenizer(r.model, r.trust_remote_code)
    with loading(r.model, r.trust_remote_code):
        config = AutoConfig.from_pretrained(r.model, trust_remote_code=r.trust_remote_code)
    architecture = (config.architectures or ["model of no architecture"])[0]
    classifier = architecture.endswith("ForSequenceClassification")
    if not classifier or config.num_labels != 1:
        what = f"has {config.num_labels} labels" if classifier else f"is a {architecture}"
        raise ConfigError(
            f"{section}.backend=vllm: vLLM serves a reward model that is a "
            f"*ForSequenceClassification with one label; {r.model!r} {what}: use "
            f"{section}.backend=hf"
        )
    # the template's own tokens, twice: a text cut to its limit may take a few tokens more once
    # rendered beside them
    room = 2 * len(conversation_ids(tokenizer, "", "", r.source_max_length, 1))
    extent = Extent(
        r.source_max_length + r.candidate_max_length + room,
        f"{section}.source_max_length + {section}.candidate_max_length + {room} for the chat "
        "template",
        r.tensor_parallel_size,
        f"{section}.tensor_parallel_size",
    )
    dtype = judge_dtype(device)
    refuse_unworkable(generation, r.model, device, dtype, "generation", extent)
    args = engine_args(generation, r.model, device, dtype, None, r.trust_remote_code, extent)
    return VLLMRewardJudge(
        {**args, "runner": "pooling"},
        tokenizer,
        (r.source_max_length, r.candidate_max_length),
        pooled_pad_id(config, tokenizer),
        env=engine_env(device),
        log=log,
        backend=(f"{section}.backend=vllm", f"{section}.backend=hf"),
        after_death=after_death,
    )
