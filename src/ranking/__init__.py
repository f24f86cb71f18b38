"""Stage `rank`: the judge's scores and win probabilities for every prompt's responses.

    python -m src.main stage=rank model=tiny-mistral iter=1
    python -m src.main stage=rank model=tiny-mistral method=wpo ranker=tiny-reward-model \
        data.external_responses=data/tiny/external_responses.jsonl
    python -m src.main stage=rank ranker.shard=3 ranker.num_shards=8

setup (the generation output, checked; the hybrid pool's external responses; empty responses
dropped when configured; the judge) -> run (chunks of prompts: all K(K-1) PairRM comparisons of
a chunk batched across its prompts, or all its (prompt, response) sequences through the reward
model; each chunk written atomically, so a re-run resumes) -> cleanup (the shard's
`ranked-shardSSS-of-NNN.jsonl`; `done.json` once every shard is there).

A ranked row is the generation row (its per-response lists aligned with the candidates) plus
`sources`, `scores`, `win_matrix`, `win_rate`, `judge`, and for PairRM the raw logits
`comparisons` (docs/design.md §5, §6.1).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from src.artifacts import read_jsonl
from src.config import (
    Config,
    EmptyResponses,
    JudgeKind,
    PromptFormat,
    RankerConfig,
    Stage,
    WinProb,
)
from src.errors import StageError
from src.pipeline import stage_fingerprint
from src.ranking.candidates import (
    Candidates,
    RankInputError,
    add_external,
    check_unique,
    drop_empty,
    from_generation_row,
    load_external,
)
from src.ranking.preferences import all_tied, scores_from_comparisons, win_matrix, win_rates
from src.shards import (
    Shard,
    claim,
    finish_shard,
    finished_rows,
    resolve_shard,
    run_chunks,
    take_shard,
)


class RankError(StageError):
    """The judge's output cannot be trusted (e.g. a NaN score); the message names the prompt."""


@dataclass
class Counts:
    prompts_in_input: int = 0
    prompts_in_shard: int = 0
    external_added: int = 0
    empty_responses_dropped: int = 0
    prompts_dropped_too_few: int = 0  # fewer than 2 responses left after dropping empties
    ranked: int = 0
    reused_from_earlier_run: int = 0
    comparisons: int = 0  # judge evaluations: K(K-1) per prompt for PairRM, K for a reward model
    all_tied: int = 0  # prompts whose responses all scored the same
    seconds: float = 0.0


def run(cfg: Config) -> dict:
    index, num_shards = resolve_shard(cfg.ranker.shard, cfg.ranker.num_shards, section="ranker")
    shard = Shard(cfg.stage_dir(Stage.rank), "ranked", index, num_shards)
    counts = Counts()

    # setup
    generated = finished_rows(
        cfg.stage_dir(Stage.generate),
        "responses",
        RankInputError,
        f"python -m src.main stage=generate iter={cfg.iter} (with this run's model and method)",
    )
    candidates = [from_generation_row(where, row, cfg.method.K) for where, row in generated]
    check_unique(candidates)
    counts.prompts_in_input = len(candidates)
    mine = take_shard(candidates, index, num_shards)
    external_sha = None
    if cfg.data.external_responses:
        by_id, by_prompt, external_sha = load_external(cfg.data.external_responses)
        add_external(mine, by_id, by_prompt, cfg.data.external_responses)
        counts.external_added = len(mine)
    if cfg.ranker.empty_responses == EmptyResponses.drop:
        mine, counts.empty_responses_dropped, counts.prompts_dropped_too_few = drop_empty(mine)
        if counts.empty_responses_dropped:
            print(
                f"[rank] dropped {counts.empty_responses_dropped} empty response(s); "
                f"{counts.prompts_dropped_too_few} prompt(s) left with fewer than 2",
                file=sys.stderr,
            )
    counts.prompts_in_shard = len(mine)
    identity = rank_identity(cfg, [row for _, row in generated], external_sha)
    claim(
        shard.work,
        identity,
        RankError,
        "rankings made with a different configuration (judge or its options, the responses, "
        "the external pool)",
    )
    judge = Judge(cfg, cfg.ranker)

    # run
    started = time.time()

    def progress(c: int, num_chunks: int, rows: list[dict]) -> None:
        counts.ranked += len(rows)
        counts.comparisons += sum(comparisons_of(cfg, len(r["responses"])) for r in rows)
        elapsed = time.time() - started
        print(
            f"[rank] shard {index}/{num_shards} chunk {c + 1}/{num_chunks}: "
            f"{counts.ranked / elapsed:.2f} prompts/s, {counts.comparisons / elapsed:.1f} "
            f"{'comparisons' if cfg.ranker.kind == JudgeKind.pairrm else 'responses'}/s",
            file=sys.stderr,
            flush=True,
        )

    tally = run_chunks(
        shard, mine, cfg.ranker.chunk_size, lambda chunk: rank_chunk(cfg, judge, chunk), progress
    )
    counts.reused_from_earlier_run = tally.reused
    counts.seconds = time.time() - started

    # cleanup (read as JSON Lines: str.splitlines would also split a response at U+2028 and
    # the like, which JSON leaves unescaped)
    counts.all_tied = sum(
        all_tied(np.asarray(row["scores"]))
        for c in range(tally.chunks)
        for _, row in read_jsonl(shard.work / f"chunk{c:05d}.jsonl", RankError)
    )
    finish_shard(
        shard,
        tally.chunks,
        asdict(counts),
        stage_fingerprint(cfg, Stage.rank),
        shared_keys=("prompts_in_input",),
    )
    return asdict(counts)


