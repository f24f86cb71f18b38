"""The iteration scheduler: which stages of which iterations run, are skipped as finished, are
refused as made under another config, or are redone (`pipeline.redo`); each stage runs inside
its W&B run, after its resolved config is saved beside its output, and the record it returns is
written last, as its `done.json` (src/stages/__init__.py: who writes each stage's record).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from src.config import Config, PipelineConfig, Stage, pairs_lineage, to_yaml
from src.core import locks
from src.core.errors import RedoStale, StageError, with_overrides
from src.core.fingerprints import read_upstream
from src.core.layout import RECORD, RunLayout
from src.core.machine import node_rank
from src.core.records import read_record, write_record
from src.core.redo import set_aside
from src.core.registry import FOLDER_INPUTS, STAGES
from src.core.staleness import StageState, Why, redo_for, save_config, saved_config, state_of
from src.stages import StageResult, StageRun, stage_run
from src.stages.common import stage_shard
from src.stages.report import curves, tracking


def stage_runners(stages: list[Stage]) -> dict[Stage, StageRun]:
    """Each stage's `run(cfg)` (src/stages/__init__.py), imported once the config is valid and
    only for the stages that run. transformers' model code goes in here too, before any stage
    starts, where one of them loads a model: a stage's peak memory is measured from its start,
    and that import (~150 MiB) during it would count in it (tests/tools/test_plan_measured.py)."""
    runners = {s: stage_run(s) for s in stages}
    if any(STAGES[s].loads_model for s in stages):
        import transformers.modeling_utils  # noqa: F401
    return runners


def iterations(cfg: Config, config_for_iter: Callable[[int], Config] | None = None) -> list[Config]:
    """The iterations a command runs, in order, its own last: for `stage=all`, first any earlier
    one not yet done (`config_for_iter(t)`: the command line's config at iter=t; without it
    only iteration `cfg.iter` is considered). What the records refuse in any of them is refused
    here, before the stages' libraries load (seconds) and any build (minutes)."""
    stages = cfg.stages()
    earlier: list[tuple[Config, str]] = []
    if cfg.stage == Stage.all and cfg.iter > 1 and config_for_iter is not None:
        earlier = unfinished_iterations(cfg, stages, config_for_iter)
    refuse_stale([*(c for c, _ in earlier), cfg], stages)
    for before, why in earlier:  # said once nothing is refused
        print(f"[main] iteration {before.iter} {why}: running it first", file=sys.stderr)
    return [*(c for c, _ in earlier), cfg]


def dispatch(configs: list[Config], command: str) -> None:
    """Run the stages of each iteration `iterations` chose, the earlier ones first."""
    *earlier, cfg = configs
    runners = stage_runners(cfg.stages())
    for before in earlier:
        run_iteration(before, runners, with_overrides(command, f"iter={before.iter}"))
    run_iteration(cfg, runners, command)


def unfinished_iterations(
    cfg, stages: Collection[Stage], config_for_iter
) -> list[tuple[Config, str]]:
    """The earlier iterations `stage=all` runs first, each with why: those not finished with this
    config (none with `pipeline.require_previous`, which needs iteration t-1 trained)."""
    if cfg.pipeline.require_previous:
        previous = Path(cfg.run.init_policy)
        if read_record(previous.parent) is None:
            raise StageError(
                f"iteration {cfg.iter} starts from iteration {cfg.iter - 1}'s checkpoint {previous}, "
                "which is not finished (pipeline.require_previous=true); finish it first",
                fix=f"iter={cfg.iter - 1}",
            )
        return []
    unfinished = []
    for t in range(1, cfg.iter):
        # never redo implicitly: only what is stale, and only when asked (pipeline.redo_stale)
        earlier = replace(
            config_for_iter(t), pipeline=PipelineConfig(redo_stale=cfg.pipeline.redo_stale)
        )
        statuses = {state_of(earlier.as_tree(), s).status for s in stages}
        if statuses == {"done"} and not (cfg.pipeline.redo_stale and stale_side_evals(earlier)):
            print(f"[main] iteration {t}: finished with this config", file=sys.stderr)
            continue
        why = "is not done" if "todo" in statuses else "has stale stages (pipeline.redo_stale)"
        unfinished.append((earlier, why))
    return unfinished


