"""A lineage's curve run in W&B: its figures by iteration, the run researchers compare lineages by.

Each stage of an iteration is a W&B run of its own (src/stages/report/tracking.py), holding that
stage's numbers; none of them draws win rate against iteration. So every lineage also has one curve
run (job_type `curves`, a deterministic id; named by what its sweep varies, `method.eta=10`,
else `<run_name>`: `curve_name`), written by every command of it, on
its rank-0 process, once the iteration's stages it ran are done; by a command that ran none (a sweep
point already finished, a lineage made with `logger=none`) from its records, tagged `reused`. It
logs one row per iteration with `iteration` as the step metric (`define_metric`), holding the
figures `python -m src.compare` shows for it — read from the same files, by the same code
(src/stages/report/results.py): the eval's win rates, their intervals and the answers' average
lengths, each benchmark by its judge, the evals against other references; the training's final loss,
reward margin and accuracy; the pairs' mean chosen probability and score margin; the generation's
tokens/s and mean response length.

A row holds only what the run does not hold yet: a resumed run (online, W&B gives back its
summary, where the run keeps what it logged) adds the figures that are new or changed, so an
iteration interrupted and resumed adds no duplicate point. An offline run cannot be resumed
(W&B makes each `wandb.init` offline a new segment of the run, and `wandb sync` of a later
segment replaces the earlier's history): each offline segment logs the whole curve, the last
one complete. Sweep points carry the sweep's name as their group and the swept values in their
config (`logger.sweep`, `logger.swept`, set by src.sweep), so W&B groups and colours them; the
sweep is recorded in the lineage's folder (SWEEP_RECORD), so that a later command on the lineage,
which names none, writes its segments in the same group (a sync of a segment sets the run's).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from src.config import Config
from src.core.artifacts import atomic_write_json, read_json
from src.core.errors import StageError
from src.core.fingerprints import lookup
from src.core.layout import SWEEP_RECORD, RunLayout
from src.stages.report.results import CURVES as JOB_TYPE
from src.stages.report.results import num, read_iteration
from src.stages.report.tracking import enabled, flat_config, lineage

STEP = "iteration"
# the summary key where a curve run keeps what it logged: {iteration: {figure: value}}
LOGGED = "_curve_points"
# columns of src.compare's row that are not figures of the iteration
NOT_FIGURES = {"model", "method", "run_name", "iter", "eta", "beta", "lr", "K", "loss_type",
               "stages_done"}  # fmt: skip


def curve_id(cfg: Config) -> str:
    return hashlib.sha256(f"{Path(cfg.run.dir).resolve()}|{JOB_TYPE}".encode()).hexdigest()[:16]


def figures(layout: RunLayout, t: int) -> dict[str, float]:
    """Iteration t's figures, as src.compare reads them from its stages' files: the numbers of
    its row, each interval as `<figure>_low` / `<figure>_high`."""
    row = read_iteration(layout, t).row
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in NOT_FIGURES:
            continue
        if key.endswith("_ci") and isinstance(value, tuple):
            out[f"{key[:-3]}_low"], out[f"{key[:-3]}_high"] = value
        elif (number := num(value)) is not None:
            out[key] = number
    return out


def curve(cfg: Config) -> dict[int, dict[str, float]]:
    """Every iteration of the lineage with a figure, by iteration."""
    each = {t: figures(cfg.layout, t) for t in cfg.layout.iterations()}
    return {t: points for t, points in each.items() if points}


def sweep_of(cfg: Config) -> tuple[str | None, list[str]]:
    """The sweep the lineage is a point of and the keys it sweeps: the command's own
    (`logger.sweep`, `logger.swept`: src.sweep sets them on each point it launches), recorded
    in the lineage's folder; else the last one recorded there; (None, []): no sweep ran it."""
    path = Path(cfg.run.dir) / SWEEP_RECORD
    if cfg.logger.sweep:
        sweep, swept = cfg.logger.sweep, list(cfg.logger.swept)
        atomic_write_json(path, {"sweep": sweep, "swept": swept})
        return sweep, swept
    if not path.is_file():
        return None, []
    again = "name its sweep again on the command (logger.sweep=<name> 'logger.swept=[<keys>]')"
    recorded = read_json(path, StageError, again=again)
    sweep, swept = recorded.get("sweep"), recorded.get("swept")
    if not (isinstance(sweep, str) and sweep and isinstance(swept, list)
            and all(isinstance(key, str) for key in swept)):  # fmt: skip
        raise StageError(f"{path} is not the sweep this project records (edited?); {again}")
    return sweep, swept