def comparisons_of(cfg: Config, K: int) -> int:
    return K * (K - 1) if cfg.ranker.kind == JudgeKind.pairrm else K


def rank_identity(cfg: Config, generated: list[dict], external_sha: str | None) -> str:
    """What the rankings depend on: chunks made under another identity are never reused."""
    r = asdict(cfg.ranker)
    for key in ("shard", "num_shards", "batch_size"):  # where/how fast, not what
        r.pop(key)
    identity = {
        "ranker": r,
        "K": cfg.method.K,
        "responses": hashlib.sha256(json.dumps(generated, sort_keys=True).encode()).hexdigest(),
        "external": external_sha,
        # PairRM sees the prompt through pi_{t-1}'s chat template
        "template_of": cfg.run.init_policy if uses_chat_template(cfg.ranker) else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def uses_chat_template(judge: RankerConfig) -> bool:
    return judge.kind == JudgeKind.pairrm and judge.prompt_format == PromptFormat.chat_template


# --- setup ----------------------------------------------------------------------------------------


class Judge:
    """A judge (`r`: the ranker, or the eval's judge) as one call: (prompts, candidates) ->
    [(scores, comparisons | None)]."""

    def __init__(self, cfg: Config, r: RankerConfig) -> None:
        from src.devices import device_for

        device = device_for(cfg)
        self.render = lambda prompt: prompt
        if r.kind == JudgeKind.pairrm:
            from src.ranking.pairrm import load_pairrm_judge

            self.pairrm = load_pairrm_judge(
                r.model, r.source_max_length, r.candidate_max_length, r.batch_size, str(device)
            )
            if uses_chat_template(r):
                self.render = policy_chat_template(cfg)
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


def policy_chat_template(cfg: Config):
    """The prompt as pi_{t-1} saw it (the reference passes PairRM the chat-templated prompt)."""
    from transformers import AutoTokenizer

    from src.policy import require_previous_policy

    tokenizer = AutoTokenizer.from_pretrained(
        require_previous_policy(cfg), revision=cfg.model.revision
    )

    def render(prompt: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    return render


# --- run --------------------------------------------------------------------------------------------


def rank_chunk(cfg: Config, judge: Judge, chunk: list[Candidates]) -> list[dict]:
    judged = judge([c.prompt for c in chunk], [c.responses for c in chunk])
    rows = []
    for c, (scores, comparisons) in zip(chunk, judged, strict=True):
        check_finite(c, scores)
        P = win_matrix(scores, comparisons, direct=cfg.ranker.win_prob == WinProb.direct)
        row = {
            "prompt_id": c.prompt_id,
            "prompt": c.prompt,
            **c.lists,
            "scores": scores.tolist(),
            "win_matrix": P.tolist(),
            "win_rate": win_rates(P, cfg.ranker.self_term).tolist(),
            "judge": cfg.ranker.name,
        }
        if comparisons is not None:
            row["comparisons"] = comparisons.tolist()
        rows.append(row)
    return rows


def check_finite(c: Candidates, scores: np.ndarray) -> None:
    """A NaN logit anywhere in C makes the scores NaN too, so checking the scores suffices."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        k = int(bad[0])
        raise RankError(
            f"the judge gave a non-finite score ({scores[k]}) to response {k} of prompt_id "
            f"{c.prompt_id!r} ({c.where}): a NaN or infinite score would corrupt every win "
            "probability of this prompt; check the judge's weights and precision"
        )
