"""A finished stage's state under a config: done (its record's fingerprint is this config's),
stale (made under another config, of a checkpoint trained again since, from a local file edited
since it read it, or descended from an earlier iteration that is stale) or todo (no record), and
for a stale one each change, typed (`Change`): what the scheduler decides a remedy from, and, as
text, `key: old -> new` in its fingerprint form; the config a stage ran with, saved beside its
output and read back. The records it reads: src/core/records.py; their fingerprints:
src/core/fingerprints.py.

A lineage is judged as a whole: a stage of iteration t is stale when any iteration before it is,
judged by the config each was made with (`stale_ancestor`), so every command that reads results
(src.main, the eval stage, src.compare, src.status, the card, src.export, W&B's curve runs) sees
what a walk from iteration 1 sees.

Each function takes the config as plain data (`Config.as_tree()`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from src.core.artifacts import atomic_write_text
from src.core.choice import Choice
from src.core.errors import Redo, RedoStale, StageError
from src.core.fingerprints import (
    CLONE_ABSOLUTE,
    GONE,
    PORTABLE,
    Anchors,
    fingerprint_form,
    flatten,
    input_contents,
    lookup,
    read_upstream,
    stage_dir,
    stage_fingerprint,
    stage_inputs,
)
from src.core.layout import REPO_ROOT, SAVED_CONFIG, RunLayout
from src.core.records import (
    ABSOLUTE_PATHS_FORMAT,
    CONTENTS_FORMAT,
    KNOWN_FORMATS,
    OWN_PAIRS_FORMAT,
    RECORD_FORMAT,
    RECORD_TIME,
    REPO_FORMAT,
    read_record,
)
from src.core.registry import BENCHMARK_INPUTS, FOLDER_INPUTS, STAGES, Stage


class Why(Choice):
    """Why a finished stage is stale: what decides its remedy (src/schedule.py)."""

    value = "value"  # an input key set otherwise than the stage was made with
    content = "content"  # a local file it read changed since
    gone = "gone"  # a local file it read is gone, or is no longer a file
    retrained = "retrained"  # pi_{t-1}, which its iteration started from, trained again since
    trained_after = "trained_after"  # an eval whose checkpoint was trained again after it
    ancestor = "ancestor"  # an earlier iteration, which this one descends from, is stale
    version = "version"  # recorded by another version of this project


class Change(str):
    """One reason a stage is stale: its text as the user reads it, its `kind`, the config `key`
    it concerns (None: none), and for an ancestor's the kind of the ancestor's own (`cause`)."""

    kind: Why
    key: str | None
    cause: Why

    def __new__(cls, text: str, kind: Why, key: str | None = None, cause: Why | None = None):
        made = super().__new__(cls, text)
        made.kind, made.key, made.cause = kind, key, cause or kind
        return made

    def under(self, prefix: str) -> Change:
        """The same change said of a later stage, `prefix` before its text."""
        return Change(prefix + self, self.kind, self.key, self.cause)


@dataclass
class StageState:
    stage: Stage
    status: str  # "done" | "stale" | "todo"
    # for "stale": why (none of its own inputs changed: the nearest earlier stage's changes)
    changed: list[Change] = field(default_factory=list)

    @property
    def earlier_version(self) -> bool:
        """Recorded by another version of this project, whose records this one cannot check."""
        return any(c.kind == Why.version for c in self.changed)

    def has(self, *kinds: Why) -> bool:
        return any(c.kind in kinds for c in self.changed)

    @property
    def why(self) -> str:
        """Why it is stale, as every command says it: its changes (none named: what it read)."""
        return "; ".join(self.changed) or "the output of an earlier stage changed"


@dataclass
class Kept:
    """What a stage's folder holds, each read once while its state is judged: its record (None:
    the stage has not finished) and, when first asked for, the config it was made with."""

    folder: Path
    record: dict[str, Any] | None

    @classmethod
    def read(cls, folder: Path, strict: bool = True) -> Kept:
        """The folder's record, checked (`read_record`): a damaged one raises the StageError that
        names it, or, `strict=False`, is taken as none (an earlier stage's, which its own state
        names where it is read)."""
        try:
            return cls(folder, read_record(folder))
        except StageError:
            if strict:
                raise
            return cls(folder, None)

    @cached_property
    def saved(self) -> dict[str, Any] | None:
        return saved_config(self.folder)


def state_of(tree: dict[str, Any], stage: Stage) -> StageState:
    """The stage's state under `tree`, its lineage judged as a whole: done (finished with this
    config, and every earlier iteration as it was made), stale (finished with another, an eval of
    a checkpoint trained again since, or descended from a stale iteration) or todo."""
    state = own_state(tree, stage)
    if state.status == "done" and (ancestor := stale_ancestor(tree)) is not None:
        return StageState(stage, "stale", [ancestor])
    return state


def redo_for(state: StageState, iteration: int) -> Redo | RedoStale:
    """What makes a stale stage of `iteration` again: the stage and those after it, or, where an
    earlier iteration is the cause, every stale stage of the lineage in order."""
    if state.has(Why.retrained, Why.ancestor):
        return RedoStale()
    return Redo(state.stage, iteration)


def own_state(tree: dict[str, Any], stage: Stage) -> StageState:
    """The stage's state under `tree` by its own record (and, for an eval, its checkpoint's)."""
    kept = Kept.read(stage_dir(tree, stage))
    state = recorded_state(tree, stage, kept)
    if state.status == "done" and stage == Stage.eval and made_before_training(kept):
        said = f"iteration {tree['iter']}'s checkpoint {TRAINED_AFTER}"
        return StageState(stage, "stale", [Change(said, Why.trained_after)])
    return state


def stale_ancestor(tree: dict[str, Any]) -> Change | None:
    """Why iteration `tree['iter']` descends from a stale iteration: the first earlier
    iteration, walking from iteration 1, whose training is stale under the config it was made
    with because something it read changed (`READ_CHANGED`: a file it read, the checkpoint it
    started from trained again since); None: none is. An iteration whose training is
    unfinished, or saved no config (or a damaged one), is passed over: the next one's link to it
    (its generate's fingerprint) says what it can."""
    layout = RunLayout(lookup(tree, "run.dir"))
    for u in range(1, tree["iter"]):
        # a damaged saved config: passed over, as one it did not save (`saved_config`)
        state = saved_state(tree, Stage.train, layout.stage_dir_in(u, Stage.train), whole=False)
        if state is not None and state.has(*READ_CHANGED):
            why = state.why
            first = state.changed[0] if state.changed else Change(why, Why.value)
            said = f"iteration {u}'s training, which this iteration descends from, is stale ({why})"
            return Change(said, Why.ancestor, first.key, first.cause)
    return None


def recorded_state(tree: dict[str, Any], stage: Stage, kept: Kept) -> StageState:
    """The stage's state by its record's fingerprint alone."""
    record = kept.record
    if record is None:
        return StageState(stage, "todo")
    made_as = record.get("format")
    if made_as not in KNOWN_FORMATS:
        later = isinstance(made_as, int) and made_as > RECORD_FORMAT
        said = f"recorded by {'a later' if later else 'an earlier'} version of selfplay-lab" + (
            f" (record format {made_as}; this one writes {RECORD_FORMAT})" if made_as else ""
        )
        return StageState(stage, "stale", [Change(said, Why.version)])
    at = anchors(made_as)
    if record.get("fingerprint") == stage_fingerprint(tree, stage, at, record=record):
        return StageState(stage, "done")
    if stage == Stage.eval and record.get("fingerprint") == stage_fingerprint(
        tree, stage, at, backend_written=True, record=record
    ):  # made with eval.backend set to the engine it resolves to now (every such record is of
        # format 5 or later: the key came after format 4)
        return StageState(stage, "done")
    by_name = made_as < CONTENTS_FORMAT  # made before files entered by content
    if by_name and record.get("fingerprint") == stage_fingerprint(tree, stage, at, contents=False):
        return StageState(stage, "done")
    if (
        made_as < OWN_PAIRS_FORMAT
        and read_upstream(tree, stage) != STAGES[stage].consumes
        and record.get("fingerprint")
        == stage_fingerprint(tree, stage, at, contents=not by_name, chained=True)
    ):  # a training on a file of the user's own, fingerprinted as its format did
        return StageState(stage, "done")
    if made_as == ABSOLUTE_PATHS_FORMAT:
        # made before fingerprints were relative to the run: checked as it was made, with the
        # absolute paths of where the run sat then (its saved config says), moved or not
        saved = kept.saved or {}
        then = (
            lookup(saved, "run.dir") or lookup(tree, "run.dir"),
            lookup(saved, "paths.root") or lookup(tree, "paths.root"),
            None,
        )
        if record.get("fingerprint") == stage_fingerprint(tree, stage, then, contents=False):
            return StageState(stage, "done")
    if stage == Stage.eval and made_more(tree, kept, at):
        return StageState(stage, "done")
    changed = changed_inputs(tree, stage, kept)
    if not changed and record.get("fingerprint") == stage_fingerprint(
        tree, stage, at, extras=False, contents=not by_name, record=record
    ):
        # an eval recorded before its benchmarks entered the fingerprint, made as asked now (its
        # saved config has the same benchmarks): still finished
        return StageState(stage, "done")
    return StageState(stage, "stale", changed or upstream_changes(tree, stage))


def anchors(made_as: int) -> Anchors:
    """What a record of format `made_as` wrote for the run, its root and the clone in the paths
    it hashed (`fingerprint_form`): before format 7, the clone's paths absolute."""
    return PORTABLE if made_as >= REPO_FORMAT else CLONE_ABSOLUTE


def made_more(tree: dict[str, Any], kept: Kept, at: Anchors = PORTABLE) -> bool:
    """An eval made with benchmarks (or AlpacaEval 2) that `tree` does not ask for, and otherwise
    as asked: its win rate and the benchmarks asked for are the ones asked for, so it is finished
    (a sweep's point that is the lineage of an earlier benchmarked eval reuses it instead of
    being refused). What it ran beyond the request is taken as it ran it; what the request asks
    for, as asked."""
    made_with = kept.saved
    if made_with is None:
        return False
    asked, made = (set(map(str, lookup(t, "eval.benchmarks") or [])) for t in (tree, made_with))
    alpaca = bool(lookup(tree, "eval.alpaca_eval"))
    if not asked <= made or (alpaca and not lookup(made_with, "eval.alpaca_eval")):
        return False
    mine = {key for b in asked for key in BENCHMARK_INPUTS[b]}
    theirs = {key for b in made - asked for key in BENCHMARK_INPUTS[b]} - mine
    widened = copy.deepcopy(tree)
    for key in ["eval.benchmarks", *([] if alpaca else ["eval.alpaca_eval"]), *sorted(theirs)]:
        parent, _, last = key.rpartition(".")
        if isinstance(section := lookup(widened, parent), dict):
            section[last] = lookup(made_with, key)
    fingerprint = stage_fingerprint(widened, Stage.eval, at, record=kept.record)
    return (kept.record or {}).get("fingerprint") == fingerprint


# Under a saved config's command: the clone it ran from (`saved_config`)
CLONE_LINE = "# repo: "


def save_config(folder: Path, resolved: str, command: str) -> None:
    """The resolved config (YAML) beside a stage's output in `folder`, headed by the command that
    made it (as `command_line` holds it: `command_words` reads its words back) and the clone it
    ran from: what `saved_config` reads back."""
    atomic_write_text(folder / SAVED_CONFIG, f"# {command}\n{CLONE_LINE}{REPO_ROOT}\n{resolved}")


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The config the stage in `folder` last ran with (its `config.yaml`), as plain data, or
    None. Its paths in the clone it ran from (its header names it; a config saved before headers
    did is taken as made here) are moved to this clone (REPO_ROOT), so that a clone renamed, or a
    run copied to another, is judged by this clone's files."""
    saved = folder / SAVED_CONFIG
    if not saved.is_file():
        return None
    # plain YAML (the config resolved): libyaml's loader, ~15x OmegaConf's, as a lineage's walk
    # reads one per earlier iteration
    try:
        text = saved.read_bytes()
        loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError):  # damaged: judged by its record alone
        return None
    if not (isinstance(loaded, dict) and "iter" in loaded):
        return None  # emptied, or not a config (a stage run from Python saves none): none saved
    header = [line for line in text.split(b"\n", 2)[:2] if line.startswith(CLONE_LINE.encode())]
    made_in = header[0][len(CLONE_LINE) :].decode(errors="replace") if header else None
    return moved(loaded, [(made_in, str(REPO_ROOT))]) if made_in != str(REPO_ROOT) else loaded


