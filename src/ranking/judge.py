"""A judge as one call, shared by the rank stage (`ranker`) and the eval stage (`eval.judge`):
PairRM (llm-blender's pair ranker; all K(K-1) ordered comparisons of each prompt, batched across
prompts) or a reward model (one score per response: transformers' forward, or vLLM's engine
with `backend=vllm`), loaded on the configured device; `close()` it when done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.config import Backend, GenerationConfig, JudgeKind, PromptFormat, RankerConfig
from src.ranking.preferences import scores_from_comparisons


@dataclass(frozen=True)
class Served:
    """How a judge served by vLLM (`backend=vllm`) runs: `section`, the keys that set it (ranker
    or eval.judge); `generation`, the generate stage's engine settings it shares (memory,
    eagerness); `log`, where its engine writes; `after_death`, what the line that says its engine
    died says of the work kept."""

    section: str
    generation: GenerationConfig
    log: Path | None
    after_death: str


def uses_chat_template(judge: RankerConfig) -> bool:
    return judge.kind == JudgeKind.pairrm and judge.prompt_format == PromptFormat.chat_template


class Judge:
    """A judge (`r`: the ranker, or the eval's judge) as one call: (prompts, candidates) ->
    [(scores, comparisons | None)], on `device`. `policy`: the path of pi_{t-1}, whose chat
    template renders the prompts of a PairRM judge with `prompt_format=chat_template`;
    `served`: how its engine runs, for a reward model with `backend=vllm`."""

    def __init__(
        self,
        r: RankerConfig,
        device,
        policy: str | None = None,
        revision: str | None = None,
        served: Served | None = None,
    ) -> None:
        self.render = lambda prompt: prompt
        if r.kind == JudgeKind.pairrm:
            from src.ranking.pairrm import load_pairrm_judge

            self.pairrm = load_pairrm_judge(
                r.model,
                r.source_max_length,
                r.candidate_max_length,
                r.batch_size,
                str(device),
                r.attention,
            )
            if uses_chat_template(r):
                self.render = policy_chat_template(policy, revision)
        elif r.backend == Backend.vllm:
            from src.ranking.reward_model_vllm import load_vllm_reward_judge

            self.reward_model = load_vllm_reward_judge(
                r, served.section, served.generation, device, served.log, served.after_death
            )
        else:
            from src.ranking.reward_model import load_reward_model_judge

            self.reward_model = load_reward_model_judge(
                r.model,
                r.source_max_length,
                r.candidate_max_length,
                r.batch_size,
                r.trust_remote_code,
                device,
            )
        self.kind = r.kind

    def __call__(
        self, prompts: list[str], candidates: list[list[str]]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        if self.kind == JudgeKind.pairrm:
            logits = self.pairrm.compare([self.render(p) for p in prompts], candidates)
            return [(scores_from_comparisons(C), C) for C in logits]
        return [(s, None) for s in self.reward_model.score(prompts, candidates)]

    def close(self) -> None:
        """Shut down what the judge runs beside this process (vLLM's engine); idempotent."""
        close = getattr(getattr(self, "reward_model", None), "close", None)
        if close is not None:
            close()


def policy_chat_template(policy: str, revision: str | None):
    """The prompt as pi_{t-1} saw it (the reference passes PairRM the chat-templated prompt)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy, revision=revision)

    def render(prompt: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    return render
