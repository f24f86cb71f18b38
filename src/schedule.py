"""The iteration scheduler: which stages of which iterations run, are skipped as finished, are
refused as made under another config, or are redone (`pipeline.redo`); each stage runs inside
its W&B run, after its resolved config is saved beside its output, and the record it returns is
written last, as its `done.json` (src/stages/__init__.py: who writes each stage's record).

Each iteration is planned once from its records (`iterations`: a `Plan` each), and the rest
follows the plans: the checks made before any stage (src/assets/preflight.py), what is refused
and the remedy offered, chosen by the kind of each change (`refuse`, REMEDIES), what runs
(`dispatch`). An iteration is planned again only after an earlier one of the same command
trained, and a stage's state is looked at again only where its record appeared once its lock is
held.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path

from src.config import (
    Config,
    ConfigError,
    PipelineConfig,
    Stage,
    pairs_lineage,
    to_yaml,
    with_section,
)
from src.core import locks, reuse
from src.core.choice import Choice
from src.core.diff import StageState, Why
from src.core.errors import RedoStale, StageError, with_overrides
from src.core.fingerprints import read_upstream
from src.core.layout import RECORD, iteration_name, stage_folder
from src.core.machine import node_rank
from src.core.migrate import migrate
from src.core.records import RECORD_FORMAT, read_record, write_record
from src.core.redo import set_aside
from src.core.registry import EVAL_JUDGE_INPUTS, EXPERIMENT_INPUTS, FOLDER_INPUTS, STAGES
from src.core.saved import relocated, save_config, saved_config
from src.core.state import Judge, redo_for, state_of
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


# --- refusals and their remedies ----------------------------------------------------------------


class Refusal(Choice):
    """What decides the remedy offered for a stage finished under another config (`refusal_of`):
    the kinds and keys of its changes, never their wording."""

    version = "version"  # recorded by another version of this project
    trained_after = "trained_after"  # an eval of a checkpoint trained again after it
    experiment = "experiment"  # another experiment (EXPERIMENT_INPUTS): a lineage of its own
    judges = "judges"  # an eval by other judges (EVAL_JUDGE_INPUTS): a folder of its own beside it
    remade = "remade"  # a stage it read was made again (other bytes), or one of its outputs lost
    lineage = "lineage"  # what an earlier iteration made changed since: every stale stage redone
    files = "files"  # a local file it read changed, or is gone
    config = "config"  # an input set otherwise, of the same experiment


# Another experiment's advice: the lineage of its own first (the fix), then the redo, with what it
# would replace
ELSEWHERE = "{doing} in a lineage of its own, or replace {replaced} ({redo})"
# Other judges' advice: their eval beside the finished one first (the fix), then the redo
BESIDE = (
    "keep those figures and judge again beside them, in {side} (eval.judged_by={name}), or "
    "replace {replaced} ({redo})"
)


@dataclass(frozen=True)
class Remedy:
    """What a refusal says after the stage's folder, and its fix: `redo` makes the stage again
    with those after it (where an earlier iteration is the cause, every stale stage: `redo_for`);
    `lineage` runs the command as a lineage of its own (`lineage_fix`), the redo named second
    with what it would replace; `beside` judges an eval again in a folder of its own beside the
    finished one (`judges_advice`), the redo named second. In `said`: {why}, the changes; {first},
    the first of them; {reads}, `stage <s> reads it: ` where the stage refused is the one the
    command's first stage reads; {after}, what its redo makes besides; {doing}, {replaced},
    {redo}: another experiment's (`experiment_advice`); {side}, {name}, {replaced}, {redo}: other
    judges' (`judges_advice`)."""

    said: str
    fix: str  # "redo" | "lineage" | "beside"


