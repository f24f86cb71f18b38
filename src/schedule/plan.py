"""Planning an iteration: which stages of which iterations a command runs, skips as finished,
refuses as made under another config, or redoes (`pipeline.redo`, `pipeline.redo_stale`). Each
iteration is planned once from its records (`iterations`: a `Plan` each, its stages' `Step`s),
each stage judged once (src/core/state.py); what the plans refuse is refused before any of them
starts (`refuse`), worded by src/schedule/remedies.py; what they run is run by
src/schedule/run.py."""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from src.config import Config, ConfigError, PipelineConfig, Stage, with_section
from src.core.diff import StageState
from src.core.errors import StageError
from src.core.fingerprints import read_upstream
from src.core.records import read_record
from src.core.saved import saved_config
from src.core.state import Judge, state_of
from src.schedule.remedies import rebuilt, refused, refused_together, require_previous


def iterations(cfg: Config, config_for_iter: Callable[[int], Config] | None = None) -> list[Plan]:
    """The iterations a command runs, in order, its own last, each planned once from its records
    (`Plan`): for `stage=all`, first any earlier one not yet done (`config_for_iter(t)`: the
    command line's config at iter=t; without it only iteration `cfg.iter` is considered).
    What the plans refuse is refused among the checks made before any stage, after the machine
    and the keys (src/assets/preflight.py; `refuse`)."""
    stages = cfg.stages()
    earlier: list[Plan] = []
    # none with pipeline.require_previous, which needs iteration t-1 trained instead (`refuse`)
    if (
        cfg.stage == Stage.all
        and cfg.iter > 1
        and config_for_iter
        and not cfg.pipeline.require_previous
    ):
        earlier = earlier_plans(cfg, stages, config_for_iter)
    return [*earlier, plan_of(cfg, stages)]


def earlier_plans(cfg: Config, stages: Collection[Stage], config_for_iter) -> list[Plan]:
    """The plans of the earlier iterations `stage=all` runs first, each with why: those not
    finished with this config."""
    plans = []
    for t in range(1, cfg.iter):
        # never redo implicitly: only what is stale, and only when asked (pipeline.redo_stale)
        earlier = replace(
            config_for_iter(t), pipeline=PipelineConfig(redo_stale=cfg.pipeline.redo_stale)
        )
        plan = plan_of(earlier, stages)
        if not plan.needs():
            print(f"[main] iteration {t}: finished with this config", file=sys.stderr)
            continue
        todo = any(step.status == "todo" for step in plan.steps)
        why = "is not done" if todo else "has stale stages (pipeline.redo_stale)"
        plans.append(replace(plan, why=why))
    return plans


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
    status: str = "todo"  # the stage's own state as planned: "done" | "stale" | "todo"


@dataclass(frozen=True)
class Plan:
    """One iteration a command runs, planned once from its records: its config, each of its
    stages' steps (`plan_iteration`), with `pipeline.redo_stale` the finished evals against other
    references (`side_evals`, each as the config that makes it again) and those of them that are
    stale (`stale_sides`); for an earlier iteration run first, `why`."""

    cfg: Config
    steps: list[Step]
    side_evals: list[Config] = field(default_factory=list)
    stale_sides: list[tuple[Config, StageState]] = field(default_factory=list)
    why: str = ""

    @property
    def refusal(self) -> Step | None:
        return first_refusal(self.steps)

    def running(self) -> list[Stage]:
        """The stages it runs (run or redone; the eval, where an eval beside it is redone)."""
        ran = [step.stage for step in self.steps if step.action in ("run", "redo")]
        return self.with_sides(ran)

    def needs(self) -> list[Stage]:
        """The stages it runs, or the remedy of what it refuses would run: each from the first
        that is not skipped (a redo makes the stages after it again)."""
        actions = [step.action for step in self.steps]
        first = next((i for i, a in enumerate(actions) if a != "skip"), len(actions))
        return self.with_sides([step.stage for step in self.steps[first:]])

    def replaced(self) -> list[Stage]:
        """The finished stages a redo of every stale one (pipeline.redo_stale) makes again: each
        from the first stale one on."""
        statuses = [step.status for step in self.steps]
        if "stale" not in statuses:
            return []
        return [s.stage for s in self.steps[statuses.index("stale") :] if s.status != "todo"]

    def with_sides(self, stages: list[Stage]) -> list[Stage]:
        return [*stages, Stage.eval] if self.stale_sides and Stage.eval not in stages else stages


