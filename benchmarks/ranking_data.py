"""What the ranking benchmarks share (benchmarks/ranking.py: PairRM; benchmarks/ranking_rm.py:
a reward model): the data sets of prompts with K responses each, the tolerance of a score and the
check that two judges rank each prompt's responses alike.
"""

from __future__ import annotations

import random

from benchmarks import harness

K = 5
SCORE_ATOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}  # max abs score difference
HARDWARE = {"cpu": "cpu", "cuda": "gpu-1"}
# Responses: runs of words cut from data/tiny/corpus.txt, lengths uniform in `words`. llm-blender
# lets a candidate use 412 + (1224 - source length) // 2 tokens (~1,000 here): only long is cut.
DATASETS = {
    "short": {"prompts": 48, "words": (20, 60)},  # per-forward overhead matters
    "medium": {"prompts": 48, "words": (60, 200)},
    "long": {"prompts": 8, "words": (350, 700)},  # a comparison costs ~50x a short one on CPU
    # every ranking of K checked against llm-blender's: 200 prompts (the hand-written ones again
    # past the first 120), responses of every length up to the candidate limit
    "agreement": {"prompts": 200, "words": (10, 450)},
}


def make_data(name: str, max_prompts: int | None) -> tuple[list[str], list[list[str]]]:
    """The hand-written prompts and K responses each, the same for a name always (the old
    script's seed, so its data sets stay)."""
    written, words = harness.written_prompts(), harness.corpus_words()
    wanted = min(DATASETS[name]["prompts"], max_prompts or 10**9)
    prompts = [written[i % len(written)] for i in range(wanted)]
    rng = random.Random(f"bench_ranking/{name}/0")  # a str seed is hashed stably
    return prompts, [[harness.cut(rng, words, rng.randint(*DATASETS[name]["words"]))
                      for _ in range(K)] for _ in prompts]  # fmt: skip


def same_rankings(scores, reference) -> int:
    """The prompts whose K responses `scores` rank in the order `reference` ranks them."""
    import numpy as np

    order = np.argsort(-scores, axis=1, kind="stable")
    return int((order == np.argsort(-reference, axis=1, kind="stable")).all(axis=1).sum())