REMEDIES = {
    Refusal.version: Remedy(
        "was {first}, whose records this one cannot check; to redo it and the stages after it",
        "redo",
    ),
    Refusal.trained_after: Remedy(
        "is stale ({why}); to evaluate the checkpoint as it is now", "redo"
    ),
    Refusal.experiment: Remedy(
        "was made with a different configuration ({why}); {reads}" + ELSEWHERE, "lineage"
    ),
    Refusal.remade: Remedy("is stale ({why}); to make it again from what it reads now", "redo"),
    Refusal.judges: Remedy("was judged by other judges ({why}); " + BESIDE, "beside"),
    Refusal.lineage: Remedy(
        "was made with a different configuration ({why}); {reads}restore the config, or redo "
        "it{after}; every later iteration made from it is stale too",
        "redo",
    ),
    Refusal.files: Remedy(
        "was made with other input files ({why}); {reads}restore the file, or redo it{after}",
        "redo",
    ),
    Refusal.config: Remedy(
        "was made with a different configuration ({why}); {reads}restore the config, or redo "
        "it{after}",
        "redo",
    ),
}
# Stages of several iterations refused at once, in one line: every stale stage redone in order,
# or, where one is another experiment, the lineage of its own first; evals all by other judges,
# their folders beside them first
SEVERAL = "{which} were made with a different configuration ({why}); "
SEVERAL_REDONE = "restore the config, or redo every stale stage, in order, in one command"

# The stages a lineage's policy is made from (a redo of one replaces what an experiment trained),
# in order: every stage up to the one that makes the policy
POLICY_MADE_FROM = list(STAGES)[: [s.makes_policy for s in STAGES.values()].index(True) + 1]


def refusal_of(st: StageState) -> Refusal:
    """What decides the remedy for the stale stage `st`: a record of another version; an eval of
    a checkpoint trained again; another experiment (`experiment_key`); a change in what an
    earlier iteration made; local files alone; else the config."""
    if st.earlier_version:
        return Refusal.version
    if st.has(Why.trained_after):
        return Refusal.trained_after
    if experiment_key(st) is not None:
        return Refusal.experiment
    if judged_otherwise(st):
        return Refusal.judges
    if st.has(Why.retrained, Why.ancestor):
        return Refusal.lineage
    if st.has(Why.remade, Why.damaged):
        return Refusal.remade
    if st.changed and all(c.kind in (Why.content, Why.gone) for c in st.changed):
        return Refusal.files
    return Refusal.config


def experiment_key(st: StageState) -> str | None:
    """The first input set otherwise that makes `st` another experiment (EXPERIMENT_INPUTS), in a
    stage the lineage's policy is made from (an eval's redo replaces that eval alone); None."""
    if st.stage not in POLICY_MADE_FROM:
        return None
    keys = [c.key for c in st.changed if c.kind == Why.value and c.key in EXPERIMENT_INPUTS]
    return keys[0] if keys else None


def judged_otherwise(st: StageState) -> bool:
    """Whether `st` is an eval whose every change is one of its judges' keys (EVAL_JUDGE_INPUTS):
    the same checkpoint, judged otherwise."""
    return (
        st.stage == Stage.eval
        and bool(st.changed)
        and all(c.kind == Why.value and c.key in EVAL_JUDGE_INPUTS for c in st.changed)
    )


def refused(
    cfg: Config, st: StageState, later: Sequence[Stage] = (), reader: Stage | None = None
) -> StageError:
    """The refusal of `st`, a stage finished under another config (or version) than `cfg`: never
    trusted, and never redone without being asked. `later`: the finished stages after it, which
    its redo makes again; `reader`: the command's stage that reads it, where it is not its own.
    What it says and its fix: by why it is stale (`refusal_of`, REMEDIES)."""
    kind = refusal_of(st)
    remedy = REMEDIES[kind]
    fix = redo_for(st, cfg.iter)
    words = {
        "why": st.why,
        "first": st.changed[0] if st.changed else "",
        "reads": f"stage {reader.value} reads it: " if reader else "",
        "after": " first" if reader else also(later),
    }
    if remedy.fix == "lineage":
        replaced = [(cfg.iter, [st.stage, *([] if reader else later)])]
        words |= experiment_advice(cfg, st, replaced, fix.overrides(cfg.stage.value))
        fix = lineage_fix(cfg, experiment_key(st), [(cfg, st.stage)])
    elif remedy.fix == "beside":
        words |= judges_advice(cfg, [cfg], [st], fix.overrides(cfg.stage.value))
        fix = f"eval.judged_by={words['name']}"
    return StageError(f"{cfg.stage_dir(st.stage)} {remedy.said.format(**words)}", fix)


def also(later: Sequence[Stage]) -> str:
    return f" (and so {', '.join(s.value for s in later)} after it)" if later else ""