def saved_state(
    tree: dict[str, Any], stage: Stage, folder: Path | None = None, whole: bool = True
) -> StageState | None:
    """The state of the stage in `folder` (default: where `tree` puts it) judged by the config it
    was made with, its paths moved to where `tree`'s run is now: stale when what it read changed
    since it finished (a file it read, iteration t-1's checkpoint or this one's trained again, an
    earlier iteration stale), whatever the config asks now; `whole=False`: by its own record
    alone. None where it saved no config."""
    made_with = saved_config(folder or stage_dir(tree, stage))
    if made_with is None:
        return None
    moved = relocated(made_with, lookup(tree, "run.dir"), lookup(tree, "paths.root"))
    return (state_of if whole else own_state)(moved, stage)


def relocated(tree: dict, run_dir: str, root: str) -> dict:
    """A saved config's paths inside its run and its root moved to `run_dir` and `root`, where the
    run is now (a root copied elsewhere keeps its finished stages)."""
    # the run's own folder first: it lies inside the root
    return moved(tree, [(lookup(tree, "run.dir"), run_dir), (lookup(tree, "paths.root"), root)])


def moved(tree: dict, moves: list[tuple[str | None, str]]) -> dict:
    """`tree` with each path inside the old folder of one of `moves` (the first that holds it)
    moved to its new one; an old folder None moves nothing."""

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        for old, new in moves:
            if isinstance(value, str) and old and (value == old or value.startswith(f"{old}/")):
                return new + value[len(old) :]
        return value

    return move(tree)