def swept_values(cfg: Config, swept: list[str]) -> dict[str, Any]:
    """The lineage's value of each key its sweep varies (`sweep_of`), by key."""
    tree = cfg.as_tree()
    return {key: lookup(tree, key) for key in swept}


def curve_config(cfg: Config, sweep: str | None, swept: list[str]) -> dict[str, Any]:
    """The stage runs' flat keys (eta, beta, lr, K, method, model) with the sweep's name and the
    values it sweeps, so that W&B colours the points of a sweep by them."""
    named = {"stage": JOB_TYPE, "lineage": lineage(cfg), "sweep": sweep,
             "run_name": cfg.run_name}  # fmt: skip
    return flat_config(cfg) | named | swept_values(cfg, swept)


def curve_name(cfg: Config, swept: list[str]) -> str:
    """The curve run's display name: a sweep's point by the values it sweeps, written as the
    sweep's overrides write them (`method.eta=10`: a number as the run directory's name writes
    it, a config group by the option chosen), so that W&B's run list names each point by what
    varies; a lineage no sweep ran (or a sweep of one point) by its run_name."""
    if not swept:
        return cfg.run_name
    shown = []
    for key, value in swept_values(cfg, swept).items():
        if isinstance(value, dict):  # a config group (model, method): the option's name
            value = value.get("name")
        shown.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(shown)


def log_curve(cfg: Config, reused: bool = False) -> None:
    """Open (or resume) the lineage's curve run, log what it does not hold yet, close it; with
    `logger=none`, only the sweep that runs the lineage is recorded (`sweep_of`). `reused`: the
    command ran no stage, its curve is the records' (tagged `reused`)."""
    sweep, swept = sweep_of(cfg)
    if not enabled(cfg):
        return
    import wandb

    log = cfg.logger
    run = wandb.init(
        project=log.project,
        entity=log.entity,
        group=sweep or lineage(cfg),
        job_type=JOB_TYPE,
        name=curve_name(cfg, swept),
        id=curve_id(cfg),
        resume="allow",
        tags=[*log.tags, cfg.method.name.value, cfg.model.name, *(["reused"] if reused else [])],
        dir=log.dir,
        mode=log.mode.value,
        config=curve_config(cfg, sweep, swept),
        reinit="create_new",  # beside a stage's run, should one be open
    )
    try:
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)
        held = {t: dict(points) for t, points in (run.summary.get(LOGGED) or {}).items()}
        for t, new in unlogged(held, curve(cfg)):
            run.log({STEP: t, **new})
            held[str(t)] = {**held.get(str(t), {}), **new}
        run.summary[LOGGED] = held
    finally:
        run.finish()


def unlogged(
    held: dict[str, dict[str, float]], points: dict[int, dict[str, float]]
) -> list[tuple[int, dict[str, float]]]:
    """The figures of `points` (by iteration) that `held` (what the run logged, by iteration as
    text, as a W&B summary keeps keys) does not hold with the same value, iteration by
    iteration; iterations with none left out."""
    rows = []
    for t, figures_t in points.items():
        before = held.get(str(t)) or {}
        new = {k: v for k, v in figures_t.items() if before.get(k) != v}
        if new:
            rows.append((t, new))
    return rows
