"""A stage's state, by one rule: a stage is what it read (src/core/identity.py). It is done when
its record holds what it would read now — the same params, the same files, the same outputs of
the stages it reads — its own outputs are as it sealed them, and every stage it reads is done;
stale otherwise, each reason typed (`Change`): what the scheduler decides a remedy from and, as
text, what differs; todo without a record.

The stages of the command's own iteration are judged by the command's config (`Judge.state`);
a stage of an earlier iteration a stage reads (the checkpoint it starts from) by its own record
alone (`Judge.intact`): its params were its own choice, what it read and made must still be as
recorded. So a stage made again with other bytes makes every stage that read it stale, in every
command, and one made again with the same bytes none; no clock is compared. Records of earlier
formats, which kept a fingerprint of the config alone, are judged as they were made
(src/core/migrate.py).

Each function takes the config as plain data (`Config.as_tree()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from src.core.artifacts import files_sha256
from src.core.choice import Choice
from src.core.errors import Redo, RedoStale, StageError
from src.core.fingerprints import (
    GONE,
    fingerprint_form,
    flatten,
    lookup,
    read_upstream,
    resolved,
    stage_dir,
)
from src.core.identity import (
    MODEL_KEYS,
    Link,
    files_now,
    key_of,
    links,
    manifest,
    out_id,
    stat_signature,
)
from src.core.layout import RunLayout
from src.core.records import LEGACY_FORMATS, RECORD_FORMAT, read_record
from src.core.registry import BENCHMARK_INPUTS, FOLDER_INPUTS, STAGES, Stage
from src.core.saved import relocated, saved_config


class Why(Choice):
    """Why a finished stage is stale: what decides its remedy (src/schedule.py)."""

    value = "value"  # an input key set otherwise than the stage was made with
    content = "content"  # a local file it read changed since
    gone = "gone"  # a local file it read is gone, or is no longer a file
    retrained = "retrained"  # pi_{t-1}, which its iteration started from, trained again since
    trained_after = "trained_after"  # an eval whose checkpoint was trained again after it
    ancestor = "ancestor"  # an earlier iteration, which this one descends from, is stale
    remade = "remade"  # a stage of its iteration it read was made again since, other bytes
    damaged = "damaged"  # one of its own outputs is missing or not as it sealed it
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
        names it, or, `strict=False`, is taken as none."""
        try:
            return cls(folder, read_record(folder))
        except StageError:
            if strict:
                raise
            return cls(folder, None)

    @cached_property
    def saved(self) -> dict[str, Any] | None:
        return saved_config(self.folder)


# The kinds that say what a stage read, or made, has changed since it was made (not only that its
# record and the command's config disagree): what makes the stages after it, and every later
# iteration, stale
READ_CHANGED = (
    Why.content, Why.gone, Why.retrained, Why.trained_after, Why.ancestor, Why.remade, Why.damaged,
)  # fmt: skip
# what a stage read of another of its iteration, as a later stage says it ("generate's ...")
PREFIXED = (Why.value, Why.content, Why.gone, Why.damaged)

RETRAINED = "was trained again since"
UNFINISHED = "is not finished now (its training's record is gone)"
CONTENT_CHANGED = "changed since this stage read it"
TRAINED_AFTER = "was trained again after this eval"


def state_of(tree: dict[str, Any], stage: Stage) -> StageState:
    """The state of `stage` of `tree`'s iteration under `tree` (`Judge.state`)."""
    return Judge(tree).state(stage)


def saved_state(
    tree: dict[str, Any], stage: Stage, folder: Path | None = None, whole: bool = True
) -> StageState | None:
    """The stage in `folder` (default: where `tree` puts it) judged by its own record alone, as a
    view that runs no command judges it (`Judge.intact`); `tree` need only say where the run and
    its root are now. None where it has no record. `whole`: kept for the callers' signature."""
    del whole
    folder = folder or stage_dir(tree, stage)
    if read_record(folder) is None:
        return None
    return Judge(tree).intact(folder)


def redo_for(state: StageState, iteration: int) -> Redo | RedoStale:
    """What makes a stale stage of `iteration` again: the stage and those after it, or, where an
    earlier iteration is the cause, every stale stage of the lineage in order."""
    if state.has(Why.retrained, Why.ancestor):
        return RedoStale()
    return Redo(state.stage, iteration)


