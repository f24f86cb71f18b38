"""`method`: the preference-optimisation method (conf/method/)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import SI

from src.config.checks import _check, _positive, check_numbers, check_path_component
from src.config.choices import Loss, MethodName, PairSelection


@dataclass
class MethodConfig:
    """The preference-optimisation method (conf/method/)."""

    name: MethodName  # names the run directory and tags the runs
    loss: Loss  # the preference loss (docs/design.md §6)
    K: int = 5  # responses sampled per prompt
    eta: float = 1000.0  # SPPO's eta; always 1/beta: a method sets one, the other follows
    beta: float = SI("${reciprocal:${.eta}}")  # the loss's beta, 1/eta
    label_smoothing: float = 0.0  # DPO sigmoid only
    wpo_weight: bool = False  # multiply the pairwise loss by the WPO weight (docs/design.md §6.3)
    wpo_clamp: float | None = 1.0  # W = min(clamp, exp(m_w + m_l)); null: unclamped
    pair_selection: PairSelection = PairSelection.argmax_argmin  # which two responses pair up
    tag: str = SI("eta${num:${.eta}}")  # the hyper-parameters' part of the default run_name

    def __post_init__(self) -> None:
        check_numbers(self, "method.")
        check_path_component("method.tag", self.tag)  # the default run_name starts with it
        _check(self.K >= 2, "method.K", self.K, "must be >= 2 (a pair needs two responses)")
        _positive("method.eta", self.eta)
        _positive("method.beta", self.beta)
        _check(
            math.isclose(self.eta * self.beta, 1.0, rel_tol=1e-9),
            "method.beta",
            self.beta,
            f"must equal 1/method.eta (eta={self.eta:g}); set one of them, the other follows",
        )
        _check(
            0.0 <= self.label_smoothing < 0.5,
            "method.label_smoothing",
            self.label_smoothing,
            "must be in [0, 0.5)",
        )
        if self.wpo_clamp is not None:
            _positive("method.wpo_clamp", self.wpo_clamp)