def refuse_stale(configs: list[Config], stages: Collection[Stage]) -> None:
    """What `run_iteration` would refuse in any iteration the command runs, refused before any
    of them starts (and before a tiny chat judge's build of minutes): one iteration's as it says
    it, several iterations' as one refusal whose fix redoes each stale stage in order. Only a
    refusal the records decide whatever is built: any but a benchmark folder's content (the tiny
    benchmarks' data, which their build makes again)."""
    found = []
    for c in configs:
        refused = first_refusal(iteration_plan(c, stages))
        if refused and (refused.stale.earlier_version or any(
            change.cause not in (Why.content, Why.gone) or change.key not in FOLDER_INPUTS
            for change in refused.stale.changed
        )):  # fmt: skip
            found.append((c.iter, refused))
    # a training on other pairs than its checkpoint's: a lineage of its own, never a redo of them
    elsewhere = [step.error for _, step in found if other_pairs(step.stale)]
    if len(found) == 1 or elsewhere:
        raise (elsewhere or [found[0][1].error])[0]
    if found:
        named = [f"iteration {t}'s {step.stale.stage.value}" for t, step in found]
        which = f"{', '.join(named[:-1])} and {named[-1]}"
        why = " | ".join(dict.fromkeys("; ".join(step.stale.changed) for _, step in found))
        raise StageError(
            f"{which} were made with a different configuration ({why or 'an earlier version'}); "
            "restore the config, or redo every stale stage, in order, in one command",
            RedoStale(),
        )


@dataclass(frozen=True)
class Step:
    """What an iteration does with one of its stages, and why: `reason`, what the console says
    of a stage skipped or redone (of a refusal: the error's message)."""

    stage: Stage
    action: str  # "skip" | "run" | "redo" | "refuse"
    reason: str
    # a refusal: the stage finished under another config (this one, or the one it reads) and
    # the error that refuses it
    stale: StageState | None = None
    error: StageError | None = None


SKIPPED = "finished with this config, skipped"


def plan_iteration(
    states: list[StageState], cfg: Config, upstream: StageState | None = None
) -> list[Step]:
    """Each stage's step, in order, decided from the stages' `states` alone (no file is read).

    `pipeline.redo` redoes the first stage it names and every one after it; with
    `pipeline.redo_stale`, the first stale one and every one after it. A stage finished under
    another config before that is refused (never reused, never redone unasked), as is the first
    stage when the stage it reads, `upstream` (its state, when this command does not run it),
    was finished under another config: its rows would be read as if made under this one. A
    stage finished under this config is skipped; the rest run."""
    redone = [st.stage in cfg.pipeline.redo or (cfg.pipeline.redo_stale and st.status == "stale")
              for st in states]  # fmt: skip
    redo_from = redone.index(True) if any(redone) else len(states)
    steps = []
    for i, st in enumerate(states):
        if st.status == "stale" and i < redo_from:
            later = [s.stage.value for s in states[i + 1 :] if s.status != "todo"]
            also = f" (and so {', '.join(later)} after it)" if later else ""
            err = refused(cfg, st, f"restore the config, or redo it{also}")
            steps.append(Step(st.stage, "refuse", str(err), st, err))
        elif i == 0 and upstream is not None and upstream.status == "stale":
            advice = f"stage {st.stage.value} reads it: restore the config, or redo it first"
            err = refused(cfg, upstream, advice)
            steps.append(Step(st.stage, "refuse", str(err), upstream, err))
        elif i >= redo_from:
            steps.append(Step(st.stage, "redo", redo_reason(cfg)))
        elif st.status == "done":
            steps.append(Step(st.stage, "skip", SKIPPED))
        else:
            steps.append(Step(st.stage, "run", "not finished with this config: running it"))
    return steps


