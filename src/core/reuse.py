"""What one lineage made, every lineage that would read the same takes: a stage about to run whose
manifest — its params, the files it reads, the outputs of the stages it reads — is that of a
finished stage of the same iteration anywhere under `paths.root` takes that stage's outputs,
byte for byte, without computing (`pipeline.reuse=false`: computes anyway). A sweep's points
generate and rank their first iteration once; a lineage at another learning rate trains only.

The outputs its record seals are hard links where the file system allows (no second copy of a
checkpoint), made read-only so that neither lineage can change the other's by writing in place,
and copies elsewhere; the rest of its folder (metrics, a model card a later eval rewrites) is
copied. Deleting the lineage that made them leaves the links whole. The stage's record is
written as its own (the same manifest and key, `reused_from` naming where they came from).

Two processes wanting one key at once: the first computes under the key's lock, the second waits
for it (`key_lock`) and takes what it made, so no key is computed twice at once and nothing made
by two is mixed. A stage made in parts by several processes (the shards of a SLURM array, a
training on several nodes) computes its own (src/schedule/run.py, `reusable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.core import locks
from src.core.diff import Kept
from src.core.fingerprints import fingerprint_form, lookup, stage_dir
from src.core.identity import Key, manifest
from src.core.layout import LOCKS, RECORD, SAVED_CONFIG, iteration_name
from src.core.records import RECORD_FORMAT, Finished, write_record
from src.core.registry import Stage
from src.core.state import Judge

# A key's lock, beside the lineages under paths.root (`key_lock`): <root>/.locks/key-<...>.lock
KEY = "key-"
# What a stage's folder holds that is its lineage's own, never taken from another: its record and
# saved config, its locks and a redo's leftovers (dot-names), the work folders of its shards and
# of its training (chunks and resume state, which the record's outputs do not need)
OWN = (RECORD, SAVED_CONFIG)
WORK = ("shard", "trainer", "wandb")


def lookup_key(tree: dict[str, Any], stage: Stage) -> str:
    """What names a stage's key before it runs: its params and the stage outputs it reads (the
    files it reads by content are checked on each candidate, `found`)."""
    made = manifest(tree, stage)
    payload = {"stage": stage.value, "params": made["params"], "upstream": made["upstream"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def key_lock(tree: dict[str, Any], stage: Stage) -> Iterator[None]:
    """Held while this process finds or computes `stage`'s key: another process wanting the same
    key waits here until it is made, then takes it."""
    root = Path(lookup(tree, "paths.root"))
    name = f"{KEY}{stage.value}@{tree['iter']}-{lookup_key(tree, stage)[:32]}"
    with locks.writing(root / name, wait=True):  # its lock file: <root>/.locks/<name>.lock
        yield


def found(tree: dict[str, Any], stage: Stage) -> Path | None:
    """A finished folder of `stage` of this iteration in another lineage under `paths.root` that
    read what this one would read (the same params, files by content and stage outputs), whose
    own outputs and the stages it read are intact; None."""
    own = stage_dir(tree, stage)
    root = Path(lookup(tree, "paths.root"))
    judge = Judge(tree)
    pattern = f"*/*/*/{iteration_name(tree['iter'])}/{stage.value}/{RECORD}"
    for record in sorted(root.glob(pattern)):
        folder = record.parent
        if folder == own:
            continue
        kept = Kept.read(folder, strict=False)
        if kept.record is None or kept.record.get("format") != RECORD_FORMAT:
            continue
        if judge.own(stage, kept).status == "done" and judge.intact(folder).status == "done":
            return folder
    return None


def take(tree: dict[str, Any], stage: Stage, source: Path) -> None:
    """`source`'s outputs into `stage`'s folder (hard links, read-only; copies where links cannot
    be made), then its record, naming `source`: the stage is finished as `source` is."""
    dest = stage_dir(tree, stage)
    kept = Kept.read(source)
    sealed = set(kept.record.get("outputs") or {})
    for path in sorted(source.rglob("*")):
        part = path.relative_to(source)
        if not path.is_file() or part.as_posix() in OWN or not_taken(part):
            continue
        target = dest / part
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        if part.as_posix() in sealed:  # never written in place: shared
            linked(path, target)
        else:  # metrics, seals' files, a model card a later eval rewrites: its own copy
            shutil.copy2(path, target)
    locks.require_held()  # the only writer of what it took, as it seals it
    record = kept.record
    made = Key(record["key"], record["manifest"])
    finished = Finished(made, record["counts"], record["timings"], record.get("outputs"))
    write_record(dest, finished, reused_from=fingerprint_form(str(source), tree))
    print(f"[main] stage {stage.value}: reused from {source} (the same key: what it read is "
          "what this stage reads; pipeline.reuse=false computes it anyway)", file=sys.stderr)  # fmt: skip


def not_taken(part: Path) -> bool:
    """A part of a stage's folder that is its lineage's own work, not an output."""
    top = part.parts[0]
    return top.startswith(".") or top == LOCKS or top.startswith(WORK)


def linked(path: Path, target: Path) -> None:
    """`target` a hard link to `path`, both read-only; a copy where the link cannot be made."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        os.link(path, target)
    except OSError:  # another file system, or one without links: a copy of its own
        shutil.copy2(path, target)
