"""From a judge's outputs to win probabilities (docs/design.md §6.1), as small pure functions.

PairRM gives comparison logits C (C_ij > 0: response i beats response j); a reward model gives
scores r directly. The SPPO reference code then computes

    s_i  = (1/K) sum_j (C_ij - C_ji)        llm-blender's rank(..., return_scores=True)
    P_ij = sigmoid(s_i - s_j), P_ii = 1/2   Bradley-Terry on the aggregated scores
    p_i  = (1/K) sum_j P_ij                 the win rate, the self term P_ii included

so that the K win rates sum to K/2. Options: `direct` P_ij = sigmoid(C_ij) (PairRM's own
pairwise probability) and the win rate without the self term, (1/(K-1)) sum_{j != i} P_ij.
"""

from __future__ import annotations

import numpy as np

# Scores closer than this are one score: a batched forward changes logits by float rounding
# (~1e-7), which must not decide between responses that the judge sees as equal.
TIE_ATOL = 1e-6


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow for large |x|; exactly 1/2 at 0."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def scores_from_comparisons(C: np.ndarray) -> np.ndarray:
    """s_i = (1/K) sum_j (C_ij - C_ji): llm-blender's "max_logits" aggregation."""
    return (C - C.T).mean(axis=-1)


def win_matrix(scores: np.ndarray, comparisons: np.ndarray | None, direct: bool) -> np.ndarray:
    """P_ij, the probability that response i beats response j, with P_ii = 1/2."""
    if direct:
        if comparisons is None:
            raise ValueError("direct win probabilities need pairwise comparison logits")
        P = sigmoid(comparisons)
    else:
        P = sigmoid(scores[:, None] - scores[None, :])
    np.fill_diagonal(P, 0.5)
    return P


def win_rates(P: np.ndarray, self_term: bool = True) -> np.ndarray:
    """p_i = mean_j P_ij over all j (self term included) or over j != i."""
    K = len(P)
    if self_term:
        return P.mean(axis=-1)
    return (P.sum(axis=-1) - np.diag(P)) / (K - 1)


def all_tied(scores: np.ndarray) -> bool:
    """Every response scored the same: no response is preferred to another."""
    return bool(scores.max() - scores.min() <= TIE_ATOL)
