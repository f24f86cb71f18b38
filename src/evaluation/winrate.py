"""Win rates of a policy against a reference, raw and length-controlled, with intervals.

One comparison per instruction i gives the judge's probability p_i that the policy's answer
beats the reference's; identical answers are a tie, p_i = 1/2, without asking the judge
(AlpacaEval does the same). The outcome scored is either

- discrete: y_i = 1 if p_i > 1/2, 0 if p_i < 1/2, 1/2 on a tie (ties counted half), or
- probability: y_i = p_i (AlpacaEval 2's "weighted" win rate),

and the raw win rate is mean(y), its standard error std(y) / sqrt(n) (ddof 1): AlpacaEval's
`win_rate` and `standard_error`.

Length control is AlpacaEval's own (Dubois et al. 2024, "Length-Controlled AlpacaEval",
arXiv 2404.04475), computed by the `alpaca_eval` package's code: `lc_win_rate` equals what
`alpaca_eval.metrics.get_length_controlled_winrate(annotations,
glm_name="length_controlled_minimal")` returns for the same judgements (tests/evaluation/test_eval_winrate.py
checks this to 1e-6). That GLM, in its own terms:

    P(policy wins | i) = sigmoid(w_len tanh(s_i) + w_0),   s_i = d_i / std(d),
    d_i = len(reference answer_i) - len(policy answer_i)   (characters; std with ddof 1),

fitted by alpaca_eval's `fit_LogisticRegressionCV`: a logistic regression without intercept
(w_0 is the coefficient of its constant `not_gamed_baseline` column) with an L1 penalty whose
strength is chosen among ten by 5-fold cross-validation of the log loss, the outcomes y_i as
fractional targets (liblinear, random_state 123). `lc_win_rate` is the fit's prediction at zero
length difference, sigmoid(w_0).

The AlpacaEval 2 leaderboard uses `length_controlled_v1`, which adds two things that exist only
for AlpacaEval's own 805 instructions judged by its GPT-4 Turbo annotator: an instruction-
difficulty term (one number per instruction, fitted on every leaderboard model's annotations)
and a regularisation towards two deliberately length-gamed baselines. A local judge on other
instructions has neither, so the eval stage reports the minimal GLM; `eval.alpaca_eval=true`
(src/evaluation/alpaca_eval.py) gets the leaderboard's own figures from alpaca_eval itself.

What alpaca_eval's fit gives, reported as it is: the L1 penalty shrinks w_0 as well, so LC sits
a little nearer 1/2 than the raw rate even where the length term is 0; with every comparison
won, LC ~ 1; with every comparison lost, LC = 1/2 (the coefficients stay at zero), so read the
raw rate there. Where alpaca_eval cannot fit, this module says so: fewer than 5 comparisons
(no 5-fold split) give no LC (None); a length difference with no spread (0 / 0) gives the length
term 0, the intercept alone.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

with warnings.catch_warnings():  # alpaca_eval 0.6.6 imports setuptools' deprecated pkg_resources
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from alpaca_eval.metrics.glm_winrate import (
        GLM_INFO,
        fit_LogisticRegressionCV,
        make_dmatrix_for_model,
    )

TIE_ATOL = 1e-6  # |p - 1/2| below this is a tie (the judge cannot tell the answers apart)
GLM = "length_controlled_minimal"  # alpaca_eval's GLM without the 805-instruction terms
FOLDS = GLM_INFO[GLM]["kwargs"]["n_splits"]  # the fewest comparisons its cross-validation takes
LENGTH_TERM = "np.tanh(std_delta_len)"  # the length column of its design matrix


def outcomes(preferences: np.ndarray, discrete: bool) -> np.ndarray:
    """y_i from the judge's probabilities p_i (see the module docstring)."""
    p = np.asarray(preferences, dtype=np.float64)
    if not discrete:
        return p
    return np.where(np.abs(p - 0.5) <= TIE_ATOL, 0.5, (p > 0.5).astype(np.float64))


def design(y: np.ndarray, policy_lengths: np.ndarray, reference_lengths: np.ndarray):
    """alpaca_eval's training frame for the minimal GLM (its `_get_featurized_data` without the
    instruction-difficulty columns that GLM does not read): the target, s_i and the constant."""
    d = pd.Series(
        np.asarray(reference_lengths, np.float64) - np.asarray(policy_lengths, np.float64)
    )
    s = (d / d.std()).fillna(0.0)  # 0 / 0: no spread, or a single comparison: no length term
    return pd.DataFrame({"preference": y, "std_delta_len": s, "not_gamed_baseline": True})


@contextmanager
def _sklearn_quietly():
    # scikit-learn 1.9 warns on every fit about the arguments alpaca_eval 0.6.6 passes (it still
    # applies them: penalty="l1"), and liblinear on a set every comparison of which is won
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"sklearn\.")
        yield


@dataclass(frozen=True)
class LengthControl:
    lc_win_rate: float  # sigmoid(w_0): the predicted win rate at zero length difference
    length_coefficient: float  # -w_len: > 0 means the judge favours the longer answer
    penalty_c: float  # the inverse L1 strength the cross-validation chose