def experiment_advice(
    cfg: Config, st: StageState, replaced: list[tuple[int, list[Stage]]], redo: str
) -> dict[str, str]:
    """The words of another experiment's refusal: what the command does in a lineage of its
    own, and what the redo named second (its overrides, `redo`) would replace."""
    return {
        "doing": EXPERIMENT_INPUTS[experiment_key(st)],
        "replaced": f"{replacing(replaced)} in {cfg.run_name}",
        "redo": redo,
    }


def judges_advice(
    cfg: Config, evaluated: Sequence[Config], stale: Sequence[StageState], redo: str
) -> dict[str, str]:
    """The words of the refusal of evals by other judges (those of `evaluated`, iterations of
    `cfg`'s command, each `stale`): the name of their folder beside the finished ones
    (`judges_name`), that folder, and what the redo named second (`redo`) would replace."""
    name = judges_name(cfg, evaluated, [c.key for st in stale for c in st.changed])
    folder = stage_folder(Stage.eval, cfg.eval.reference, cfg.eval.reference_outputs, name)
    where = f"{iteration_name(cfg.iter)}/" if len(evaluated) == 1 else "each iteration's "
    replaced = f"{replacing([(c.iter, [Stage.eval]) for c in evaluated])} in {cfg.run_name}"
    return {"name": name, "side": f"{where}{folder}/", "replaced": replaced, "redo": redo}


def judges_name(cfg: Config, evaluated: Sequence[Config], keys: Sequence[str]) -> str:
    """A name for the judges `cfg` asks for (`eval.judged_by`), by those of its judges whose keys
    are among `keys`: the pairwise judge's model, the chat judge's name; numbered where the folder
    it names holds an eval of one of `evaluated` made otherwise."""
    words = []
    if any(k.startswith(("ranker.", "eval.judge.")) for k in keys):
        words.append(lineage_word("model", (cfg.eval.judge or cfg.ranker).model))
    if any(k.startswith("eval.llm_judge.") for k in keys):
        words.append(lineage_word("model", cfg.eval.llm_judge.name))
    base = "_".join(dict.fromkeys(words)) or "judges"
    name, n = base, 1
    while any(state_of(judged_by(c, name), Stage.eval).status == "stale" for c in evaluated):
        n += 1
        name = f"{base}-{n}"
    return name


def judged_by(cfg: Config, name: str) -> dict:
    """`cfg` as plain data, its eval by the judges named `name` (`eval.judged_by`)."""
    tree = cfg.as_tree()
    tree["eval"] = {**tree["eval"], "judged_by": name}
    return tree


def replacing(made: list[tuple[int, list[Stage]]]) -> str:
    """Finished stages of iterations, as a refusal names what a redo replaces: `iterations 1
    and 2's generate, rank, pairs and train`."""
    by_stages: dict[tuple[Stage, ...], list[int]] = {}
    for t, stages in made:
        by_stages.setdefault(tuple(stages), []).append(t)
    return listed(
        f"iteration{'s' if len(ts) > 1 else ''} {listed(map(str, ts))}'s "
        f"{listed(s.value for s in stages)}"
        for stages, ts in by_stages.items()
    )


def listed(words) -> str:
    """`a`, `a and b`, `a, b and c`."""
    words = list(words)
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def refuse(plans: Sequence[Plan]) -> None:
    """What the plans refuse, before any of them starts (and before a tiny chat judge's build of
    minutes): one iteration's as it says it; several iterations' as one refusal, whose fix redoes
    each stale stage in order, or, where one is another experiment, runs the command as a lineage
    of its own. Only a refusal the records decide whatever is built: any but a benchmark
    folder's content (the tiny benchmarks' data, which their build makes again), left to the
    iteration itself."""
    require_previous(plans[-1].cfg)
    found = [(p, step) for p in plans if (step := p.refusal) is not None and not rebuilt(step)]
    if len(found) == 1:
        raise found[0][1].error
    if found:
        raise refused_together(plans, found)


def rebuilt(step: Step) -> bool:
    """A refusal whose every change is in a benchmark folder's content, which its build makes
    again."""
    changed = step.stale.changed  # none named (what it read changed): not a folder's
    return (
        bool(changed)
        and not step.stale.earlier_version
        and all(c.cause in (Why.content, Why.gone) and c.key in FOLDER_INPUTS for c in changed)
    )


