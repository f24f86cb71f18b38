"""Raw and length-controlled win rates (`src.evaluation.winrate`), offline.

Tested: the judge's probabilities to outcomes (ties count half); the length-controlled win rate
equal to 1e-6 to what alpaca_eval's own `get_length_controlled_winrate(...,
glm_name="length_controlled_minimal")` returns for the same annotations (its format: preference
in [1, 2], output_1 the reference's answer, output_2 the policy's) on sets made here -- the
judge favouring long answers, short ones, neither, every comparison won, every one lost,
n = 10 and n = 805, discrete and probability outcomes -- and the raw rate and standard error
equal to its `get_winrate`; where alpaca_eval cannot fit (fewer than 5 comparisons, no spread of
the length difference); and the bootstrap summary `win_rates`.

The Hub file alpaca_eval downloads for every length-controlled fit is a local one
(conftest.py's `alpaca_eval_offline`): the test never reaches the network.
"""

from __future__ import annotations

import numpy as np
import pytest

from src.evaluation import winrate
from src.evaluation.winrate import (
    FOLDS,
    GLM,
    TIE_ATOL,
    length_controlled,
    outcomes,
    refit_lc,
    win_rates,
)
from tests.support.helpers import ALPACA_EVAL_INSTRUCTIONS, alpaca_eval_annotations


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def alpaca_eval_lc(glm_winrate, y, policy_lengths, reference_lengths) -> dict:
    return glm_winrate.get_length_controlled_winrate(
        alpaca_eval_annotations(y, policy_lengths, reference_lengths),
        glm_name=GLM,
        save_weights_dir=None,
        is_warn_extreme_changes=False,
    )


def comparisons(n: int, bias: float, intercept: float = 0.2, discrete: bool = True, seed: int = 0):
    """n judgements whose log-odds are intercept + bias * (length difference / 500 characters)."""
    rng = np.random.default_rng(seed)
    reference = rng.integers(200, 3000, n)
    policy = np.maximum(reference + rng.integers(-800, 1500, n), 1)
    p = sigmoid(intercept + bias * (policy - reference) / 500 + rng.normal(0, 0.5, n))
    y = outcomes((rng.random(n) < p).astype(float), True) if discrete else p
    return y, policy, reference


SETS = {
    "long-answer-bias": lambda: comparisons(300, bias=1.5),
    "short-answer-bias": lambda: comparisons(300, bias=-1.5, seed=1),
    "no-length-signal": lambda: comparisons(300, bias=0.0, seed=2),
    "all-wins": lambda: (np.ones(60), *comparisons(60, 0.0, seed=3)[1:]),
    "all-losses": lambda: (np.zeros(60), *comparisons(60, 0.0, seed=4)[1:]),
    "n=10": lambda: comparisons(10, bias=1.0, seed=5),
    "n=805": lambda: comparisons(ALPACA_EVAL_INSTRUCTIONS, bias=0.8, seed=6),
    "n=805-probabilities": lambda: comparisons(805, bias=0.8, discrete=False, seed=7),
    "ties": lambda: (
        np.random.default_rng(8).choice([0.0, 0.5, 1.0], 120),
        *comparisons(120, 0.0, seed=8)[1:],
    ),
}


# --- outcomes --------------------------------------------------------------------------------