class Judge:
    """One command's judge: each stage's state, each asked once (`tree`: the command's config at
    its iteration, as plain data; a view's need only say where the run and its root are)."""

    def __init__(self, tree: dict[str, Any]):
        self.tree = tree
        self.layout = RunLayout(lookup(tree, "run.dir"))
        self._seen: dict[tuple[str, Path], StageState] = {}

    def state(self, stage: Stage) -> StageState:
        """`stage` of the command's iteration: its own record against what it would read now
        under the command's config, then each stage it reads (those of its iteration as the
        command would have them, an earlier iteration's intact)."""
        folder = stage_dir(self.tree, stage)
        if ("full", folder) not in self._seen:
            self._seen["full", folder] = self._state(stage, folder)
        return self._seen["full", folder]

    def intact(self, folder: Path) -> StageState:
        """The stage in `folder` by its own record: done while the files it read, its own outputs
        and the stage outputs it read are as recorded, and those stages intact (its params were
        its own choice)."""
        if ("intact", folder) not in self._seen:
            self._seen["intact", folder] = self._intact(folder)
        return self._seen["intact", folder]

    def _state(self, stage: Stage, folder: Path) -> StageState:
        kept = Kept.read(folder)
        if kept.record is None:
            return StageState(stage, "todo")
        made_as = kept.record.get("format")
        if made_as in LEGACY_FORMATS:
            from src.core.migrate import legacy_state

            own = legacy_state(self.tree, stage, kept)
        elif made_as != RECORD_FORMAT:
            return StageState(stage, "stale", [other_version(made_as)])
        else:
            own = self.own(stage, kept)
        if own.status != "done":
            return own
        t = self.tree["iter"]
        for link in links(self.tree, stage):
            same = link.iteration == t
            read = self.state(link.stage) if same else self.intact(self.folder_of(link))
            if read.status != "done":
                return StageState(stage, "stale", said_after(link, read, same))
        return StageState(stage, "done")

    def _intact(self, folder: Path) -> StageState:
        layout = RunLayout.holding(folder) or self.layout
        place = layout.parse(folder) if RunLayout.holding(folder) else None
        stage, t = (place.stage, place.iteration) if place else (Stage.eval, self.tree["iter"])
        kept = Kept.read(folder)
        if kept.record is None:
            return StageState(stage, "todo")
        made_as = kept.record.get("format")
        if made_as in LEGACY_FORMATS:
            from src.core.migrate import legacy_intact

            return legacy_intact(self.made_with(kept, layout), stage, kept)
        if made_as != RECORD_FORMAT:
            return StageState(stage, "stale", [other_version(made_as)])
        made = manifest_of(kept.record)
        files = files_now(made["files"], str(layout.run_dir), lookup(self.tree, "paths.root"))
        reads = [Link.parse(name) for name in made["upstream"]]
        now = {link.name: out_id(read_record(self.folder_of(link, layout))) for link in reads}
        where = {k: resolved(e["path"], str(layout.run_dir), lookup(self.tree, "paths.root"))
                 for k, e in made["files"].items()}  # fmt: skip
        own_pairs = all(link.iteration != t for link in reads)
        changes = (
            damage(kept)
            or file_changes(made["files"], files, where.get)
            or link_changes(stage, t, own_pairs, made["upstream"], now)
        )
        if changes:
            return StageState(stage, "stale", changes)
        for link in reads:
            read = self.intact(self.folder_of(link, layout))
            if read.status != "done":
                return StageState(stage, "stale", said_after(link, read, link.iteration == t))
        return StageState(stage, "done")

    def made_with(self, kept: Kept, layout: RunLayout) -> dict[str, Any] | None:
        """The config the stage in `kept` was made with, its paths moved to where the run is."""
        if kept.saved is None:
            return None
        return relocated(kept.saved, str(layout.run_dir), lookup(self.tree, "paths.root"))

    def folder_of(self, link: Link, layout: RunLayout | None = None) -> Path:
        return (layout or self.layout).stage_dir_in(link.iteration, link.stage)

    def own(self, stage: Stage, kept: Kept) -> StageState:
        """The stage by its own record against what it would read now under the command's
        config: its params, its files, the outputs it reads, its version; and its own outputs."""
        record, made = kept.record, manifest_of(kept.record)
        now = manifest(self.tree, stage, record=record)
        changes = damage(kept)
        if made.get("version", STAGES[stage].version) != STAGES[stage].version:
            said = f"made by version {made.get('version')} of the {stage.value} stage, which is "
            changes.append(Change(said + f"{STAGES[stage].version} now", Why.version))
        if key_of(stage, now) != record["key"]:
            covered = covers(stage, made["params"], now["params"])
            where = lambda key: Path(str(lookup(self.tree, key))).expanduser()  # noqa: E731
            found = file_changes(made["files"], now["files"], where)
            if not covered:
                found = param_changes(self.tree, kept, made["params"], now["params"]) + found
            t, own_pairs = self.tree["iter"], read_upstream(self.tree, stage) is None
            found = found or link_changes(stage, t, own_pairs, made["upstream"], now["upstream"])
            if not (found or covered):  # a manifest of other entries than this version's
                found = [Change("recorded with another manifest than it reads now", Why.version)]
            changes += found
        return StageState(stage, "stale" if changes else "done", changes)


