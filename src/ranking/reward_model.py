"""A reward-model judge: any `AutoModelForSequenceClassification` that gives one score per
(prompt, response) conversation, rendered with the reward model's own chat template.

Every (prompt, response) of a chunk goes into one length-sorted list, scored `batch_size`
sequences per forward. Remote code (ArmoRM's scoring head) runs only when the config opts in
with `ranker.trust_remote_code=true`. The same conversations, served by vLLM
(`ranker.backend=vllm`): src/ranking/reward_model_vllm.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from src.core.errors import StageError


class RewardModelError(StageError):
    """The reward model cannot be used as a judge; the message says why."""


def judge_dtype(device: torch.device) -> torch.dtype:
    """A reward model's dtype on `device`: bf16 on a GPU, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def conversation_ids(
    tokenizer, prompt: str, response: str, source_max_length: int, candidate_max_length: int
) -> list[int]:
    """The token ids of [user: prompt, assistant: response] in the reward model's chat template,
    each text first cut to its limit in the model's tokens."""

    def truncate(text: str, limit: int) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tokenizer.decode(ids[:limit])

    messages = [
        {"role": "user", "content": truncate(prompt, source_max_length)},
        {"role": "assistant", "content": truncate(response, candidate_max_length)},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # the template writes the BOS itself when the model wants one
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pooled_pad_id(config, tokenizer) -> int:
    """The pad token whose last other token transformers' classifier scores in each row: the
    model config's, else the tokenizer's, else the EOS (what `load_reward_model_judge` pads
    with where the model names none)."""
    for pad in (config.get_text_config().pad_token_id, tokenizer.pad_token_id):
        if pad is not None:
            return pad
    return tokenizer.eos_token_id


@contextmanager
def loading(path: str, trust_remote_code: bool) -> Iterator[None]:
    """A reward model's files read inside: one that cannot be read, or that needs remote code
    not allowed, is one line (RewardModelError)."""
    try:
        yield
    except OSError as err:  # a missing folder, or a hub id with the hub offline
        raise RewardModelError(
            f"cannot load the reward model {path!r}: {str(err).splitlines()[0]} "
            "(offline, point ranker.model at a local folder)"
        ) from None
    except ValueError as err:
        if "trust_remote_code" not in str(err) or trust_remote_code:
            raise
        raise RewardModelError(
            f"the reward model {path!r} needs its own code (remote code); if you trust it, "
            "opt in with ranker.trust_remote_code=true"
        ) from None


def load_reward_tokenizer(path: str, trust_remote_code: bool):
    """The reward model's tokenizer, which must carry the chat template it was trained with."""
    from transformers import AutoTokenizer

    with loading(path, trust_remote_code):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.chat_template is None:
        raise RewardModelError(
            f"the reward model {path!r} has no chat template: it cannot render "
            "(prompt, response) conversations the way it was trained"
        )
    return tokenizer


def flattened(
    prompts: list[str], candidates: list[list[str]], encode
) -> list[tuple[tuple[int, int], list[int]]]:
    """((p, k), the ids of `encode(prompt p, its response k)`) for every response of every
    prompt, shortest first."""
    sequences = [
        ((p, k), encode(prompt, response))
        for p, (prompt, responses) in enumerate(zip(prompts, candidates, strict=True))
        for k, response in enumerate(responses)
    ]
    sequences.sort(key=lambda s: len(s[1]))
    return sequences


class RewardModelJudge:
    """Scores r_k for each response of each prompt (higher is better)."""

    def __init__(
        self,
        model,
        tokenizer,
        source_max_length: int,
        candidate_max_length: int,
        batch_size: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    def encode(self, prompt: str, response: str) -> list[int]:
        return conversation_ids(
            self.tokenizer, prompt, response, self.source_max_length, self.candidate_max_length
        )

    def rewards(self, sequences: list[list[int]]) -> torch.Tensor:
        """The reward of each encoded conversation, one right-padded forward ([B]; with grad
        when the caller trains the model, as src/tiny/teach.py does)."""
        width = max(len(row) for row in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for n, row in enumerate(sequences):
            ids[n, : len(row)] = torch.tensor(row)
            mask[n, : len(row)] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        # ArmoRM-style models return a preference `score`; plain ones a [B, 1] logit
        values = getattr(out, "score", None)
        return out.logits[:, 0] if values is None else values.reshape(len(sequences))

    @torch.no_grad()
    def score(self, prompts: list[str], candidates: list[list[str]]) -> list[np.ndarray]:
        sequences = flattened(prompts, candidates, self.encode)
        scores = [np.zeros(len(c), dtype=np.float64) for c in candidates]
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start : start + self.batch_size]
            values = self.rewards([ids for _, ids in batch])
            for ((p, k), _), v in zip(batch, values.float().cpu().tolist(), strict=True):
                scores[p][k] = v
        return scores


def load_reward_model_judge(
    path: str,
    source_max_length: int,
    candidate_max_length: int,
    batch_size: int,
    trust_remote_code: bool,
    device: torch.device,
) -> RewardModelJudge:
    from transformers import AutoModelForSequenceClassification

    started = time.time()
    tokenizer = load_reward_tokenizer(path, trust_remote_code)
    with loading(path, trust_remote_code):
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=judge_dtype(device), trust_remote_code=trust_remote_code
        )
    num_labels = model.config.num_labels
    if num_labels != 1 and not trust_remote_code:
        raise RewardModelError(
            f"the reward model {path!r} has {num_labels} labels; a judge needs one score per "
            "response (a 1-label head, or a remote-code model that returns `score`)"
        )
    if tokenizer.pad_token_id is None:  # batches need padding; the last real token is read
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    print(f"[rank] reward model {path} loaded in {time.time() - started:.1f}s", file=sys.stderr)
    return RewardModelJudge(model, tokenizer, source_max_length, candidate_max_length, batch_size)