def changed_inputs(tree: dict[str, Any], stage: Stage, kept: Kept) -> list[Change]:
    """`key: old -> new` for the inputs that differ from the config the stage last ran with,
    in their fingerprint form (paths in the run, its root and the clone relative to them: a move
    changes none), after the local files it read that changed or are gone."""
    changed = changed_contents(tree, stage, kept.record)
    saved = kept.saved
    if saved is None:
        return changed
    before = flatten(stage_inputs(saved, stage))
    now = flatten(stage_inputs(tree, stage))
    for k in {**now, **before}:
        # a key in the fingerprint on one side only (a benchmark's, as it is added or dropped):
        # as it is set on the other, and not shown where it is set the same
        old = before.get(k, fingerprint_form(lookup(saved, k), saved))
        new = now.get(k, fingerprint_form(lookup(tree, k), tree))
        if before.get(k) != now.get(k) and old != new:
            changed.append(Change(f"{k}: {old!r} -> {new!r}", Why.value, k))
    return changed


def changed_contents(tree: dict[str, Any], stage: Stage, record: dict | None) -> list[Change]:
    """For each local file the stage read whose content differs from what its `record` kept:
    `key: <file> changed since this stage read it`, or, gone or no longer a file, says so."""
    recorded = (record or {}).get("contents") or {}
    if not recorded:
        return []
    # named as the record named them: the clone's paths absolute before format 7
    made_as = record.get("format")
    at = anchors(made_as) if made_as in KNOWN_FORMATS else PORTABLE
    now = input_contents(tree, stage, at=at, record=record)
    found = []
    for key, entry in now.items():
        seen = recorded.get(key) or {}
        if seen.get("path") != entry["path"] or seen.get("sha256") == entry["sha256"]:
            continue
        if entry["sha256"] != GONE:
            found.append(Change(f"{key}: {entry['path']} {CONTENT_CHANGED}", Why.content, key))
            continue
        path = Path(lookup(tree, key)).expanduser()
        if not path.exists():
            what = "is gone"
        elif path.is_dir() != (key in FOLDER_INPUTS):
            what = "is now a folder" if path.is_dir() else "is no longer a folder"
        else:
            what = "lacks files"
        found.append(Change(f"{key}: {entry['path']} {what} (this stage read it)", Why.gone, key))
    return found


