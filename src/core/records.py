"""Stage records: a finished stage's `done.json`, which finished work a run may reuse
(docs/design.md §5), written and read here alone. The manifest and key it stores:
src/core/identity.py; what a finished stage's state is, and why it is stale: src/core/state.py.

A stage's `done.json` stores what it read (its manifest), the key made from it and the seals of
what it made:

- the key of what it would read now: the work is done, skip it;
- another key: it was made from something else; never reused silently — refused, naming what
  differs, unless the user asks to redo it (`pipeline.redo=[stage]`);
- no record: the stage has not finished (it resumes from whatever it left, or starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.core.artifacts import atomic_write_json, read_json
from src.core.errors import Redo, StageError, shown
from src.core.layout import RECORD, RunLayout
from src.core.machine import machine

# Bumped when what a record holds changes. Format 8 keeps the stage's manifest (what it read:
# src/core/identity.py), its key and its outputs' identity; records of formats 2 to 7 kept a
# fingerprint of the config alone and are judged as they were made (src/core/migrate.py). A
# record of any other format was made by another version of this project, and is refused with
# that reason rather than as a config change; one whose format is not a number is damaged.
RECORD_FORMAT = 8
CONTENTS_FORMAT = 5  # the first to hash the files' content and to check the record's sha256
OWN_PAIRS_FORMAT = 6  # the first to fingerprint a training on a pairs file of the user's own
REPO_FORMAT = 7  # the first to write the paths in the clone relative to it
PORTABLE_FORMATS = (3, 4, CONTENTS_FORMAT, OWN_PAIRS_FORMAT, REPO_FORMAT)
ABSOLUTE_PATHS_FORMAT = 2
LEGACY_FORMATS = (ABSOLUTE_PATHS_FORMAT, *PORTABLE_FORMATS)
KNOWN_FORMATS = (*LEGACY_FORMATS, RECORD_FORMAT)


def redo_of(stage_dir: Path) -> Redo | None:
    """What makes again the stage whose folder is `stage_dir` (`iterT/<stage>`, or an eval
    beside it: `iterT/eval/vs-<name>`); None for a folder outside that layout (a cache, a file of
    the user's own), which deleting remakes."""
    layout = RunLayout.holding(stage_dir)
    if layout is None:
        return None
    place = layout.parse(stage_dir)
    return Redo(place.stage.value, place.iteration)


# What a stage output read holds while the stage that makes it has no finished record
UNFINISHED = "unfinished"

RECORD_TIME = "%Y-%m-%dT%H:%M:%S%z"  # a record's finished_at, to the second, with its offset


def record_sha256(record: dict[str, Any]) -> str:
    """What a record's `sha256` holds: the hash of everything else in it."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_record(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's `done.json`, checked; None when there is none (the stage has not finished).

    The one reader of records: a record that is not what `write_record` wrote (not JSON, not an
    object, a field missing or of the wrong type, content that does not match its own sha256)
    raises a StageError naming the file and what makes the stage again (`redo_of`) — never
    read as "unfinished" (its outputs would be trusted by nobody, but redone silently) and never
    believed.
    """
    path = Path(stage_dir) / RECORD
    if not path.is_file() and not os.path.lexists(path):
        return None
    fix = redo_of(path.parent)
    again = "make the stage again" if fix else f"delete {path.parent} to make it again"
    if not path.is_file():  # a folder or a device in its place: taken as none, the stage would
        # run whole and then fail to write its record
        what = "a folder" if path.is_dir() else "not a regular file"
        raise StageError(f"{path} is {what}, not the record this project writes; {again}", fix)
    record = read_json(path, StageError, fix, again)
    problem = record_problem(record)
    if problem:
        raise StageError(f"{path}: {problem} (edited or damaged?); {again}", fix)
    return record


def record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a parsed record (None: nothing)."""
    made_as = record.get("format")
    if made_as is not None and (not isinstance(made_as, int) or isinstance(made_as, bool)):
        return f"its 'format' is {shown(made_as)}, not a whole number"
    if made_as not in KNOWN_FORMATS:
        return None  # another version's (whose fields may differ): state_of refuses it as such
    fields = {"key" if made_as == RECORD_FORMAT else "fingerprint": str, "counts": dict,
              "timings": dict}  # fmt: skip
    for key, kind in fields.items():
        if not isinstance(record.get(key), kind):
            return f"its {key!r} is {shown(record.get(key))}, not a {kind.__name__}"
    for key in ("outputs", "manifest", "stats"):
        if key in record and not isinstance(record[key], dict):
            return f"its {key!r} is {shown(record[key])}, not an object"
    if record["format"] >= CONTENTS_FORMAT and record.get("sha256") != record_sha256(record):
        return "its content does not match its sha256"
    return None


@dataclass(frozen=True)
class Finished:
    """What a finished stage's record keeps of its work, as its run hands it over; `write_record`
    adds the format, package versions, machine, time and the record's own sha256."""

    key: str  # what it was made from (a `Key`: the manifest it was made from too)
    counts: dict
    timings: dict
    outputs: dict | None = None  # the seal (rows or bytes, sha256) of each output it made


def write_record(stage_dir: str | os.PathLike[str], finished: Finished, **noted: Any) -> Path:
    """`done.json`, written atomically and LAST: the only mark that a stage finished.

    A stage whose record holds the key of what it would read now is finished; without one,
    whatever else is in the directory is a leftover to redo, never to trust. Written by the
    scheduler once a stage's run returns (src/schedule/run.py), by a stage whose spec says it writes
    its own (training's rank-0 worker) and by the eval's answer cache. Beside the outputs' seals
    it keeps each output file's stat (`stats`), which vouches for it unchanged without reading
    it again (src/core/state.py). `noted`: where its outputs came from, kept in it as given —
    `reused_from` (the stage whose outputs it took, having read the same: src/core/reuse.py),
    `migrated_from` (the format of the record it replaces: src/core/migrate.py).
    """
    from importlib.metadata import version

    packages = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "llm-blender")
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except Exception:  # not installed (e.g. an optional extra): record its absence
            versions[name] = None
    record: dict[str, Any] = {"format": RECORD_FORMAT, "key": str(finished.key)}
    made = getattr(finished.key, "manifest", None)
    if made is not None:
        record["manifest"] = made
    if finished.outputs is not None:
        record["outputs"] = finished.outputs
        record["out_id"] = out_id(record)
        folder = Path(stage_dir)
        record["stats"] = {name: stat_signature([folder / name], folder / name)
                           for name in finished.outputs if (folder / name).is_file()}  # fmt: skip
    record |= noted
    record |= {
        "counts": finished.counts,
        "timings": finished.timings,
        "versions": versions,
        "machine": machine(),
        "finished_at": time.strftime(RECORD_TIME),
    }
    record["sha256"] = record_sha256(record)
    return atomic_write_json(Path(stage_dir) / RECORD, record)


def out_id(record: dict[str, Any] | None) -> str:
    """The identity of what a finished stage made: the sha256 of the seals of its outputs (each
    file's rows or bytes and sha256) as its record keeps them; `UNFINISHED` without a record."""
    if record is None:
        return UNFINISHED
    outputs = record.get("outputs") or {}
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()


def stat_signature(files: list[Path], folder: Path) -> str:
    """What vouches for files unchanged since they were hashed: each one's name, size, inode,
    mtime and ctime (which every write changes, `cp -p` and `touch -d` too)."""
    lines = []
    for f in files:
        s = f.stat()
        name = f.relative_to(folder).as_posix() if f != folder else ""
        lines.append(f"{name}:{s.st_size}:{s.st_ino}:{s.st_mtime_ns}:{s.st_ctime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
