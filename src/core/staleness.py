"""A finished stage's state under a config: done (its record's fingerprint is this config's),
stale (made under another config, of a checkpoint trained again since, or from a local file
edited since it read it) or todo (no record), and for a stale one the keys or files that changed,
each named as `key: old -> new` in its fingerprint form; the config a stage ran with, saved
beside its output and read back; the stage whose output a stage reads. The records and
fingerprints it reads: src/core/records.py.

Each function takes the config as plain data (`Config.as_tree()`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.core.artifacts import atomic_write_text
from src.core.errors import StageError
from src.core.layout import SAVED_CONFIG
from src.core.records import (
    ABSOLUTE_PATHS_FORMAT,
    PORTABLE_FORMATS,
    RECORD_FORMAT,
    flatten,
    input_contents,
    lookup,
    made_before_training,
    read_record,
    stage_dir,
    stage_fingerprint,
    stage_inputs,
)
from src.core.registry import BENCHMARK_INPUTS, STAGES, Stage


@dataclass
class StageState:
    stage: Stage
    status: str  # "done" | "stale" | "todo"
    # for "stale": the input keys that differ (none of its own: the nearest earlier stage's)
    changed: list[str] = field(default_factory=list)
    earlier_version: bool = False  # for "stale": recorded by another version of this project


def read_upstream(tree: dict[str, Any], stage: Stage) -> Stage | None:
    """The stage whose output `stage` reads under `tree`: the one it consumes, unless the file its
    `consumes_via` key names lies elsewhere (a file of the user's own: `training.pairs`)."""
    spec = STAGES[stage]
    if spec.consumes is None or spec.consumes_via is None:
        return spec.consumes
    read = Path(lookup(tree, spec.consumes_via)).resolve()
    return spec.consumes if read.parent == stage_dir(tree, spec.consumes).resolve() else None


def state_of(tree: dict[str, Any], stage: Stage) -> StageState:
    """The stage's state under `tree`: done (finished with this config), stale (finished with
    another, or an eval of a checkpoint trained again since) or todo."""
    state = recorded_state(tree, stage)
    if (
        state.status == "done"
        and stage == Stage.eval
        and made_before_training(stage_dir(tree, stage))
    ):
        return StageState(
            stage, "stale", [f"iteration {tree['iter']}'s checkpoint {TRAINED_AFTER}"]
        )
    return state


def recorded_state(tree: dict[str, Any], stage: Stage) -> StageState:
    """The stage's state by its record's fingerprint alone."""
    record = read_record(stage_dir(tree, stage))
    if record is None:
        return StageState(stage, "todo")
    if record.get("fingerprint") == stage_fingerprint(tree, stage):
        return StageState(stage, "done")
    if stage == Stage.eval and record.get("fingerprint") == stage_fingerprint(
        tree, stage, backend_written=True
    ):  # made with eval.backend set to the engine it resolves to now (every such record is of
        # this format: the key came after it)
        return StageState(stage, "done")
    by_name = record.get("format") != RECORD_FORMAT  # made before files entered by content
    if by_name and record.get("fingerprint") == stage_fingerprint(tree, stage, contents=False):
        return StageState(stage, "done")
    if record.get("format") == ABSOLUTE_PATHS_FORMAT:
        # made before fingerprints were relative to the run: checked as it was made, with the
        # absolute paths of where the run sat then (its saved config says), moved or not
        saved = saved_config(tree, stage) or {}
        then = (
            lookup(saved, "run.dir") or lookup(tree, "run.dir"),
            lookup(saved, "paths.root") or lookup(tree, "paths.root"),
        )
        if record.get("fingerprint") == stage_fingerprint(tree, stage, then, contents=False):
            return StageState(stage, "done")
    elif record.get("format") not in PORTABLE_FORMATS:
        return StageState(stage, "stale", earlier_version=True)
    if stage == Stage.eval and made_more(tree, record):
        return StageState(stage, "done")
    changed = changed_inputs(tree, stage)
    if not changed and record.get("fingerprint") == stage_fingerprint(
        tree, stage, extras=False, contents=not by_name
    ):
        # an eval recorded before its benchmarks entered the fingerprint, made as asked now (its
        # saved config has the same benchmarks): still finished
        return StageState(stage, "done")
    return StageState(stage, "stale", changed or upstream_changes(tree, stage))


def made_more(tree: dict[str, Any], record: dict) -> bool:
    """An eval made with benchmarks (or AlpacaEval 2) that `tree` does not ask for, and otherwise
    as asked: its win rate and the benchmarks asked for are the ones asked for, so it is finished
    (a sweep's point that is the lineage of an earlier benchmarked eval reuses it instead of
    being refused). What it ran beyond the request is taken as it ran it; what the request asks
    for, as asked."""
    made_with = saved_config(tree, Stage.eval)
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
    return record.get("fingerprint") == stage_fingerprint(widened, Stage.eval)


def save_config(folder: Path, resolved: str, command: str) -> None:
    """The resolved config (YAML) beside a stage's output in `folder`, headed by the command that
    made it: what `saved_config` reads back."""
    atomic_write_text(folder / SAVED_CONFIG, f"# {command}\n{resolved}")


def saved_config(
    tree: dict[str, Any], stage: Stage, folder: Path | None = None
) -> dict[str, Any] | None:
    """The config the stage last ran with (its `config.yaml`, in `folder` or where `tree` puts
    the stage), as plain data, or None."""
    saved = (folder or stage_dir(tree, stage)) / SAVED_CONFIG
    if not saved.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(saved))


