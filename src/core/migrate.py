"""Records of formats 2 to 7, judged as they were made: each kept a fingerprint of the config
alone (chained through the fingerprints the stages it read would have under the config), not
what the stages it read made, so each format is checked by its own branch here, with the clocks
and saved configs those formats needed. The live rule for records of format 8:
src/core/state.py, which asks this module for an earlier format's record only
(`legacy_state`, `legacy_intact`). Frozen: nothing new enters here, and it can be deleted once no
run holds such a record, without touching the rule.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from src.core.diff import (
    READ_CHANGED,
    RETRAINED,
    TRAINED_AFTER,
    UNFINISHED,
    Change,
    Kept,
    StageState,
    Why,
    file_changes,
    param_changes,
)
from src.core.errors import StageError
from src.core.fingerprints import (
    CLONE_ABSOLUTE,
    PORTABLE,
    Anchors,
    Read,
    input_contents,
    lookup,
    read_upstream,
    stage_dir,
    stage_inputs,
)
from src.core.identity import links
from src.core.layout import RECORD, RunLayout
from src.core.records import (
    ABSOLUTE_PATHS_FORMAT,
    CONTENTS_FORMAT,
    LEGACY_FORMATS,
    OWN_PAIRS_FORMAT,
    RECORD_FORMAT,
    RECORD_TIME,
    REPO_FORMAT,
    read_record,
)
from src.core.registry import BENCHMARK_INPUTS, STAGES, Stage

KNOWN_FORMATS = LEGACY_FORMATS


def legacy_state(tree: dict[str, Any], stage: Stage, kept: Kept) -> StageState:
    """The stage of a record of an earlier format under `tree`, by its own record (and, for an
    eval, its checkpoint's), as its format was checked; stale where a stage it reads was made by
    this version since (which such a record cannot have read; one whose record was only
    rewritten as this version's, `migrate`, was not made again)."""
    for link in links(tree, stage):
        folder = RunLayout(lookup(tree, "run.dir")).stage_dir_in(link.iteration, link.stage)
        try:
            read = read_record(folder)
        except StageError:  # damaged: named where that stage's own state is read
            continue
        if read is not None and read.get("format") == RECORD_FORMAT and "migrated_from" not in read:
            said = f"{link.stage.value} of iteration {link.iteration} was made again since"
            return StageState(stage, "stale", [Change(said, Why.remade)])
    state = recorded_state(tree, stage, kept)
    if state.status == "done" and stage == Stage.eval and made_before_training(kept):
        said = f"iteration {tree['iter']}'s checkpoint {TRAINED_AFTER}"
        return StageState(stage, "stale", [Change(said, Why.trained_after)])
    return state


def migrate(tree: dict[str, Any], stage: Stage, folder: Path) -> bool:
    """Rewrite the record in `folder`, of an earlier format and finished under `tree`, as this
    version writes it: the manifest of what it reads now (which its format checked it read: the
    same config, the same files), the old record kept beside it as `done.v<format>.json`, one
    line saying so. Returns whether it did. Its writer holds the stage's lock."""
    kept = Kept.read(folder)
    record = kept.record
    if record is None or record.get("format") not in LEGACY_FORMATS:
        return False
    if legacy_state(tree, stage, kept).status != "done":
        return False
    from src.core.identity import Key, key_of, manifest
    from src.core.records import Finished, write_record

    contents = record.get("contents") or {}
    read = {k: entry["read"] for k, entry in contents.items() if "read" in entry}
    made = manifest(tree, stage, read=read or None)
    kept_as = folder / f"done.v{record['format']}.json"
    shutil.copy2(folder / RECORD, kept_as)
    finished = Finished(Key(key_of(stage, made), made), record["counts"], record["timings"],
                        record.get("outputs"))  # fmt: skip
    write_record(folder, finished, migrated_from=record["format"])
    print(f"[main] {folder}: its record of format {record['format']} rewritten as format "
          f"{RECORD_FORMAT} (the old one kept as {kept_as.name})", file=sys.stderr)  # fmt: skip
    return True


def legacy_intact(tree: dict[str, Any] | None, stage: Stage, kept: Kept) -> StageState:
    """The stage of a record of an earlier format judged by the config it was made with (`tree`,
    its paths where the run is now): stale only where what it read changed since; done where it
    saved no config."""
    if tree is None:
        return StageState(stage, "done")
    state = legacy_state(tree, stage, kept)
    return state if state.has(*READ_CHANGED) else StageState(stage, "done")


class Fingerprint(str):
    """A stage's fingerprint, carrying the content of the files it hashed (`input_contents`):
    `write_record` keeps them, so that a later check names the file that changed."""

    contents: dict[str, dict[str, str]]

    def __new__(cls, value: str, contents: dict[str, dict[str, str]]) -> Fingerprint:
        made = super().__new__(cls, value)
        made.contents = contents
        return made


def legacy_fingerprint(
    tree: dict[str, Any],
    stage: Stage,
    at: Anchors = PORTABLE,
    extras: bool = True,
    contents: bool = True,
    backend_written: bool = False,
    read: dict[str, Read] | None = None,
    chained: bool = False,
    record: dict[str, Any] | None = None,
) -> Fingerprint:
    """sha256 of the stage's inputs, of the content of the local files among them and of the
    fingerprint of what it reads: the stage it consumes (`read_upstream`), or, where it reads no
    stage of its iteration, the policy it starts from (pi_{t-1}, as recorded when it was trained).

    `at`: see `fingerprint_form`; the default makes the fingerprint of this format. `extras`,
    `backend_written`: see `stage_inputs`. `contents=False`: by the files' names alone, as
    records before format 5. `read`, `record`: see `input_contents`. `chained=True`: a training on
    a file of the user's own chained through the stages it does not read, as records before
    format 6.
    """
    consumes = STAGES[stage].consumes if chained else read_upstream(tree, stage)
    iteration = tree["iter"]
    if consumes is not None:
        upstream: str | None = legacy_fingerprint(tree, consumes, at, contents=contents)
    elif iteration > 1:  # the previous iteration's checkpoint, as recorded when it was trained
        previous = RunLayout(lookup(tree, "run.dir")).stage_dir_in(iteration - 1, Stage.train)
        trained = read_record(previous)
        upstream = trained.get("fingerprint") if trained else "unfinished"
    else:
        upstream = None
    inputs = stage_inputs(tree, stage, at, extras, backend_written, chained)
    payload = {"stage": stage.value, "inputs": inputs, "upstream": upstream}
    found = input_contents(tree, stage, read, at, record) if contents else {}
    if found:  # only then: a stage that reads no local file keeps its fingerprint of format 4
        payload["contents"] = {key: entry["sha256"] for key, entry in found.items()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(digest, found)


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
    if record.get("fingerprint") == legacy_fingerprint(tree, stage, at, record=record):
        return StageState(stage, "done")
    if stage == Stage.eval and record.get("fingerprint") == legacy_fingerprint(
        tree, stage, at, backend_written=True, record=record
    ):  # made with eval.backend set to the engine it resolves to now (every such record is of
        # format 5 or later: the key came after format 4)
        return StageState(stage, "done")
    by_name = made_as < CONTENTS_FORMAT  # made before files entered by content
    if by_name and record.get("fingerprint") == legacy_fingerprint(tree, stage, at, contents=False):
        return StageState(stage, "done")
    if (
        made_as < OWN_PAIRS_FORMAT
        and read_upstream(tree, stage) != STAGES[stage].consumes
        and record.get("fingerprint")
        == legacy_fingerprint(tree, stage, at, contents=not by_name, chained=True)
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
        if record.get("fingerprint") == legacy_fingerprint(tree, stage, then, contents=False):
            return StageState(stage, "done")
    if stage == Stage.eval and made_more(tree, kept, at):
        return StageState(stage, "done")
    changed = changed_inputs(tree, stage, kept)
    if not changed and record.get("fingerprint") == legacy_fingerprint(
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
    fingerprint = legacy_fingerprint(widened, Stage.eval, at, record=kept.record)
    return (kept.record or {}).get("fingerprint") == fingerprint


def changed_inputs(tree: dict[str, Any], stage: Stage, kept: Kept) -> list[Change]:
    """`key: old -> new` for the inputs that differ from the config the stage last ran with,
    in their fingerprint form (paths in the run, its root and the clone relative to them: a move
    changes none), after the local files it read that changed or are gone."""
    changed = changed_contents(tree, stage, kept.record)
    saved = kept.saved
    if saved is None:
        return changed
    return changed + param_changes(
        tree, saved, stage_inputs(saved, stage), stage_inputs(tree, stage)
    )


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
    return file_changes(recorded, now, lambda key: Path(lookup(tree, key)).expanduser())


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