def said_after(link: Link, read: StageState, same: bool) -> list[Change]:
    """Why a stage is stale whose own record holds, but a stage it read (`link`) is not done
    (`read`): a stage of its iteration by that stage's reasons (its own named: "generate's
    ..."), an earlier iteration's as an ancestor."""
    if read.status == "todo":
        said = f"{link.stage.value} of iteration {link.iteration} is not finished now"
        return [Change(said, Why.remade)]
    if same:
        return [
            c.under(f"{link.stage.value}'s ") if c.kind in PREFIXED else c for c in read.changed
        ]
    return ancestry(link.iteration, read)


def manifest_of(record: dict[str, Any]) -> dict[str, Any]:
    """A record's manifest; one written without (a record of a cache, not of a stage) read
    nothing that can be named."""
    made = record.get("manifest") or {}
    return {"params": {}, "files": {}, "upstream": {}} | made


def ancestry(u: int, read: StageState) -> list[Change]:
    """Why a stage descends from iteration `u`'s stale training (`read`): that iteration named,
    or the earlier one its own reason already names."""
    if read.changed and all(c.kind == Why.ancestor for c in read.changed):
        return read.changed
    first = read.changed[0] if read.changed else Change(read.why, Why.value)
    said = f"iteration {u}'s training, which this iteration descends from, is stale ({read.why})"
    return [Change(said, Why.ancestor, first.key, first.cause)]


def other_version(made_as: Any) -> Change:
    later = isinstance(made_as, int) and made_as > RECORD_FORMAT
    said = f"recorded by {'a later' if later else 'an earlier'} version of selfplay-lab" + (
        f" (record format {made_as}; this one writes {RECORD_FORMAT})" if made_as else ""
    )
    return Change(said, Why.version)


def damage(kept: Kept) -> list[Change]:
    """Each of the stage's own outputs that is missing or not as it sealed it: its size, then
    its content, read again only where its stat differs from what the record kept."""
    record = kept.record or {}
    stats = record.get("stats") or {}
    found, hashed = [], {}
    for name, seal in (record.get("outputs") or {}).items():
        path = kept.folder / name
        if not path.is_file():
            found.append(Change(f"{name} is missing", Why.damaged))
        elif "bytes" in seal and path.stat().st_size != seal["bytes"]:
            size = path.stat().st_size
            said = f"{name} has {size} bytes where it was made with {seal['bytes']}"
            found.append(Change(said, Why.damaged))
        elif "sha256" in seal and stats.get(name) != stat_signature([path], path):
            hashed[path] = (name, seal["sha256"])
    for path, digest in files_sha256(hashed).items():
        name, sealed = hashed[path]
        if digest != sealed:
            said = f"{name} is not the file this stage made (its content changed)"
            found.append(Change(said, Why.damaged))
    return found


