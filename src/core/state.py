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

from pathlib import Path
from typing import Any

from src.core.diff import (
    PREFIXED,
    Change,
    Kept,
    StageState,
    Why,
    covers,
    damage,
    file_changes,
    link_changes,
    other_version,
    param_changes,
    stage_version,
)
from src.core.errors import Redo, RedoStale, StageError
from src.core.fingerprints import (
    lookup,
    read_upstream,
    resolved,
    stage_dir,
)
from src.core.identity import (
    Link,
    files_now,
    key_of,
    links,
    manifest,
    out_id,
)
from src.core.layout import RECORD, RunLayout
from src.core.migrate import legacy_intact, legacy_state
from src.core.records import LEGACY_FORMATS, RECORD_FORMAT, read_record
from src.core.registry import Stage
from src.core.saved import relocated


def state_of(tree: dict[str, Any], stage: Stage) -> StageState:
    """The state of `stage` of `tree`'s iteration under `tree` (`Judge.state`)."""
    return Judge(tree).state(stage)


def saved_state(
    tree: dict[str, Any], stage: Stage, folder: Path | None = None
) -> StageState | None:
    """The stage in `folder` (default: where `tree` puts it) judged by its own record alone, as a
    view that runs no command judges it (`Judge.intact`); `tree` need only say where the run and
    its root are now. None where it has no record."""
    folder = folder or stage_dir(tree, stage)
    state = Judge(tree).intact(folder)
    return None if state.status == "todo" else state


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
        try:
            kept = Kept.read(folder)
        except StageError as err:  # made again by a redo; refused in its own words otherwise
            return StageState(stage, "stale", [Change(str(err), Why.damaged)], unread=err)
        if kept.record is None:
            return StageState(stage, "todo")
        made_as = kept.record.get("format")
        if made_as in LEGACY_FORMATS:
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
            return legacy_intact(self.made_with(kept, layout), stage, kept)
        if made_as != RECORD_FORMAT:
            return StageState(stage, "stale", [other_version(made_as)])
        made = manifest_of(kept.record)
        edited = "manifest" in kept.record and key_of(stage, made) != kept.record["key"]
        if stage_version(stage, made) or edited:
            said = stage_version(stage, made) or [Change(KEY_EDITED, Why.damaged)]
            return StageState(stage, "stale", said)
        files = files_now(made["files"], str(layout.run_dir), lookup(self.tree, "paths.root"))
        reads = [Link.parse(name) for name in made["upstream"]]
        now = {link.name: out_id(read_record(self.folder_of(link, layout))) for link in reads}
        where = {k: resolved(e["path"], str(layout.run_dir), lookup(self.tree, "paths.root"))
                 for k, e in made["files"].items()}  # fmt: skip
        own_pairs = all(link.iteration != t for link in reads)
        changes = (
            damage(kept.folder, kept.record)
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
        changes = damage(kept.folder, kept.record) + stage_version(stage, made)
        if key_of(stage, now) != record["key"]:
            covered = covers(stage, made["params"], now["params"])
            where = lambda key: Path(str(lookup(self.tree, key))).expanduser()  # noqa: E731
            found = file_changes(made["files"], now["files"], where)
            if not covered:
                found = param_changes(self.tree, kept.saved, made["params"], now["params"]) + found
            t, own_pairs = self.tree["iter"], read_upstream(self.tree, stage) is None
            found = found or link_changes(stage, t, own_pairs, made["upstream"], now["upstream"])
            if not (found or covered):  # a manifest of other entries than this version's
                found = [Change("recorded with another manifest than it reads now", Why.version)]
            changes += found
        return StageState(stage, "stale" if changes else "done", changes)


# a record whose key is not its manifest's: edited, or put together from two records
KEY_EDITED = f"its {RECORD}'s key is not that of the manifest it holds (edited since it was made?)"


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