def upstream_changes(tree: dict[str, Any], stage: Stage) -> list[Change]:
    """Why a stage whose own inputs did not change is stale: the `changed_inputs` of the nearest
    earlier stage it reads whose inputs changed, else (the iteration's stages all as they were)
    the previous iteration's checkpoint, trained again (or unfinished) since the iteration
    started from it."""
    head, upstream = stage, read_upstream(tree, stage)
    while upstream is not None:
        changed = changed_inputs(tree, upstream, Kept.read(stage_dir(tree, upstream), strict=False))
        if changed:
            return [change.under(f"{upstream.value}'s ") for change in changed]
        head, upstream = upstream, read_upstream(tree, upstream)
    t = tree["iter"]
    if t <= 1:  # iteration 1 starts from pi_0, which no stage made (iteration 0 is pi_0 itself)
        return []
    layout = RunLayout(lookup(tree, "run.dir"))
    previous = read_record(layout.stage_dir_in(t - 1, Stage.train))
    started = read_record(layout.stage_dir_in(t, head))
    if previous is None:
        since = UNFINISHED
    elif started is not None and finished_after(previous, started):
        since = RETRAINED
    else:
        return []  # nothing it read is known to have changed: the fingerprint alone says so
    said = f"iteration {t - 1}'s checkpoint, which this iteration's {head.value} started from, "
    return [Change(said + since, Why.retrained)]