def saved_state(
    tree: dict[str, Any], stage: Stage, folder: Path | None = None
) -> StageState | None:
    """The state of the stage in `folder` (default: where `tree` puts it) judged by the config it
    was made with, its paths moved to where `tree`'s run is now: stale when what it read changed
    since it finished (iteration t-1's checkpoint, or this one's, trained again), whatever the
    config asks now. None where it saved no config."""
    made_with = saved_config(tree, stage, folder)
    if made_with is None:
        return None
    return state_of(
        relocated(made_with, lookup(tree, "run.dir"), lookup(tree, "paths.root")), stage
    )


def relocated(tree: dict, run_dir: str, root: str) -> dict:
    """A saved config's paths inside its run and its root moved to `run_dir` and `root`, where the
    run is now (a root copied elsewhere keeps its finished stages)."""
    moves = [(lookup(tree, "run.dir"), run_dir), (lookup(tree, "paths.root"), root)]

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        for old, new in moves:  # the run's own folder first: it lies inside the root
            if isinstance(value, str) and old and (value == old or value.startswith(f"{old}/")):
                return new + value[len(old) :]
        return value

    return move(tree)


def changed_inputs(tree: dict[str, Any], stage: Stage) -> list[str]:
    """`key: old -> new` for the inputs that differ from the config the stage last ran with,
    in their fingerprint form (paths inside the run relative to it: a move changes none)."""
    changed = changed_contents(tree, stage)
    saved = saved_config(tree, stage)
    if saved is None:
        return changed
    before = flatten(stage_inputs(saved, stage))
    now = flatten(stage_inputs(tree, stage))
    for k in {**now, **before}:
        # a key in the fingerprint on one side only (a benchmark's, as it is added or dropped):
        # as it is set on the other, and not shown where it is set the same
        old, new = before.get(k, lookup(saved, k)), now.get(k, lookup(tree, k))
        if before.get(k) != now.get(k) and old != new:
            changed.append(f"{k}: {old!r} -> {new!r}")
    return changed


def changed_contents(tree: dict[str, Any], stage: Stage) -> list[str]:
    """`key: <file> changed since this stage read it` for each local file whose content differs
    from what the stage's record kept."""
    try:
        record = read_record(stage_dir(tree, stage))
    except StageError:
        return []
    recorded = (record or {}).get("contents") or {}
    now = input_contents(tree, stage) if recorded else {}
    return [
        f"{key}: {entry['path']} {CONTENT_CHANGED}"
        for key, entry in now.items()
        if key in recorded
        and recorded[key].get("path") == entry["path"]
        and recorded[key].get("sha256") != entry["sha256"]
    ]


def upstream_changes(tree: dict[str, Any], stage: Stage) -> list[str]:
    """Why a stage whose own inputs did not change is stale: the `changed_inputs` of the nearest
    earlier stage whose inputs changed, else (the iteration's stages all as they were) the
    previous iteration's checkpoint, trained again since the iteration started from it."""
    head, upstream = stage, STAGES[stage].consumes
    while upstream is not None:
        changed = changed_inputs(tree, upstream)
        if changed:
            return [f"{upstream.value}'s {change}" for change in changed]
        head, upstream = upstream, STAGES[upstream].consumes
    t = tree["iter"]
    if t > 1:
        return [
            f"iteration {t - 1}'s checkpoint, which this iteration's {head.value} started from, "
            f"{RETRAINED}"
        ]
    return []


# why a stage is stale whose iteration's stages are all as they were
RETRAINED = "was trained again since"
# why a stage is stale whose local input file was edited since it read it
CONTENT_CHANGED = "changed since this stage read it"
# why an eval is stale whose config is as it was
TRAINED_AFTER = "was trained again after this eval"