def redo_reason(cfg: Config) -> str:
    return f"redoing ({'pipeline.redo' if cfg.pipeline.redo else 'pipeline.redo_stale'})"


def iteration_plan(cfg: Config, stages: Collection[Stage]) -> list[Step]:
    """`plan_iteration` of the stages the command runs in iteration `cfg`, from their records
    (and that of the stage the first one reads, when the command does not run it)."""
    tree = cfg.as_tree()
    states = [state_of(tree, s) for s in stages]
    upstream = read_upstream(tree, states[0].stage)
    read = None
    if upstream is not None and upstream not in stages:
        read = state_of(tree, upstream)
    return plan_iteration(states, cfg, read)


def first_refusal(steps: list[Step]) -> Step | None:
    """The refusal an iteration meets first (its stages' own before the one they read)."""
    refusals = [step for step in steps if step.action == "refuse"]
    own = [step for step in refusals if step.stale.stage == step.stage]
    return (own or refusals or [None])[0]


def run_iteration(cfg: Config, runners: dict, command: str) -> None:
    """Skip the stages finished under this config, refuse those finished under another (before
    any work) and those that would read an earlier stage's output made under another, redo what
    `pipeline.redo` names and everything after it, run the rest (`plan_iteration`)."""
    steps = iteration_plan(cfg, runners)
    refusal = first_refusal(steps)
    if refusal is not None:
        raise refusal.error
    print(f"[main] iteration {cfg.iter} of {cfg.run.dir}", file=sys.stderr)
    print(f"[main] policy pi_{cfg.iter - 1}: {cfg.run.init_policy}", file=sys.stderr)
    redone = [step.stage for step in steps if step.action == "redo"]
    ran = []
    other_node = other_training_node(cfg)
    with rewriting(cfg, redone, command, other_node):
        for step in steps:
            if step.action == "skip":
                say(step)
                continue
            redoing = step.action == "redo"
            with writing(cfg, step.stage, command, redoing, other_node):
                run_stage(cfg, step.stage, runners[step.stage], command, redoing)
            release_gpu_memory()
            ran.append(step.stage)
    if cfg.pipeline.redo_stale and not other_node:
        for side in stale_side_evals(cfg):
            print(f"[main] {side.stage_dir(Stage.eval)}: made before this checkpoint was "
                  "trained again: redoing it (pipeline.redo_stale)", file=sys.stderr)  # fmt: skip
            with writing(side, Stage.eval, command, True, other_node):
                run_stage(side, Stage.eval, stage_run(Stage.eval), command, redoing=True)
            ran.append(Stage.eval)
    if not other_node and not any(one_of_shards(cfg, s) for s in runners):
        # once the iteration's stages it ran are done; none ran: from the records, marked so (a
        # sweep point or a lineage made with logger=none appears in W&B all the same)
        curves.log_curve(cfg, reused=not ran)


def stale_side_evals(cfg: Config) -> list[Config]:
    """The iteration's finished evals against other references (`eval/vs-<name>/`) that are
    stale under this config with the eval settings each was made with (made before the training
    last finished, or from another config), each as the config that makes it again; one whose
    settings no longer compose is named and left as it is."""
    from omegaconf import OmegaConf

    from src.config import ConfigError, validate

    found = []
    for folder in cfg.layout.side_evals(cfg.iter):
        made_with = saved_config(cfg.as_tree(), Stage.eval, folder)
        if made_with is None or read_record(folder) is None:
            continue  # unfinished: the command that made it finishes it
        try:
            tree = OmegaConf.merge(OmegaConf.create(cfg.as_tree()), {"eval": made_with["eval"]})
            side = validate(tree)
        except (ConfigError, KeyError, TypeError) as err:
            print(f"[main] {folder}: its eval settings do not compose now ({err}): left as "
                  "it is", file=sys.stderr)  # fmt: skip
            continue
        if side.stage_dir(Stage.eval) != folder:
            continue  # named by another rule than today's: its own command redoes it
        if state_of(side.as_tree(), Stage.eval).status == "stale":
            found.append(side)
    return found


