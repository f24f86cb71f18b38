"""What a plan refuses, and the remedy offered: chosen by the kind of each change (`refusal_of`,
REMEDIES), never by its words — a redo of the stage and those after it, a lineage of its own
for another experiment, a folder beside a finished eval for other judges; several iterations'
refusals as one (`refused_together`, which src/schedule/plan.py's `refuse` raises before any
stage starts)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from src.config import Config, Stage, pairs_lineage
from src.core.choice import Choice
from src.core.diff import StageState, Why
from src.core.errors import RedoStale, StageError
from src.core.fingerprints import read_upstream
from src.core.layout import iteration_name, stage_folder
from src.core.records import read_record
from src.core.registry import EVAL_JUDGE_INPUTS, EXPERIMENT_INPUTS, FOLDER_INPUTS, STAGES
from src.core.saved import relocated
from src.core.state import redo_for, state_of


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


def rebuilt(stale: StageState) -> bool:
    """A refusal whose every change is in a benchmark folder's content, which its build makes
    again."""
    changed = stale.changed  # none named (what it read changed): not a folder's
    return (
        bool(changed)
        and not stale.earlier_version
        and all(c.cause in (Why.content, Why.gone) and c.key in FOLDER_INPUTS for c in changed)
    )


def refused_together(
    cfg: Config, found: list[tuple[Config, StageState]], replaced: list[tuple[int, list[Stage]]]
) -> StageError:
    """The one refusal of stale stages of several iterations of `cfg`'s command (`found`: each
    iteration's config and its stage refused; `replaced`: the finished stages a redo of every
    stale one makes again, by iteration)."""
    which = listed(f"iteration {c.iter}'s {st.stage.value}" for c, st in found)
    why = " | ".join(dict.fromkeys("; ".join(st.changed) for _, st in found))
    said = SEVERAL.format(which=which, why=why or "an earlier version")
    kinds = [refusal_of(st) for _, st in found]
    if all(kind == Refusal.judges for kind in kinds):
        evaluated, stale = [c for c, _ in found], [st for _, st in found]
        words = judges_advice(cfg, evaluated, stale, RedoStale().overrides(cfg.stage.value))
        return StageError(said + BESIDE.format(**words), f"eval.judged_by={words['name']}")
    experiments = [st for (_, st), kind in zip(found, kinds, strict=True)
                   if kind == Refusal.experiment]  # fmt: skip
    if not experiments:
        return StageError(said + SEVERAL_REDONE, RedoStale())
    words = experiment_advice(cfg, experiments[0], replaced, RedoStale().overrides(cfg.stage.value))
    made = [(c, st.stage) for c, st in found]
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