def length_controlled(
    y: np.ndarray,
    policy_lengths: np.ndarray,
    reference_lengths: np.ndarray,
    penalty_c: float | None = None,
) -> LengthControl | None:
    """alpaca_eval's minimal GLM fitted to outcomes y and the answers' lengths; None below
    FOLDS comparisons. `penalty_c`: refit at this strength instead of cross-validating it."""
    y = np.asarray(y, np.float64)
    if len(y) < FOLDS:
        return None
    frame = design(y, policy_lengths, reference_lengths)
    at_zero = frame.drop(columns="preference").assign(std_delta_len=0.0)
    train, test = make_dmatrix_for_model(frame, at_zero, formula=GLM_INFO[GLM]["formula"])
    with _sklearn_quietly():
        if penalty_c is None:
            model = fit_LogisticRegressionCV(
                train, "preference", is_ytrue_proba=True, **GLM_INFO[GLM]["kwargs"]
            )
            penalty_c = float(np.ravel(model.C_)[0])
        else:
            model = fit_LogisticRegressionCV(
                train, "preference", is_ytrue_proba=True, n_splits=0, C=penalty_c
            )
        predicted = model.predict_proba(test)[:, 1]
    weights = dict(zip(train.columns.drop("preference"), model.coef_[0], strict=True))
    return LengthControl(
        lc_win_rate=float(predicted.mean()),
        length_coefficient=0.0 - float(weights[LENGTH_TERM]),  # 0.0 - 0.0: no "-0.0"
        penalty_c=penalty_c,
    )


def refit_lc(
    y: np.ndarray, policy_lengths: np.ndarray, reference_lengths: np.ndarray, penalty_c: float
) -> float:
    """`length_controlled(..., penalty_c).lc_win_rate` in a third of its time, for the bootstrap:
    the same design (the formula's two columns, tanh(s) and the constant, in its order) and the
    same fit as alpaca_eval's fixed-penalty path (each outcome twice, label 1 weighted y and label
    0 weighted 1 - y; liblinear, L1, no intercept, random_state 123), without patsy or pandas.
    tests/evaluation/test_eval_winrate.py checks the two agree."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, np.float64)
    s = design(y, policy_lengths, reference_lengths)["std_delta_len"].to_numpy()
    x = np.column_stack([np.tanh(s), np.ones_like(s)])
    model = LogisticRegression(
        C=penalty_c, penalty="l1", solver="liblinear", fit_intercept=False, random_state=123
    )
    with _sklearn_quietly():
        model.fit(
            np.vstack([x, x]),
            np.r_[np.ones_like(y), np.zeros_like(y)],
            sample_weight=np.r_[y, 1.0 - y],
        )
        return float(model.predict_proba(np.array([[0.0, 1.0]]))[0, 1])


@dataclass
class WinRates:
    n: int
    win_rate: float
    lc_win_rate: float | None  # None below FOLDS comparisons
    length_coefficient: float | None  # > 0 means the judge favours the longer answer
    standard_error: float  # of win_rate: std(y) / sqrt(n), as AlpacaEval reports it
    win_rate_ci: tuple[float, float]
    lc_win_rate_ci: tuple[float, float] | None


def win_rates(
    y: np.ndarray,
    policy_lengths: np.ndarray,
    reference_lengths: np.ndarray,
    bootstrap: int,
    confidence: float,
    seed: int = 0,
) -> WinRates:
    """Raw and length-controlled win rates with percentile bootstrap intervals over prompts.
    Each resample refits the GLM at the penalty the cross-validation chose on all prompts
    (cross-validating every resample again would cost ~16 times as much)."""
    y = np.asarray(y, np.float64)
    ours, theirs = np.asarray(policy_lengths), np.asarray(reference_lengths)
    n = len(y)
    if n == 0:
        raise ValueError("no comparisons to compute a win rate from")
    if not np.all((y >= 0) & (y <= 1)):  # also false for NaN
        raise ValueError("outcomes must be numbers in [0, 1]")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be in (0, 1)")
    fit = length_controlled(y, ours, theirs)
    rng = np.random.default_rng(seed)
    raw, lc = np.empty(bootstrap), np.empty(bootstrap)
    for r in range(bootstrap):
        take = rng.integers(0, n, n)
        raw[r] = y[take].mean()
        if fit is not None:
            lc[r] = refit_lc(y[take], ours[take], theirs[take], fit.penalty_c)
    tail = (1 - confidence) / 2 * 100

    def interval(samples: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(samples, [tail, 100 - tail])
        return float(low), float(high)

    return WinRates(
        n=n,
        win_rate=float(y.mean()),
        lc_win_rate=None if fit is None else fit.lc_win_rate,
        length_coefficient=None if fit is None else fit.length_coefficient,
        standard_error=float(y.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        win_rate_ci=interval(raw),
        lc_win_rate_ci=None if fit is None else interval(lc),
    )