def param_changes(
    tree: dict[str, Any], kept: Kept, before: dict[str, Any], now: dict[str, Any]
) -> list[Change]:
    """`key: old -> new` for each param set otherwise than the stage was made with, in its
    portable form; a key read on one side only (a benchmark's, as it is added or dropped) as it
    is set on the other, and not shown where it is set the same."""
    before, now = flatten(before), flatten(now)
    saved = kept.saved or {}
    changed = []
    for k in {**now, **before}:
        old = before.get(k, fingerprint_form(lookup(saved, k), saved))
        new = now.get(k, fingerprint_form(lookup(tree, k), tree))
        if before.get(k) != now.get(k) and old != new:
            changed.append(Change(f"{k}: {old!r} -> {new!r}", Why.value, k))
    return changed


def file_changes(before: dict[str, Any], now: dict[str, Any], where) -> list[Change]:
    """For each local file the stage read whose content differs from what it read:
    `key: <file> changed since this stage read it`, or, gone or no longer a file, says so
    (`where(key)`: the path it reads now)."""
    found = []
    for key, entry in now.items():
        seen = before.get(key) or {}
        if seen.get("path") != entry["path"] or seen.get("sha256") == entry["sha256"]:
            continue
        if entry["sha256"] != GONE:
            found.append(Change(f"{key}: {entry['path']} {CONTENT_CHANGED}", Why.content, key))
            continue
        path = where(key)
        if not path.exists():
            what = "is gone"
        elif path.is_dir() != (key in FOLDER_INPUTS or key in MODEL_KEYS):
            what = "is now a folder" if path.is_dir() else "is no longer a folder"
        else:
            what = "lacks files"
        found.append(Change(f"{key}: {entry['path']} {what} (this stage read it)", Why.gone, key))
    return found


def link_changes(
    stage: Stage, t: int, own_pairs: bool, before: dict[str, str], now: dict[str, str]
) -> list[Change]:
    """Why a stage of iteration `t` whose params and files are as it read them is stale: a stage
    output it read (`before`: as recorded, `now`: as its record says now) made again since with
    other bytes, or not finished now. `own_pairs`: it reads no stage of its iteration (a training
    on a pairs file of the user's own), so that its iteration's chain starts from it."""
    found = []
    for name, made in now.items():
        if before.get(name) == made:
            continue
        link = Link.parse(name)
        since = UNFINISHED if made == "unfinished" else RETRAINED
        if link.stage == Stage.train and stage == Stage.eval and link.iteration == t:
            said = f"iteration {t}'s checkpoint {TRAINED_AFTER}"
            found.append(Change(said, Why.trained_after))
        elif link.stage == Stage.train and link.iteration == t - 1 and stage != Stage.eval:
            head = stage if own_pairs else Stage.generate  # where the iteration's chain starts
            said = f"iteration {t - 1}'s checkpoint, which this iteration's {head.value} "
            found.append(Change(said + f"started from, {since}", Why.retrained))
        elif link.stage == Stage.train:
            said = f"iteration {link.iteration}'s checkpoint, which this stage reads, {since}"
            found.append(Change(said, Why.retrained))
        else:
            said = f"{link.stage.value} was made again since {stage.value} read it"
            found.append(Change(said, Why.remade))
    return found


def covers(stage: Stage, made: dict[str, Any], now: dict[str, Any]) -> bool:
    """The one exception to "the same params": an eval made with benchmarks (or AlpacaEval 2)
    that the command does not ask for, and otherwise as asked, is done — its win rate and the
    benchmarks asked for are those asked for."""
    if stage != Stage.eval:
        return False
    asked = set(map(str, now.get("eval.benchmarks") or []))
    ran = set(map(str, made.get("eval.benchmarks") or []))
    if not asked <= ran or (now.get("eval.alpaca_eval") and not made.get("eval.alpaca_eval")):
        return False
    extra = {key for b in ran - asked for key in BENCHMARK_INPUTS[b]}
    extra -= {key for b in asked for key in BENCHMARK_INPUTS[b]}
    extra |= {"eval.benchmarks", "eval.alpaca_eval"}
    kept = lambda params: {k: v for k, v in params.items() if k not in extra}  # noqa: E731
    return kept(made) == kept(now)
