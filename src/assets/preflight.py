"""Every check `python -m src.main` makes before a stage runs, cheapest failure first: a pairs
file of the user's own that the training would read (training.pairs), the plan's fit on this
machine's GPU (a run that cannot fit stops in a second, not at its first out-of-memory an hour
in), the tiny models the command names (built where missing: minutes, once), then what the
stages still to run read from outside (the OpenAI key AlpacaEval's judge needs; with the Hub
offline, every model, judge and dataset read by hub id, in the Hub cache).

It runs once the records have chosen what runs (src/schedule.py: `iterations`), so that a
refusal the records make comes before any of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.config import Config, Stage
from src.core.errors import StageError
from src.core.fingerprints import read_upstream
from src.core.staleness import state_of
from src.plan.stages import require_fit_here
from src.tiny.on_demand import ensure_tiny_models
from src.training.pairs_file import own_pairs_problem


def preflight(configs: Sequence[Config], command: str, overrides: list[str]) -> None:
    """The checks for the iterations a command runs (`configs`, in order, its own last)."""
    cfg = configs[-1]
    require_own_pairs(configs)
    require_fit_here(cfg, overrides)  # on a GPU: what cannot fit stops here, exit 2
    ensure_tiny_models(cfg)
    require_assets_here(configs, command)


def runs(cfg: Config, stage: Stage) -> bool:
    """Whether `stage` of `cfg`'s iteration runs, when the command runs it: not finished with
    this config, or redone (pipeline.redo: the stages of the iteration from one on)."""
    return bool(cfg.pipeline.redo) or state_of(cfg.as_tree(), stage).status != "done"


def require_own_pairs(configs: Sequence[Config]) -> None:
    """Where an iteration the command trains reads a pairs file of the user's own
    (training.pairs), that it is a file the training reads: refused here, exit 1, before any
    folder is made (the run's, named after the file: `...-pairs-<file name>`), not once the
    train stage has started."""
    for c in configs:
        if Stage.train not in c.stages():
            continue
        if read_upstream(c.as_tree(), Stage.train) is not None or not runs(c, Stage.train):
            continue  # the pairs stage's file, made by the run; or trained already
        problem = own_pairs_problem(c.training.pairs)
        if problem:
            raise StageError(f"training.pairs={c.training.pairs}: {problem}")


def require_assets_here(configs: Sequence[Config], command: str) -> None:
    """Before any of the stages still to run starts, what they read from outside is here: the
    OpenAI key eval.alpaca_eval=true's judge needs (no fetch makes it); with the Hub offline,
    every model, judge and dataset they read by hub id, in the Hub cache (else each missing one
    is named, src/assets/check.py); then an answer from OpenAI's API. Each stops the command with
    exit 3. A local file or folder is left to the stage that reads it, whose message names its
    key (a pairs file of the user's own excepted: `require_own_pairs`)."""
    from huggingface_hub import constants

    from src.assets.check import listed_for, require_assets
    from src.evaluation.alpaca_eval import require_alpaca_eval_judge

    stages = configs[-1].stages()
    todo = {c.iter: [s for s in stages if runs(c, s)] for c in configs}
    judged = any(c.eval.alpaca_eval and Stage.eval in todo[c.iter] for c in configs)
    if judged:
        require_alpaca_eval_judge(reach=False)
    if constants.is_offline_mode():
        hub = [e for e in listed_for(configs, todo) if e.asset.on_hub]
        require_assets(hub, configs[-1], command.split()[3:], online=False)
    if judged:
        require_alpaca_eval_judge()
