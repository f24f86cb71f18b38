"""Stage `rank`: the judge's scores and win probabilities for every prompt's responses.

    python -m src.main stage=rank model=tiny-mistral iter=1
    python -m src.main stage=rank model=tiny-mistral method=wpo ranker=tiny-reward-model \
        data.external_responses=data/tiny/external_responses.jsonl
    python -m src.main stage=rank model=tiny-mistral method=wpo ranker=tiny-reward-model-vllm
    python -m src.main stage=rank ranker.shard=3 ranker.num_shards=8

setup (the generation output, checked; the hybrid pool's external responses; empty responses
dropped when configured; the judge) -> run (chunks of prompts: all K(K-1) PairRM comparisons of
a chunk batched across its prompts, or all its (prompt, response) sequences through the reward
model: transformers' forward, or with ranker.backend=vllm vLLM's engine, one per shard, its
output in the shard's vllm.log beside its chunks; each chunk written atomically, so a re-run resumes, at the batch size and attention the
kept chunks were made with) -> cleanup (the shard's
`ranked-shardSSS-of-NNN.jsonl`; once every shard is there, the stage's record, which the
scheduler writes last as `done.json`).

A ranked row (`RankedRow`, src/core/contracts.py) is the generation row, its per-response lists
aligned with the candidates, plus `sources`, `scores`, `win_matrix`, `win_rate`, `judge`, and for
PairRM the raw logits `comparisons` (docs/design.md §5, §6.1).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import InitVar, asdict, dataclass, replace

import numpy as np

from src.config import Config, EmptyResponses, JudgeKind, RankerConfig, Stage, WinProb
from src.core.chunks import ChunkCounts, Shard, chunk_by_chunk, claim, continued, process_shard
from src.core.contracts import RankedRow
from src.core.errors import Redo, StageError
from src.core.identity import chunk_identity, stage_key
from src.core.progress import ProgressLine
from src.ranking.candidates import (
    Candidates,
    RankInputError,
    add_external,
    check_unique,
    drop_empty,
    external_response,
    from_generation_row,
    load_external,
    no_external,
)
from src.ranking.preferences import all_tied, win_matrix, win_rates
from src.stages import StageResult
from src.stages.common import load_judge, stage_rows, stage_shard

# How the judge's work is batched and computed: they move its scores by float rounding only, so
# they are no input of the stage (src/core/registry.py), and a resume keeps the ones its kept
# rows were made with
BATCHING = ("batch_size", "attention")


class RankError(StageError):
    """The judge's output cannot be trusted (e.g. a NaN score); the message names the prompt."""


@dataclass
class Counts(ChunkCounts):
    prompts_in_input: int = 0
    prompts_in_shard: int = 0
    external_added: int = 0
    empty_responses_dropped: int = 0
    prompts_dropped_too_few: int = 0  # fewer than 2 responses left after dropping empties
    ranked: int = 0
    comparisons: int = 0  # judge evaluations: K(K-1) per prompt for PairRM, K for a reward model
    all_tied: int = 0  # prompts whose responses all scored the same
    pairwise: InitVar[bool] = True  # PairRM (else a reward model): what `comparisons` counts

    def __post_init__(self, pairwise: bool) -> None:
        self.per_prompt = (lambda K: K * (K - 1)) if pairwise else (lambda K: K)
        self.unit = "comparisons" if pairwise else "responses"

    def add(self, rows: list[RankedRow]) -> None:
        self.ranked += len(rows)
        self.comparisons += sum(self.per_prompt(len(r["responses"])) for r in rows)

    @property
    def work(self) -> float:
        return self.comparisons

    def summarise(self, rows: Iterable[RankedRow]) -> None:
        self.all_tied = sum(all_tied(np.asarray(row["scores"])) for row in rows)