def refused_together(plans: Sequence[Plan], found: list[tuple[Plan, Step]]) -> StageError:
    """The one refusal of stale stages of several iterations (`refuse`)."""
    which = listed(f"iteration {p.cfg.iter}'s {step.stale.stage.value}" for p, step in found)
    why = " | ".join(dict.fromkeys("; ".join(step.stale.changed) for _, step in found))
    said = SEVERAL.format(which=which, why=why or "an earlier version")
    kinds = [refusal_of(step.stale) for _, step in found]
    if all(kind == Refusal.judges for kind in kinds):
        evaluated, stale = [p.cfg for p, _ in found], [step.stale for _, step in found]
        cfg = plans[-1].cfg
        words = judges_advice(cfg, evaluated, stale, RedoStale().overrides(cfg.stage.value))
        return StageError(said + BESIDE.format(**words), f"eval.judged_by={words['name']}")
    experiments = [step.stale for (_, step), kind in zip(found, kinds, strict=True)
                   if kind == Refusal.experiment]  # fmt: skip
    if not experiments:
        return StageError(said + SEVERAL_REDONE, RedoStale())
    cfg = plans[-1].cfg
    replaced = [(p.cfg.iter, p.replaced()) for p in plans if p.replaced()]
    words = experiment_advice(cfg, experiments[0], replaced, RedoStale().overrides(cfg.stage.value))
    made = [(p.cfg, step.stale.stage) for p, step in found]
    fix = lineage_fix(cfg, experiment_key(experiments[0]), made)
    return StageError(said + ELSEWHERE.format(**words), fix)


def require_previous(cfg: Config) -> None:
    """`pipeline.require_previous=true`: `stage=all` at iteration t refused unless iteration t-1
    is trained, instead of running it first."""
    if not (cfg.pipeline.require_previous and cfg.stage == Stage.all and cfg.iter > 1):
        return
    previous = Path(cfg.run.init_policy)
    if read_record(previous.parent) is None:
        raise StageError(
            f"iteration {cfg.iter} starts from iteration {cfg.iter - 1}'s checkpoint {previous}, "
            "which is not finished (pipeline.require_previous=true); finish it first",
            fix=f"iter={cfg.iter - 1}",
        )


def lineage_fix(cfg: Config, key: str, made: Sequence[tuple[Config, Stage]]) -> str:
    """The overrides that run `cfg`'s command, another experiment by `key`, as a lineage of its
    own: a run name of its own (`free_run_name`), and `stage=all` where the command runs one
    stage that reads what that lineage has yet to make (an earlier stage's, iteration t-1's)."""
    fix = f"run_name={free_run_name(cfg, key, made)}"
    first = cfg.stages()[0]
    if cfg.stage != Stage.all and (cfg.iter > 1 or read_upstream(cfg.as_tree(), first)):
        fix += " stage=all"
    return fix


def free_run_name(cfg: Config, key: str, made: Sequence[tuple[Config, Stage]]) -> str:
    """A lineage name for `cfg`'s command, another experiment than its lineage's by `key`: the
    run name with `key`'s value (`lineage_word`), numbered where that lineage holds one of
    `made` (an iteration's config and a stage of it) made otherwise."""
    word = lineage_word(key, attrgetter(key)(cfg))
    base = cfg.run_name if cfg.run_name.endswith(f"-{word}") else f"{cfg.run_name}-{word}"
    name, n = base, 1
    while any(state_of(renamed(c, name), stage).status == "stale" for c, stage in made):
        n += 1
        name = f"{base}-{n}"
    return name


def lineage_word(key: str, value: object) -> str:
    """What a lineage's name says of the `value` of `key` that makes it another experiment: a
    pairs file's `pairs-<name>` (as the default run_name says it), a path's last part, a name as
    it is, else the key's last part with the value (`wpo_clamp2.0`)."""
    if key == "training.pairs":
        return pairs_lineage(str(value))
    leaf = key.rpartition(".")[2]
    said = Path(str(value)).name if isinstance(value, str) else f"{leaf}{value}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", said)[:40].strip("._-") or leaf


def renamed(cfg: Config, name: str) -> dict:
    """`cfg` as plain data in the lineage `name` beside its own: its paths inside the run moved."""
    tree = relocated(cfg.as_tree(), str(Path(cfg.run.dir).parent / name), cfg.paths.root)
    tree["run_name"] = name
    return tree


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
