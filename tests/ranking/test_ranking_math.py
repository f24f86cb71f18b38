"""Win probabilities, win rates and pair selection (docs/design.md §6.1), and PairRM batched across
prompts against llm-blender's own `Blender.rank(..., return_scores=True)`. Offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.config import PairSelection
from src.ranking.blender_compat import load_pairrm
from src.ranking.pairrm import PairRMJudge
from src.ranking.preferences import (
    TIE_ATOL,
    all_tied,
    scores_from_comparisons,
    sigmoid,
    win_matrix,
    win_rates,
)
from src.stages.pairs import pair_of, select_pair

REF = json.loads((Path(__file__).parents[1] / "data" / "preference_math.json").read_text())
CORPUS = (Path(__file__).resolve().parents[2] / "data" / "tiny" / "corpus.txt").read_text()


@pytest.mark.parametrize("case", REF["win_rate"], ids=lambda c: f"K{len(c['scores'])}")
def test_the_reference_win_rate_numbers(case):
    scores = np.array(case["scores"])
    P = win_matrix(scores, None, direct=False)
    np.testing.assert_allclose(P, case["win_matrix"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(win_rates(P), case["win_rate"], rtol=0, atol=1e-12)

    responses = [f"response {k}" for k in range(len(scores))]
    row = {
        "prompt_id": "x",
        "prompt": "q",
        "responses": responses,
        "sources": ["policy"] * len(scores),
        "scores": case["scores"],
        "win_matrix": P.tolist(),
        "win_rate": win_rates(P).tolist(),
    }
    pair = pair_of(row, "test", PairSelection.argmax_argmin)
    assert (pair["chosen_index"], pair["rejected_index"]) == (
        case["chosen_index"],
        case["rejected_index"],
    )
    assert pair["chosen"] == responses[case["chosen_index"]]
    for key in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose"):
        assert pair[key] == pytest.approx(case[key], abs=1e-12), key


@pytest.mark.parametrize("K", [2, 3, 5, 8])
@pytest.mark.parametrize("self_term", [True, False])
def test_bradley_terry_win_rates_sum_to_half_k(K, self_term):
    rng = np.random.default_rng(K)
    scores = rng.normal(scale=3.0, size=K)
    P = win_matrix(scores, None, direct=False)
    np.testing.assert_allclose(P + P.T, np.ones((K, K)), atol=1e-12)
    assert np.all(np.diag(P) == 0.5)
    p = win_rates(P, self_term)
    assert p.sum() == pytest.approx(K / 2, abs=1e-12)
    # the same ordering as the scores, with or without the self term
    assert list(np.argsort(p)) == list(np.argsort(scores))
    if not self_term:
        expected = [(P[i].sum() - 0.5) / (K - 1) for i in range(K)]
        np.testing.assert_allclose(p, expected, atol=1e-12)


def test_direct_win_probabilities_are_the_sigmoid_of_the_pairwise_logits():
    C = np.array([[0.0, 2.0, -1.0], [0.5, 0.0, 3.0], [1.5, -2.0, 0.0]])
    P = win_matrix(scores_from_comparisons(C), C, direct=True)
    for i in range(3):
        for j in range(3):
            expected = 0.5 if i == j else 1 / (1 + np.exp(-C[i, j]))
            assert P[i, j] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="pairwise comparison logits"):
        win_matrix(np.zeros(3), None, direct=True)


def test_scores_are_llm_blenders_mean_logit_difference_and_sigmoid_is_exact():
    C = np.array([[0.0, 1.0, 2.0], [-1.0, 0.0, 0.5], [0.0, 0.25, 0.0]])
    expected = [(C[i] - C[:, i]).sum() / 3 for i in range(3)]
    np.testing.assert_allclose(scores_from_comparisons(C), expected, atol=1e-15)
    x = np.array([-40.0, -1.0, 0.0, 1.0, 40.0])
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-12)
    assert sigmoid(np.array([0.0]))[0] == 0.5


def test_sppo_selection_is_numpy_argmax_and_argmin_first_index_on_ties():
    scores = np.array([0.3, 1.0, -2.0, 1.0, -2.0])
    assert select_pair(scores, [1] * 5, PairSelection.argmax_argmin) == (1, 2)
    # all equal: the reference's chosen == rejected
    assert select_pair(np.zeros(4), [1, 2, 3, 4], PairSelection.argmax_argmin) == (0, 0)


def test_wpo_selection_breaks_ties_by_length_as_wpo_v2():
    # chosen ties (indices 0, 2) -> the shorter (2); rejected ties (1, 3, 4) -> the length
    # closest to the chosen one's (|4-5| = 1: index 3)
    scores = np.array([2.0, -1.0, 2.0, -1.0, -1.0])
    lengths = [30, 100, 5, 4, 50]
    assert select_pair(scores, lengths, PairSelection.wpo_tiebreak) == (2, 3)
    # no ties: plain max / min, lengths do not matter
    scores = np.array([0.5, 3.0, -1.0, 0.0])
    assert select_pair(scores, [1, 100, 1, 2], PairSelection.wpo_tiebreak) == (1, 2)
    # scores within float rounding of each other count as tied
    scores = np.array([1.0, 1.0 + TIE_ATOL / 10, 0.0])
    assert select_pair(scores, [9, 3, 7], PairSelection.wpo_tiebreak) == (1, 2)
    # all tied: the shortest is chosen, the rejected is another response, closest in length
    assert select_pair(np.zeros(3), [9, 3, 5], PairSelection.wpo_tiebreak) == (1, 2)


def test_all_tied_uses_a_tolerance_for_float_rounding_only():
    assert all_tied(np.array([0.1, 0.1 + 1e-8, 0.1 - 1e-8]))
    assert not all_tied(np.array([0.1, 0.1 + 1e-4]))


# --- PairRM batched across prompts == llm-blender's rank(batch_size=1) ---------------------------


def texts(n: int, words: int, offset: int = 0) -> list[str]:
    """n different texts of about `words` words, cut from the corpus."""
    pool = CORPUS.split()
    return [" ".join(pool[(offset + 97 * i) % 5000 :][:words]) + f" ({i})" for i in range(n)]


def mixed_lengths() -> tuple[list[str], list[list[str]]]:
    """4 prompts and 3 responses each: short, long, and longer than 412 PairRM tokens (which
    llm-blender lets a candidate exceed by half the room a short source leaves: the small limits
    below truncate it), and an empty one."""
    prompts = ["Hi?", *texts(2, 60, 11), "Explain recursion in one line."]
    lengths = [3, 40, 8, 500]  # words
    candidates = [texts(3, lengths[p], offset=1000 * p) for p in range(len(prompts))]
    candidates[0][2] = ""  # an empty response is compared like any other
    return prompts, candidates


# PairRM's limits; and small ones, so that truncation bites
LIMITS = [(1224, 412), (48, 24)]


@pytest.fixture(scope="module")
def reference(blender) -> dict[tuple[int, int], np.ndarray]:
    """llm-blender's own `rank(batch_size=1)` (one comparison a forward) of `mixed_lengths()`
    at each of LIMITS: the scores ours must equal."""
    prompts, candidates = mixed_lengths()
    return {
        (source_max, candidate_max): blender.rank(
            prompts,
            candidates,
            return_scores=True,
            batch_size=1,
            disable_tqdm=True,
            source_max_length=source_max,
            candidate_max_length=candidate_max,
        )
        for source_max, candidate_max in LIMITS
    }


@pytest.mark.parametrize(
    ("source_max", "candidate_max", "batch_size"), [(*LIMITS[0], 7), (*LIMITS[1], 64)]
)
def test_batched_pairrm_scores_equal_llm_blender_rank(
    blender, reference, source_max, candidate_max, batch_size
):
    prompts, candidates = mixed_lengths()
    judge = PairRMJudge(blender, source_max, candidate_max, batch_size)
    logits = judge.compare(prompts, candidates)
    ours = np.stack([scores_from_comparisons(C) for C in logits])
    assert np.abs(ours - reference[source_max, candidate_max]).max() <= 1e-5
    assert all(np.all(np.diag(C) == 0) for C in logits)
    # the comparisons are not trivially symmetric, and the scores do tell responses apart
    assert not np.allclose(logits[1], -logits[1].T)
    assert np.ptp(ours, axis=1).min() > 1e-4


def test_batched_pairrm_takes_prompts_with_different_numbers_of_candidates(blender):
    prompts = ["First question?", "Second question?"]
    candidates = [texts(2, 10), texts(5, 20, offset=300)]
    judge = PairRMJudge(blender, 1224, 412, 16)
    batched = judge.compare(prompts, candidates)
    alone = [judge.compare([p], [c])[0] for p, c in zip(prompts, candidates, strict=True)]
    assert [C.shape for C in batched] == [(2, 2), (5, 5)]
    for a, b in zip(batched, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_cpu_forward_holds_at_most_its_budget_of_attention_scores(blender, monkeypatch):
    """On a CPU a run of comparisons stops where its [B, heads, L, L] scores would pass
    CPU_SCORES_BYTES (one comparison alone may pass it); the scores are those of one comparison
    a forward."""
    from src.ranking import pairrm

    prompts = ["Hi?", *texts(2, 60, 11)]
    candidates = [texts(3, n, offset=1000 * p) for p, n in enumerate((3, 40, 300))]
    judge = PairRMJudge(blender, 1224, 412, 8)
    encoded = [judge.encode(p, c) for p, c in zip(prompts, candidates, strict=True)]
    lengths = {(p, i, j): len(e.source) + len(e.candidates[i]) + len(e.candidates[j])
               for p, e in enumerate(encoded) for i in range(3) for j in range(3) if i != j}  # fmt: skip
    triples = sorted(lengths, key=lengths.get)
    budget = 3 * judge.scores_bytes * 100**2  # three comparisons of 100 tokens
    monkeypatch.setattr(pairrm, "CPU_SCORES_BYTES", budget)
    batches = list(judge.batches(triples, lengths.get))
    assert [t for b in batches for t in b] == triples
    assert all(len(b) <= 8 for b in batches)
    for b in batches:
        if len(b) > 1:
            assert len(b) * judge.scores_bytes * lengths[b[-1]] ** 2 <= budget
    alone = [b for b in batches if judge.scores_bytes * lengths[b[0]] ** 2 > budget]
    assert alone and all(len(b) == 1 for b in alone)  # each over the budget by itself
    assert len(batches) < len(triples)  # short ones still share a forward
    one = PairRMJudge(blender, 1224, 412, 1).compare(prompts, candidates)
    for ours, alone in zip(judge.compare(prompts, candidates), one, strict=True):
        np.testing.assert_allclose(ours, alone, atol=1e-5)


def test_fused_attention_falls_back_in_one_line_and_its_pytorch_path_keeps_the_scores(
    tiny_dir, capsys
):
    """ranker.attention=fused: on a CPU the Triton kernels cannot run, so the ranker keeps
    transformers' attention, said in one line; disentangled-flash's padded encoder itself (its
    PyTorch path here, as its Triton path on a GPU) keeps llm-blender's scores."""
    from src.config import Attention
    from src.ranking.pairrm import fuse_attention, load_pairrm_judge

    prompts = ["Hi?", *texts(2, 60, 11)]
    candidates = [texts(3, n, offset=1000 * p) for p, n in enumerate((3, 40, 300))]
    eager = PairRMJudge(load_pairrm(str(tiny_dir / "tiny-pairrm")), 1224, 412, 4)
    reference = eager.compare(prompts, candidates)
    judge = load_pairrm_judge(str(tiny_dir / "tiny-pairrm"), 1224, 412, 4, "cpu", Attention.fused)
    said = [line for line in capsys.readouterr().err.splitlines() if "attention" in line]
    assert said == ["[rank] ranker.attention=fused: its kernels need a CUDA GPU (the ranker is "
                    "on cpu): transformers' attention instead, the same scores"]  # fmt: skip
    backbone = judge.ranker.pretrained_model
    assert type(backbone.encoder).__name__ == "DebertaV2Encoder"
    assert fuse_attention(backbone, backend="torch", packed=False)  # the padded path
    assert type(backbone.encoder).__name__ == "DebertaV2OptimizedEncoder" and not judge.packed
    for ours, theirs in zip(judge.compare(prompts, candidates), reference, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.fixture(scope="module")
def packed_blender(tiny_dir):
    """The tiny PairRM with disentangled-flash's packed encoder, through its PyTorch path."""
    from src.ranking.pairrm import fuse_attention

    blender = load_pairrm(str(tiny_dir / "tiny-pairrm"))
    assert fuse_attention(blender.ranker.pretrained_model, backend="torch")  # packed: the default
    return blender


@pytest.mark.parametrize(
    ("source_max", "candidate_max", "budget", "forwards"),
    [
        (*LIMITS[0], None, range(2, 24)),  # B = 4 comparisons at the limits: 8,192 tokens
        (*LIMITS[1], None, range(2, 24)),  # 384 tokens
        (*LIMITS[1], 1, range(24, 25)),  # each comparison alone
        (*LIMITS[1], 10**6, range(1, 2)),  # all 24 in one forward
    ],
)
def test_packed_pairrm_scores_equal_llm_blender_rank_at_any_token_budget(
    packed_blender, reference, source_max, candidate_max, budget, forwards
):
    """The comparisons concatenated without padding, in forwards of at most `packed_tokens`
    tokens, score as llm-blender's rank(batch_size=1) does, however the budget splits them."""
    prompts, candidates = mixed_lengths()
    judge = PairRMJudge(packed_blender, source_max, candidate_max, 4, packed_tokens=budget)
    assert judge.packed
    sizes = []  # the comparisons of each forward
    judge.forward = lambda rows, forward=judge.forward: sizes.append(len(rows)) or forward(rows)
    logits = judge.compare(prompts, candidates)
    assert len(sizes) in forwards and sum(sizes) == 4 * 3 * 2
    ours = np.stack([scores_from_comparisons(C) for C in logits])
    assert np.abs(ours - reference[source_max, candidate_max]).max() <= 1e-5