def writing(cfg: Config, stage: Stage, command: str, whole: bool, other_node: bool):
    """The lock on what `stage` writes (src/core/locks.py): its shard's folder for a sharded
    stage, all of it otherwise or when it is redone (the redo deletes the folder); none on a
    training's other nodes (`other_node`: node 0 holds it)."""
    if STAGES[stage].launches_processes and other_node:
        return contextlib.nullcontext()
    shard = None if whole or STAGES[stage].sharded_by is None else stage_shard(cfg, stage).name
    return locks.writing(cfg.stage_dir(stage), command, shard)


def rewriting(cfg: Config, redone: list[Stage], command: str, other_node: bool = False):
    """The locks a redo of `redone` takes before it deletes anything, all of them or none, held
    until it ends (src/core/locks.py): those of the stages it redoes and of every later stage of
    the iteration, which reads what they make, and, when it redoes the training, those of the
    next iteration's stages, which start from its checkpoint; none on a training's other nodes
    (`other_node`). A running stage holds its own lock, so a redo of anything it reads stops at
    once, before it deletes a file."""
    launches = any(STAGES[s].launches_processes for s in redone)
    if not redone or (launches and other_node):
        return contextlib.nullcontext()
    order = list(STAGES)
    stage_dirs = [cfg.stage_dir(s) for s in order[order.index(redone[0]) :]]
    if any(STAGES[s].makes_policy for s in redone):  # every eval of it, side by side ones too
        stage_dirs += cfg.layout.side_evals(cfg.iter)
        stage_dirs += [cfg.layout.stage_dir_in(cfg.iter + 1, s) for s in order]
    return locks.rewriting(list(dict.fromkeys(stage_dirs)), command)


def one_of_shards(cfg: Config, stage: Stage) -> bool:
    """Whether this process ran one shard of several: the shards of an array run at once, and
    the lineage's curve run is written by the unsharded stage that reads them all."""
    return STAGES[stage].sharded_by is not None and stage_shard(cfg, stage).count > 1


def other_training_node(cfg: Config) -> bool:
    """Whether this process is a node other than node 0 of a training on several nodes: one
    training is one writer, and its node 0 holds the locks for all of them."""
    return cfg.hardware.num_nodes > 1 and node_rank() not in (None, "0")


def run_stage(cfg: Config, stage: Stage, run: Callable, command: str, redoing: bool) -> None:
    stage_dir = cfg.stage_dir(stage)
    # the stage may have finished between the check of its state and the taking of its lock
    if not redoing and state_of(cfg.as_tree(), stage).status == "done":
        say(Step(stage, "skip", SKIPPED))
        return
    if redoing and stage_dir.is_symlink():  # rmtree refuses a link, naming neither it nor why
        raise StageError(
            f"{stage_dir} is a symbolic link (to {os.path.realpath(stage_dir)}): a redo deletes "
            "the stage's folder, never what a link points to; remove the link (or empty the "
            "folder it points to), then re-run"
        )
    aside = contextlib.nullcontext()
    if redoing and stage_dir.exists():
        locks.require_held()
        say(Step(stage, "redo", redo_reason(cfg)))
        aside = set_aside(stage, stage_dir)
    with aside:
        print(f"[main] stage {stage.value} -> {stage_dir}", file=sys.stderr)
        save_config(stage_dir, to_yaml(cfg), command)
        run_tracked(cfg, stage, run)
        try:
            locks.require_held()  # held throughout: it was the only writer of what it made
        except locks.LockLost:  # another may have written beside it: none of it sealed as finished
            (stage_dir / RECORD).unlink(missing_ok=True)
            raise


def say(step: Step) -> None:
    print(f"[main] stage {step.stage.value}: {step.reason}", file=sys.stderr)


