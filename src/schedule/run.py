"""Running the plans (src/schedule/plan.py): each stage inside its W&B run, under its lock,
after its resolved config is saved beside its output, its outputs taken from another lineage
where one made them from what it reads (src/core/reuse.py), and the record it returns written
last, as its `done.json` (src/stages/__init__.py: who writes each stage's record). An iteration
after one that trained is planned again; a stage's state is looked at again only where its
record appeared once its lock is held."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable
from dataclasses import replace

from src.config import Config, Stage, to_yaml
from src.core import locks, reuse
from src.core.errors import StageError, with_overrides
from src.core.layout import RECORD
from src.core.machine import node_rank
from src.core.migrate import migrate
from src.core.records import RECORD_FORMAT, read_record, write_record
from src.core.redo import set_aside
from src.core.registry import STAGES
from src.core.saved import save_config
from src.core.state import state_of
from src.schedule.plan import SKIPPED, Plan, Step, plan_of, redo_reason, stale_evals
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


def dispatch(plans: list[Plan], command: str) -> None:
    """Run each planned iteration (`iterations`), the earlier ones first. One after an iteration
    that trained is planned again: its stages read that checkpoint."""
    runners = stage_runners(plans[-1].cfg.stages())
    for before in plans[:-1]:  # said once nothing is refused
        print(f"[main] iteration {before.cfg.iter} {before.why}: running it first", file=sys.stderr)
    trained = False
    for plan in plans:
        if trained:
            plan = replace(plan_of(plan.cfg, runners), why=plan.why)
        own = plan.cfg.iter == plans[-1].cfg.iter
        said = command if own else with_overrides(command, f"iter={plan.cfg.iter}")
        ran = run_iteration(plan, runners, said)
        trained = trained or any(STAGES[s].makes_policy for s in ran)


# --- running a plan ------------------------------------------------------------------------------


def run_iteration(plan: Plan, runners: dict, command: str) -> list[Stage]:
    """Follow `plan`: refuse what it refuses (before any work), skip the stages finished under
    this config, redo what `pipeline.redo` names and everything after it, run the rest; then,
    with `pipeline.redo_stale`, the stale evals beside the iteration's own. Returns the stages
    it ran."""
    cfg, steps = plan.cfg, plan.steps
    if plan.refusal is not None:
        raise plan.refusal.error
    print(f"[main] iteration {cfg.iter} of {cfg.run.dir}", file=sys.stderr)
    print(f"[main] policy pi_{max(cfg.iter - 1, 0)}: {cfg.run.init_policy}", file=sys.stderr)
    redone = [step.stage for step in steps if step.action == "redo"]
    ran = []
    other_node = other_training_node(cfg)
    with rewriting(cfg, redone, command, other_node):
        for step in steps:
            if step.action == "skip":
                say(step)
                migrated(cfg, step.stage, command, other_node)
                continue
            redoing = step.action == "redo"
            with writing(cfg, step.stage, command, redoing, other_node):
                run_stage(cfg, step.stage, runners[step.stage], command, redoing)
            release_gpu_memory()
            ran.append(step.stage)
    if cfg.pipeline.redo_stale and not other_node:
        # trained here: the evals beside it are of the checkpoint as it was, each looked at again
        trained = any(STAGES[s].makes_policy for s in ran)
        for side, state in stale_evals(plan.side_evals) if trained else plan.stale_sides:
            print(f"[main] {side.stage_dir(Stage.eval)}: stale ({state.why}): redoing it "
                  "(pipeline.redo_stale)", file=sys.stderr)  # fmt: skip
            with writing(side, Stage.eval, command, True, other_node):
                run_stage(side, Stage.eval, stage_run(Stage.eval), command, redoing=True)
            ran.append(Stage.eval)
    if not other_node and not any(one_of_shards(cfg, s) for s in runners):
        # once the iteration's stages it ran are done; none ran: from the records, marked so (a
        # sweep point or a lineage made with logger=none appears in W&B all the same)
        curves.log_curve(cfg, reused=not ran)
    return ran


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
    # another command may have finished it between its plan (no record then) and its lock
    appeared = not redoing and read_record(stage_dir) is not None
    if appeared and state_of(cfg.as_tree(), stage).status == "done":
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
        with reusable(cfg, stage, redoing) as source:
            if source is None:
                run_tracked(cfg, stage, run)
            else:
                reuse.take(cfg.as_tree(), stage, source)
        try:
            locks.require_held()  # held throughout: it was the only writer of what it made
        except locks.LockLost:  # another may have written beside it: none of it sealed as finished
            (stage_dir / RECORD).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def reusable(cfg: Config, stage: Stage, redoing: bool):
    """The finished stage of another lineage whose outputs `stage` takes instead of computing
    them (src/core/reuse.py), or None: none read what it reads, `pipeline.reuse=false`, a redo
    (which computes what it was asked to), an eval (its answers are cached by their own key), a
    stage this process makes a part of (one shard of several, a training on several nodes: each
    process would take the whole). Held under the key's lock: another process wanting the key
    waits, then takes what this one made."""
    several = one_of_shards(cfg, stage) or (
        STAGES[stage].launches_processes and cfg.hardware.num_nodes > 1
    )
    if redoing or several or not cfg.pipeline.reuse or stage == Stage.eval:
        yield None
        return
    tree = cfg.as_tree()
    with reuse.key_lock(tree, stage):
        yield reuse.found(tree, stage)


def migrated(cfg: Config, stage: Stage, command: str, other_node: bool) -> None:
    """A finished stage's record of an earlier format rewritten as this version writes it, once,
    by the first command that skips it (src/core/migrate.py), under its lock; left as it is while
    another process writes there (it is judged as it was made meanwhile)."""
    record = read_record(cfg.stage_dir(stage))
    if other_node or record is None or record.get("format") == RECORD_FORMAT:
        return
    with contextlib.suppress(locks.Locked), locks.writing(cfg.stage_dir(stage), command):
        migrate(cfg.as_tree(), stage, cfg.stage_dir(stage))


def say(step: Step) -> None:
    print(f"[main] stage {step.stage.value}: {step.reason}", file=sys.stderr)


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
