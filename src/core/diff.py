"""Why a finished stage is stale: the difference between what its record says it read and what it
would read now, each difference typed (`Why`) and worded once (`Change`) — a param set otherwise
(`key: old -> new`), a file changed or gone, a stage output it read made again since, one of its
own outputs damaged, another version. The scheduler decides remedies from the kinds and keys,
never from the words (src/schedule/remedies.py); src/core/state.py decides finished or stale. Also the
two things a judgement is made of: a stage's state (`StageState`) and its folder as read once
(`Kept`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from src.core.artifacts import files_sha256
from src.core.choice import Choice
from src.core.errors import StageError
from src.core.fingerprints import GONE, fingerprint_form, flatten, lookup
from src.core.identity import MODEL_KEYS, Link, stat_signature
from src.core.records import RECORD_FORMAT, read_record
from src.core.registry import BENCHMARK_INPUTS, FOLDER_INPUTS, STAGES, Stage
from src.core.saved import saved_config


class Why(Choice):
    """Why a finished stage is stale: what decides its remedy (src/schedule/remedies.py)."""

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
    # a record that does not read: its error, which names the file and the redo
    unread: StageError | None = None

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


def other_version(made_as: Any) -> Change:
    later = isinstance(made_as, int) and made_as > RECORD_FORMAT
    said = f"recorded by {'a later' if later else 'an earlier'} version of selfplay-lab" + (
        f" (record format {made_as}; this one writes {RECORD_FORMAT})" if made_as else ""
    )
    return Change(said, Why.version)


def stage_version(stage: Stage, made: dict[str, Any]) -> list[Change]:
    """The stage's version, where the manifest `made` names another than this one's."""
    was, now = made.get("version", STAGES[stage].version), STAGES[stage].version
    if was == now:
        return []
    return [
        Change(f"made by version {was} of the {stage.value} stage, which is {now} now", Why.version)
    ]


def damage(folder: Path, record: dict[str, Any]) -> list[Change]:
    """Each of the stage's own outputs that is missing or not as it sealed it: its size, then
    its content, read again only where its stat differs from what the record kept."""
    stats = record.get("stats") or {}
    found, hashed = [], {}
    for name, seal in (record.get("outputs") or {}).items():
        path = folder / name
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
    tree: dict[str, Any], saved: dict[str, Any] | None, before: dict[str, Any], now: dict[str, Any]
) -> list[Change]:
    """`key: old -> new` for each param set otherwise than the stage was made with, in its
    portable form; a key read on one side only (a benchmark's, as it is added or dropped) as it
    is set on the other, and not shown where it is set the same."""
    before, now = flatten(before), flatten(now)
    saved = saved or {}
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