def refused(cfg: Config, st: StageState, advice: str) -> StageError:
    """A stage finished under another config (or version) than `cfg`: never trusted, and never
    redone without being asked; the fix redoes it, the remedy chosen by why it is stale."""
    fix = redo_for(st, cfg.iter)
    if st.earlier_version:
        return StageError(
            f"{cfg.stage_dir(st.stage)} was {st.changed[0]}, whose records this one cannot "
            "check; to redo it and the stages after it",
            fix,
        )
    if st.has(Why.trained_after):
        return StageError(
            f"{cfg.stage_dir(st.stage)} evaluated iteration {cfg.iter}'s checkpoint before it "
            "was trained again; to evaluate the checkpoint as it is now",
            fix,
        )
    why = st.why
    if st.has(Why.retrained, Why.ancestor):  # every later iteration is stale with it
        advice += "; every later iteration made from it is stale too"
    if other_pairs(st):  # trained on other pairs: its redo would replace a checkpoint another
        # recipe made
        fix = f"run_name={free_run_name(cfg)}"
        advice = (
            "train on these pairs in a lineage of its own (a redo, pipeline.redo=[train], "
            "would replace that checkpoint)"
        )
    if st.changed and all(c.kind in (Why.content, Why.gone) for c in st.changed):
        what, advice = "other input files", advice.replace("the config", "the file")
    else:
        what = "a different configuration"
    return StageError(f"{cfg.stage_dir(st.stage)} was made with {what} ({why}); {advice}", fix)


def other_pairs(st: StageState) -> bool:
    """A training refused because it is asked on another pairs file than the one it trained on."""
    return st.stage is Stage.train and any(
        c.kind == Why.value and c.key == "training.pairs" for c in st.changed
    )


def free_run_name(cfg: Config) -> str:
    """A lineage name for a training on `cfg`'s pairs file that no training on other pairs
    holds: the run name with the file's stem (`-pairs-<stem>`), numbered where that is taken."""
    stem = pairs_lineage(cfg.training.pairs)
    base = cfg.run_name if cfg.run_name.endswith(f"-{stem}") else f"{cfg.run_name}-{stem}"
    name, n = base, 1
    while True:
        train = RunLayout(Path(cfg.run.dir).parent / name).stage_dir_in(cfg.iter, Stage.train)
        made_with = saved_config(cfg.as_tree(), Stage.train, train) or {}
        if made_with.get("training", {}).get("pairs") in (None, cfg.training.pairs):
            return name
        n += 1
        name = f"{base}-{n}"


def release_gpu_memory() -> None:
    """Give what a finished stage held on its GPU back to the driver. On one GPU (the one-GPU
    QLoRA presets) generation, ranking, training and eval run one after the other in this
    process; the caching allocator would otherwise keep the previous stage's blocks, which
    another process (a training worker, vLLM) cannot use. torch is not imported for it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def run_tracked(cfg: Config, stage: Stage, run: StageRun) -> StageResult | None:
    """The stage inside its W&B run, then its record, `done.json`, written last: after every
    output and before the run's artifacts, which carry it (src/stages/report/chain.py). A stage that
    launches processes of its own opens its W&B run on its rank-0 process, where the Trainer's
    W&B callback logs the curves into it; one that writes its own record is not written for.
    Returns what the stage returned (None for one that launches processes)."""
    spec = STAGES[stage]
    tracked = not spec.launches_processes
    if tracked:
        tracking.start(cfg, stage)
    try:
        result = run(cfg)
        if not spec.writes_record and result.record is not None:
            locks.require_held()  # the only writer of what it made, as it finishes
            write_record(cfg.stage_dir(stage), result.record)
    except BaseException as err:  # the run ends with the command's exit code (3 for a judge)
        from src.config.cli import exit_code_of

        if tracked:
            tracking.finish(cfg, stage, {}, exit_code=exit_code_of(err))
        raise
    if not tracked:
        return None
    tracking.finish(cfg, stage, result.summary)
    return result