def made_before_training(kept: Kept) -> bool:
    """Whether the finished eval in `kept` (`iterT/eval`, or `iterT/eval/vs-<name>`) was made
    before iteration T's training last finished: of a checkpoint trained again since, whose
    figures it does not hold, whatever its config says (`pipeline.redo=[train]` retrains under
    the same one)."""
    layout = RunLayout.holding(kept.folder)
    if layout is None or kept.record is None:
        return False
    train_dir = layout.stage_dir_in(layout.parse(kept.folder).iteration, Stage.train)
    try:
        trained = read_record(train_dir)
    except (OSError, StageError):  # damaged: named where the training itself is read
        return False
    return trained is not None and finished_after(trained, kept.record)


def finished_after(record: dict, other: dict) -> bool:
    """Whether the stage of `record` finished after that of `other` (False where either's time
    cannot be read)."""
    try:
        times = [datetime.strptime(r["finished_at"], RECORD_TIME) for r in (record, other)]
    except (KeyError, TypeError, ValueError):
        return False
    return times[0] > times[1]


# The kinds that say what a stage read has changed since it was made (not only that its record
# and its config disagree): what makes the stages after it, and every later iteration, stale
READ_CHANGED = (Why.content, Why.gone, Why.retrained, Why.trained_after, Why.ancestor)


# why a stage is stale whose iteration's stages are all as they were
RETRAINED = "was trained again since"
UNFINISHED = "is not finished now (its training's record is gone)"
# why a stage is stale whose local input file was edited since it read it
CONTENT_CHANGED = "changed since this stage read it"
# why an eval is stale whose config is as it was
TRAINED_AFTER = "was trained again after this eval"