def run(cfg: Config) -> StageResult:
    r = cfg.ranker
    shard = stage_shard(cfg, Stage.rank)
    counts = Counts(pairwise=r.kind == JudgeKind.pairrm)

    # setup: a first pass over the generated rows checks, hashes and counts them, and this
    # shard's prompts; the ranking streams them again, so no shard is ever all in memory
    external = load_external(cfg.data.external_responses) if cfg.data.external_responses else None
    drop = r.empty_responses == EmptyResponses.drop

    def prepared(c: Candidates) -> tuple[Candidates | None, int]:
        """This shard's candidates as ranked: with the external response, without empty ones."""
        if external is not None:
            add_external(c, external_response(c, *external[:2]))
        return drop_empty(c) if drop else (c, 0)

    responses = hashlib.sha256()  # of the rows as one JSON array, as chunk identities hash them
    seen: dict[str, str] = {}
    missing: list[str] = []
    to_rank = 0  # over every shard: a shard may be left empty while others have prompts
    for i, (where, row) in enumerate(stage_rows(cfg, Stage.generate, RankInputError)):
        responses.update(("[" if i == 0 else ", ").encode())
        responses.update(json.dumps(row, sort_keys=True).encode())
        c = from_generation_row(where, row, cfg.method.K)
        check_unique(c, seen)
        ours = i % shard.count == shard.index  # round-robin, as take_shard splits a list
        if external is not None and external_response(c, *external[:2]) is None:
            if ours:
                missing.append(c.prompt_id)
            to_rank += 1  # not short of responses: its shard refuses it, naming the missing one
            continue
        kept, dropped = prepared(c)
        to_rank += kept is not None
        if ours:
            counts.external_added += external is not None
            counts.empty_responses_dropped += dropped
            counts.prompts_dropped_too_few += kept is None
            counts.prompts_in_shard += kept is not None
    responses.update(b"]" if seen else b"[]")
    counts.prompts_in_input = len(seen)
    if missing:
        prompts = counts.external_added + len(missing)
        raise no_external(cfg.data.external_responses, missing, prompts)
    if not to_rank:
        raise nothing_to_rank(cfg, len(seen))
    if counts.empty_responses_dropped:
        print(
            f"[rank] dropped {counts.empty_responses_dropped} empty response(s); "
            f"{counts.prompts_dropped_too_few} prompt(s) left with fewer than 2",
            file=sys.stderr,
        )

    def mine() -> Iterator[Candidates]:
        """This shard's candidates again, as they are ranked."""
        for i, (where, row) in enumerate(stage_rows(cfg, Stage.generate, RankInputError)):
            if i % shard.count == shard.index:
                kept, _ = prepared(from_generation_row(where, row, cfg.method.K))
                if kept is not None:
                    yield kept

    identity = chunk_identity(
        cfg.as_tree(),
        Stage.rank,
        responses=responses.hexdigest(),
        external=external[2] if external else None,
    )
    claim(
        shard.work,
        identity,
        RankError,
        "rankings made with a different configuration (judge or its options, the responses, "
        "the external pool)",
    )
    r = as_kept_rows_were_made(shard, identity, r)
    from src.generation.sampling import VLLM_LOG

    judge = load_judge(cfg, r, log=shard.work / VLLM_LOG)

    def rank_chunk(chunk: list[Candidates]) -> list[RankedRow]:
        judged = judge([c.prompt for c in chunk], [c.responses for c in chunk])
        rows = []
        for c, (scores, comparisons) in zip(chunk, judged, strict=True):
            check_finite(c, scores)
            P = win_matrix(scores, comparisons, direct=r.win_prob == WinProb.direct)
            row = RankedRow(
                prompt_id=c.prompt_id,
                prompt=c.prompt,
                **c.lists,
                scores=scores.tolist(),
                win_matrix=P.tolist(),
                win_rate=win_rates(P, r.self_term).tolist(),
                judge=r.name,
            )
            if comparisons is not None:
                row["comparisons"] = comparisons.tolist()
            rows.append(row)
        return rows

    # run, then cleanup: the shard's file, the stage's record once all shards are there; the
    # judge's engine (vLLM's) shut down whatever happens
    with closing(judge):
        finished = process_shard(
            shard,
            mine(),
            r.chunk_size,
            chunk_by_chunk(rank_chunk),
            counts,
            stage_key(cfg.as_tree(), Stage.rank),
            identity,
            label="rank",
            progress=ProgressLine(
                f"[rank] {shard.name}", counts.prompts_in_shard, counts.unit, items="prompts ranked"
            ),
            shared_keys=("prompts_in_input",),
            total=counts.prompts_in_shard,
            made_with=batching(r),
        )
    return StageResult(asdict(counts), finished)


def batching(r: RankerConfig) -> dict:
    """The ranker's BATCHING settings, by their config keys."""
    return {f"ranker.{key}": getattr(r, key) for key in BATCHING}


def as_kept_rows_were_made(shard: Shard, identity: str, r: RankerConfig) -> RankerConfig:
    """The ranker, its BATCHING settings those the stage's kept chunks were made with (each
    change said in one line): a resume's rows are then one run's."""
    kept = continued(shard, identity, batching(r), label="rank")
    # the seals hold JSON: each value back to its field's type (an int, an Attention)
    return replace(r, **{key: type(getattr(r, key))(kept[f"ranker.{key}"]) for key in BATCHING})


def nothing_to_rank(cfg: Config, prompts: int) -> RankError:
    """Why a ranking would finish with no rows, which the pairs stage would take for a judge
    that cannot tell responses apart."""
    generated = cfg.stage_dir(Stage.generate)
    if not prompts:  # a generation recorded before the generate stage refused to finish empty
        return RankError(
            f"{generated} holds no responses: nothing to rank; generate again",
            Redo(Stage.generate, cfg.iter),
        )
    return RankError(
        f"all {prompts} prompts of {generated} have fewer than 2 non-empty responses once "
        "blank ones are dropped (ranker.empty_responses=drop): nothing to rank, and no pair "
        "could be made of a blank response; check that the policy answers at all (its chat "
        "template, its end-of-turn tokens, generation.max_new_tokens)"
    )


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