def test_discrete_outcomes_are_wins_losses_and_half_counted_ties():
    p = np.array(
        [
            1.0,
            0.9,
            0.5 + 2 * TIE_ATOL,
            0.5 + TIE_ATOL / 2,
            0.5,
            0.5 - TIE_ATOL / 2,
            0.5 - 2 * TIE_ATOL,
            0.1,
            0.0,
        ]
    )
    y = outcomes(p, discrete=True)
    np.testing.assert_array_equal(y, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    assert y.dtype == np.float64


def test_probability_outcomes_are_the_judge_probabilities_unchanged():
    p = np.random.default_rng(0).random(50)
    p[:3] = [0.5, 0.5 + TIE_ATOL / 2, 0.0]
    np.testing.assert_array_equal(outcomes(p, discrete=False), p)
    np.testing.assert_array_equal(outcomes(list(p), discrete=False), p)


# --- AlpacaEval's own numbers ----------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_lc_win_rate_equals_alpaca_evals_own_length_controlled_win_rate(alpaca_eval_offline, name):
    y, policy, reference = SETS[name]()
    theirs = alpaca_eval_lc(alpaca_eval_offline, y, policy, reference)
    ours = win_rates(y, policy, reference, bootstrap=20, confidence=0.95)
    assert ours.lc_win_rate == pytest.approx(theirs["length_controlled_winrate"] / 100, abs=1e-6)
    assert ours.win_rate == pytest.approx(theirs["win_rate"] / 100, abs=1e-6)
    assert ours.standard_error == pytest.approx(theirs["standard_error"] / 100, abs=1e-6)


def test_the_length_bias_moves_the_raw_rate_and_the_lc_rate_takes_it_out(alpaca_eval_offline):
    """The sets above are what they say: a judge that favours long answers raises the raw rate of
    a policy that writes longer ones, and its fitted length coefficient is positive; the LC rate
    sits nearer the intercept's 0.5 + (the sets' intercept 0.2)."""
    long_bias = length_controlled(*SETS["long-answer-bias"]())
    short_bias = length_controlled(*SETS["short-answer-bias"]())
    none = length_controlled(*SETS["no-length-signal"]())
    assert long_bias.length_coefficient > 0.5
    assert short_bias.length_coefficient < -0.5
    assert abs(none.length_coefficient) < 0.5
    raw_long = SETS["long-answer-bias"]()[0].mean()
    assert abs(long_bias.lc_win_rate - sigmoid(0.2)) < abs(raw_long - sigmoid(0.2))


def test_alpaca_evals_edges_are_reported_as_it_computes_them(alpaca_eval_offline):
    """Every comparison won: LC near 1; every one lost: alpaca_eval's fit keeps its coefficients
    at zero and gives 1/2 -- the docs say to read the raw rate there."""
    won = length_controlled(*SETS["all-wins"]())
    lost = length_controlled(*SETS["all-losses"]())
    assert won.lc_win_rate > 0.999
    assert lost.lc_win_rate == 0.5 and lost.length_coefficient == 0.0


def test_a_refit_at_the_chosen_penalty_is_the_cross_validated_fit():
    """The bootstrap refits at the penalty chosen on all prompts: on the same prompts that gives
    the cross-validated fit's own number."""
    y, policy, reference = SETS["n=805"]()
    fit = length_controlled(y, policy, reference)
    again = length_controlled(y, policy, reference, penalty_c=fit.penalty_c)
    assert again.lc_win_rate == pytest.approx(fit.lc_win_rate, abs=1e-9)
    assert again.length_coefficient == pytest.approx(fit.length_coefficient, abs=1e-9)


@pytest.mark.parametrize(
    "name", ["long-answer-bias", "n=10", "ties", "all-wins", "n=805-probabilities"]
)
def test_the_bootstraps_refit_is_alpaca_evals_fixed_penalty_fit(name):
    """refit_lc (no patsy, no pandas) against alpaca_eval's own code at the same penalty, on
    resamples like the bootstrap's, one with every length difference equal among them: the same
    coefficients; the rate one prediction where alpaca_eval averages n equal ones (an ulp)."""
    y, policy, reference = SETS[name]()
    c = length_controlled(y, policy, reference).penalty_c
    rng = np.random.default_rng(0)
    takes = [rng.integers(0, len(y), len(y)) for _ in range(20)] + [np.zeros(len(y), int)]
    for take in takes:
        expected = length_controlled(y[take], policy[take], reference[take], penalty_c=c)
        got = refit_lc(y[take], policy[take], reference[take], c)
        assert got == pytest.approx(expected.lc_win_rate, rel=0, abs=1e-12)


# --- where alpaca_eval's fit cannot run ------------------------------------------------------


@pytest.mark.parametrize("n", range(1, FOLDS))
def test_fewer_comparisons_than_folds_give_no_lc_rate(n):
    y, policy, reference = comparisons(n, 1.0)
    assert length_controlled(y, policy, reference) is None
    result = win_rates(y, policy, reference, bootstrap=10, confidence=0.95)
    assert result.lc_win_rate is None and result.lc_win_rate_ci is None
    assert result.length_coefficient is None
    assert result.win_rate == y.mean()


def test_folds_is_alpaca_evals_own_split_count(alpaca_eval_offline):
    y, policy, reference = comparisons(FOLDS - 1, 1.0)
    with pytest.raises(ValueError, match="number of splits"):
        alpaca_eval_lc(alpaca_eval_offline, y, policy, reference)
    y, policy, reference = comparisons(FOLDS, 1.0)
    assert alpaca_eval_lc(alpaca_eval_offline, y, policy, reference)["n_total"] == FOLDS


def test_equal_lengths_give_the_length_term_zero():
    """d = 0 everywhere: alpaca_eval would divide 0 by 0; here the length column is 0."""
    y, policy, _ = comparisons(200, 0.0, seed=9)
    frame = winrate.design(y, policy, policy)
    assert (frame["std_delta_len"] == 0).all()
    fit = length_controlled(y, policy, policy)
    assert fit.length_coefficient == 0.0
    assert 0.0 < fit.lc_win_rate < 1.0


@pytest.mark.parametrize("varying_lengths", [False, True], ids=["equal-lengths", "varying"])
def test_the_reference_against_itself_wins_exactly_half_with_a_point_interval(varying_lengths):
    """Identical answers are ties, p = 1/2, without asking the judge."""
    n = 40
    y = outcomes(np.full(n, 0.5), discrete=True)
    rng = np.random.default_rng(2)
    reference = rng.integers(100, 1000, n)
    policy = reference + rng.integers(-200, 200, n) if varying_lengths else reference
    result = win_rates(y, policy, reference, bootstrap=50, confidence=0.95, seed=0)
    assert result.win_rate == 0.5
    assert result.lc_win_rate == 0.5
    assert result.length_coefficient == 0.0
    assert result.standard_error == 0.0
    assert result.win_rate_ci == (0.5, 0.5)
    assert result.lc_win_rate_ci == (0.5, 0.5)


# --- the bootstrap summary -------------------------------------------------------------------


def test_win_rates_reports_the_raw_rate_its_standard_error_and_the_fit():
    y, policy, reference = SETS["long-answer-bias"]()
    result = win_rates(y, policy, reference, bootstrap=50, confidence=0.95, seed=0)
    fit = length_controlled(y, policy, reference)
    assert result.n == len(y)
    assert result.win_rate == y.mean()
    assert result.standard_error == pytest.approx(np.std(y, ddof=1) / np.sqrt(len(y)), rel=1e-12)
    assert result.lc_win_rate == fit.lc_win_rate
    assert result.length_coefficient == fit.length_coefficient


def test_win_rate_intervals_are_ordered_within_zero_and_one_and_hold_the_estimate():
    y, policy, reference = SETS["long-answer-bias"]()
    result = win_rates(y, policy, reference, bootstrap=200, confidence=0.95, seed=0)
    for (low, high), estimate in (
        (result.win_rate_ci, result.win_rate),
        (result.lc_win_rate_ci, result.lc_win_rate),
    ):
        assert 0.0 <= low <= estimate <= high <= 1.0
        assert high - low > 0.02  # 300 comparisons: an interval, not a point


def test_win_rates_are_identical_for_the_same_seed():
    y, policy, reference = SETS["n=10"]()
    first = win_rates(y, policy, reference, bootstrap=50, confidence=0.9, seed=11)
    second = win_rates(y, policy, reference, bootstrap=50, confidence=0.9, seed=11)
    assert first == second


def test_a_higher_confidence_gives_an_interval_containing_the_lower_confidence_one():
    y, policy, reference = SETS["no-length-signal"]()
    narrow = win_rates(y, policy, reference, bootstrap=200, confidence=0.8, seed=3)
    wide = win_rates(y, policy, reference, bootstrap=200, confidence=0.99, seed=3)
    for (low, high), (wide_low, wide_high) in (
        (narrow.win_rate_ci, wide.win_rate_ci),
        (narrow.lc_win_rate_ci, wide.lc_win_rate_ci),
    ):
        assert wide_low <= low <= high <= wide_high
    assert wide.win_rate_ci[1] - wide.win_rate_ci[0] > narrow.win_rate_ci[1] - narrow.win_rate_ci[0]


def test_win_rates_of_a_single_comparison_has_zero_standard_error():
    result = win_rates(np.array([1.0]), [10], [20], bootstrap=10, confidence=0.95, seed=0)
    assert result.n == 1
    assert result.win_rate == 1.0
    assert result.standard_error == 0.0


@pytest.mark.parametrize(
    ("y", "confidence", "match"),
    [
        ([], 0.95, "no comparisons"),
        ([0.5, 1.5, 0.0, 1.0, 1.0], 0.95, r"in \[0, 1\]"),
        ([0.5, np.nan, 0.0, 1.0, 1.0], 0.95, r"in \[0, 1\]"),
        ([0.5, 1.0, 0.0, 1.0, 1.0], 1.0, "confidence"),
    ],
)
def test_win_rates_refuses_what_it_cannot_rate(y, confidence, match):
    lengths = np.full(len(y), 10)
    with pytest.raises(ValueError, match=match):
        win_rates(np.array(y), lengths, lengths + 1, bootstrap=10, confidence=confidence)