def plan_of(cfg: Config, stages: Collection[Stage]) -> Plan:
    """Iteration `cfg`'s plan for the `stages` the command runs, from their records."""
    sides = side_evals(cfg) if cfg.pipeline.redo_stale else []
    return Plan(cfg, iteration_plan(cfg, stages), sides, stale_evals(sides))


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
            later = [s.stage for s in states[i + 1 :] if s.status != "todo"]
            err = st.unread or refused(cfg, st, later=later)
            steps.append(Step(st.stage, "refuse", str(err), st, err, st.status))
        elif i == 0 and upstream is not None and upstream.status == "stale":
            err = upstream.unread or refused(cfg, upstream, reader=st.stage)
            steps.append(Step(st.stage, "refuse", str(err), upstream, err, st.status))
        elif i >= redo_from:
            steps.append(Step(st.stage, "redo", redo_reason(cfg), status=st.status))
        elif st.status == "done":
            steps.append(Step(st.stage, "skip", SKIPPED, status=st.status))
        else:
            steps.append(Step(st.stage, "run", "not finished with this config: running it"))
    return steps


def redo_reason(cfg: Config) -> str:
    return f"redoing ({'pipeline.redo' if cfg.pipeline.redo else 'pipeline.redo_stale'})"


def iteration_plan(cfg: Config, stages: Collection[Stage]) -> list[Step]:
    """`plan_iteration` of the stages the command runs in iteration `cfg`, from their records
    (and that of the stage the first one reads, when the command does not run it)."""
    tree = cfg.as_tree()
    judge = Judge(tree)  # each stage judged once, those it reads too
    states = [judge.state(s) for s in stages]
    upstream = read_upstream(tree, states[0].stage)
    read = None
    if upstream is not None and upstream not in stages:
        read = judge.state(upstream)
    return plan_iteration(states, cfg, read)


def first_refusal(steps: list[Step]) -> Step | None:
    """The refusal an iteration meets first (its stages' own before the one they read)."""
    refusals = [step for step in steps if step.action == "refuse"]
    own = [step for step in refusals if step.stale.stage == step.stage]
    return (own or refusals or [None])[0]


def refuse(plans: Sequence[Plan]) -> None:
    """What the plans refuse, before any of them starts (and before a tiny chat judge's build of
    minutes): one iteration's as it says it; several iterations' as one refusal, whose fix redoes
    each stale stage in order, or, where one is another experiment, runs the command as a lineage
    of its own. Only a refusal the records decide whatever is built: any but a benchmark
    folder's content (the tiny benchmarks' data, which their build makes again), left to the
    iteration itself."""
    require_previous(plans[-1].cfg)
    found = [(p, step) for p in plans if (step := p.refusal) and not rebuilt(step.stale)]
    if len(found) == 1:
        raise found[0][1].error
    if found:
        replaced = [(p.cfg.iter, p.replaced()) for p in plans if p.replaced()]
        stale = [(p.cfg, step.stale) for p, step in found]
        raise refused_together(plans[-1].cfg, stale, replaced)


def side_evals(cfg: Config) -> list[Config]:
    """The iteration's finished evals against other references (`eval/vs-<name>/`), each as the
    config that makes it again, with the eval settings it was made with; one whose settings no
    longer compose is named and left as it is, one named by another rule than today's is left to
    its own command."""
    found = []
    for folder in cfg.layout.side_evals(cfg.iter):
        made_with = saved_config(folder)
        if made_with is None or read_record(folder) is None:
            continue  # unfinished: the command that made it finishes it
        try:
            side = with_section(cfg, "eval", made_with["eval"])
        except (ConfigError, KeyError, TypeError) as err:
            print(f"[main] {folder}: its eval settings do not compose now ({err}): left as "
                  "it is", file=sys.stderr)  # fmt: skip
            continue
        if side.stage_dir(Stage.eval) == folder:
            found.append(side)
    return found


def stale_evals(sides: list[Config]) -> list[tuple[Config, StageState]]:
    """Those of the evals `sides` that are stale under the eval settings each was made with
    (made before the training last finished, or from another config), each with its state."""
    states = [(side, state_of(side.as_tree(), Stage.eval)) for side in sides]
    return [(side, state) for side, state in states if state.status == "stale"]
