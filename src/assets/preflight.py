"""Every check `python -m src.main` makes before a stage runs, cheapest first, and nothing
written before any of them refuses. First (`require_machine_and_keys`) the machine (a GPU asked
for where CUDA is not usable here) and the keys from the environment (the OpenAI key AlpacaEval's
judge needs), for what the command runs or the remedy of what it refuses would run; then what the
records refuse (src/schedule/plan.py: `refuse`); then (`preflight`) a pairs file of the user's own that
the training would read (training.pairs); the plan's fit on this machine's GPU (a run that cannot
fit stops in a second, not at its first out-of-memory an hour in); the tiny models the command
names (built where missing: minutes, once); then what the stages still to run read from outside
(with the Hub offline, every model, judge and dataset read by hub id, in the Hub cache; an answer
from OpenAI's API).

Each follows the plans the records made (src/schedule/plan.py: `iterations`), each iteration's once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from src.config import Config, Device, Peft, Stage
from src.core.errors import StageError, command_words
from src.core.fingerprints import read_upstream
from src.core.registry import STAGES
from src.plan.stages import require_fit_here
from src.tiny.on_demand import ensure_tiny_models
from src.training.pairs_file import own_pairs_problem


class Plan(Protocol):
    """What the checks read of an iteration's plan (src/schedule/plan.py: `Plan`, which stands above
    them): its config, the stages it runs and those it or its remedy would run."""

    cfg: Config

    def running(self) -> list[Stage]: ...

    def needs(self) -> list[Stage]: ...


def require_machine_and_keys(plans: Sequence[Plan]) -> None:
    """The checks made before the records are looked at: they cost nothing and no remedy of a
    refusal gets past them."""
    require_machine(plans)
    require_keys(plans)


def preflight(plans: Sequence[Plan], command: str, overrides: list[str]) -> None:
    """The checks made once the records refuse nothing, for the iterations a command runs
    (`plans`, in order, its own last)."""
    require_own_pairs(plans)
    require_fit_here(plans[-1].cfg, overrides)  # on a GPU: what cannot fit stops here, exit 2
    ensure_tiny_models(plans[-1].cfg)
    require_assets_here(plans, command)


def require_machine(plans: Sequence[Plan]) -> None:
    """Where a stage the command runs, or its remedy would, loads a model on CUDA hardware, that
    CUDA is usable here (src/core/devices.py names why not: a CPU build of torch, no driver, one
    too old): exit 3, before the records are looked at, a fetch or a folder. A 4-bit training
    names its own remedy (training.peft=lora), hardware=cpu not being one for it."""
    for plan in plans:
        loading = [s for s in plan.needs() if STAGES[s].loads_model]
        if plan.cfg.hardware.device != Device.cuda or not loading:
            continue
        if Stage.train in loading and plan.cfg.training.peft == Peft.qlora:
            from src.training.adapters import require_qlora_support

            require_qlora_support()
        from src.core.devices import device_for

        device_for(plan.cfg.hardware.device, plan.cfg.hardware.name)
        return  # one machine


def require_keys(plans: Sequence[Plan]) -> None:
    """The keys what the command runs, or the remedy of what it refuses would run, reads from the
    environment: the OpenAI key of eval.alpaca_eval=true's judge, which no fetch makes (exit 3,
    its fix the command without it), before a refusal whose remedy would need it too."""
    if any(p.cfg.eval.alpaca_eval and Stage.eval in p.needs() for p in plans):
        from src.evaluation.alpaca_eval import require_alpaca_eval_judge

        require_alpaca_eval_judge(reach=False)


def require_own_pairs(plans: Sequence[Plan]) -> None:
    """Where an iteration the command trains reads a pairs file of the user's own
    (training.pairs), that it is a file the training reads: refused here, exit 1, before any
    folder is made (the run's, named after the file: `...-pairs-<file name>`), not once the
    train stage has started."""
    for plan in plans:
        if Stage.train not in plan.running():
            continue  # trained already, or not by this command
        if read_upstream(plan.cfg.as_tree(), Stage.train) is not None:
            continue  # the pairs stage's file, made by the run
        problem = own_pairs_problem(plan.cfg.training.pairs)
        if problem:
            raise StageError(f"training.pairs={plan.cfg.training.pairs}: {problem}")


def require_assets_here(plans: Sequence[Plan], command: str) -> None:
    """Before any of the stages still to run starts, what they read from outside is here: with
    the Hub offline, every model, judge and dataset they read by hub id, in the Hub cache (else
    each missing one is named, src/assets/check.py); then, for eval.alpaca_eval=true, an answer
    from OpenAI's API. Each stops the command with exit 3. A local file or folder is left to the
    stage that reads it, whose message names its key (a pairs file of the user's own excepted:
    `require_own_pairs`)."""
    from huggingface_hub import constants

    from src.assets.check import listed_for, require_assets
    from src.evaluation.alpaca_eval import require_alpaca_eval_judge

    todo = {plan.cfg.iter: plan.running() for plan in plans}
    configs = [plan.cfg for plan in plans]
    if constants.is_offline_mode():
        hub = [e for e in listed_for(configs, todo) if e.asset.on_hub]
        require_assets(hub, configs[-1], command_words(command)[3:], online=False)
    if any(c.eval.alpaca_eval and Stage.eval in todo[c.iter] for c in configs):
        require_alpaca_eval_judge()
